"""RFC 3261 §17.2 server transactions, as transition tables. Pure: time is passed in.

Theory of operation
-------------------
The transport hands every parsed request to :class:`ServerTransactions.receive` with the
current time. A request that matches an existing transaction (§17.2.3: top Via branch with
the ``z9hG4bK`` cookie, sent-by and method; ACK matches its INVITE; the RFC 2543 key where
there is no cookie) is absorbed or answered with the stored response. A new one creates a
transaction and is passed up to the transaction user (TU). The TU answers through
``respond``; the layer stores the response, returns the bytes to send and arms timers.
``next_deadline()`` says when to call ``expire(now)``; nothing here sleeps.

INVITE server transaction (Timers G, H, I; unreliable transports only for G and I):

    PROCEEDING --1xx--> PROCEEDING
    PROCEEDING --2xx--> TERMINATED          (the TU/core retransmits a 2xx, not us)
    PROCEEDING --3xx-6xx--> COMPLETED       (retransmit on G: T1, 2T1 ... T2; H = 64*T1)
    COMPLETED --ACK--> CONFIRMED            (absorb ACK retransmits until I = T4)
    COMPLETED --timer H--> TERMINATED       (no ACK came: the TU is told)
    CONFIRMED --timer I--> TERMINATED

non-INVITE server transaction (Timer J = 64*T1 over UDP, 0 over TCP):

    TRYING --1xx--> PROCEEDING --1xx--> PROCEEDING
    TRYING/PROCEEDING --final--> COMPLETED --timer J--> TERMINATED
"""

from __future__ import annotations

import enum
import heapq
import logging
from dataclasses import dataclass, field

from edge.sip.errors import TransactionError
from edge.sip.message import MAGIC_COOKIE, Request, Response

log = logging.getLogger("trunkline.sip.transaction")

T1 = 0.5
T2 = 4.0
T4 = 5.0


class State(enum.Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Event(enum.Enum):
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FINAL = "3xx-6xx"
    ACK = "ACK"
    RETRANSMISSION = "request retransmitted"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"


INVITE_TABLE: dict[State, dict[Event, State]] = {
    State.PROCEEDING: {
        Event.PROVISIONAL: State.PROCEEDING,
        Event.SUCCESS: State.TERMINATED,
        Event.FINAL: State.COMPLETED,
        Event.RETRANSMISSION: State.PROCEEDING,
    },
    State.COMPLETED: {
        Event.ACK: State.CONFIRMED,
        Event.RETRANSMISSION: State.COMPLETED,
        Event.TIMER_G: State.COMPLETED,
        Event.TIMER_H: State.TERMINATED,
    },
    State.CONFIRMED: {
        Event.ACK: State.CONFIRMED,
        Event.RETRANSMISSION: State.CONFIRMED,
        Event.TIMER_I: State.TERMINATED,
    },
    State.TERMINATED: {},
}

NON_INVITE_TABLE: dict[State, dict[Event, State]] = {
    State.TRYING: {
        Event.PROVISIONAL: State.PROCEEDING,
        Event.SUCCESS: State.COMPLETED,
        Event.FINAL: State.COMPLETED,
        Event.RETRANSMISSION: State.TRYING,
    },
    State.PROCEEDING: {
        Event.PROVISIONAL: State.PROCEEDING,
        Event.SUCCESS: State.COMPLETED,
        Event.FINAL: State.COMPLETED,
        Event.RETRANSMISSION: State.PROCEEDING,
    },
    State.COMPLETED: {
        Event.RETRANSMISSION: State.COMPLETED,
        Event.TIMER_J: State.TERMINATED,
    },
    State.TERMINATED: {},
}


Address = tuple[str, int]
TxKey = tuple[str, ...]


@dataclass
class Send:
    """Bytes for the transport to write to `addr` (over `conn`, for a stream)."""

    data: bytes
    addr: Address
    conn: object | None = None


@dataclass
class NewRequest:
    """A request that started a transaction: the TU must answer it through `respond`."""

    key: TxKey
    request: Request
    source: Address
    conn: object | None


@dataclass
class AckTimeout:
    """Timer H fired: the caller never acknowledged our final response."""

    key: TxKey
    request: Request


@dataclass
class CancelRequest:
    """A CANCEL matching a live INVITE transaction (RFC 3261 §9.2)."""

    key: TxKey
    invite_key: TxKey
    request: Request
    source: Address
    conn: object | None


Action = Send | NewRequest | AckTimeout | CancelRequest


@dataclass
class ServerTransaction:
    key: TxKey
    request: Request
    source: Address  # where the request came from
    reliable: bool
    conn: object | None
    state: State
    reply_to: Address = ("", 0)  # where responses go (RFC 3261 §18.2.2 / RFC 3581)
    last_response: bytes | None = None
    final_status: int = 0
    deadline: float | None = None  # next timer
    timer: Event | None = None
    interval: float = T1  # Timer G's current interval
    h_deadline: float | None = None
    history: list[tuple[State, Event, State]] = field(default_factory=list)
    started: float = 0.0  # when the request arrived (the `now` of `receive`)

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def table(self) -> dict[State, dict[Event, State]]:
        return INVITE_TABLE if self.is_invite else NON_INVITE_TABLE

    def fire(self, event: Event) -> State:
        """Apply `event`; an event the table does not list raises and changes nothing."""
        try:
            new = self.table[self.state][event]
        except KeyError:
            raise TransactionError(
                f"{self.request.method} transaction in {self.state.value} cannot take {event.value}"
            ) from None
        if new is not self.state:
            log.debug("tx %s: %s -> %s (%s)", self.key[0], self.state.value, new.value, event.value)
        self.history.append((self.state, event, new))
        self.state = new
        return new

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.request.method} {self.key[0]} {self.state.value}>"


