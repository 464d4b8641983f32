"""The webhook call core: offer -> wait for the decision -> answer. Pure.

Like `edge.sip.redirect` for INVITEs. A provider's inbound webhook becomes CallOffered
to admission (keyed by business; admission copies it to the history), and the request
waits for this edge's decision (CallRouted / CallRejected on its `decisions` partition)
until `decision_timeout`. No decision in time: the provider is told "busy" and
CallEnded(edge_timeout) goes to admission and the history, so whatever was held is
freed. The queue id derives from the provider's call id (`base.call_id_for`), so a
retried webhook, on this edge or after a restart, names the same call: admission sees a
duplicate and replays its decision, and no second call is admitted.

Per call (events not listed raise TransitionError; the state stays):

    (none)     --offer--------> WAITING     CallOffered -> admission
    WAITING    --offer again--> WAITING     a retry waits for the same decision
    WAITING    --decision-----> ANSWERED    every waiting request gets the answer
    WAITING    --deadline-----> TIMED_OUT   answered busy; CallEnded(edge_timeout)
    ANSWERED   --offer again--> ANSWERED    a retry gets the same answer at once
    ANSWERED   --decision-----> ANSWERED    a replayed decision: already answered
    TIMED_OUT  --offer again--> TIMED_OUT   the same busy answer
    TIMED_OUT  --decision-----> TIMED_OUT   too late: the call was already ended

Entries are forgotten `retention` seconds after they were answered; a retry after that
is offered again and gets admission's replayed decision.

Lifecycle reports (status callbacks, hangups) need no state: `on_event` turns each into
CallProgress or CallAnswered (history) or CallEnded (admission and history) with ids
derived from the
provider's event identity, so a retried callback is the same event everywhere and the
machines free slots exactly once (the media node's own CallEnded may arrive too).

Inputs carry `now` (Unix seconds); outputs are Publish (Kafka) and Answer (for the
requests waiting on a call). The I/O lives in `edge.webhook.service`.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.webhook.base import (
    CallEvent,
    Decision,
    InboundCall,
    OutboundEvent,
    Progress,
    Provider,
    Refused,
    Routed,
    WebhookError,
)
from trunkline.core.events import Destination, derived_id, envelope, transition

log = logging.getLogger("trunkline.webhook.calls")


class CallState(enum.Enum):
    WAITING = "WAITING"
    ANSWERED = "ANSWERED"
    TIMED_OUT = "TIMED_OUT"


class Input(enum.Enum):
    OFFER = "offer"
    OFFER_AGAIN = "offer again"
    DECISION = "decision"
    DEADLINE = "deadline"


TRANSITIONS: dict[CallState | None, dict[Input, CallState]] = {
    None: {Input.OFFER: CallState.WAITING},
    CallState.WAITING: {
        Input.OFFER_AGAIN: CallState.WAITING,
        Input.DECISION: CallState.ANSWERED,
        Input.DEADLINE: CallState.TIMED_OUT,
    },
    CallState.ANSWERED: {
        Input.OFFER_AGAIN: CallState.ANSWERED,
        Input.DECISION: CallState.ANSWERED,
    },
    CallState.TIMED_OUT: {
        Input.OFFER_AGAIN: CallState.TIMED_OUT,
        Input.DECISION: CallState.TIMED_OUT,
    },
}


def step(state: CallState | None, event: Input) -> CallState:
    return transition(TRANSITIONS, state, event, "webhook call")


@dataclass(frozen=True)
class NumberEntry:
    """A provider number from the numbers config."""

    phone_id: str
    business_id: str
    account_id: str


@dataclass(frozen=True)
class Publish:
    dest: Destination
    key: str
    name: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Wait:
    """The request must wait for this call's answer."""

    call_id: str


@dataclass(frozen=True)
class Answer:
    """This call's answer is known: every request waiting on it gets it."""

    call_id: str
    decision: Decision


Out = Publish | Wait | Answer


@dataclass(frozen=True)
class Entry:
    state: CallState
    call: InboundCall
    business_id: str
    deadline: float
    decision: Decision | None = None
    forget_at: float = 0.0


