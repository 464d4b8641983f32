"""Admission: may this call proceed for this business? (keyed by business id)

The single writer of each business's concurrency count: every event for a business lands
in its partition, so the count needs no lock. Pure: `handle` takes the event, the call's
current slot, how many of the business's calls hold a slot, and a config view (time is the
event's own `occurred_at`); it returns the new slot and the records to publish. The count
per business is derived from the slots (ADMITTED ones), never stored on its own.

Call slot transitions (events not listed raise TransitionError; the state stays). `handle`
classifies the event into an `Input`, asks `step` for the next state and builds the new
slot from that state: the table is the only place a state is named as a target.

    (none)    --offer ok-------> ADMITTED    hold a plan slot, CallAdmitted -> routing
    (none)    --offer refused--> REJECTED    CallRejected -> edge
    (none)    --release--------> RELEASED    an end that overtook its offer: remembered
    ADMITTED  --offer----------> ADMITTED    duplicate delivery: same decision again
    ADMITTED  --release--------> RELEASED    free the plan slot, forward to routing
    REJECTED  --offer----------> REJECTED    duplicate delivery: same decision again
    REJECTED  --release--------> REJECTED    nothing held
    RELEASED  --offer----------> RELEASED    a late duplicate: nothing is re-admitted
    RELEASED  --release--------> RELEASED    released exactly once

What leaves with a transition follows from the states, not from the event: a slot that
stops holding (ADMITTED -> anything else) forwards the release to routing; a duplicate
offer re-sends the decision the slot keeps (a RELEASED slot keeps none: nothing is
re-admitted). A duplicate is answered from the slot, never decided again.

Every offer is copied to the call's history (call-events) here, ahead of its decision and
in the same batch: the edge sends it only to admission. A duplicate offer is copied again
(the history keeps one per event id), so a crash between the writes cannot leave it out.

Checks, in order, with distinct answers: business exists (404) and is active (403); the
number is configured for the business (404); its provider matches the call's (404); its
route exists for the business (404); the packet's source IP is in the number's
allowedSourceIps for SIP numbers (403); the plan has room (486 Busy Here).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from streams.config_view import ConfigView
from trunkline.core.events import (
    Emit,
    TransitionError,
    derived_id,
    envelope,
    fan_out,
    pack_decision,
    transition,
    unpack_decision,
)

log = logging.getLogger("trunkline.admission")
PRODUCER = "admission"
ROUTING_PRODUCER = "routing"  # streams.routing.PRODUCER (not imported: no cycle)


#: what asks for a slot: an edge's offer, or the REST API's outbound request (the same
#: checks; the number is the one the call is made from, named by phone_id)
OFFERS = ("CallOffered", "OutboundCallRequested")


class SlotState(enum.Enum):
    ADMITTED = "ADMITTED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"


#: terminal states: nothing leaves them (streams/retention.py forgets them later)
FINISHED = frozenset({SlotState.REJECTED, SlotState.RELEASED})
#: states that hold one of the plan's slots (what SlotIndex counts)
HOLDING = frozenset({SlotState.ADMITTED})


class Input(enum.Enum):
    OFFER_OK = "offer ok"
    OFFER_REFUSED = "offer refused"
    OFFER_AGAIN = "offer"
    RELEASE = "release"


NONE = None
TRANSITIONS: dict[SlotState | None, dict[Input, SlotState]] = {
    NONE: {
        Input.OFFER_OK: SlotState.ADMITTED,
        Input.OFFER_REFUSED: SlotState.REJECTED,
        Input.RELEASE: SlotState.RELEASED,
    },
    SlotState.ADMITTED: {Input.OFFER_AGAIN: SlotState.ADMITTED, Input.RELEASE: SlotState.RELEASED},
    SlotState.REJECTED: {Input.OFFER_AGAIN: SlotState.REJECTED, Input.RELEASE: SlotState.REJECTED},
    SlotState.RELEASED: {Input.OFFER_AGAIN: SlotState.RELEASED, Input.RELEASE: SlotState.RELEASED},
}


def step(state: SlotState | None, event: Input) -> SlotState:
    return transition(TRANSITIONS, state, event, "admission slot")


@dataclass(frozen=True)
class Slot:
    """What admission remembers of one call (a Faust table value)."""

    state: SlotState
    business_id: str
    region_id: str = ""
    decision: dict[str, Any] | None = None  # the record emitted for the offer, re-sent on dup

    def moved(self, state: SlotState) -> Slot:
        """This slot in `state` (from `step`); a RELEASED slot drops its decision: nothing
        is re-sent for a call whose slot was freed."""
        decision = None if state is SlotState.RELEASED else self.decision
        if state is self.state and decision is self.decision:
            return self
        return Slot(state, self.business_id, self.region_id, decision)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "business_id": self.business_id,
            "region_id": self.region_id,
            "decision": pack_decision(self.decision),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Slot | None:
        if not data:
            return None
        return cls(
            SlotState(data["state"]),
            data["business_id"],
            data.get("region_id", ""),
            unpack_decision(data.get("decision")),
        )


@dataclass(frozen=True)
class Result:
    slot: Slot | None  # the call's slot after the event; ADMITTED slots count against the plan
    emits: list[Emit]


@lru_cache(maxsize=4096)
def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(entry, strict=False)


def source_allowed(source_ip: str, allowed: list[str]) -> bool:
    if not allowed:
        return True
    try:
        ip = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(ip in _network(entry) for entry in allowed)


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def check_offer(
    offer: dict[str, Any], config: ConfigView, active: int
) -> tuple[Refusal | None, dict[str, Any]]:
    """Run the checks; return (refusal or None, facts found: number, route, plan...)."""
    business_id = offer.get("business_id") or ""
    facts: dict[str, Any] = {}
    business = config.business(business_id)
    if business is None:
        return Refusal(404, f"business {business_id or '(none)'} not found"), facts
    if not business.get("active", True):
        return Refusal(403, f"business {business_id} is not active"), facts
    phone_id = offer.get("phone_id") or ""
    number = (
        config.number(phone_id)
        if phone_id
        else config.find_number(offer.get("to_number", ""), business_id)
    )
    if number is None or number.get("business_id") != business_id:
        what = phone_id or offer.get("to_number", "")
        return Refusal(404, f"number {what} is not configured for business {business_id}"), facts
    facts["number"] = number
    if number.get("provider") != offer.get("provider"):
        return Refusal(
            404,
            f"number {number['id']} is a {number.get('provider')} number, "
            f"the call came over {offer.get('provider')}",
        ), facts
    # an outbound request may name another route of the business (its agent)
    route = config.route(offer.get("route_id") or number.get("route_id", ""))
    if route is None or route.get("business_id") != business_id:
        route_id = offer.get("route_id") or number.get("route_id")
        return Refusal(404, f"route {route_id} is not configured"), facts
    facts["route"] = route
    if offer.get("provider") == "SIP" and not source_allowed(
        offer.get("source_ip", ""), list(number.get("allowed_source_ips") or [])
    ):
        return Refusal(
            403,
            f"source IP {offer.get('source_ip')} is not in allowedSourceIps "
            f"of number {number['id']}",
        ), facts
    plan = config.plan(business.get("plan_id", ""))
    if plan is None:
        return Refusal(
            503, f"plan {business.get('plan_id')} of business {business_id} is not configured"
        ), facts
    facts["plan"] = plan
    limit = int(plan["max_concurrent_calls"])
    if active >= limit:
        return Refusal(
            486,
            f"plan {plan['id']} limit reached: {active}/{limit} calls "
            f"in progress for business {business_id}",
        ), facts
    return None, facts


def handle(
    name: str, event: dict[str, Any], slot: Slot | None, active: int, config: ConfigView
) -> Result:
    """One event from the admission topic: CallOffered, CallEnded or CallRejected.

    `active` is how many of the business's calls hold a slot (ADMITTED) before the event.
    """
    if name in OFFERS:
        return _offer(name, event, slot, active, config)
    if name in ("CallEnded", "CallRejected"):
        return _release(name, event, slot)
    raise TransitionError(f"admission does not handle {name}")


def _offer(
    name: str, event: dict[str, Any], slot: Slot | None, active: int, config: ConfigView
) -> Result:
    result = _decide(event, slot, active, config)
    history = Emit("call-events", event["envelope"]["call_id"], name, event)
    return Result(result.slot, [history, *result.emits])


def _decide(event: dict[str, Any], slot: Slot | None, active: int, config: ConfigView) -> Result:
    call_id = event["envelope"]["call_id"]
    if slot is not None:  # a duplicate: answered from the slot, never decided again
        again = slot.moved(step(slot.state, Input.OFFER_AGAIN))
        return Result(again, _replay_decision(again))
    now = int(event["envelope"]["occurred_at"])
    cause = event["envelope"]["event_id"]
    business_id = event.get("business_id") or ""
    refusal, facts = check_offer(event, config, active)
    if refusal is not None:
        state = step(None, Input.OFFER_REFUSED)
        rejected = {
            "envelope": envelope(call_id, PRODUCER, now, derived_id(cause, "CallRejected")),
            "stage": "ADMISSION",
            "status_code": refusal.status,
            "reason": refusal.reason,
            "retry_after_s": None,
            "business_id": business_id or None,
            # the number's region when the number is known: rejections count per region
            "region_id": (facts.get("number") or {}).get("region_id") or None,
            "edge_id": event["edge_id"],
        }
        decision = {"name": "CallRejected", "record": rejected}
        new_slot = Slot(state, business_id, "", decision)
        return Result(new_slot, _decision_emits(new_slot))
    state = step(None, Input.OFFER_OK)
    number, route, plan = facts["number"], facts["route"], facts["plan"]
    admitted = {
        "envelope": envelope(call_id, PRODUCER, now, derived_id(cause, "CallAdmitted")),
        "business_id": business_id,
        "phone_id": number["id"],
        "route_id": route["id"],
        "region_id": number["region_id"],
        "plan_id": plan["id"],
        "agent": route.get("agent") or "greeting",
        "agent_options": dict(route.get("agent_options") or {}),
        "provider_call_id": event.get("provider_call_id") or "",
        "edge_id": event["edge_id"],
        "provider": event.get("provider") or "SIP",  # the media node checks who may claim it
        "active_calls": active + 1,
        "max_concurrent_calls": int(plan["max_concurrent_calls"]),
    }
    new_slot = Slot(
        state,
        business_id,
        number["region_id"],
        {"name": "CallAdmitted", "record": admitted},
    )
    return Result(new_slot, _decision_emits(new_slot))


def _decision_emits(slot: Slot) -> list[Emit]:
    assert slot.decision is not None
    name, record = slot.decision["name"], slot.decision["record"]
    if name == "CallAdmitted":
        return fan_out(("routing", "call-events"), {"routing": slot.region_id}, name, record)
    return fan_out(("decisions", "call-events"), {"decisions": record["edge_id"]}, name, record)


def _replay_decision(slot: Slot) -> list[Emit]:
    return _decision_emits(slot) if slot.decision else []


def _release(name: str, event: dict[str, Any], slot: Slot | None) -> Result:
    call_id = event["envelope"]["call_id"]
    if slot is None:  # an end that overtook its offer: remembered, so the offer is refused
        business_id = event.get("business_id") or ""
        return Result(Slot(step(None, Input.RELEASE), business_id), [])
    new = slot.moved(step(slot.state, Input.RELEASE))
    if slot.state not in HOLDING or new.state in HOLDING:
        return Result(new, [])
    # routing may hold a backend slot for an admitted call: pass the release on (same event,
    # same id). Releases routing itself decided (a 503, a missed redirect) already freed it.
    from_routing = event["envelope"].get("producer_id") == ROUTING_PRODUCER
    emits = [] if from_routing else [Emit("routing", slot.region_id, name, event)]
    log.debug("call %s: plan slot of business %s released (%s)", call_id, slot.business_id, name)
    return Result(new, emits)


class SlotIndex:
    """Admitted calls per business, derived from the slots table (never stored itself):
    updated on every slot change and rebuilt from the table after recovery."""

    def __init__(self) -> None:
        self._admitted: dict[str, set[str]] = {}

    def count(self, business_id: str) -> int:
        return len(self._admitted.get(business_id, ()))

    def calls(self, business_id: str) -> set[str]:
        return set(self._admitted.get(business_id, ()))

    def as_dict(self) -> dict[str, list[str]]:
        return {b: sorted(c) for b, c in self._admitted.items()}

    def apply(self, call_id: str, old: Slot | None, new: Slot | None) -> None:
        if old is not None and old.state in HOLDING:
            self._admitted.get(old.business_id, set()).discard(call_id)
        if new is not None and new.state in HOLDING:
            self._admitted.setdefault(new.business_id, set()).add(call_id)

    def rebuild(self, slots: Iterable[tuple[str, Slot | None]]) -> None:
        self._admitted = {}
        for call_id, slot in slots:
            self.apply(call_id, None, slot)
