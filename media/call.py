"""The media node's call machine: one call's life on a media node, as a transition table.
Pure: time is passed in (`now`, seconds on one monotonic clock), actions are returned,
nothing here sleeps, sends or reads a clock.

Theory of operation
-------------------
A SIP INVITE (media/node.py) and a provider media WebSocket (media/ws.py) both create a
:class:`Call` and feed it what happens to them: the queue entry is found (or not yet), the
caller gives up, the ACK arrives, a BYE, the agent hangs up. The call answers with actions
(send the 200 OK, publish CallEnded, send a BYE, free the media) that the I/O layer carries
out; it keeps one timer (``deadline``), which the I/O layer's clock fires with
``expire(now)``. Events not in the table raise :class:`TransitionError` and change
nothing.

    OFFERED   --wait---------> WAITING    the queue entry is not here yet: wait for it
    OFFERED   --claim--------> ACCEPTED   the entry is ours: CallAccepted, 200 OK
    OFFERED   --refuse-------> ENDED      404/403/486/488/503 (or a WebSocket close 1008)
    OFFERED   --cancel-------> CANCELLED  487 to the INVITE (the CANCEL gets its 200)
    WAITING   --claim--------> ACCEPTED   the assignment arrived in time
    WAITING   --refuse-------> ENDED
    WAITING   --wait expired-> ENDED      404 (no assignment within the wait)
    WAITING   --cancel-------> CANCELLED  487
    CANCELLED --claim--------> ENDED      the entry turned up: CallEnded `cancelled`
    CANCELLED --refuse-------> ENDED      the entry is not ours to report
    CANCELLED --wait expired-> ENDED      no entry within 64*T1: nothing to report
    ACCEPTED  --answer-------> ANSWERED   the ACK (a WebSocket at once): CallAnswered
    ACCEPTED  --2xx timer----> ACCEPTED   UDP: 200 OK again, T1 doubling to T2
    ACCEPTED  --no ack-------> ENDING     64*T1 without ACK: CallEnded `failed`, BYE
    ACCEPTED  --remote end---> ENDED      BYE before the ACK: CallEnded
    ACCEPTED  --local end----> ENDING     CallEnded, BYE
    ANSWERED  --answer-------> ANSWERED   a retransmitted ACK (or a re-INVITE's)
    ANSWERED  --hold---------> HELD       re-INVITE sendonly/inactive: no media timeout
    ANSWERED  --resume-------> ANSWERED   re-INVITE sendrecv (a refresh)
    ANSWERED  --remote end---> ENDED      BYE (or the stream's stop): CallEnded `completed`
    ANSWERED  --local end----> ENDING     agent hang-up, media error, node stop: CallEnded, BYE
    ANSWERED  --media timeout> ENDING     no RTP for `media_timeout`: CallEnded `media_timeout`
    HELD      --answer-------> HELD
    HELD      --hold---------> HELD
    HELD      --resume-------> ANSWERED   the media timeout restarts from now
    HELD      --remote end---> ENDED
    HELD      --local end----> ENDING
    ENDING    --bye timer----> ENDING     UDP: BYE again, T1 doubling to T2 (Timer E)
    ENDING    --bye done-----> ENDED      a final response to our BYE (or the socket closed)
    ENDING    --bye given up-> ENDED      64*T1 without one (Timer F): ended anyway
    ENDING    --remote end---> ENDED      the caller's BYE crossed ours
    ENDED     (nothing)

CallEnded is published when the call stops (entering ENDING or ENDED), not when our BYE
completes: the plan and backend slots are freed at once, whatever the caller's UA does
with the BYE. A call cancelled while the node waits for its assignment has no business to
report to until the assignment names it; it stays CANCELLED for 64*T1 so that an
assignment arriving late still ends the queue entry as `cancelled` (otherwise routing's
redirect deadline frees its slots as `redirect_timeout`).

Over reliable transports (TCP, WebSocket) nothing is retransmitted: the 200 OK waits for
its ACK and the BYE for its answer up to 64*T1 (Timers H and F).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from edge.sip.transaction import T1, T2
from trunkline.core.events import TransitionError

log = logging.getLogger("trunkline.media.call")

__all__ = [
    "TRANSITIONS",
    "Action",
    "Call",
    "HangUp",
    "Input",
    "PublishAccepted",
    "PublishAnswered",
    "PublishEnded",
    "Release",
    "Reply",
    "SendOk",
    "State",
    "TransitionError",
    "step",
]


class State(enum.Enum):
    OFFERED = "offered"
    WAITING = "waiting for assignment"
    CANCELLED = "cancelled"
    ACCEPTED = "accepted"
    ANSWERED = "answered"
    HELD = "held"
    ENDING = "ending"
    ENDED = "ended"


class Input(enum.Enum):
    WAIT = "wait"
    CLAIM = "claim"
    REFUSE = "refuse"
    WAIT_EXPIRED = "wait expired"
    CANCEL = "cancel"
    ANSWER = "answer"
    OK_TIMER = "2xx timer"
    NO_ACK = "no ack"
    HOLD = "hold"
    RESUME = "resume"
    REMOTE_END = "remote end"
    LOCAL_END = "local end"
    MEDIA_TIMEOUT = "media timeout"
    BYE_TIMER = "bye timer"
    BYE_DONE = "bye done"
    BYE_GIVEN_UP = "bye given up"


TRANSITIONS: dict[State, dict[Input, State]] = {
    State.OFFERED: {
        Input.WAIT: State.WAITING,
        Input.CLAIM: State.ACCEPTED,
        Input.REFUSE: State.ENDED,
        Input.CANCEL: State.CANCELLED,
    },
    State.WAITING: {
        Input.CLAIM: State.ACCEPTED,
        Input.REFUSE: State.ENDED,
        Input.WAIT_EXPIRED: State.ENDED,
        Input.CANCEL: State.CANCELLED,
    },
    State.CANCELLED: {
        Input.CLAIM: State.ENDED,
        Input.REFUSE: State.ENDED,
        Input.WAIT_EXPIRED: State.ENDED,
    },
    State.ACCEPTED: {
        Input.ANSWER: State.ANSWERED,
        Input.OK_TIMER: State.ACCEPTED,
        Input.NO_ACK: State.ENDING,
        Input.REMOTE_END: State.ENDED,
        Input.LOCAL_END: State.ENDING,
    },
    State.ANSWERED: {
        Input.ANSWER: State.ANSWERED,
        Input.HOLD: State.HELD,
        Input.RESUME: State.ANSWERED,
        Input.REMOTE_END: State.ENDED,
        Input.LOCAL_END: State.ENDING,
        Input.MEDIA_TIMEOUT: State.ENDING,
    },
    State.HELD: {
        Input.ANSWER: State.HELD,
        Input.HOLD: State.HELD,
        Input.RESUME: State.ANSWERED,
        Input.REMOTE_END: State.ENDED,
        Input.LOCAL_END: State.ENDING,
    },
    State.ENDING: {
        Input.BYE_TIMER: State.ENDING,
        Input.BYE_DONE: State.ENDED,
        Input.BYE_GIVEN_UP: State.ENDED,
        Input.REMOTE_END: State.ENDED,
    },
    State.ENDED: {},
}


def step(state: State, event: Input) -> State:
    """The next state from the table; TransitionError (nothing changes) if not listed."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise TransitionError(f"media call {state.value} cannot take {event.value}") from None