@dataclass
class WebhookCalls:
    edge_id: str
    directory: Callable[[Provider, str], NumberEntry | None] = lambda provider, number: None
    decision_timeout: float = 5.0
    retention: float = 600.0
    entries: dict[str, Entry] = field(default_factory=dict)
    # (time, call id): decision deadlines and forget times; stale entries are skipped
    _timers: list[tuple[float, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"WebhookCalls({self.edge_id!r}, {len(self.entries)} calls)"

    # -- offers ----------------------------------------------------------------------
    def number_for(self, provider: Provider, account_id: str, number: str) -> NumberEntry:
        """The configured number a call is for, or 404 (nothing is published)."""
        entry = self.directory(provider, number)
        if entry is None or entry.account_id != account_id:
            raise WebhookError(
                404,
                f"number {number or '(none)'} is not configured for "
                f"{provider.title} account {account_id}",
                "unknown_number",
            )
        return entry

    def offer(self, call: InboundCall, now: float) -> list[Out]:
        entry = self.entries.get(call.call_id)
        if entry is not None:
            state = step(entry.state, Input.OFFER_AGAIN)
            if state is CallState.WAITING:
                return [Wait(call.call_id)]
            assert entry.decision is not None
            return [Answer(call.call_id, entry.decision)]
        number = self.number_for(call.provider, call.account_id, call.to_number)
        state = step(None, Input.OFFER)
        deadline = now + self.decision_timeout
        self.entries[call.call_id] = Entry(state, call, number.business_id, deadline)
        heapq.heappush(self._timers, (deadline, call.call_id))
        offered: dict[str, Any] = {
            "envelope": envelope(
                call.call_id, self.edge_id, int(now * 1000), derived_id(call.call_id, "CallOffered")
            ),
            "provider": call.provider.value,
            "provider_call_id": call.provider_call_id,
            "direction": "INBOUND",
            "business_id": number.business_id,
            "phone_id": number.phone_id,
            "to_number": call.to_number,
            "from_number": call.from_number,
            "source_ip": call.source_ip,
            "source_port": 0,
            "transport": "HTTPS",
            "offered_codecs": [],
            "edge_id": self.edge_id,
            "provider_account_id": call.account_id,
        }
        log.debug(
            "call %s: %s %s offered (%s -> %s)",
            call.call_id,
            call.provider.title,
            call.provider_call_id,
            call.from_number,
            call.to_number,
        )
        # admission copies the offer to the history (call-events) with its decision
        return [
            Publish("admission", number.business_id, "CallOffered", offered),
            Wait(call.call_id),
        ]

    def answer_of(self, call_id: str) -> Decision | None:
        entry = self.entries.get(call_id)
        return entry.decision if entry is not None else None

    # -- decisions -------------------------------------------------------------------
    def on_decision(self, name: str, record: dict[str, Any], now: float) -> list[Out]:
        call_id = record["envelope"]["call_id"]
        entry = self.entries.get(call_id)
        if entry is None:
            return []  # not a call of ours (a SIP edge's id? a forgotten call)
        state = step(entry.state, Input.DECISION)
        if entry.state is not CallState.WAITING:
            return []
        decision: Decision
        if name == "CallRouted":
            decision = Routed(call_id, record["backend_media_url"], record["backend_id"])
        elif name == "CallRejected":
            decision = Refused(call_id, int(record["status_code"]), str(record["reason"]))
        else:
            log.warning("call %s: unexpected decision %s", call_id, name)
            return []
        self._settle(entry, state, decision, now)
        log.debug("call %s: %s -> %s (%s)", call_id, entry.state.value, state.value, name)
        return [Answer(call_id, decision)]

    def _settle(self, entry: Entry, state: CallState, decision: Decision, now: float) -> None:
        forget = now + self.retention
        call_id = entry.call.call_id
        self.entries[call_id] = Entry(
            state, entry.call, entry.business_id, entry.deadline, decision, forget
        )
        heapq.heappush(self._timers, (forget, call_id))

    # -- time ------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def expire(self, now: float) -> list[Out]:
        out: list[Out] = []
        while self._timers and self._timers[0][0] <= now:
            _, call_id = heapq.heappop(self._timers)
            entry = self.entries.get(call_id)
            if entry is None:
                continue
            if entry.state is CallState.WAITING and entry.deadline <= now:
                state = step(entry.state, Input.DEADLINE)
                reason = f"no routing decision within {self.decision_timeout:g}s"
                decision = Refused(call_id, 503, reason)
                self._settle(entry, state, decision, now)
                log.warning("call %s: %s", call_id, reason)
                out.append(Answer(call_id, decision))
                ended = self._ended_record(
                    call_id, entry.business_id, now, derived_id(call_id, "edge_timeout")
                )
                ended.update(reason="edge_timeout", hangup_side="system", status_code=503)
                out += self._end(call_id, entry.business_id, ended)
            elif entry.state is not CallState.WAITING and entry.forget_at <= now:
                del self.entries[call_id]
        return out

    # -- lifecycle reports -------------------------------------------------------------
    def on_event(self, event: CallEvent, now: float) -> list[Publish]:
        """A status callback or hangup: CallProgress or CallAnswered (history), CallEnded
        (admission and history)."""
        call_id = event.call_id
        entry = self.entries.get(call_id)
        if event.progress is Progress.COST:  # after the call: the history only
            cost = {
                "envelope": envelope(
                    call_id,
                    self.edge_id,
                    int(now * 1000),
                    derived_id(call_id, f"{event.provider.value}/{event.event_key}"),
                ),
                "provider": event.provider.value,
                "provider_call_id": event.provider_call_id,
                "provider_account_id": event.account_id,
                "business_id": entry.business_id if entry is not None else None,
                "cost": event.cost or "0",
                "currency": event.currency,
                "billed_seconds": event.billed_seconds,
            }
            return [Publish("call-events", call_id, "CallCost", cost)]
        if entry is not None:
            business_id = entry.business_id
        else:  # answered by another edge or before a restart: the number says whose
            business_id = self.number_for(
                event.provider, event.account_id, event.to_number
            ).business_id
        event_id = derived_id(call_id, f"{event.provider.value}/{event.event_key}")
        at_ms = int(now * 1000)
        if event.progress is Progress.PROGRESS:
            progress = {
                "envelope": envelope(call_id, self.edge_id, at_ms, event_id),
                "provider": event.provider.value,
                "provider_call_id": event.provider_call_id,
                "provider_status": event.status,
                "business_id": business_id,
            }
            return [Publish("call-events", call_id, "CallProgress", progress)]
        if event.progress is Progress.ANSWERED:
            routed = entry.decision if entry is not None else None
            answered = {
                "envelope": envelope(call_id, self.edge_id, at_ms, event_id),
                "backend_id": routed.backend_id if isinstance(routed, Routed) else "",
                "codec": "",
                "provider": event.provider.value,
                "provider_call_id": event.provider_call_id,
                "provider_status": event.status,
            }
            return [Publish("call-events", call_id, "CallAnswered", answered)]
        ended = self._ended_record(call_id, business_id, now, event_id)
        ended.update(
            reason=event.reason,
            hangup_side=event.hangup_side,
            provider=event.provider.value,
            provider_call_id=event.provider_call_id,
            hangup_cause=event.status,
            provider_duration_ms=event.duration_ms,
        )
        if event.mos is not None:
            ended["media"] = {
                "packets_sent": 0,
                "packets_received": 0,
                "packets_lost": 0,
                "jitter_ms": 0.0,
                "mos": event.mos,
            }
        return self._end(call_id, business_id, ended)

    def on_outbound(self, event: OutboundEvent, now: float) -> list[Publish]:
        """A report for a call our dialers placed: to the dialer that owns it (its key of
        the outbound journal), which decides progress, failover or the end."""
        report = {
            "envelope": envelope(
                event.call_id,
                self.edge_id,
                int(now * 1000),
                derived_id(event.call_id, f"{event.provider.value}/{event.event_key}"),
            ),
            "dialer_id": event.dialer_id,
            "attempt": event.attempt,
            "provider": event.provider.value,
            "account_id": event.account_id,
            "provider_call_id": event.provider_call_id,
            "status": event.status,
            "progress": event.progress,
            "reason": event.reason,
            "sip_code": event.sip_code,
            "hangup_side": event.hangup_side,
            "duration_ms": event.duration_ms,
            "mos": event.mos,
        }
        return [Publish("outbound", event.dialer_id, "OutboundReport", report)]

    def _ended_record(
        self, call_id: str, business_id: str, now: float, event_id: str
    ) -> dict[str, Any]:
        return {
            "envelope": envelope(call_id, self.edge_id, int(now * 1000), event_id),
            "reason": "completed",
            "hangup_side": None,
            "status_code": None,
            "business_id": business_id,
            "region_id": None,
            "backend_id": None,
            "setup_ms": None,
            "talk_ms": None,
            "codec": None,
            "media": None,
        }

    def _end(self, call_id: str, business_id: str, ended: dict[str, Any]) -> list[Publish]:
        return [
            Publish("admission", business_id, "CallEnded", ended),
            Publish("call-events", call_id, "CallEnded", ended),
        ]
