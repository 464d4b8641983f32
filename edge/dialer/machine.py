"""The dialer's failover machine: one outbound call from the API's request to its end,
through one provider after the other. Pure: every input carries `now` (Unix seconds),
outputs are actions the I/O layer (`edge.dialer.service`) carries out.

Per call (inputs not listed raise TransitionError; the state stays):

    (none)      --request-----> REQUESTED    wait for admission and routing
    REQUESTED   --routed------> ATTEMPTING   attempt 0: Dial
    REQUESTED   --refused-----> REFUSED      the API answers the refusal; nothing is dialed
    REQUESTED   --deadline----> FAILED       no decision in time: CallEnded(edge_timeout)
    ATTEMPTING  --taken-------> ATTEMPTING   the provider took the request (the API's 201)
    ATTEMPTING  --progress----> ATTEMPTING   queued / initiated
    ATTEMPTING  --unclear-----> CHECKING     no answer to create-call: the call may exist
    CHECKING    --taken-------> ATTEMPTING   it exists (found, or Telnyx's repeat answered)
    CHECKING    --progress----> ATTEMPTING   a report proves it exists
    ATTEMPTING  --failover----> ATTEMPTING   attempt i+1 (retryable failure, a provider left)
    CHECKING    --failover----> ATTEMPTING   not found: attempt i+1
    ATTEMPTING  --exhausted---> FAILED       retryable, but no provider left
    CHECKING    --exhausted---> FAILED
    ATTEMPTING  --final-------> FAILED       not retryable (the number is invalid...)
    ATTEMPTING  --ringing-----> RINGING
    CHECKING    --ringing-----> RINGING
    ATTEMPTING  --answered----> ANSWERED
    CHECKING    --answered----> ANSWERED
    ATTEMPTING  --callee end--> ENDED        busy, no-answer, rejected, a SIP 404/486...
    CHECKING    --callee end--> ENDED
    ATTEMPTING  --deadline----> ENDED        rang past its timeout with no report: hang up
    CHECKING    --deadline----> ENDED
    RINGING     --taken/progress/ringing--> RINGING   (reports overtake the HTTP answer)
    RINGING     --answered----> ANSWERED
    RINGING     --failover----> ATTEMPTING   SIP 408/500/503/504 before any answer: next
    RINGING     --exhausted---> FAILED
    RINGING     --callee end--> ENDED
    RINGING     --deadline----> ENDED
    ANSWERED    --taken/progress/ringing/answered--> ANSWERED   (late, out of order)
    ANSWERED    --hangup------> ENDED        CallEnded(completed...)
    ENDED, FAILED, REFUSED --any report--> the same   (late reports and repeats)

Classification happens before the table (`classify_report`, `after_failure`): a failed
attempt is `failover` when it is retryable and another provider is left, `exhausted`
when none is, `final` when no other provider would do better; a provider's end before
any answer is `failover` only for an infrastructure cause (SIP 408/500/503/504, whatever
status the provider gives it), else `callee end`. After an answer nothing fails over.

What leaves: an attempt's start re-announces the call to its media node (CallRouted on
`assignments`, with this attempt's provider, since a node lets only the call's provider
claim it); the routed decision tells routing the dialer took the call (CallAccepted, so
the redirect deadline does not end a call whose phone is still ringing); each attempt is
OutboundAttempt or OutboundAttemptFailed in the history; the call's end is one CallEnded
to admission (which frees the plan slot once, and routing's through it). Only the last
attempt's failure is the call's outcome. Everything the history gets also goes to the
dialer's journal (the `outbound` topic under the dialer's id), from which `Dialer.replay`
rebuilds the calls after a restart and `resume` says what to do next.

Reports and results for an attempt that is no longer the current one change nothing; an
old attempt that rings or answers anyway (a timed-out request that created a call after
all) is hung up.

After a restart the journal is a prefix of what happened (its last records may have been
lost with the process), so every attempt of a resumed call that was not placed is
checked instead of sent: Telnyx's check repeats the request with the same command_id
(it places the call if the first never arrived), Twilio's and Vonage's look the call up
and move on when they find none. A crash can cost a call a provider; it never makes two.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from trunkline.core.events import derived_id, envelope, transition

log = logging.getLogger("trunkline.dialer")

#: SIP causes of an asynchronous failure that another provider may not have
INFRA_SIP = frozenset({408, 500, 503, 504})
#: an attempt may ring this long past its ring timeout before the dialer gives up on
#: reports that never came (the provider's own no-answer normally arrives first)
RING_GRACE_S = 30.0
#: an answered call whose end no provider report brings is forgotten after this long (the
#: media node's own CallEnded frees its slots when the stream closes)
MAX_CALL_S = 4 * 3600.0


class State(enum.Enum):
    REQUESTED = "requested"
    ATTEMPTING = "attempting"
    CHECKING = "checking"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"
    FAILED = "failed"
    REFUSED = "refused"


FINISHED = frozenset({State.ENDED, State.FAILED, State.REFUSED})


class Input(enum.Enum):
    REQUEST = "request"
    ROUTED = "routed"
    REFUSED = "refused"
    TAKEN = "taken"
    PROGRESS = "progress"
    UNCLEAR = "unclear"
    FAILOVER = "failover"
    EXHAUSTED = "exhausted"
    FINAL = "final"
    RINGING = "ringing"
    ANSWERED = "answered"
    CALLEE_END = "callee end"
    HANGUP = "hangup"
    DEADLINE = "deadline"


_S, _I = State, Input
_LATE = {
    i: None for i in (_I.TAKEN, _I.PROGRESS, _I.RINGING, _I.ANSWERED, _I.CALLEE_END, _I.HANGUP)
}
TRANSITIONS: dict[State | None, dict[Input, State]] = {
    None: {_I.REQUEST: _S.REQUESTED},
    _S.REQUESTED: {_I.ROUTED: _S.ATTEMPTING, _I.REFUSED: _S.REFUSED, _I.DEADLINE: _S.FAILED},
    _S.ATTEMPTING: {
        _I.TAKEN: _S.ATTEMPTING,
        _I.PROGRESS: _S.ATTEMPTING,
        _I.UNCLEAR: _S.CHECKING,
        _I.FAILOVER: _S.ATTEMPTING,
        _I.EXHAUSTED: _S.FAILED,
        _I.FINAL: _S.FAILED,
        _I.RINGING: _S.RINGING,
        _I.ANSWERED: _S.ANSWERED,
        _I.CALLEE_END: _S.ENDED,
        _I.DEADLINE: _S.ENDED,
    },
    _S.CHECKING: {
        _I.TAKEN: _S.ATTEMPTING,
        _I.PROGRESS: _S.ATTEMPTING,
        _I.FAILOVER: _S.ATTEMPTING,
        _I.EXHAUSTED: _S.FAILED,
        _I.RINGING: _S.RINGING,
        _I.ANSWERED: _S.ANSWERED,
        _I.CALLEE_END: _S.ENDED,
        _I.DEADLINE: _S.ENDED,
    },
    _S.RINGING: {
        _I.TAKEN: _S.RINGING,
        _I.PROGRESS: _S.RINGING,
        _I.RINGING: _S.RINGING,
        _I.ANSWERED: _S.ANSWERED,
        _I.FAILOVER: _S.ATTEMPTING,
        _I.EXHAUSTED: _S.FAILED,
        _I.CALLEE_END: _S.ENDED,
        _I.DEADLINE: _S.ENDED,
    },
    _S.ANSWERED: {
        _I.TAKEN: _S.ANSWERED,
        _I.PROGRESS: _S.ANSWERED,
        _I.RINGING: _S.ANSWERED,
        _I.ANSWERED: _S.ANSWERED,
        _I.HANGUP: _S.ENDED,
    },
    **{s: {i: s for i in _LATE} for s in (_S.ENDED, _S.FAILED, _S.REFUSED)},
}


def step(state: State | None, event: Input) -> State:
    return transition(TRANSITIONS, state, event, "outbound call")


# -- what comes in ----------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as the history records it (OutboundAttemptFailed)."""

    reason: str  # connect_error, timeout, http_429, http_5xx, auth, invalid_number...
    retryable: bool  # another provider may succeed
    detail: str = ""
    http_status: int | None = None
    code: str | None = None  # the provider's error code, or a SIP cause
    provider_call_id: str = ""