# -- actions: what the I/O layer must do ---------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Answer the INVITE with this final error (a WebSocket: close 1008 with the reason)."""

    status: int
    why: str


@dataclass(frozen=True)
class SendOk:
    """Send the 200 OK with our SDP (again, on a retransmission)."""

    retransmission: bool = False


@dataclass(frozen=True)
class PublishAccepted:
    """CallAccepted: the node took the queue entry (routing's reservation is ACCEPTED)."""


@dataclass(frozen=True)
class PublishAnswered:
    """CallAnswered: the call is up."""


@dataclass(frozen=True)
class PublishEnded:
    """CallEnded: frees the plan and backend slots. Durations are on the call's clock."""

    reason: str
    side: str
    setup_ms: int | None
    talk_ms: int | None
    detail: str = ""


@dataclass(frozen=True)
class Release:
    """Free what the node holds for the call: RTP socket, agent, its claim on the entry."""


@dataclass(frozen=True)
class HangUp:
    """Hang up towards the caller: a BYE in the dialog (again, on a retransmission), or
    close the provider's WebSocket."""

    retransmission: bool = False


Action = Reply | SendOk | PublishAccepted | PublishAnswered | PublishEnded | Release | HangUp


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Call:
    """One call on a media node. `reliable`: TCP or WebSocket (nothing is retransmitted);
    `wait_s`: how long to wait for an assignment in flight; `media_timeout`: seconds
    without media that end an answered call (None: never, e.g. provider streams)."""

    def __init__(
        self,
        call_id: str,
        now: float,
        *,
        reliable: bool = False,
        wait_s: float = 2.0,
        media_timeout: float | None = 10.0,
        t1: float = T1,
        t2: float = T2,
    ) -> None:
        self.call_id = call_id
        self.state = State.OFFERED
        self.reliable = reliable
        self.wait_s = wait_s
        self.media_timeout = media_timeout
        self.t1, self.t2 = t1, t2
        self.offered_at = now
        self.accepted_at: float | None = None
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.last_media = now
        self.reason = ""  # why it ended (CallEnded's reason), once it has
        self.side = ""
        self.detail = ""
        self.refusal: tuple[int, str] = (404, "no queue entry")  # said if the wait expires
        self.timer: Input | None = None
        self.timer_at: float | None = None
        self.interval = t1  # the running retransmission interval (2xx or BYE)
        self.give_up_at: float | None = None  # Timer H for the 2xx, Timer F for the BYE

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.state.value}>"

    # -- time --------------------------------------------------------------------------
    @property
    def deadline(self) -> float | None:
        """When `expire` has something to do (None: nothing armed)."""
        at = self.timer_at
        if self.state is State.ANSWERED and self.media_timeout is not None:
            media = self.last_media + self.media_timeout
            at = media if at is None else min(at, media)
        return at

    def saw_media(self, at: float) -> None:
        """Media arrived at `at` (same clock as `now`): pushes the media timeout back. Not
        a transition: it runs for every packet's worth of time and changes no state."""
        if at > self.last_media:
            self.last_media = at

    def expire(self, now: float) -> list[Action]:
        """Fire what is due at `now` (at most one timer per call)."""
        if (
            self.state is State.ANSWERED
            and self.media_timeout is not None
            and now >= self.last_media + self.media_timeout
        ):
            return self.handle(Input.MEDIA_TIMEOUT, now)
        if self.timer is not None and self.timer_at is not None and now >= self.timer_at:
            return self.handle(self.timer, now)
        return []

    def _arm(self, timer: Input | None, at: float | None) -> None:
        self.timer, self.timer_at = timer, at

    # -- input -------------------------------------------------------------------------
    def handle(
        self,
        event: Input,
        now: float,
        *,
        status: int = 0,
        why: str = "",
        reason: str = "",
        side: str = "",
    ) -> list[Action]:
        """Apply `event` at `now`; the actions to carry out. `status`/`why` go with WAIT
        (what to answer if the wait expires) and REFUSE; `reason`/`side`/`why` with
        LOCAL_END and REMOTE_END (CallEnded's reason, hangup side and detail)."""
        old = self.state
        new = step(old, event)  # raises before anything changes
        # a timer input keeps its schedule exact when the clock runs late (its due time)
        due = self.timer_at if event is self.timer and self.timer_at is not None else now
        actions = self._actions(old, event, new, now, due, status, why, reason, side)
        self.state = new
        if new is not old:
            log.debug("call %s: %s -> %s (%s)", self.call_id, old.value, new.value, event.value)
        return actions

    def _actions(
        self,
        old: State,
        event: Input,
        new: State,
        now: float,
        due: float,
        status: int,
        why: str,
        reason: str,
        side: str,
    ) -> list[Action]:
        if event is Input.WAIT:
            self.refusal = (status or 404, why)
            self._arm(Input.WAIT_EXPIRED, now + self.wait_s)
            return []
        if event is Input.CANCEL:
            # keep watching for the assignment, which names the business to report to
            self._arm(Input.WAIT_EXPIRED, now + 64 * self.t1)
            return [Reply(487, "Request Terminated")]
        if event is Input.REFUSE:
            self._end_at(now, "rejected", "system", why)
            self._arm(None, None)
            return [Release()] if old is State.CANCELLED else [Reply(status, why), Release()]
        if event is Input.WAIT_EXPIRED:
            self._end_at(now, "rejected", "system", self.refusal[1])
            self._arm(None, None)
            if old is State.CANCELLED:
                return [Release()]
            return [Reply(*self.refusal), Release()]
        if event is Input.CLAIM and old is State.CANCELLED:
            self._arm(None, None)
            return [Release(), self._ended(now, "cancelled", "caller", "")]
        if event is Input.CLAIM:
            self.accepted_at = now
            self.interval = self.t1
            self.give_up_at = now + 64 * self.t1
            if self.reliable:
                self._arm(Input.NO_ACK, self.give_up_at)
            else:
                self._arm(Input.OK_TIMER, now + self.t1)
            return [PublishAccepted(), SendOk()]
        if event is Input.OK_TIMER:
            self._retransmit_next(due, Input.OK_TIMER, Input.NO_ACK)
            return [SendOk(retransmission=True)]
        if event is Input.ANSWER:
            if old is not State.ACCEPTED:
                return []  # a retransmitted ACK, or the ACK of a re-INVITE's 200
            self.answered_at = self.last_media = now
            self._arm(None, None)
            return [PublishAnswered()]
        if event is Input.HOLD:
            return []
        if event is Input.RESUME:
            if old is State.HELD:
                self.last_media = now  # the media timeout counts from the resume
            return []
        if event is Input.NO_ACK:
            return self._hang_up(now, "failed", "system", "no ACK for the 200 OK")
        if event is Input.MEDIA_TIMEOUT:
            return self._hang_up(now, "media_timeout", "system", "")
        if event is Input.LOCAL_END:
            return self._hang_up(now, reason or "completed", side or "agent", why)
        if event is Input.REMOTE_END:
            self._arm(None, None)
            if old is State.ENDING:
                return []  # the caller's BYE crossed ours: CallEnded is out already
            return [Release(), self._ended(now, reason or "completed", side or "caller", why)]
        if event is Input.BYE_TIMER:
            self._retransmit_next(due, Input.BYE_TIMER, Input.BYE_GIVEN_UP)
            return [HangUp(retransmission=True)]
        if event in (Input.BYE_DONE, Input.BYE_GIVEN_UP):
            self._arm(None, None)
            return []
        raise AssertionError(f"{event} listed in the table but not handled")  # pragma: no cover

    def _retransmit_next(self, due: float, again: Input, give_up: Input) -> None:
        """Timer G/E: the interval doubles up to T2; the last one stops at the give-up
        time (Timer H/F)."""
        assert self.give_up_at is not None
        self.interval = min(2 * self.interval, self.t2)
        if due + self.interval < self.give_up_at:
            self._arm(again, due + self.interval)
        else:
            self._arm(give_up, self.give_up_at)

    def _hang_up(self, now: float, reason: str, side: str, detail: str) -> list[Action]:
        ended = self._ended(now, reason, side, detail)
        self.interval = self.t1
        self.give_up_at = now + 64 * self.t1
        if self.reliable:
            self._arm(Input.BYE_GIVEN_UP, self.give_up_at)
        else:
            self._arm(Input.BYE_TIMER, now + self.t1)
        return [Release(), ended, HangUp()]

    def _end_at(self, now: float, reason: str, side: str, detail: str) -> None:
        self.ended_at = now
        self.reason, self.side, self.detail = reason, side, detail

    def _ended(self, now: float, reason: str, side: str, detail: str) -> PublishEnded:
        self._end_at(now, reason, side, detail)
        answered, accepted = self.answered_at, self.accepted_at
        return PublishEnded(
            reason,
            side,
            _ms(answered - accepted) if answered is not None and accepted is not None else None,
            _ms(now - answered) if answered is not None else None,
            detail,
        )
