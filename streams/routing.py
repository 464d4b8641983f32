"""Routing: which backend takes this admitted call? (keyed by region id)

The single writer of each region's backend capacity. A backend is live while its last
BackendHeartbeat is younger than `heartbeat_timeout_ms`; its room is
min(configured max, heartbeat capacity) minus max(our reservations, its reported calls).
Admin bypass rules (number rules first, then business rules) pick their backend when it
is live, in the call's region, and has room; otherwise the least loaded live backend of
the region wins (ties by id). No backend -> CallRejected 503 with Retry-After.

Reservation transitions (events not listed raise TransitionError; the state stays):

    (none)    --admitted, room-----> RESERVED   CallRouted -> edge (302)
    (none)    --admitted, no room--> REJECTED   CallRejected 503 -> edge, admission
    (none)    --release------------> RELEASED   an end that overtook its admission
    RESERVED  --admitted-----------> RESERVED   duplicate: CallRouted again
    RESERVED  --accepted-----------> ACCEPTED   the backend took the redirected call
    RESERVED  --release------------> RELEASED   free the backend slot
    RESERVED  --deadline-----------> RELEASED   no backend took it: CallEnded redirect_timeout
    RESERVED  --backend lost-------> RELEASED   its node stopped heartbeating: CallEnded
    ACCEPTED  --backend lost-------> RELEASED     backend_lost (the node cannot end it itself)
    ACCEPTED  --admitted-----------> ACCEPTED   duplicate
    ACCEPTED  --accepted-----------> ACCEPTED   duplicate
    ACCEPTED  --release------------> RELEASED   the call ended: free the slot
    REJECTED  --admitted/release---> REJECTED   nothing held
    RELEASED  --any----------------> RELEASED   released exactly once
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
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

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "region_id": self.region_id,
            "business_id": self.business_id,
            "backend_id": self.backend_id,
            "deadline_ms": self.deadline_ms,
            "decision": pack_decision(self.decision),
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
        )


@dataclass(frozen=True)
class Settings:
    redirect_timeout_ms: int = 10_000
    heartbeat_timeout_ms: int = 5_000
    retry_after_s: int = 5


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
) -> Changes:
    """One event from the routing topic (not heartbeats: the agent stores those).

    `load` is the number of calls holding a slot per backend (derived from reservations).
    """
    call_id = event["envelope"]["call_id"]
    out = Changes()
    if name == "CallAdmitted":
        if reservation is not None:
            step(reservation.state, Input.ADMITTED_AGAIN)
            if reservation.decision and reservation.state in (
                ResState.RESERVED,
                ResState.ACCEPTED,
                ResState.REJECTED,
            ):
                out.emits = _decision_emits(reservation)
            return out
        return _admit(event, config, heartbeats, load, s)
    if name == "CallAccepted":
        if reservation is None:
            return out  # accepted without a reservation of ours: nothing to hold
        new = step(reservation.state, Input.ACCEPTED)
        if new is not reservation.state:
            out.reservations[call_id] = _replace(reservation, new)
        return out
    if name in ("CallEnded", "CallRejected"):
        new = step(reservation.state if reservation else None, Input.RELEASE)
        if reservation is None:
            out.reservations[call_id] = Reservation(ResState.RELEASED, event.get("region_id") or "")
            return out
        if new is not reservation.state:
            out.reservations[call_id] = _replace(reservation, new)
        return out
    raise TransitionError(f"routing does not handle {name}")


def expire(call_id: str, reservation: Reservation, now_ms: int) -> Changes:
    """A reservation whose redirect deadline passed: free it and end the call."""
    if reservation.state is not ResState.RESERVED or now_ms < reservation.deadline_ms:
        return Changes()
    return _system_end(call_id, reservation, Input.DEADLINE, "redirect_timeout", now_ms)


def backend_lost(call_id: str, reservation: Reservation, now_ms: int) -> Changes:
    """The call's node stopped heartbeating: free the slot and end the call."""
    if reservation.state not in HOLDING:
        return Changes()
    return _system_end(call_id, reservation, Input.BACKEND_LOST, "backend_lost", now_ms)


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
    step(reservation.state, why)
    out.reservations[call_id] = _replace(reservation, ResState.RELEASED)
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
) -> Changes:
    out = Changes()
    env = event["envelope"]
    call_id, now, cause = env["call_id"], int(env["occurred_at"]), env["event_id"]
    backend, bypass = choose_backend(event, config, heartbeats, load, now, s)
    if backend is None:
        step(None, Input.ADMITTED_FULL)
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
            ResState.REJECTED,
            event["region_id"],
            event["business_id"],
            decision={"name": "CallRejected", "record": rejected},
        )
        out.reservations[call_id] = res
        out.emits = _decision_emits(res)
        return out
    step(None, Input.ADMITTED_ROOM)
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
        ResState.RESERVED,
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
    return Reservation(
        state,
        r.region_id,
        r.business_id,
        r.backend_id,
        r.deadline_ms,
        r.decision if state is not ResState.RELEASED else None,
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