@dataclass(frozen=True)
class Report:
    """A provider's status report for one attempt (an OutboundReport record)."""

    attempt: int
    provider_call_id: str
    status: str
    progress: Literal["PROGRESS", "RINGING", "ANSWERED", "ENDED"]
    event_id: str
    reason: str = "completed"
    sip_code: int | None = None
    hangup_side: str | None = None
    duration_ms: int | None = None
    mos: float | None = None


# -- what goes out ----------------------------------------------------------------------
Dest = Literal["admission", "routing", "assignments", "call-events", "outbound"]


@dataclass(frozen=True)
class Publish:
    dests: tuple[Dest, ...]
    key: str  # the key on the first non-history destination (call-events: the call id)
    name: str
    record: dict[str, Any]
    keys: Mapping[str, str] = field(default_factory=dict)  # dest -> key, where it differs


@dataclass(frozen=True)
class Dial:
    """Send attempt `attempt`'s create-call request (or, `check`, resolve its timeout:
    Telnyx repeats it with the same command_id, Twilio and Vonage look the call up)."""

    call_id: str
    attempt: int
    check: bool = False


@dataclass(frozen=True)
class Hangup:
    """Hang up a provider call this dialer no longer wants (best effort)."""

    call_id: str
    attempt: int
    provider_call_id: str


