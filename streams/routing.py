"""Routing: which backend takes this admitted call? (keyed by region id)

The single writer of each region's backend capacity. A backend is live while its last
BackendHeartbeat is younger than `heartbeat_timeout_ms`; its room is
min(configured max, heartbeat capacity) minus max(our reservations, its reported calls).
Admin bypass rules (number rules first, then business rules) pick their backend when it
is live, in the call's region, and has room; otherwise the least loaded live backend of
the region wins (ties by id). No backend -> CallRejected 503 with Retry-After.

Reservation transitions (events not listed raise TransitionError; the state stays).
`handle`, `expire` and `backend_lost` classify what happened into an `Input`, ask `step`
for the next state and build the new reservation from it:

    (none)    --admitted, room-----> RESERVED   CallRouted -> edge (302)
    (none)    --admitted, no room--> REJECTED   CallRejected 503 -> edge, admission
    (none)    --release------------> RELEASED   an end that overtook its admission
    RESERVED  --admitted-----------> RESERVED   duplicate: CallRouted again
    RESERVED  --accepted-----------> ACCEPTED   the backend took the redirected call
    RESERVED  --release------------> RELEASED   free the backend slot
    RESERVED  --deadline-----------> RELEASED   no backend took it: CallEnded redirect_timeout
    RESERVED  --backend lost-------> RELEASED   its node stopped heartbeating: CallEnded
    ACCEPTED  --backend lost-------> RELEASED     backend_lost (the node cannot end it itself);
                                                 or its node restarted since it accepted
                                                 the call: CallEnded backend_restarted
    ACCEPTED  --admitted-----------> ACCEPTED   duplicate
    ACCEPTED  --accepted-----------> ACCEPTED   duplicate
    ACCEPTED  --release------------> RELEASED   the call ended: free the slot
    REJECTED  --admitted/release---> REJECTED   nothing held
    RELEASED  --admitted/accepted/release--> RELEASED   released exactly once

A CallAccepted for a call routing holds nothing for (never reserved here, or forgotten
after the retention) stores nothing: there is no state to move. A reservation that stops
holding (RESERVED/ACCEPTED -> anything else) frees the backend's slot; one the system
ended (deadline, backend lost) also tells admission and the history (CallEnded).

Time and liveness. Every judgement uses event times: a CallAdmitted's `occurred_at`, and
the RoutingTicks the worker's leader sends per region every 50 ms (redirect deadlines,
lost backends). Heartbeats travel from other processes through the same broker, so a
silence routing sees may be the pipe's, not the backend's: while the broker is away (or
the worker restarts) no tick and no heartbeat arrives, and afterwards the ticks may be
read before the heartbeats that were sent meanwhile. Each region therefore keeps a
`Watch` of its ticks (a table value, so a replay judges the same):

    a tick more than `tick_gap_ms` after the previous one   -> a gap: down = previous
                                                               tick, up = this tick (a
                                                               gap inside the last one's
                                                               grace: down = the last
                                                               down + the time ticks
                                                               flowed since its up)
    an event inside a gap or its grace (up + heartbeat      -> judged at `down`: as the
      timeout)                                                 region was before the gap
    an event more than `tick_gap_ms` after the last tick    -> judged at the last tick:
      (no tick came since: maybe a gap in progress)            the pipe's state is unknown
    otherwise                                               -> judged at its own time

"Judged at t" applies to liveness (a backend is live when its heartbeat was younger than
the timeout at t) and to redirect deadlines (due when t reached them). The leader only
sends a tick once the previous one was acknowledged (streams/emitter.py), so an outage
shows as a gap in the ticks' own times instead of a burst of ticks sent into it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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

log = logging.getLogger("trunkline.routing")
PRODUCER = "routing"


class ResState(enum.Enum):
    RESERVED = "RESERVED"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"


class Input(enum.Enum):
    ADMITTED_ROOM = "admitted, room"
    ADMITTED_FULL = "admitted, no room"
    ADMITTED_AGAIN = "admitted"
    ACCEPTED = "accepted"
    RELEASE = "release"
    DEADLINE = "deadline"
    BACKEND_LOST = "backend lost"


TRANSITIONS: dict[ResState | None, dict[Input, ResState]] = {
    None: {
        Input.ADMITTED_ROOM: ResState.RESERVED,
        Input.ADMITTED_FULL: ResState.REJECTED,
        Input.RELEASE: ResState.RELEASED,
    },
    ResState.RESERVED: {
        Input.ADMITTED_AGAIN: ResState.RESERVED,
        Input.ACCEPTED: ResState.ACCEPTED,
        Input.RELEASE: ResState.RELEASED,
        Input.DEADLINE: ResState.RELEASED,
        Input.BACKEND_LOST: ResState.RELEASED,
    },
    ResState.ACCEPTED: {
        Input.ADMITTED_AGAIN: ResState.ACCEPTED,
        Input.ACCEPTED: ResState.ACCEPTED,
        Input.RELEASE: ResState.RELEASED,
        Input.BACKEND_LOST: ResState.RELEASED,
    },
    ResState.REJECTED: {
        Input.ADMITTED_AGAIN: ResState.REJECTED,
        Input.RELEASE: ResState.REJECTED,
    },
    ResState.RELEASED: {
        Input.ADMITTED_AGAIN: ResState.RELEASED,
        Input.ACCEPTED: ResState.RELEASED,
        Input.RELEASE: ResState.RELEASED,
    },
}


def step(state: ResState | None, event: Input) -> ResState:
    return transition(TRANSITIONS, state, event, "reservation")


@dataclass(frozen=True)
class Reservation:
    state: ResState
    region_id: str
    business_id: str = ""
    backend_id: str = ""
    deadline_ms: int = 0
    decision: dict[str, Any] | None = None
    #: when the backend accepted the call (CallAccepted's occurred_at: the node's clock)
    accepted_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "region_id": self.region_id,
            "business_id": self.business_id,
            "backend_id": self.backend_id,
            "deadline_ms": self.deadline_ms,
            "decision": pack_decision(self.decision),
            "accepted_ms": self.accepted_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Reservation | None:
        if not d:
            return None
        return cls(
            ResState(d["state"]),
            d["region_id"],
            d.get("business_id", ""),
            d.get("backend_id", ""),
            d.get("deadline_ms", 0),
            unpack_decision(d.get("decision")),
            d.get("accepted_ms", 0),
        )


@dataclass(frozen=True)
class Settings:
    redirect_timeout_ms: int = 10_000
    heartbeat_timeout_ms: int = 5_000
    retry_after_s: int = 5
    #: two RoutingTicks further apart than this (20 tick intervals) mean the pipe was down
    tick_gap_ms: int = 1_000


@dataclass(frozen=True)
class Watch:
    """A region's RoutingTicks as routing read them (table value per region): the last
    tick, and the latest gap in the ticks (`down_ms`: the tick before it, `up_ms`: the
    tick after it; 0 when none was seen)."""

    last_tick_ms: int = 0
    down_ms: int = 0
    up_ms: int = 0

    def after_tick(self, now_ms: int, s: Settings) -> Watch:
        """The watch once a tick of time `now_ms` was read. A tick not later than the last
        one (re-delivered after a restart) changes nothing."""
        if now_ms <= self.last_tick_ms:
            return self
        if self.last_tick_ms and now_ms - self.last_tick_ms > s.tick_gap_ms:
            down = self.last_tick_ms
            if self.up_ms and down < self.up_ms + s.heartbeat_timeout_ms:
                # a gap within the last one's grace: as before that gap, advanced by the
                # time ticks flowed since it (heartbeats had only that long to arrive)
                down = self.down_ms + (self.last_tick_ms - self.up_ms)
            return Watch(now_ms, down, now_ms)
        return Watch(now_ms, self.down_ms, self.up_ms)

    def judged_at(self, now_ms: int, s: Settings) -> int:
        """The time at which an event of time `now_ms` judges liveness and deadlines."""
        if self.up_ms and self.down_ms < now_ms < self.up_ms + s.heartbeat_timeout_ms:
            return self.down_ms  # inside a gap, or its grace: as the region was before it
        if self.last_tick_ms and now_ms - self.last_tick_ms > s.tick_gap_ms:
            return self.last_tick_ms  # no tick since: the pipe may be down right now
        return now_ms

    def to_json(self) -> dict[str, int]:
        return {"last_tick_ms": self.last_tick_ms, "down_ms": self.down_ms, "up_ms": self.up_ms}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Watch:
        if not d:
            return cls()
        return cls(int(d["last_tick_ms"]), int(d.get("down_ms", 0)), int(d.get("up_ms", 0)))


#: no tick read yet: every event is judged at its own time
NO_TICKS = Watch()


HOLDING = frozenset({ResState.RESERVED, ResState.ACCEPTED})
#: terminal states: nothing leaves them (streams/retention.py forgets them later)
FINISHED = frozenset({ResState.REJECTED, ResState.RELEASED})


@dataclass
class Changes:
    """What one event changed (reservations by call id) and what to publish. The load
    per backend is derived from reservations in RESERVED or ACCEPTED (HOLDING)."""

    reservations: dict[str, Reservation] = field(default_factory=dict)
    emits: list[Emit] = field(default_factory=list)


def is_live(heartbeat: dict[str, Any] | None, now_ms: int, s: Settings) -> bool:
    if not heartbeat or heartbeat.get("draining"):
        return False
    seen = int(heartbeat["envelope"]["occurred_at"])
    timeout = max(s.heartbeat_timeout_ms, 3 * int(heartbeat.get("interval_ms") or 1000))
    return now_ms - seen <= timeout


def room(backend: dict[str, Any], heartbeat: dict[str, Any] | None, held: int) -> int:
    """Free slots: the smaller capacity (config, heartbeat) minus the larger use (our
    reservations, the node's own count of calls)."""
    capacity = int(backend["max_concurrent_calls"])
    used = held
    if heartbeat:
        capacity = min(capacity, int(heartbeat.get("capacity", capacity)))
        used = max(used, int(heartbeat.get("active_calls", 0)))
    return capacity - used


def choose_backend(
    admitted: dict[str, Any],
    config: ConfigView,
    heartbeats: Mapping[str, dict[str, Any]],
    load: Mapping[str, int],
    now_ms: int,
    s: Settings,
) -> tuple[dict[str, Any] | None, bool]:
    """(backend record or None, chosen by a bypass rule)."""
    region = admitted["region_id"]

    def usable(b: dict[str, Any] | None) -> bool:
        return bool(
            b
            and b.get("enabled", True)
            and b.get("region_id") == region
            and is_live(heartbeats.get(b["id"]), now_ms, s)
            and room(b, heartbeats.get(b["id"]), load.get(b["id"], 0)) > 0
        )

    for backend_id in config.bypass_backends(admitted["business_id"], admitted.get("phone_id")):
        candidate = config.backend(backend_id)
        if candidate is not None and usable(candidate):
            return candidate, True
    best: tuple[float, str] | None = None
    chosen = None
    for b in config.backends_in(region):
        if not usable(b):
            continue
        hb = heartbeats.get(b["id"])
        cap = min(int(b["max_concurrent_calls"]), int((hb or {}).get("capacity", 1 << 30)))
        busy = (cap - room(b, hb, load.get(b["id"], 0))) / max(cap, 1)
        if best is None or (busy, b["id"]) < best:
            best, chosen = (busy, b["id"]), b
    return chosen, False


def handle(
    name: str,
    event: dict[str, Any],
    reservation: Reservation | None,
    config: ConfigView,
    heartbeats: Mapping[str, dict[str, Any]],
    load: Mapping[str, int],
    s: Settings,
    watch: Watch = NO_TICKS,
) -> Changes:
    """One event from the routing topic (not heartbeats or ticks: see `tick`).

    `load` is the number of calls holding a slot per backend (derived from reservations);
    `watch` is the region's ticks, which say when liveness may be judged.
    """
    call_id = event["envelope"]["call_id"]
    out = Changes()
    if name == "CallAdmitted":
        if reservation is None:
            return _admit(event, config, heartbeats, load, s, watch)
        again = _replace(reservation, step(reservation.state, Input.ADMITTED_AGAIN))
        _moved(out, call_id, reservation, again)
        out.emits = _decision_emits(again) if again.decision else []
        return out
    if name == "CallAccepted":
        if reservation is None:
            return out  # nothing held for it here: nothing to move (module docstring)
        accepted = _replace(reservation, step(reservation.state, Input.ACCEPTED))
        if accepted.state is not reservation.state:  # RESERVED -> ACCEPTED: stamp when
            accepted = dataclasses.replace(
                accepted, accepted_ms=int(event["envelope"]["occurred_at"])
            )
        _moved(out, call_id, reservation, accepted)
        return out
    if name in ("CallEnded", "CallRejected"):
        if reservation is None:  # an end that overtook its admission: remembered
            state = step(None, Input.RELEASE)
            out.reservations[call_id] = Reservation(state, event.get("region_id") or "")
            return out
        _moved(
            out, call_id, reservation, _replace(reservation, step(reservation.state, Input.RELEASE))
        )
        return out
    raise TransitionError(f"routing does not handle {name}")


def _moved(out: Changes, call_id: str, old: Reservation, new: Reservation) -> None:
    if new != old:
        out.reservations[call_id] = new


def takes(state: ResState | None, event: Input) -> bool:
    """Whether the table lists `event` for `state`."""
    return event in TRANSITIONS[state]


def expire(
    call_id: str, reservation: Reservation, now_ms: int, at_ms: int | None = None
) -> Changes:
    """A reservation whose redirect deadline passed (judged at `at_ms`, default `now_ms`):
    free it and end the call (stamped `now_ms`)."""
    at = now_ms if at_ms is None else at_ms
    if not takes(reservation.state, Input.DEADLINE) or at < reservation.deadline_ms:
        return Changes()
    return _system_end(call_id, reservation, Input.DEADLINE, "redirect_timeout", now_ms)


def backend_lost(call_id: str, reservation: Reservation, now_ms: int) -> Changes:
    """The call's node stopped heartbeating: free the slot and end the call."""
    if not takes(reservation.state, Input.BACKEND_LOST):
        return Changes()
    return _system_end(call_id, reservation, Input.BACKEND_LOST, "backend_lost", now_ms)


def tick(
    region_id: str,
    now_ms: int,
    watch: Watch,
    reservations: Callable[[str], Reservation | None],
    index: LoadIndex,
    heartbeats: Mapping[str, dict[str, Any]],
    s: Settings,
    limit: int = 32,
) -> tuple[Watch, Changes]:
    """A RoutingTick of `region_id`: the region's new watch, and what it ends. Redirect
    deadlines due at the judged time (at most `limit` per tick: expirations never stall
    new calls for long), then every call on a backend whose heartbeats stopped.
    `reservations` looks a call's reservation up."""
    watch = watch.after_tick(now_ms, s)
    at = watch.judged_at(now_ms, s)
    out = Changes()
    for call_id in index.due(region_id, at)[:limit]:
        res = reservations(call_id)
        if res is not None:
            _merge(out, expire(call_id, res, now_ms, at))
    for backend_id in lost_backends(index.load, heartbeats, region_id, at, s):
        log.warning("backend %s stopped heartbeating: ending its calls", backend_id)
        for call_id in index.calls_on(backend_id):
            res = reservations(call_id)
            if res is not None and call_id not in out.reservations:
                _merge(out, backend_lost(call_id, res, now_ms))
    return watch, out


def backend_restarted(
    previous: Mapping[str, Any] | None,
    heartbeat: Mapping[str, Any],
    calls_on: Callable[[str], Iterable[str]],
    reservations: Callable[[str], Reservation | None],
) -> Changes:
    """A BackendHeartbeat whose `started_at` is later than the last one's: the node's
    process restarted, and the calls it had accepted before that died with it (its
    SIP dialogs, RTP and agents were in the old process; it cannot end them). End each
    call on the backend accepted before the new start (same clock: the node's), stamped
    with the heartbeat's time. Calls accepted since are the new process's; reserved ones
    may still be taken (the node re-reads its recent assignments) or expire. A restart
    faster than the heartbeat timeout left them held for good before. `calls_on(backend)`
    lists the calls holding a slot on a backend (asked only after a restart)."""
    started = int(heartbeat.get("started_at") or 0)
    before = int((previous or {}).get("started_at") or 0)
    out = Changes()
    if not started or not before or started <= before:
        return out  # the same process, or one that does not say when it started
    now_ms = int(heartbeat["envelope"]["occurred_at"])
    for call_id in sorted(calls_on(str(heartbeat["backend_id"]))):
        res = reservations(call_id)
        if res is None or res.state is not ResState.ACCEPTED or res.accepted_ms >= started:
            continue
        _merge(out, _system_end(call_id, res, Input.BACKEND_LOST, "backend_restarted", now_ms))
    return out


def _merge(out: Changes, more: Changes) -> None:
    out.reservations.update(more.reservations)
    out.emits.extend(more.emits)


def lost_backends(
    load: Mapping[str, int],
    heartbeats: Mapping[str, dict[str, Any]],
    region_id: str,
    now_ms: int,
    s: Settings,
) -> list[str]:
    """Backends of `region_id` holding calls whose heartbeats stopped (draining is not lost)."""
    out = []
    for backend_id, n in sorted(load.items()):
        hb = heartbeats.get(backend_id)
        if n <= 0 or hb is None or hb.get("region_id") != region_id:
            continue
        if not is_live({**hb, "draining": False}, now_ms, s):
            out.append(backend_id)
    return out


def _system_end(
    call_id: str, reservation: Reservation, why: Input, reason: str, now_ms: int
) -> Changes:
    out = Changes()
    new = _replace(reservation, step(reservation.state, why))
    out.reservations[call_id] = new
    if new.state in HOLDING:
        return out
    ended = {
        "envelope": envelope(call_id, PRODUCER, now_ms, derived_id(call_id, reason)),
        "reason": reason,
        "hangup_side": "system",
        "status_code": None,
        "business_id": reservation.business_id,
        "region_id": reservation.region_id,
        "backend_id": reservation.backend_id,
        "setup_ms": None,
        "talk_ms": None,
        "codec": None,
        "media": None,
    }
    out.emits = fan_out(
        ("admission", "call-events"), {"admission": reservation.business_id}, "CallEnded", ended
    )
    log.debug("call %s on %s: %s; slot released", call_id, reservation.backend_id, reason)
    return out


def _admit(
    event: dict[str, Any],
    config: ConfigView,
    heartbeats: Mapping[str, dict[str, Any]],
    load: Mapping[str, int],
    s: Settings,
    watch: Watch,
) -> Changes:
    out = Changes()
    env = event["envelope"]
    call_id, now, cause = env["call_id"], int(env["occurred_at"]), env["event_id"]
    at = watch.judged_at(now, s)
    backend, bypass = choose_backend(event, config, heartbeats, load, at, s)
    if backend is None:
        state = step(None, Input.ADMITTED_FULL)
        rejected = {
            "envelope": envelope(call_id, PRODUCER, now, derived_id(cause, "CallRejected")),
            "stage": "ROUTING",
            "status_code": 503,
            "reason": f"no live backend with room in region {event['region_id']}",
            "retry_after_s": s.retry_after_s,
            "business_id": event["business_id"],
            "region_id": event["region_id"],
            "edge_id": event["edge_id"],
        }
        res = Reservation(
            state,
            event["region_id"],
            event["business_id"],
            decision={"name": "CallRejected", "record": rejected},
        )
        out.reservations[call_id] = res
        out.emits = _decision_emits(res)
        return out
    state = step(None, Input.ADMITTED_ROOM)
    deadline = now + s.redirect_timeout_ms
    routed = {
        "envelope": envelope(call_id, PRODUCER, now, derived_id(cause, "CallRouted")),
        "business_id": event["business_id"],
        "region_id": event["region_id"],
        "backend_id": backend["id"],
        "backend_sip_address": backend["sip_address"],
        "backend_media_url": backend["media_url"],
        "edge_id": event["edge_id"],
        "provider": event.get("provider") or "SIP",  # the media node checks who may claim it
        "bypass": bypass,
        "agent": event.get("agent") or "greeting",
        "agent_options": dict(event.get("agent_options") or {}),
        "provider_call_id": event.get("provider_call_id") or "",
        "redirect_deadline": deadline,
    }
    res = Reservation(
        state,
        event["region_id"],
        event["business_id"],
        backend["id"],
        deadline,
        {"name": "CallRouted", "record": routed},
    )
    out.reservations[call_id] = res
    out.emits = _decision_emits(res)
    return out


def _decision_emits(res: Reservation) -> list[Emit]:
    assert res.decision is not None
    name, record = res.decision["name"], res.decision["record"]
    dests: tuple[Any, ...] = ("decisions", "call-events")
    keys = {"decisions": record["edge_id"]}
    if name == "CallRouted":  # the chosen media node follows its assignments
        dests = ("decisions", "assignments", "call-events")
        keys["assignments"] = record["backend_id"]
    if name == "CallRejected":  # admission must free the plan slot it holds
        dests = ("decisions", "admission", "call-events")
        keys["admission"] = record["business_id"]
    return fan_out(dests, keys, name, record)


def _replace(r: Reservation, state: ResState) -> Reservation:
    """`r` in `state` (from `step`); a RELEASED reservation drops its decision."""
    if state is r.state:
        return r
    return Reservation(
        state,
        r.region_id,
        r.business_id,
        r.backend_id,
        r.deadline_ms,
        r.decision if state is not ResState.RELEASED else None,
        r.accepted_ms,
    )


class LoadIndex:
    """Derived from the reservations table: calls holding a slot per backend, and the
    RESERVED calls per region with their redirect deadlines (for the ticks)."""

    def __init__(self) -> None:
        self.load: dict[str, int] = {}
        self._holder: dict[str, str] = {}  # call id -> backend id
        self._open: dict[str, dict[str, int]] = {}  # region -> call id -> deadline

    def apply(self, call_id: str, old: Reservation | None, new: Reservation | None) -> None:
        backend = self._holder.pop(call_id, None)
        if backend is not None:
            self.load[backend] = self.load.get(backend, 1) - 1
        if old is not None:
            self._open.get(old.region_id, {}).pop(call_id, None)
        if new is None:
            return
        if new.state in HOLDING and new.backend_id:
            self._holder[call_id] = new.backend_id
            self.load[new.backend_id] = self.load.get(new.backend_id, 0) + 1
        if new.state is ResState.RESERVED:
            self._open.setdefault(new.region_id, {})[call_id] = new.deadline_ms

    def calls_on(self, backend_id: str) -> list[str]:
        return sorted(c for c, b in self._holder.items() if b == backend_id)

    def due(self, region_id: str, now_ms: int) -> list[str]:
        """RESERVED calls of a region whose redirect deadline has passed, oldest first."""
        due = [(d, c) for c, d in self._open.get(region_id, {}).items() if d <= now_ms]
        return [c for _, c in sorted(due)]

    def open_calls(self) -> dict[str, dict[str, int]]:
        return {r: dict(c) for r, c in self._open.items() if c}

    def rebuild(self, reservations: Iterable[tuple[str, Reservation | None]]) -> None:
        self.load, self._holder, self._open = {}, {}, {}
        for call_id, res in reservations:
            self.apply(call_id, None, res)
