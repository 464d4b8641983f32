"""The webhook service's delivery book: what is owed to whom, in what order, and when (pure).

Everything here is a function of its inputs: records from the topics, attempt results
and `now` (epoch ms) passed in by the I/O shell (`streams/webhooks/service.py`), which
writes the returned state records to the compacted `webhook-state` topic and the attempt
records to `webhook-deliveries`. A restarted service `load`s the state topic back and
holds every pending delivery again.

One delivery per (subscription, event). Its table (inputs not listed raise
TransitionError and leave it unchanged):

    (none)     --enqueue---> PENDING     the event matched the subscription
    PENDING    --start-----> SENDING     its turn came (ordering rule below) and it is due
    PENDING    --skip------> SKIPPED     the subscription is disabled (410) or removed
    SENDING    --success---> DELIVERED   2xx
    SENDING    --retry-----> PENDING     any other answer, a timeout, a connection error:
                                         next attempt at now + the schedule's next delay
                                         (jittered), or later if Retry-After says so
    SENDING    --exhaust---> DEAD        the same, with the schedule used up: dead letter
    SENDING    --gone------> GONE        410: the subscription is disabled
    DELIVERED, DEAD, GONE, SKIPPED --redeliver--> PENDING   `webhooks redeliver`: same
                                         webhook-id and body, a fresh schedule
    PENDING, SENDING --redeliver--> unchanged (already on its way)
    every state --enqueue--> unchanged   a re-delivered record (idempotent by event id)

SENDING is never written: a delivery in flight when the service dies is PENDING in the
state topic and is sent again (the receiver dedupes by webhook-id).

The ordering rule: the deliveries of one call to one subscription form a queue, and only
its head may be attempted. The head is the delivery already attempted (retrying), else
the lowest (lifecycle rank, event time, event id) among the unsettled ones, so call.ended
never leaves before that call's call.answered, even while call.answered is being retried;
a later delivery waits until the ones before it settle (delivered, dead, gone, skipped).
Queues of different calls, and of different subscriptions, never wait for each other.

call.rated comes from another topic (`billing`) than the lifecycle events, and may be
read before the end it rated: a call.rated is `gated` until the I/O shell has read the
call's call-events partition up to where it was when the CallRated was read (`ungate`);
the end was written there before the CallRated existed, so by then it is queued too.
"""

from __future__ import annotations

import enum
import heapq
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.webhooks import payload, retry
from trunkline.core.events import TransitionError, derived_id, envelope, transition, uuid5_hex

PRODUCER = "webhooks"
_WEBHOOK_IDS = uuid.UUID("7d1b0c52-52f1-4b7e-9a8e-2f6c0d9b1e33")