@dataclass(frozen=True)
class Reply:
    """The API's answer for this call is known (the first that applies)."""

    call_id: str
    outcome: Literal["placed", "refused", "failed"]
    status: int  # placed: 201; refused: the decision's SIP-style code; failed: HTTP
    reason: str
    retry_after_s: int | None = None
    field: str = ""  # the request field a failure is about (e.g. "to")
    code: str | None = None


Action = Publish | Dial | Hangup | Reply


@dataclass(frozen=True)
class Attempt:
    account_id: str
    provider: str  # TWILIO, TELNYX, VONAGE
    from_number: str


@dataclass(frozen=True)
class Call:
    """One outbound call as the dialer holds it."""

    call_id: str
    state: State
    request: Mapping[str, Any]  # the OutboundCallRequested record
    attempts: tuple[Attempt, ...]
    current: int = 0  # the attempt in progress (or the last one)
    routed: Mapping[str, Any] | None = None  # the CallRouted decision
    provider_call_id: str = ""  # the current attempt's
    placed: bool = False  # a provider took the request (the API answered 201)
    replied: bool = False
    deadline: float | None = None
    old_calls: tuple[tuple[int, str], ...] = ()  # (attempt, provider call id) given up on
    tried: tuple[Mapping[str, Any], ...] = ()  # each attempt's outcome, for the API
    #: rebuilt after a restart and not placed yet: the journal is a prefix of what
    #: happened, so any later attempt may have been sent; each one is checked, never sent
    resumed: bool = False

    @property
    def business_id(self) -> str:
        return str(self.request["business_id"])

    def __repr__(self) -> str:
        return f"Call({self.call_id}, {self.state.value}, attempt {self.current})"


def plan_attempts(request: Mapping[str, Any], kinds: Mapping[str, str]) -> tuple[Attempt, ...]:
    """The attempts of a request: its providers in order, each with the business's
    number on that account (the first uses fromNumberId's own number)."""
    numbers = dict(request.get("from_numbers") or {})
    out = []
    for account_id in request["providers"]:
        kind = kinds.get(account_id)
        number = numbers.get(account_id)
        if kind and number:
            out.append(Attempt(account_id, kind, number))
    return tuple(out)


def classify_report(call: Call, report: Report) -> Input:
    """The table input a provider report is for this call."""
    if report.progress == "PROGRESS":
        return Input.PROGRESS
    if report.progress == "RINGING":
        return Input.RINGING
    if report.progress == "ANSWERED":
        return Input.ANSWERED
    if call.state is State.ANSWERED:
        return Input.HANGUP
    if report.sip_code in INFRA_SIP:  # whatever the provider calls it: not the callee
        return after_failure(call, retryable=True)
    return Input.CALLEE_END


def after_failure(call: Call, retryable: bool) -> Input:
    if not retryable:
        return Input.FINAL
    return Input.FAILOVER if call.current + 1 < len(call.attempts) else Input.EXHAUSTED