def transaction_key(request: Request, method: str | None = None) -> TxKey:
    """§17.2.3 matching key. `method` overrides the request's (ACK matches INVITE)."""
    via = request.top_via
    method = method or request.method
    branch = via.branch or ""
    sent_by = f"{via.host}:{via.port or 5060}"
    if branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by, method)
    # RFC 2543: Request-URI, To tag, From tag, Call-ID, CSeq number, top Via
    number, _ = request.cseq
    to_tag = request.to.tag or "" if method != "INVITE" else ""
    return (
        f"2543:{request.call_id}:{number}",
        str(request.uri),
        to_tag,
        request.from_.tag or "",
        str(via),
        method,
    )


class ServerTransactions:
    """The server transaction layer for one SIP endpoint."""

    def __init__(self, *, t1: float = T1, t2: float = T2, t4: float = T4) -> None:
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.transactions: dict[TxKey, ServerTransaction] = {}
        # (deadline, seq, key): a timer heap; entries whose transaction moved on are stale
        # and skipped, so arming is O(log n) and finding the next deadline O(1)
        self._timers: list[tuple[float, int, TxKey]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.transactions)

    # -- input from the transport -----------------------------------------------------
    def receive(
        self,
        request: Request,
        source: Address,
        now: float,
        *,
        reliable: bool = False,
        conn: object | None = None,
        reply_to: Address | None = None,
    ) -> list[Action]:
        if request.method == "ACK":
            tx = self.transactions.get(transaction_key(request, "INVITE"))
            if tx is None or tx.state not in (State.COMPLETED, State.CONFIRMED):
                return []  # an ACK for a 2xx or for nothing we know: not ours to handle
            tx.fire(Event.ACK)
            if tx.state is State.CONFIRMED and tx.timer is not Event.TIMER_I:
                self._arm(tx, Event.TIMER_I, now + (0.0 if tx.reliable else self.t4))
                tx.h_deadline = None
            return []
        key = transaction_key(request)
        tx = self.transactions.get(key)
        if tx is not None:
            tx.fire(Event.RETRANSMISSION)
            if tx.last_response is not None:
                return [Send(tx.last_response, tx.reply_to, tx.conn)]
            return []
        tx = ServerTransaction(
            key,
            request,
            source,
            reliable,
            conn,
            State.PROCEEDING if request.method == "INVITE" else State.TRYING,
            reply_to or source,
            started=now,
        )
        self.transactions[key] = tx
        if request.method == "CANCEL":
            invite_key = transaction_key(request, "INVITE")
            if invite_key in self.transactions:
                return [CancelRequest(key, invite_key, request, source, conn)]
        return [NewRequest(key, request, source, conn)]

    # -- input from the TU --------------------------------------------------------------
    def respond(self, key: TxKey, response: Response, now: float) -> list[Action]:
        tx = self.transactions.get(key)
        if tx is None:
            raise TransactionError(f"no server transaction {key[0]!r} to respond on")
        status = response.status
        event = (
            Event.PROVISIONAL if status < 200 else Event.SUCCESS if status < 300 else Event.FINAL
        )
        tx.fire(event)
        data = bytes(response)
        tx.last_response = data
        if status >= 200:
            tx.final_status = status
        if tx.state is State.COMPLETED:
            if tx.is_invite:
                tx.h_deadline = now + 64 * self.t1
                if tx.reliable:
                    self._arm(tx, Event.TIMER_H, tx.h_deadline)
                else:
                    tx.interval = self.t1
                    self._arm(tx, Event.TIMER_G, now + tx.interval)
            else:
                self._arm(tx, Event.TIMER_J, now + (0.0 if tx.reliable else 64 * self.t1))
        elif tx.state is State.TERMINATED:
            self.transactions.pop(key, None)
        return [Send(data, tx.reply_to, tx.conn)]

    def get(self, key: TxKey) -> ServerTransaction | None:
        return self.transactions.get(key)

    # -- time ---------------------------------------------------------------------------
    def _live(self, entry: tuple[float, int, TxKey]) -> ServerTransaction | None:
        tx = self.transactions.get(entry[2])
        if tx is None or tx.deadline != entry[0] or tx.timer is None:
            return None
        return tx

    def next_deadline(self) -> float | None:
        while self._timers and self._live(self._timers[0]) is None:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def expire(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            tx = self._live(entry)
            if tx is None:
                continue
            assert tx.timer is not None
            actions.extend(self._on_timer(tx, tx.timer, entry[0]))
            if tx.state is State.TERMINATED:
                self.transactions.pop(tx.key, None)
        return actions

    def _arm(self, tx: ServerTransaction, timer: Event, at: float) -> None:
        tx.timer, tx.deadline = timer, at
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, tx.key))

    def _on_timer(self, tx: ServerTransaction, timer: Event, due: float) -> list[Action]:
        """Fire `timer`, which was due at `due` (schedules stay exact when we run late)."""
        tx.fire(timer)
        tx.timer = tx.deadline = None
        if timer is Event.TIMER_G:
            assert tx.h_deadline is not None and tx.last_response is not None
            tx.interval = min(2 * tx.interval, self.t2)
            next_g = due + tx.interval
            if next_g < tx.h_deadline:
                self._arm(tx, Event.TIMER_G, next_g)
            else:
                self._arm(tx, Event.TIMER_H, tx.h_deadline)
            return [Send(tx.last_response, tx.reply_to, tx.conn)]
        if timer is Event.TIMER_H:
            return [AckTimeout(tx.key, tx.request)]
        return []