class State(enum.Enum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"
    GONE = "GONE"
    SKIPPED = "SKIPPED"


class Input(enum.Enum):
    ENQUEUE = "enqueue"
    START = "start"
    SKIP = "skip"
    SUCCESS = "success"
    RETRY = "retry"
    EXHAUST = "exhaust"
    GONE = "gone"
    REDELIVER = "redeliver"


SETTLED = frozenset({State.DELIVERED, State.DEAD, State.GONE, State.SKIPPED})
NONE = None
TRANSITIONS: dict[State | None, dict[Input, State]] = {
    NONE: {Input.ENQUEUE: State.PENDING},
    State.PENDING: {
        Input.ENQUEUE: State.PENDING,
        Input.START: State.SENDING,
        Input.SKIP: State.SKIPPED,
        Input.REDELIVER: State.PENDING,
    },
    State.SENDING: {
        Input.ENQUEUE: State.SENDING,
        Input.SUCCESS: State.DELIVERED,
        Input.RETRY: State.PENDING,
        Input.EXHAUST: State.DEAD,
        Input.GONE: State.GONE,
        Input.REDELIVER: State.SENDING,
    },
    **{
        settled: {Input.ENQUEUE: settled, Input.REDELIVER: State.PENDING}
        for settled in (State.DELIVERED, State.DEAD, State.GONE, State.SKIPPED)
    },
}


_OUTCOMES = {
    Input.SUCCESS: "delivered",
    Input.EXHAUST: "dead",
    Input.GONE: "gone",
    Input.SKIP: "skipped",
}


def step(state: State | None, event: Input) -> State:
    return transition(TRANSITIONS, state, event, "webhook delivery")


def webhook_id(subscription_id: str, event_id: str) -> str:
    """The webhook-id header: stable for one event and one subscription."""
    return "msg_" + uuid5_hex(_WEBHOOK_IDS, f"{subscription_id}/{event_id}")


def replace(d: Delivery, **changes: Any) -> Delivery:
    """`dataclasses.replace` without its per-field checks (hot: several per delivery)."""
    new = object.__new__(Delivery)
    new.__dict__.update(d.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True)
class Subscription:
    """A WebhookSubscription config record, its secret still a reference."""

    id: str
    url: str
    events: tuple[str, ...]
    business_id: str | None = None
    secret_ref: str = ""
    allow_private_targets: bool = False

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Subscription:
        return cls(
            str(r["id"]),
            str(r["url"]),
            tuple(r.get("events") or ()),
            r.get("business_id") or None,
            str(r.get("secret_ref") or ""),
            bool(r.get("allow_private_targets")),
        )

    def wants(self, event_type: str, business_id: str) -> bool:
        if self.business_id is not None and self.business_id != business_id:
            return False
        return "*" in self.events or event_type in self.events


@dataclass(frozen=True)
class Delivery:
    """One event owed to one subscription (a `webhook-state` value under d/<sub>/<event>)."""

    subscription_id: str
    call_id: str
    event_id: str
    event_type: str
    at: int  # the event's time (epoch ms): orders the call's queue
    body: str
    business_id: str = ""
    state: State = State.PENDING
    attempts: int = 0  # attempts made, over every run (a redelivery continues the count)
    retries_used: int = 0  # schedule entries used by this run
    next_at: int = 0  # epoch ms: not before
    last_status: int | None = None
    last_error: str = ""
    settled_at: int = 0  # epoch ms, when it reached a settled state

    @property
    def key(self) -> tuple[str, str]:
        return (self.subscription_id, self.event_id)

    @property
    def webhook_id(self) -> str:
        cached: str | None = self.__dict__.get("_webhook_id")
        if cached is None:
            cached = webhook_id(self.subscription_id, self.event_id)
            object.__setattr__(self, "_webhook_id", cached)  # derived: computed once
        return cached

    @property
    def order(self) -> tuple[int, int, str]:
        return (payload.RANK.get(self.event_type, 50), self.at, self.event_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "call_id": self.call_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "at": self.at,
            # a settled delivery keeps no body: redeliver reads it from ClickHouse
            "body": "" if self.state in SETTLED else self.body,
            "business_id": self.business_id,
            "state": self.state.value if self.state is not State.SENDING else "PENDING",
            "attempts": self.attempts,
            "retries_used": self.retries_used,
            "next_at": self.next_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "settled_at": self.settled_at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Delivery:
        return cls(
            d["subscription_id"],
            d["call_id"],
            d["event_id"],
            d["event_type"],
            int(d["at"]),
            d.get("body") or "",
            d.get("business_id") or "",
            State(d["state"]),
            int(d.get("attempts") or 0),
            int(d.get("retries_used") or 0),
            int(d.get("next_at") or 0),
            d.get("last_status"),
            d.get("last_error") or "",
            int(d.get("settled_at") or 0),
        )


@dataclass
class Entry:
    """A call's queue entry as the webhooks see it (e/<call>), and which once-only types
    it already fired."""

    data: dict[str, Any] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)
    updated_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "fired": sorted(self.fired), "updated_at": self.updated_at}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Entry:
        return cls(dict(d.get("data") or {}), set(d.get("fired") or ()), int(d["updated_at"]))


@dataclass(frozen=True)
class Write:
    """A `webhook-state` record: its key, the key that chooses its partition (the call id,
    or the subscription id), and its JSON value (None: a tombstone)."""

    key: str
    partition_key: str
    value: dict[str, Any] | None