@dataclass
class Dialer:
    """Every outbound call this dialer holds, by queue id, and their timers."""

    dialer_id: str
    decision_timeout: float = 5.0
    retention: float = 600.0
    calls: dict[str, Call] = field(default_factory=dict)
    #: the API's answer per call, once known (a repeated request gets it again)
    replies: dict[str, Reply] = field(default_factory=dict)
    _timers: list[tuple[float, str]] = field(default_factory=list)
    _forget: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Dialer({self.dialer_id!r}, {len(self.calls)} calls)"

    # -- inputs ------------------------------------------------------------------------
    def request(
        self, request: Mapping[str, Any], kinds: Mapping[str, str], now: float
    ) -> list[Action]:
        """A new request (the API published it to admission and to the journal)."""
        call_id = request["envelope"]["call_id"]
        if call_id in self.calls:
            return []
        state = step(None, Input.REQUEST)
        call = Call(call_id, state, dict(request), plan_attempts(request, kinds))
        self._put(call, now + self.decision_timeout)
        return []

    def decision(self, name: str, record: Mapping[str, Any], now: float) -> list[Action]:
        """CallRouted / CallRejected for one of our calls (others are ignored)."""
        call = self.calls.get(record["envelope"]["call_id"])
        if call is None or call.state is not State.REQUESTED:
            return []  # not ours, or a replayed decision for a call already going
        if name == "CallRejected":
            state = step(call.state, Input.REFUSED)
            self._finish(replace(call, state=state, replied=True), now)
            return [
                self._reply(
                    Reply(
                        call.call_id,
                        "refused",
                        int(record["status_code"]),
                        str(record["reason"]),
                        record.get("retry_after_s"),
                    )
                )
            ]
        if name != "CallRouted":
            return []
        state = step(call.state, Input.ROUTED)
        call = replace(call, state=state, routed=dict(record), current=0)
        # the dialer now carries the call: routing stops waiting for its redirect; the
        # journal keeps the decision for a restart
        out: list[Action] = [
            self._accepted(call, now),
            Publish(("outbound",), self.dialer_id, "CallRouted", dict(record)),
        ]
        if not call.attempts:
            return out + self._fail(call, Failure("no_provider", False, "no usable provider"), now)
        return out + self._start(call, now)

    def result(
        self, call_id: str, attempt: int, outcome: str | Failure, now: float, lookup: bool = False
    ) -> list[Action]:
        """A create-call request's result: a provider call id (taken), "unclear" (no
        answer in time), or a Failure."""
        call = self.calls.get(call_id)
        if call is None or attempt != call.current or call.state in FINISHED:
            if isinstance(outcome, str) and outcome not in ("", "unclear") and call is not None:
                return [Hangup(call_id, attempt, outcome)]  # a call we gave up on exists
            return []
        if call.placed and (outcome == "unclear" or isinstance(outcome, Failure)):
            return []  # a report already proved the call exists
        if outcome == "unclear":
            state = step(call.state, Input.UNCLEAR)
            self._put(replace(call, state=state), call.deadline)
            return [Dial(call_id, attempt, check=True)]
        if isinstance(outcome, Failure):
            return self._failed(call, outcome, now)
        state = step(call.state, Input.TAKEN)
        if call.placed:  # a report proved the call first: already recorded
            self._put(replace(call, state=state), call.deadline)
            return []
        return self._taken(replace(call, state=state), outcome, now, lookup)

    def report(self, call_id: str, report: Report, now: float) -> list[Action]:
        """A provider's report for one attempt of a call of ours."""
        call = self.calls.get(call_id)
        if call is None:
            return []
        if report.attempt != call.current:
            if report.progress in ("RINGING", "ANSWERED") and report.provider_call_id:
                return [Hangup(call_id, report.attempt, report.provider_call_id)]
            return []  # an attempt given up on: its end changes nothing
        what = classify_report(call, report)
        state = step(call.state, what)
        if call.state in FINISHED:
            return []  # a late report or a repeat
        if what is Input.FAILOVER or what is Input.EXHAUSTED:
            failure = Failure(
                "provider_failed",
                True,
                f"{report.status} (SIP {report.sip_code})",
                None,
                str(report.sip_code),
                report.provider_call_id,
            )
            return self._failed(call, failure, now)
        out: list[Action] = []
        if not call.placed and report.provider_call_id:
            # the report proves the call exists: it overtook the HTTP answer, or the
            # request timed out and the call was created after all
            out += self._taken(call, report.provider_call_id, now, False)
            call = self.calls[call_id]
        call = replace(call, state=state)
        out += self._history(call, report, now)
        if state is State.ENDED:
            self._finish(call, now)
            return out + self._end(call, report, now)
        if state is State.ANSWERED:  # the media node carries it now; no ring deadline
            self._put(call, None)
            self._forget[call_id] = now + MAX_CALL_S  # in case its end is never reported
            heapq.heappush(self._timers, (now + MAX_CALL_S, call_id))
            return out
        self._put(call, call.deadline)
        return out

    def expire(self, now: float) -> list[Action]:
        out: list[Action] = []
        while self._timers and self._timers[0][0] <= now:
            _, call_id = heapq.heappop(self._timers)
            forget = self._forget.get(call_id)
            if forget is not None and forget <= now:
                self.calls.pop(call_id, None)
                self.replies.pop(call_id, None)
                del self._forget[call_id]
                continue
            call = self.calls.get(call_id)
            if call is None or call.deadline is None or call.deadline > now:
                continue
            out += self._deadline(call, now)
        return out

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    # -- after a restart -----------------------------------------------------------------
    def replay(
        self, name: str, record: Mapping[str, Any], kinds: Mapping[str, str], now: float
    ) -> None:
        """Apply one record of this dialer's journal (oldest first), acting on nothing."""
        call_id = record["envelope"]["call_id"]
        if name == "OutboundCallRequested":
            self.request(record, kinds, now)
            return
        call = self.calls.get(call_id)
        if call is None:
            return
        if name == "CallEnded":
            self._finish(replace(call, state=State.ENDED), now)
        elif name == "CallRouted":
            self.decision(name, record, now)
        elif name == "OutboundAttempt":
            if call.state is State.REQUESTED:  # the routed copy was lost: it was routed
                self.calls[call_id] = replace(call, state=State.ATTEMPTING, routed={})
            self.result(call_id, int(record["attempt"]), record["provider_call_id"] or "?", now)
        elif name == "OutboundAttemptFailed":
            if call.state is State.REQUESTED:
                self.calls[call_id] = replace(call, state=State.ATTEMPTING, routed={})
            # an asynchronous failure was already replayed from its report (the attempt
            # is no longer current then, and this changes nothing)
            failure = Failure(record["reason"], bool(record["retryable"]))
            self.result(call_id, int(record["attempt"]), failure, now)
        elif name == "OutboundReport":
            self.report(call_id, report_from_record(record), now)

    def resume(self, now: float) -> list[Action]:
        """What to do for the calls replay left unfinished: a call waiting for its
        decision asks admission again (it replays its decision; a call it no longer
        holds ends at the decision deadline); an attempt whose result never reached
        the journal is checked (it may exist); the others wait for their reports."""
        out: list[Action] = []
        for call in list(self.calls.values()):
            if call.state is State.REQUESTED:
                self._put(replace(call, resumed=True), now + self.decision_timeout)
                out.append(
                    Publish(
                        ("admission",),
                        call.business_id,
                        "OutboundCallRequested",
                        dict(call.request),
                    )
                )
            elif call.state is State.ATTEMPTING and not call.placed:
                self._put(replace(call, state=State.CHECKING, resumed=True), call.deadline)
                out.append(Dial(call.call_id, call.current, check=True))
            if call.routed and call.state not in FINISHED:  # idempotent at routing
                out.insert(0, self._accepted(call, now))
        return out

    # -- helpers -------------------------------------------------------------------------
    @property
    def _producer(self) -> str:
        return self.dialer_id

    def _accepted(self, call: Call, now: float) -> Publish:
        """CallAccepted to routing: the dialer carries the call from here (same id each
        time: routing takes it once)."""
        routed = call.routed or {}
        accepted = {
            "envelope": envelope(
                call.call_id, self._producer, _ms(now), derived_id(call.call_id, "dialer/accepted")
            ),
            "backend_id": routed["backend_id"],
            "region_id": routed["region_id"],
            "agent": routed.get("agent") or "",
        }
        return Publish(("routing",), routed["region_id"], "CallAccepted", accepted)

    def _reply(self, reply: Reply) -> Reply:
        self.replies[reply.call_id] = reply
        return reply

    def _put(self, call: Call, deadline: float | None) -> None:
        call = replace(call, deadline=deadline)
        self.calls[call.call_id] = call
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, call.call_id))

    def _finish(self, call: Call, now: float) -> None:
        self.calls[call.call_id] = replace(call, deadline=None)
        self._forget[call.call_id] = now + self.retention
        heapq.heappush(self._timers, (now + self.retention, call.call_id))

    def _start(self, call: Call, now: float) -> list[Action]:
        """Begin attempt `call.current`: announce it to the media node, then dial."""
        attempt = call.attempts[call.current]
        ring = float(call.request.get("ring_timeout_s") or 30)
        deadline = now + ring + RING_GRACE_S
        call = replace(call, provider_call_id="", placed=False)
        self._put(call, deadline)
        routed = dict(call.routed or {})
        out: list[Action] = []
        if routed:
            routed.update(
                envelope=envelope(
                    call.call_id,
                    self._producer,
                    _ms(now),
                    derived_id(call.call_id, f"dialer/assign/{call.current}"),
                ),
                provider=attempt.provider,
                redirect_deadline=_ms(deadline),
            )
            out.append(Publish(("assignments",), routed["backend_id"], "CallRouted", routed))
        return [*out, Dial(call.call_id, call.current, check=call.resumed)]

    def _taken(self, call: Call, provider_call_id: str, now: float, lookup: bool) -> list[Action]:
        attempt = call.attempts[call.current]
        first = not call.replied
        call = replace(call, provider_call_id=provider_call_id, placed=True, replied=True)
        self._put(call, call.deadline)
        record = {
            "envelope": envelope(
                call.call_id,
                self._producer,
                _ms(now),
                derived_id(call.call_id, f"dialer/attempt/{call.current}"),
            ),
            "attempt": call.current,
            "provider": attempt.provider,
            "account_id": attempt.account_id,
            "request_id": request_id(call.call_id, call.current),
            "provider_call_id": provider_call_id,
            "from_number": attempt.from_number,
            "to_number": call.request["to_number"],
            "business_id": call.business_id,
            "found_by_lookup": lookup,
        }
        self._put(replace(call, tried=(*call.tried, record)), call.deadline)
        out: list[Action] = [_history(call.call_id, "OutboundAttempt", record, self.dialer_id)]
        if first:
            out.append(self._reply(Reply(call.call_id, "placed", 201, attempt.account_id)))
        return out

    def _failed(self, call: Call, failure: Failure, now: float) -> list[Action]:
        what = after_failure(call, failure.retryable)
        state = step(call.state, what)
        attempt = call.attempts[call.current]
        old = call.old_calls
        if call.provider_call_id:
            old = (*old, (call.current, call.provider_call_id))
        record = {
            "envelope": envelope(
                call.call_id,
                self._producer,
                _ms(now),
                derived_id(call.call_id, f"dialer/failed/{call.current}"),
            ),
            "attempt": call.current,
            "provider": attempt.provider,
            "account_id": attempt.account_id,
            "reason": failure.reason,
            "detail": failure.detail[:300],
            "http_status": failure.http_status,
            "provider_error_code": failure.code,
            "retryable": failure.retryable,
            "provider_call_id": failure.provider_call_id or call.provider_call_id,
            "business_id": call.business_id,
        }
        log.info(
            "call %s: attempt %d through %s failed (%s): %s -> %s",
            call.call_id,
            call.current + 1,
            attempt.account_id,
            failure.reason,
            call.state.value,
            state.value,
        )
        call = replace(call, tried=(*call.tried, record))
        out: list[Action] = [
            _history(call.call_id, "OutboundAttemptFailed", record, self.dialer_id)
        ]
        if state is State.ATTEMPTING:
            nxt = replace(call, state=state, current=call.current + 1, old_calls=old)
            return out + self._start(nxt, now)
        return out + self._fail(replace(call, state=state, old_calls=old), failure, now)

    def _fail(self, call: Call, failure: Failure, now: float) -> list[Action]:
        """No provider placed the call: end it (frees the slots once), answer the API."""
        call = replace(call, state=State.FAILED)
        out: list[Action] = []
        if not call.replied:
            invalid = failure.reason == "invalid_number"
            status = 400 if invalid else 503 if failure.retryable else 502
            out.append(
                self._reply(
                    Reply(
                        call.call_id,
                        "failed",
                        status,
                        failure.detail or failure.reason,
                        5 if status == 503 else None,
                        "to" if invalid else "",
                        failure.code,
                    )
                )
            )
        self._finish(replace(call, replied=True), now)
        ended = _ended(call, self._producer, now, "failed", "dialer/failed")
        ended.update(detail=f"no provider placed the call: {failure.reason}", status_code=503)
        return [*out, _end_publish(call, ended, self.dialer_id)]

    def _deadline(self, call: Call, now: float) -> list[Action]:
        state = step(call.state, Input.DEADLINE)
        if call.state is State.REQUESTED:
            reason = f"no routing decision within {self.decision_timeout:g}s"
            out: list[Action] = []
            if not call.replied:
                out.append(self._reply(Reply(call.call_id, "failed", 503, reason, 5)))
            self._finish(replace(call, state=state, replied=True), now)
            ended = _ended(call, self._producer, now, "edge_timeout", "dialer/edge_timeout")
            ended.update(hangup_side="system", status_code=503, detail=reason)
            return [*out, _end_publish(call, ended, self.dialer_id)]
        self._finish(replace(call, state=state, replied=True), now)
        ended = _ended(call, self._producer, now, "no_answer", "dialer/deadline")
        ended.update(hangup_side="system", detail="no report from the provider in time")
        out = [_end_publish(call, ended, self.dialer_id)]
        if call.provider_call_id:
            out.insert(0, Hangup(call.call_id, call.current, call.provider_call_id))
        if not call.replied:
            reply = Reply(call.call_id, "failed", 504, "no provider answered in time")
            out.insert(0, self._reply(reply))
        return out

    def _history(self, call: Call, report: Report, now: float) -> list[Action]:
        """CallProgress / CallAnswered for the history (ends go through _end)."""
        attempt = call.attempts[call.current]
        env = envelope(call.call_id, self._producer, _ms(now), report.event_id)
        if report.progress == "ANSWERED":
            record = {
                "envelope": env,
                "backend_id": (call.routed or {}).get("backend_id", ""),
                "codec": "",
                "provider": attempt.provider,
                "provider_call_id": report.provider_call_id,
                "provider_status": report.status,
            }
            return [Publish(("call-events",), call.call_id, "CallAnswered", record)]
        if report.progress in ("PROGRESS", "RINGING"):
            record = {
                "envelope": env,
                "provider": attempt.provider,
                "provider_call_id": report.provider_call_id,
                "provider_status": report.status,
                "business_id": call.business_id,
            }
            return [Publish(("call-events",), call.call_id, "CallProgress", record)]
        return []

    def _end(self, call: Call, report: Report, now: float) -> list[Action]:
        attempt = call.attempts[call.current]
        ended = _ended(call, self._producer, now, report.reason, "")
        ended["envelope"]["event_id"] = report.event_id
        ended.update(
            hangup_side=report.hangup_side,
            provider=attempt.provider,
            provider_call_id=report.provider_call_id,
            hangup_cause=report.status,
            provider_duration_ms=report.duration_ms,
            status_code=report.sip_code,
        )
        if report.mos is not None:
            ended["media"] = {
                "packets_sent": 0,
                "packets_received": 0,
                "packets_lost": 0,
                "jitter_ms": 0.0,
                "mos": report.mos,
            }
        return [_end_publish(call, ended, self.dialer_id)]


