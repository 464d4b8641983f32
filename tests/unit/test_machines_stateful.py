"""Hypothesis drives the admission and routing machines the way their agents do, with
random interleavings of offers, duplicates, releases, acceptances, heartbeats and ticks
(with gaps in them, as a broker outage leaves). After every step:

- the table holds: each call's new state is TRANSITIONS[old][input] for the input the
  step was (read from the event and what the machine emitted), and nothing else moved;
- the derived counts (SlotIndex, LoadIndex) equal a recount from the per-call states;
- no plan or backend holds more calls than it may, and the system ends a call once.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streams import admission, retention, routing
from streams.config_view import ConfigView
from tests.samples import sample

T0 = 1_700_000_000_000
PLAN_LIMIT = 2
ADMISSION_CONFIG = ConfigView(
    {
        "plans": {"p": {"id": "p", "max_concurrent_calls": PLAN_LIMIT}},
        "businesses": {
            "b1": {"id": "b1", "name": "One", "active": True, "plan_id": "p"},
            "b2": {"id": "b2", "name": "Two", "active": True, "plan_id": "p"},
            "b9": {"id": "b9", "name": "Off", "active": False, "plan_id": "p"},
        },
        "routes": {b: {"id": b, "business_id": b, "agent": "greeting"} for b in ("b1", "b2")},
        "numbers": {
            b: {
                "id": b,
                "business_id": b,
                "provider": "SIP",
                "number": "+1555000000" + b[-1],
                "route_id": b,
                "region_id": "r",
                "allowed_source_ips": [],
            }
            for b in ("b1", "b2")
        },
    }
)


class AdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[str, admission.Slot | None] = {}
        self.index = admission.SlotIndex()
        self.done = retention.Retention(60_000)
        self.offers: dict[str, dict] = {}
        self.forwarded: Counter[str] = Counter()
        self.now = T0
        self.n = 0

    def _handle(self, name: str, event: dict) -> admission.Result:
        call_id = event["envelope"]["call_id"]
        old = self.slots.get(call_id)
        business = event.get("business_id") or (old.business_id if old else "")
        before = {c: s for c, s in self.slots.items() if c != call_id}
        result = admission.handle(name, event, old, self.index.count(business), ADMISSION_CONFIG)
        new = result.slot
        # the table holds for the input this event was
        if name == "CallOffered":
            decided = [e.name for e in result.emits if e.dest != "call-events"]
            if old is None:
                expected = {"CallAdmitted": admission.Input.OFFER_OK}.get(
                    decided[0], admission.Input.OFFER_REFUSED
                )
            else:
                expected = admission.Input.OFFER_AGAIN
        else:
            expected = admission.Input.RELEASE
        assert new is not None
        assert new.state is admission.TRANSITIONS[old.state if old else None][expected]
        # what leaves follows from the states
        to_routing = [e for e in result.emits if e.dest == "routing" and name != "CallOffered"]
        frees = old is not None and old.state in admission.HOLDING
        frees = frees and new.state not in admission.HOLDING
        from_routing = event["envelope"]["producer_id"] == admission.ROUTING_PRODUCER
        assert len(to_routing) == (1 if frees and not from_routing else 0)
        self.forwarded[call_id] += len(to_routing)
        # the agent's part: the table write and the derived index
        if new != old:
            value = new.to_json()
            if new.state in admission.FINISHED:
                value = retention.mark_done(value, None, 0, self.now)
            self.slots[call_id] = new
            self.done.note(call_id, value)
            self.index.apply(call_id, old, new)
        assert {c: s for c, s in self.slots.items() if c != call_id} == before
        return result

    def _offer(self, call_id: str, business: str) -> dict:
        offer = sample("CallOffered", call_id=call_id, at_ms=self.now)
        offer.update(business_id=business, phone_id=business if business != "b9" else "b1")
        return offer

    @rule(business=st.sampled_from(["b1", "b2", "b9"]))
    def offer(self, business: str) -> None:
        self.n += 1
        call_id = f"q-{self.n}"
        self.offers[call_id] = self._offer(call_id, business)
        self._handle("CallOffered", self.offers[call_id])

    @precondition(lambda self: self.offers)
    @rule(data=st.data())
    def offer_again(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.offers)))
        first = self.offers[call_id]
        again = self._handle("CallOffered", first)
        slot = self.slots.get(call_id)
        if slot is not None and slot.decision is not None:  # the same decision, not a new one
            decided = [e.record for e in again.emits if e.dest != "call-events"]
            assert decided[0] == slot.decision["record"]

    @rule(data=st.data(), producer=st.sampled_from(["edge-1", "backend-1", "routing"]))
    def release(self, data: st.DataObject, producer: str) -> None:
        known = sorted(self.offers)
        call_id = data.draw(st.sampled_from([*known, f"q-unknown-{self.n}"]))
        name = "CallRejected" if producer == "routing" and data.draw(st.booleans()) else "CallEnded"
        event = sample(name, call_id=call_id, at_ms=self.now)
        event["envelope"]["producer_id"] = producer
        offer = self.offers.get(call_id)
        event["business_id"] = offer["business_id"] if offer else "b1"
        self._handle(name, event)

    @rule(ms=st.integers(0, 90_000))
    def tick(self, ms: int) -> None:
        """Time passes; a PartitionTick deletes finished slots past the retention."""
        self.now += ms
        for call_id in self.done.due(0, self.now):
            old = self.slots.pop(call_id)
            self.index.apply(call_id, old, None)
            self.done.forget(call_id)
            # forgotten: a duplicate from now on is a new call (streams/retention.py)
            self.forwarded.pop(call_id, None)

    @invariant()
    def counts_are_a_recount(self) -> None:
        recount: dict[str, list[str]] = {}
        for call_id, slot in self.slots.items():
            if slot is not None and slot.state in admission.HOLDING:
                recount.setdefault(slot.business_id, []).append(call_id)
        assert {b: c for b, c in self.index.as_dict().items() if c} == {
            b: sorted(c) for b, c in recount.items()
        }
        for business in ("b1", "b2", "b9"):
            assert self.index.count(business) == len(recount.get(business, []))
            assert self.index.count(business) <= PLAN_LIMIT

    @invariant()
    def each_plan_slot_is_released_to_routing_once(self) -> None:
        assert all(n == 1 for n in self.forwarded.values() if n)


S = routing.Settings(redirect_timeout_ms=10_000, heartbeat_timeout_ms=5_000)
CAPACITY = {"k1": 2, "k2": 1}
ROUTING_CONFIG = ConfigView(
    {
        "backends": {
            b: {
                "id": b,
                "region_id": "r",
                "sip_address": f"10.0.0.{b[-1]}:5070",
                "media_url": f"ws://10.0.0.{b[-1]}:8081",
                "max_concurrent_calls": cap,
                "enabled": True,
            }
            for b, cap in CAPACITY.items()
        },
        "bypassRules": {},
    }
)
ENDED_BY = {"redirect_timeout": routing.Input.DEADLINE, "backend_lost": routing.Input.BACKEND_LOST}


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store: dict[str, routing.Reservation] = {}
        self.index = routing.LoadIndex()
        self.watch = routing.NO_TICKS
        self.beats: dict[str, dict] = {}
        self.admitted: dict[str, dict] = {}
        self.system_ended: Counter[str] = Counter()
        self.now = T0
        self.n = 0

    def _apply(self, changes: routing.Changes, inputs: dict[str, routing.Input]) -> None:
        for call_id, new in changes.reservations.items():
            old = self.store.get(call_id)
            target = routing.TRANSITIONS[old.state if old else None][inputs[call_id]]
            assert new.state is target, (call_id, old, inputs[call_id], new)
            self.index.apply(call_id, old, new)
            self.store[call_id] = new

    def _handle(self, name: str, event: dict, kind: routing.Input | None) -> routing.Changes:
        call_id = event["envelope"]["call_id"]
        old = self.store.get(call_id)
        if kind is not None and old is not None and not routing.takes(old.state, kind):
            before = dict(self.store)
            with pytest.raises(routing.TransitionError):  # not in the table: refused
                routing.handle(
                    name, event, old, ROUTING_CONFIG, self.beats, self.index.load, S, self.watch
                )
            assert self.store == before
            return routing.Changes()
        changes = routing.handle(
            name, event, old, ROUTING_CONFIG, self.beats, self.index.load, S, self.watch
        )
        assert set(changes.reservations) <= {call_id}
        if kind is None:  # a new admission: room or not, by what was decided
            decided = changes.emits[0].name
            kind = {"CallRouted": routing.Input.ADMITTED_ROOM}.get(
                decided, routing.Input.ADMITTED_FULL
            )
        if old is None and name == "CallAccepted":
            assert changes.reservations == {}  # nothing held for it: nothing stored
        self._apply(changes, {call_id: kind})
        return changes

    @rule()
    def admit(self) -> None:
        self.n += 1
        call_id = f"q-{self.n}"
        event = sample("CallAdmitted", call_id=call_id, at_ms=self.now)
        event["region_id"] = "r"
        self.admitted[call_id] = event
        self._handle("CallAdmitted", event, None)

    @precondition(lambda self: self.admitted)
    @rule(data=st.data())
    def admit_again(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.admitted)))
        self._handle("CallAdmitted", self.admitted[call_id], routing.Input.ADMITTED_AGAIN)

    @precondition(lambda self: self.admitted)
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.admitted)))
        event = sample("CallAccepted", call_id=call_id, at_ms=self.now)
        self._handle("CallAccepted", event, routing.Input.ACCEPTED)

    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from([*sorted(self.admitted), f"q-unknown-{self.n}"]))
        event = sample("CallEnded", call_id=call_id, at_ms=self.now)
        event["region_id"] = "r"
        self._handle("CallEnded", event, routing.Input.RELEASE)

    @rule(backend=st.sampled_from(sorted(CAPACITY)), draining=st.booleans())
    def heartbeat(self, backend: str, draining: bool) -> None:
        beat = sample("BackendHeartbeat", at_ms=self.now)
        beat.update(backend_id=backend, region_id="r", active_calls=0, draining=draining)
        self.beats[backend] = beat

    @rule(ms=st.one_of(st.integers(0, 200), st.integers(900, 12_000)))
    def tick(self, ms: int) -> None:
        """Time passes and a RoutingTick arrives (long steps are gaps: the broker away)."""
        self.now += ms
        self.watch, changes = routing.tick(
            "r", self.now, self.watch, self.store.get, self.index, self.beats, S
        )
        inputs = {}
        for e in changes.emits:
            if e.dest == "admission":
                inputs[e.key and e.record["envelope"]["call_id"]] = ENDED_BY[e.record["reason"]]
                self.system_ended[e.record["envelope"]["call_id"]] += 1
        assert set(inputs) == set(changes.reservations)
        self._apply(changes, inputs)

    @invariant()
    def counts_are_a_recount(self) -> None:
        load: Counter[str] = Counter()
        open_: dict[str, dict[str, int]] = {}
        for call_id, res in self.store.items():
            if res.state in routing.HOLDING:
                load[res.backend_id] += 1
            if res.state is routing.ResState.RESERVED:
                open_.setdefault(res.region_id, {})[call_id] = res.deadline_ms
        assert {b: n for b, n in self.index.load.items() if n} == dict(load)
        assert self.index.open_calls() == open_
        for backend, cap in CAPACITY.items():
            assert load[backend] <= cap
            assert self.index.calls_on(backend) == sorted(
                c
                for c, r in self.store.items()
                if r.state in routing.HOLDING and r.backend_id == backend
            )

    @invariant()
    def the_system_ends_a_call_once(self) -> None:
        assert all(n == 1 for n in self.system_ended.values())


TestAdmission = AdmissionMachine.TestCase
TestAdmission.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRouting = RoutingMachine.TestCase
TestRouting.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