@dataclass(frozen=True)
class Result:
    """An attempt's outcome, as the I/O shell saw it."""

    status: int | None  # None: no HTTP answer
    error: str = ""
    latency_ms: int = 0
    retry_after_ms: int | None = None


@dataclass
class Changes:
    """What a step of the book asks the I/O shell to do."""

    writes: list[Write] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # WebhookAttempt records
    woken: set[str] = field(default_factory=set)  # subscriptions with new work

    def extend(self, other: Changes) -> None:
        self.writes += other.writes
        self.attempts += other.attempts
        self.woken |= other.woken


def _entry_key(call_id: str) -> str:
    return f"e/{call_id}"


def _delivery_key(sub_id: str, event_id: str) -> str:
    return f"d/{sub_id}/{event_id}"


def _sub_key(sub_id: str) -> str:
    return f"s/{sub_id}"


class Book:
    """Every subscription's deliveries, in memory, rebuilt from the state topic."""

    def __init__(self, schedule: Sequence[int], retention_ms: int) -> None:
        if not schedule:
            raise ValueError("the retry schedule needs at least one entry")
        self.schedule = tuple(schedule)
        self.retention_ms = retention_ms
        self.subscriptions: dict[str, Subscription] = {}
        self.disabled: dict[str, dict[str, Any]] = {}
        self.entries: dict[str, Entry] = {}
        self.deliveries: dict[tuple[str, str], Delivery] = {}
        self._queues: dict[tuple[str, str], set[str]] = {}  # (sub, call) -> unsettled events
        self._heaps: dict[str, list[tuple[int, tuple[int, int, str], str]]] = {}
        self._gated: set[str] = set()  # call ids whose call.rated waits for call-events

    # -- config ------------------------------------------------------------------------
    def set_subscription(self, sub_id: str, record: Mapping[str, Any] | None) -> Changes:
        """A config change (None: removed); queues of the subscription are looked at again."""
        if record is None:
            self.subscriptions.pop(sub_id, None)
        else:
            self.subscriptions[sub_id] = Subscription.from_record(record)
        return self._reschedule_sub(sub_id)

    # -- loading -----------------------------------------------------------------------
    def load(self, key: str, value: Mapping[str, Any] | None) -> None:
        """One record of the state topic (latest per key), before `loaded`."""
        kind, _, rest = key.partition("/")
        if kind == "e":
            if value is None:
                self.entries.pop(rest, None)
            else:
                self.entries[rest] = Entry.from_json(value)
        elif kind == "s":
            if value is None or not value.get("disabled"):
                self.disabled.pop(rest, None)
            else:
                self.disabled[rest] = dict(value)
        elif kind == "d":
            sub_id, _, event_id = rest.partition("/")
            if value is None:
                self.deliveries.pop((sub_id, event_id), None)
            else:
                self.deliveries[(sub_id, event_id)] = Delivery.from_json(value)

    def loaded(self) -> None:
        """Build the queues and schedules from what `load` read."""
        self._queues.clear()
        self._heaps.clear()
        for d in self.deliveries.values():
            if d.state not in SETTLED:
                self._queues.setdefault((d.subscription_id, d.call_id), set()).add(d.event_id)
        for sub_id, call_id in list(self._queues):
            self._push(sub_id, call_id)

    def pending(self) -> int:
        return sum(1 for d in self.deliveries.values() if d.state not in SETTLED)

    # -- events ------------------------------------------------------------------------
    def on_record(
        self, name: str, record: Mapping[str, Any], now_ms: int, gated: bool = False
    ) -> Changes:
        """A record of call-events or billing: update the call's entry and owe its webhook
        to every subscription that wants it. `gated`: a CallRated whose call-events
        partition has not been read far enough yet (module docstring)."""
        changes = Changes()
        event_type = payload.TYPES.get(name)
        if event_type is None and name not in payload.ENTRY_ONLY:
            return changes
        if not self.subscriptions:
            return changes  # nobody listens: keep nothing
        call_id = str(record["envelope"]["call_id"])
        if not call_id:
            return changes
        entry = self.entries.get(call_id)
        business_id = str(
            record.get("business_id") or (entry.data.get("businessId") if entry else "") or ""
        )
        if entry is None:
            if not any(
                s.business_id is None or s.business_id == business_id
                for s in self.subscriptions.values()
            ):
                return changes  # no subscription follows this business
            entry = Entry()
        entry.data = payload.apply(entry.data, name, record)
        entry.updated_at = now_ms
        fire = event_type is not None and not (
            event_type in payload.ONCE and event_type in entry.fired
        )
        if fire and event_type is not None and event_type in payload.ONCE:
            entry.fired.add(event_type)
        self.entries[call_id] = entry
        changes.writes.append(Write(_entry_key(call_id), call_id, entry.to_json()))  # first
        if fire and event_type is not None:
            at = int(record["envelope"]["occurred_at"])
            event_id = str(record["envelope"]["event_id"])
            text = payload.body(event_type, at, payload.data(entry.data, name, record)).decode()
            if gated:
                self._gated.add(call_id)
            for sub in self.subscriptions.values():
                if sub.wants(event_type, business_id):
                    self._enqueue(
                        sub.id,
                        call_id,
                        event_id,
                        event_type,
                        at,
                        text,
                        business_id,
                        now_ms,
                        changes,
                    )
        return changes

    def _enqueue(
        self,
        sub_id: str,
        call_id: str,
        event_id: str,
        event_type: str,
        at: int,
        body: str,
        business_id: str,
        now_ms: int,
        changes: Changes,
    ) -> None:
        """Owe one event to one subscription (nothing if it is owed or settled already)."""
        old = self.deliveries.get((sub_id, event_id))
        state = step(old.state if old else None, Input.ENQUEUE)
        if old is not None:
            return  # a re-delivered record: already owed (or settled)
        d = Delivery(
            sub_id, call_id, event_id, event_type, at, body, business_id, state, 0, 0, now_ms
        )
        self.deliveries[(sub_id, event_id)] = d
        queue = self._queues.get((sub_id, call_id))
        if queue is None:
            self._queues[(sub_id, call_id)] = {event_id}
        else:
            queue.add(event_id)
        self._push(sub_id, call_id)
        changes.writes.append(self._write(d))
        changes.woken.add(sub_id)

    def ungate(self, call_id: str) -> Changes:
        """The call-events partition of `call_id` was read far enough: its call.rated
        deliveries may go (after anything the call's queue still holds before them)."""
        changes = Changes()
        if call_id in self._gated:
            self._gated.discard(call_id)
            for sub_id, queue_call in list(self._queues):
                if queue_call == call_id:
                    self._push(sub_id, call_id)
                    changes.woken.add(sub_id)
        return changes

    def gated(self) -> set[str]:
        return set(self._gated)

    def gate_loaded_ratings(self) -> set[str]:
        """After `loaded`: gate every call whose call.rated was not attempted yet (the
        restarted shell reads call-events again from its committed offsets)."""
        for d in self.deliveries.values():
            if d.event_type == "call.rated" and d.state is State.PENDING and d.attempts == 0:
                self._gated.add(d.call_id)
        return set(self._gated)

    # -- scheduling --------------------------------------------------------------------
    def _head(self, sub_id: str, call_id: str) -> Delivery | None:
        events = self._queues.get((sub_id, call_id))
        if not events:
            return None
        if len(events) == 1:  # the common case: the call owes this subscription one event
            for e in events:
                return self.deliveries[(sub_id, e)]
        queue = [self.deliveries[(sub_id, e)] for e in events]
        started = [d for d in queue if d.attempts > 0 and d.state in (State.PENDING, State.SENDING)]
        if started:
            return min(started, key=lambda d: d.order)
        return min(queue, key=lambda d: d.order)

    def _push(self, sub_id: str, call_id: str) -> None:
        head = self._head(sub_id, call_id)
        if head is None or head.state is not State.PENDING:
            return
        if head.event_type == "call.rated" and call_id in self._gated:
            return
        heapq.heappush(self._heaps.setdefault(sub_id, []), (head.next_at, head.order, call_id))

    def _reschedule_sub(self, sub_id: str) -> Changes:
        self._heaps.pop(sub_id, None)
        for queue_sub, call_id in list(self._queues):
            if queue_sub == sub_id:
                self._push(sub_id, call_id)
        return Changes(woken={sub_id})

    def next_due(self, sub_id: str) -> int | None:
        """When the subscription's earliest queued head is due (epoch ms), or None."""
        heap = self._heaps.get(sub_id)
        return heap[0][0] if heap else None

    def due(self, sub_id: str, now_ms: int, limit: int) -> tuple[list[Delivery], Changes]:
        """Up to `limit` deliveries of the subscription to attempt now (each becomes
        SENDING); deliveries of a disabled or removed subscription are skipped instead."""
        out: list[Delivery] = []
        changes = Changes()
        heap = self._heaps.get(sub_id)
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due_at, _, call_id = heapq.heappop(heap)
            head = self._head(sub_id, call_id)
            if head is None or head.state is not State.PENDING or head.next_at != due_at:
                continue  # a stale entry: the queue moved on since it was pushed
            if head.event_type == "call.rated" and call_id in self._gated:
                continue
            sub = self.subscriptions.get(sub_id)
            if sub is None or sub_id in self.disabled:
                why = "subscription removed" if sub is None else "subscription disabled"
                changes.extend(self._settle(head, Input.SKIP, Result(None, why), now_ms, sub))
                continue
            sending = replace(head, state=step(head.state, Input.START))
            self.deliveries[sending.key] = sending
            out.append(sending)
        return out, changes

    # -- results -----------------------------------------------------------------------
    def on_result(self, key: tuple[str, str], result: Result, now_ms: int) -> Changes:
        """The outcome of an attempt `due` handed out."""
        d = self.deliveries[key]
        sub = self.subscriptions.get(d.subscription_id)
        verdict = retry.verdict(result.status)
        if verdict is retry.Verdict.DELIVERED:
            return self._settle(d, Input.SUCCESS, result, now_ms, sub, attempted=True)
        if verdict is retry.Verdict.GONE:
            changes = self._settle(d, Input.GONE, result, now_ms, sub, attempted=True)
            self.disabled[d.subscription_id] = {
                "disabled": True,
                "at": now_ms,
                "reason": f"410 Gone for {d.webhook_id}",
            }
            changes.writes.append(
                Write(
                    _sub_key(d.subscription_id), d.subscription_id, self.disabled[d.subscription_id]
                )
            )
            changes.woken.add(d.subscription_id)  # its other deliveries are skipped now
            return changes
        attempts = d.attempts + 1
        next_at = retry.next_attempt_at(
            self.schedule, d.retries_used, d.webhook_id, attempts, now_ms, result.retry_after_ms
        )
        if next_at is None:
            return self._settle(d, Input.EXHAUST, result, now_ms, sub, attempted=True)
        waiting = replace(
            d,
            state=step(d.state, Input.RETRY),
            attempts=attempts,
            retries_used=d.retries_used + 1,
            next_at=next_at,
            last_status=result.status,
            last_error=result.error,
        )
        self.deliveries[key] = waiting
        self._push(d.subscription_id, d.call_id)
        changes = Changes(woken={d.subscription_id})
        changes.writes.append(self._write(waiting))
        changes.attempts.append(self._attempt(waiting, attempts, result, "retrying", now_ms, sub))
        return changes

    def _settle(
        self,
        d: Delivery,
        event: Input,
        result: Result,
        now_ms: int,
        sub: Subscription | None,
        attempted: bool = False,
    ) -> Changes:
        attempts = d.attempts + (1 if attempted else 0)
        settled = replace(
            d,
            state=step(d.state, event),
            attempts=attempts,
            last_status=result.status,
            last_error=result.error,
            settled_at=now_ms,
        )
        self.deliveries[settled.key] = settled
        queue = self._queues.get((d.subscription_id, d.call_id))
        if queue is not None:
            queue.discard(d.event_id)
            if not queue:
                del self._queues[(d.subscription_id, d.call_id)]
        self._push(d.subscription_id, d.call_id)  # the next of the call's queue, if any
        outcome = _OUTCOMES[event]
        changes = Changes(woken={d.subscription_id})
        changes.writes.append(self._write(settled, body=d.body))
        changes.attempts.append(
            self._attempt(settled, max(attempts, 1), result, outcome, now_ms, sub, body=d.body)
        )
        return changes

    # -- operators ---------------------------------------------------------------------
    def on_command(self, record: Mapping[str, Any], now_ms: int) -> Changes:
        """A WebhookCommand: redeliver one delivery (same webhook-id and body, a fresh
        schedule; a disabled subscription is enabled again) or enable a subscription."""
        sub_id = str(record["subscription_id"])
        changes = Changes(woken={sub_id})
        if sub_id in self.disabled:
            del self.disabled[sub_id]
            changes.writes.append(Write(_sub_key(sub_id), sub_id, None))
        if record["action"] == "enable":
            changes.extend(self._reschedule_sub(sub_id))
            return changes
        if record["action"] != "redeliver":
            raise TransitionError(f"unknown webhook command {record['action']!r}")
        call_id = str(record["envelope"]["call_id"])
        event_id = str(record["source_event_id"])
        old = self.deliveries.get((sub_id, event_id))
        state = step(old.state if old else None, Input.REDELIVER if old else Input.ENQUEUE)
        if old is not None and old.state in (State.PENDING, State.SENDING):
            return changes  # on its way already
        base = old or Delivery(
            sub_id,
            call_id,
            event_id,
            str(record["event_type"]),
            int(record.get("occurred_at") or 0),
            str(record["body"]),
            str(record.get("business_id") or ""),
        )
        again = replace(
            base,
            body=str(record["body"]) or base.body,
            state=state,
            retries_used=0,
            next_at=now_ms,
            settled_at=0,
        )
        self.deliveries[again.key] = again
        self._queues.setdefault((sub_id, again.call_id), set()).add(event_id)
        self._push(sub_id, again.call_id)
        changes.writes.append(self._write(again))
        return changes

    # -- forgetting --------------------------------------------------------------------
    def sweep(self, now_ms: int, limit: int = 10_000) -> list[Write]:
        """Tombstones for settled deliveries and quiet entries older than the retention."""
        cutoff = now_ms - self.retention_ms
        writes: list[Write] = []
        for key, d in list(self.deliveries.items()):
            if len(writes) >= limit:
                return writes
            if d.state in SETTLED and d.settled_at <= cutoff:
                del self.deliveries[key]
                writes.append(Write(_delivery_key(*key), d.call_id, None))
        busy = {d.call_id for d in self.deliveries.values() if d.state not in SETTLED}
        for call_id, entry in list(self.entries.items()):
            if len(writes) >= limit:
                break
            if entry.updated_at <= cutoff and call_id not in busy:
                del self.entries[call_id]
                writes.append(Write(_entry_key(call_id), call_id, None))
        return writes

    # -- records -----------------------------------------------------------------------
    def _write(self, d: Delivery, body: str | None = None) -> Write:
        value = d.to_json()
        if body is not None and d.state not in SETTLED:
            value["body"] = body
        return Write(_delivery_key(d.subscription_id, d.event_id), d.call_id, value)

    def _attempt(
        self,
        d: Delivery,
        attempt: int,
        result: Result,
        outcome: str,
        now_ms: int,
        sub: Subscription | None,
        body: str | None = None,
    ) -> dict[str, Any]:
        return {
            "envelope": envelope(
                d.call_id, PRODUCER, now_ms, derived_id(d.webhook_id, f"attempt/{attempt}")
            ),
            "subscription_id": d.subscription_id,
            "webhook_id": d.webhook_id,
            "source_event_id": d.event_id,
            "event_type": d.event_type,
            "business_id": d.business_id,
            "url": sub.url if sub else "",
            "attempt": attempt,
            "status_code": result.status,
            "error": result.error[:500],
            "latency_ms": result.latency_ms,
            "outcome": outcome,
            "next_attempt_at": d.next_at if outcome == "retrying" else None,
            "attempted_at": now_ms,
            "body": body if body is not None else d.body,
        }


def subscriptions_from(records: Iterable[Mapping[str, Any]]) -> dict[str, Subscription]:
    return {str(r["id"]): Subscription.from_record(r) for r in records}