def request_id(call_id: str, attempt: int) -> str:
    """Our id of an attempt's create-call request (Telnyx's command_id): the same for a
    repeat, so the provider drops the repeat."""
    return derived_id(call_id, f"dialer/request/{attempt}")


def report_from_record(record: Mapping[str, Any]) -> Report:
    return Report(
        int(record["attempt"]),
        str(record["provider_call_id"]),
        str(record["status"]),
        record["progress"],
        str(record["envelope"]["event_id"]),
        str(record.get("reason") or "completed"),
        record.get("sip_code"),
        record.get("hangup_side"),
        record.get("duration_ms"),
        record.get("mos"),
    )


def _ms(now: float) -> int:
    return int(now * 1000)


def _history(call_id: str, name: str, record: dict[str, Any], dialer_id: str) -> Publish:
    return Publish(("call-events", "outbound"), call_id, name, record, {"outbound": dialer_id})


def _ended(call: Call, producer: str, now: float, reason: str, what: str) -> dict[str, Any]:
    routed = call.routed or {}
    return {
        "envelope": envelope(
            call.call_id, producer, _ms(now), derived_id(call.call_id, what or reason)
        ),
        "reason": reason,
        "hangup_side": None,
        "status_code": None,
        "business_id": call.business_id,
        "region_id": routed.get("region_id"),
        "backend_id": routed.get("backend_id"),
        "setup_ms": None,
        "talk_ms": None,
        "codec": None,
        "media": None,
    }


def _end_publish(call: Call, ended: dict[str, Any], dialer_id: str) -> Publish:
    return Publish(
        ("admission", "call-events", "outbound"),
        call.business_id,
        "CallEnded",
        ended,
        {"outbound": dialer_id},
    )
