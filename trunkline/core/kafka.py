"""The one Kafka module: every service's producers, followers and readers come from here.

Producer profiles (`PROFILES`), each idempotent with ``acks=all`` and murmur2 keys
(``partitioner=murmur2_random``, so a key lands in the partition Faust/aiokafka read it
from):

- ``decision``: records someone waits for on the call path (an offer to admission, a
  decision to an edge, an assignment to a media node). Linger 1 ms, and only refused
  records are reported (a Python callback per record woke the poll thread, which then
  queued for the GIL the SIP loop held).
- ``history``: records nothing on the call path waits for (call-events, table
  changelogs). Linger `HISTORY_LINGER_MS`: librdkafka puts one partition in each
  ProduceRequest (librdkafka issue 1700), so records that linger together share one.
- ``config``: operator tools (config apply, heartbeats stand-in, tests): every delivery
  is reported, and `publish_all` waits for each acknowledgement.

`Producers` holds one process's producers and the one thread that polls them all;
refused records are collected and raised by `Producers.flush`, so a caller that commits
consumer offsets after a flush never commits past a lost record.

Reading: `KeyFollower` follows the one partition a key hashes to (the SIP edge's
decisions, a media node's assignments), `CompactedFollower` follows every partition of a
compacted topic from its start (config), `read_compacted` takes a snapshot of one, and
`consumer` builds a group consumer for batch readers (the ClickHouse sink). `commit`
retries a commit the broker could not take (during an outage the group coordinator is
gone; the records are not lost, only their commit waits).

Partitions are computed with aiokafka's murmur2 (`partition_for`), the same function
Faust's producer uses.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

log = logging.getLogger("trunkline.kafka")


class RepeatFilter(logging.Filter):
    """Lets a message through at most once per `every` seconds (numbers in it do not
    count: "after 0ms" and "after 1ms" are the same message); the next one that passes
    says how many were held back. librdkafka retries a broker that is away many times a
    second, and a log line per attempt buried everything else during an outage."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = _DIGITS.sub("#", text)
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (0.0, 0))
            if last and now - last < self.every:
                self._seen[key] = (last, held + 1)
                return False
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg, record.args = f"{text} ({held} more like it held back)", ()
        return True


_DIGITS = re.compile(r"\d+")
#: where every client of this module sends librdkafka's own log lines (confluent-kafka
#: hands them over when the client is polled), repeats held back
LIBRDKAFKA_LOG = logging.getLogger("trunkline.kafka.librdkafka")
LIBRDKAFKA_LOG.addFilter(RepeatFilter())

Profile = Literal["decision", "history", "config"]
#: what the history profile waits to fill a partition's batch; the sink stores
#: call-events every 2 s (TRUNKLINE_SINK_FLUSH_MS), and only a recovery reads changelogs
HISTORY_LINGER_MS = 50

_COMMON: dict[str, Any] = {
    "enable.idempotence": True,  # ordered, no duplicates on retry
    "acks": "all",
    "partitioner": "murmur2_random",  # aiokafka's and the Java client's key hashing
    "log_level": 4,
    "logger": LIBRDKAFKA_LOG,
    # librdkafka backs off reconnecting up to 10 s by default: after a broker restart a
    # media node's heartbeats could arrive that much later than the worker's ticks, past
    # routing's grace (streams/routing.py). 1 s, like the Java client.
    "reconnect.backoff.max.ms": 1000,
}
PROFILES: dict[Profile, dict[str, Any]] = {
    "decision": {**_COMMON, "linger.ms": 1, "delivery.report.only.error": True},
    "history": {**_COMMON, "linger.ms": HISTORY_LINGER_MS, "delivery.report.only.error": True},
    "config": {**_COMMON, "linger.ms": 2, "compression.type": "lz4"},
}


#: records `Producers.produce_batch` leaves room for in librdkafka's local queue
#: (queue.buffering.max.messages is 100,000)
BATCH_QUEUE_ROOM = 90_000


class PublishError(RuntimeError):
    """Records the broker did not take (or did not acknowledge in time)."""


class PublishTimeout(PublishError):
    """Records still queued when a flush's time ran out: not refused (librdkafka keeps
    retrying them until ``message.timeout.ms``), only not acknowledged yet."""


def producer_config(bootstrap: str, profile: Profile = "config", **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **PROFILES[profile], **extra}


def make_producer(bootstrap: str, profile: Profile = "config", **extra: Any) -> Producer:
    """A single producer of `profile` (for tools that produce and flush on their own)."""
    return Producer(producer_config(bootstrap, profile, **extra))


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a murmur2-partitioned producer (Faust, Java, librdkafka) picks."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


# -- producing ------------------------------------------------------------------------
class Producers:
    """One process's producers, one per profile it uses, polled by one thread.

    `produce` never blocks the caller for long: when librdkafka's local queue is full it
    polls until there is room. Refused records are counted and raised by `flush`.
    """

    def __init__(
        self,
        bootstrap: str,
        profiles: Iterable[Profile] = ("decision",),
        name: str = "kafka",
        overrides: Mapping[Profile, Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        """`extra` applies to every producer; `overrides` to one profile's."""
        over = overrides or {}
        self._producers: dict[Profile, Producer] = {
            p: Producer(producer_config(bootstrap, p, **extra, **over.get(p, {})))
            for p in dict.fromkeys(profiles)
        }
        self._default: Profile = next(iter(self._producers))
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self.sent = 0
        self.refused = 0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=f"{name}-poll", daemon=True)
        self._poller.start()

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int = -1,
        profile: Profile | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Queue one record; ``partition`` -1 lets the murmur2 partitioner choose."""
        producer = self._producers[profile or self._default]
        while True:
            try:
                if headers:
                    producer.produce(
                        topic,
                        value,
                        key,
                        partition=partition,
                        on_delivery=self._delivered,
                        headers=headers,
                    )
                else:
                    producer.produce(
                        topic, value, key, partition=partition, on_delivery=self._delivered
                    )
                break
            except BufferError:  # the local queue is full: let librdkafka drain it
                producer.poll(0.005)
        self.sent += 1

    def produce_batch(
        self,
        topic: str,
        records: list[tuple[bytes | None, bytes | None]],
        *,
        partition: int = -1,
        profile: Profile | None = None,
    ) -> None:
        """Queue (key, value) records of one topic, in order, in one call: librdkafka
        takes its queue lock once for them, not once per record. Every record goes to
        `partition` (-1: each key's murmur2 partition; librdkafka's batch call ignores a
        partition per record). Waits for room in the local queue first, like `produce`;
        a record refused anyway is counted and raised by `flush`."""
        producer = self._producers[profile or self._default]
        messages: list[dict[str, Any]] = [{"key": k, "value": v} for k, v in records]
        while len(producer) and len(producer) + len(messages) > BATCH_QUEUE_ROOM:
            producer.poll(0.005)  # room first: a batch refused half-way could not be retried
        queued = producer.produce_batch(
            topic, messages, partition=partition, on_delivery=self._delivered
        )
        if queued != len(messages):
            refused = [f"{topic}: {m['_error']}" for m in messages if "_error" in m]
            with self._lock:
                self.refused += len(refused)
                self._errors += refused
            log.error("produce to %s refused %d record(s): %s", topic, len(refused), refused[:3])
        self.sent += queued

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self.refused += 1
                self._errors.append(f"{msg.topic()}: {err}")
            log.error("produce to %s failed: %s", msg.topic(), err)

    def _poll(self) -> None:
        producers = list(self._producers.values())
        first, rest = producers[0], producers[1:]
        while not self._stop.is_set():
            for p in rest:
                p.poll(0)
            first.poll(0.05)

    def refused_pending(self) -> bool:
        """Refused records that the next `flush` will raise for."""
        with self._lock:
            return bool(self._errors)

    def queued(self) -> int:
        """Records not yet acknowledged, every profile."""
        return sum(len(p) for p in self._producers.values())

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued record is acknowledged; raise if any was refused."""
        deadline = time.monotonic() + timeout
        remaining = sum(
            p.flush(max(0.0, deadline - time.monotonic())) for p in self._producers.values()
        )
        if remaining:
            raise PublishTimeout(f"{remaining} record(s) not acknowledged in {timeout:.0f}s")
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise PublishError(f"{len(errors)} record(s) refused: {errors[:3]}")

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poller.join(1)
        for p in self._producers.values():
            p.flush(timeout)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None  # None: tombstone
    partition: int | None = None  # None: the key's murmur2 partition


def publish_all(producer: Producer, messages: Iterable[Outgoing], timeout: float = 30.0) -> int:
    """Produce every message and wait for all acknowledgements; raise on any failure."""
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()} key={msg.key()!r}: {err}")

    count = 0
    for m in messages:
        while True:
            try:
                if m.partition is None:
                    producer.produce(m.topic, key=m.key, value=m.value, on_delivery=on_delivery)
                else:
                    producer.produce(
                        m.topic, key=m.key, value=m.value, partition=m.partition,
                        on_delivery=on_delivery,
                    )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.1)
            except KafkaException as exc:
                raise PublishError(f"cannot produce to {m.topic}: {exc}") from exc
        count += 1
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining:
        raise PublishError(f"{remaining} message(s) not acknowledged within {timeout:.0f}s")
    if errors:
        raise PublishError("delivery failed:\n  " + "\n  ".join(errors[:20]))
    return count


# -- consuming --------------------------------------------------------------------------
def consumer(bootstrap: str, group_id: str, **extra: Any) -> Consumer:
    """A group consumer that commits only when told (`commit`), from the earliest offset
    for a new group: batch readers store first, then commit, so a crash re-delivers."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "log_level": 4,
        "logger": LIBRDKAFKA_LOG,
    }
    conf.update(extra)
    return Consumer(conf)


#: commit errors that mean "not now" (no coordinator during a broker outage, a
#: rebalance in progress), not "never"
_RETRIABLE_COMMIT = {
    KafkaError._WAIT_COORD,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.NETWORK_EXCEPTION,
}

#: the partitions were reassigned: the new owner resumes from the last committed offset
_LOST_PARTITIONS = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._NO_OFFSET,
}


def commit(
    consumer: Consumer,
    offsets: list[TopicPartition],
    stop: threading.Event | None = None,
    max_backoff: float = 5.0,
) -> bool:
    """Commit `offsets` synchronously, retrying while the broker cannot take the commit.

    Returns False when the partitions were taken away meanwhile (a rebalance: the new
    owner re-reads from the last commit, which is at-least-once, not a loss) or `stop`
    was set; True once committed. Other errors raise. While it waits it says so once,
    then every `QUIET_S` seconds, and once more when the commit is taken."""
    backoff = 0.1
    started = time.monotonic()
    said = 0.0
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            if said:
                log.info("commit taken after %.0f s", time.monotonic() - started)
            return True
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code in _LOST_PARTITIONS:
                log.warning("commit dropped after a rebalance: %s", exc)
                return False
            if code not in _RETRIABLE_COMMIT:
                raise
            now = time.monotonic()
            if not said or now - said >= QUIET_S:
                log.warning("commit not taken (%s); retrying for %.0f s so far", exc, now - started)
                said = now
        if stop is not None and stop.wait(backoff):
            return False
        if stop is None:
            time.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


#: while a broker is away, a waiting client says so this often
QUIET_S = 10.0


def _topic_partitions(c: Consumer, topic: str, timeout: float) -> list[int]:
    meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise PublishError(f"topic {topic} is missing: run `trunkline topics apply`")
    return sorted(meta.partitions)


def read_compacted(bootstrap: str, topic: str, timeout: float = 15.0) -> dict[bytes, bytes | None]:
    """Latest value per key of a topic, start to current end (None for tombstones)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "trunkline-cli-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
            "logger": LIBRDKAFKA_LOG,
        }
    )
    try:
        parts: list[TopicPartition] = []
        ends: dict[int, int] = {}
        for p in _topic_partitions(c, topic, timeout):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                parts.append(TopicPartition(topic, p, low))
        out: dict[bytes, bytes | None] = {}
        if not parts:
            return out
        c.assign(parts)
        done: set[int] = set()
        while len(done) < len(ends):
            msg = c.poll(timeout)
            if msg is None:
                raise PublishError(f"timed out reading {topic}")
            partition, error = msg.partition() or 0, msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    done.add(partition)
                    continue
                raise PublishError(f"reading {topic}: {error}")
            out[msg.key() or b""] = msg.value()
            if (msg.offset() or 0) + 1 >= ends[partition]:
                done.add(partition)
        return out
    finally:
        c.close()


# -- replaying ranges -----------------------------------------------------------------
@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition: what a replay reads."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def _reader(bootstrap: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "trunkline-replay-reader",  # assigned, never joins or commits
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
            "logger": LIBRDKAFKA_LOG,
            **extra,
        }
    )


def offset_ranges(
    bootstrap: str,
    topics: Iterable[str],
    from_ms: int | None = None,
    to_ms: int | None = None,
    timeout: float = 15.0,
) -> list[PartitionRange]:
    """Each partition's offsets from the first record at or after `from_ms` (else the
    oldest kept) to the first at or after `to_ms` (else the end), ends taken now: a reader
    that stops there reads what existed when it started."""
    c = _reader(bootstrap)
    try:
        out = []
        for topic in topics:
            for p in _topic_partitions(c, topic, timeout):
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                start, end = low, high

                def at(ms: int, _t: str = topic, _p: int = p, _high: int = high) -> int:
                    found = c.offsets_for_times([TopicPartition(_t, _p, ms)], timeout=timeout)
                    offset = found[0].offset
                    return _high if offset < 0 else offset  # -1: no record that late

                if from_ms is not None:
                    start = max(low, at(from_ms))
                if to_ms is not None:
                    end = min(high, at(to_ms))
                out.append(PartitionRange(topic, p, start, max(start, end)))
        return out
    finally:
        c.close()


def read_ranges(
    bootstrap: str, ranges: Iterable[PartitionRange], batch: int = 10_000, timeout: float = 30.0
) -> Iterable[list[Message]]:
    """The records of `ranges`, in batches (each partition's in order), until every range
    is read to its end; PublishError when nothing arrives for `timeout` seconds."""
    todo = {(r.topic, r.partition): r for r in ranges if r.size}
    if not todo:
        return
    c = _reader(bootstrap, **{"queued.min.messages": 100_000, "fetch.wait.max.ms": 50})
    try:
        c.assign([TopicPartition(t, p, r.start) for (t, p), r in todo.items()])
        quiet_since = time.monotonic()
        while todo:
            msgs = c.consume(num_messages=batch, timeout=0.5)
            out = []
            for msg in msgs:
                key = (msg.topic() or "", msg.partition() or 0)
                r = todo.get(key)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if r is not None and (msg.offset() or 0) >= r.end:
                            del todo[key]
                        continue
                    raise PublishError(f"reading {key[0]}[{key[1]}]: {err}")
                if r is None or (msg.offset() or 0) >= r.end:
                    continue  # past this range's end (other partitions still read)
                out.append(msg)
                if (msg.offset() or 0) + 1 >= r.end:
                    del todo[key]
            if out:
                quiet_since = time.monotonic()
                yield out
            elif time.monotonic() - quiet_since > timeout:
                left = ", ".join(f"{t}[{p}]" for t, p in sorted(todo))
                raise PublishError(f"no record for {timeout:.0f}s while reading {left}")
    finally:
        c.close()


def topic_exists(bootstrap: str, topic: str, timeout: float = 15.0) -> bool:
    c = _reader(bootstrap)
    try:
        meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        return meta is not None and meta.error is None
    except KafkaException as exc:
        raise PublishError(f"cannot list topics at {bootstrap}: {exc}") from exc
    finally:
        c.close()


def committed_offsets(
    bootstrap: str, group: str, partitions: Iterable[tuple[str, int]], timeout: float = 15.0
) -> dict[tuple[str, int], int]:
    """A consumer group's committed offsets (-1: none), read without joining it."""
    c = _reader(bootstrap, **{"group.id": group})
    try:
        asked = [TopicPartition(t, p) for t, p in partitions]
        if not asked:
            return {}
        try:
            found = c.committed(asked, timeout=timeout)
        except KafkaException as exc:
            raise PublishError(f"committed offsets of {group}: {exc}") from exc
        return {(tp.topic, tp.partition): tp.offset for tp in found}
    finally:
        c.close()


class _Follower:
    """A thread that polls an assigned consumer and hands each record to a callback."""

    def __init__(self, name: str, c: Consumer, on_message: Callable[[Message], None]) -> None:
        self._consumer = c
        self._on_message = on_message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._consumer.poll(0.1)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.debug("%s: %s", self._thread.name, error)
                    continue
                try:
                    self._on_message(msg)
                except Exception:  # one bad record must not stop the follower
                    log.exception("%s: record at offset %s", self._thread.name, msg.offset())
        finally:
            self._consumer.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class KeyFollower(_Follower):
    """Follows the one partition of `topic` that `key` hashes to, handing on only the
    records under `key` (an edge's decisions, a media node's assignments). It starts
    `lookback` records before the partition's end, or at the first record of `start_ms`
    or later (a dialer re-reading its journal), and is assigned (not subscribed: no group
    join) before the constructor returns, so nothing produced after it is missed.
    `caught_up` is set once the records that existed at the start were handed on."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topic: str,
        key: str,
        on_value: Callable[[bytes], None],
        lookback: int = 0,
        start_ms: int | None = None,
        **extra: Any,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            "log_level": 4,
            "logger": LIBRDKAFKA_LOG,
            **extra,
        }
        c = Consumer(conf)
        try:
            partitions = _topic_partitions(c, topic, 10)
            partition = partition_for(key.encode(), len(partitions))
            low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(low, high - lookback)
            if start_ms is not None:
                found = c.offsets_for_times([TopicPartition(topic, partition, start_ms)], 10)
                start = found[0].offset if found and found[0].offset >= 0 else high
            c.assign([TopicPartition(topic, partition, start)])
        except BaseException:
            c.close()
            raise
        wanted = key.encode()
        self.caught_up = threading.Event()
        if start >= high:
            self.caught_up.set()

        def on_message(msg: Message) -> None:
            value = msg.value()
            if msg.key() == wanted and value is not None:
                on_value(value)
            if not self.caught_up.is_set() and (msg.offset() or 0) + 1 >= high:
                self.caught_up.set()

        super().__init__(f"follow-{topic}-{key}", c, on_message)


class CompactedFollower(_Follower):
    """Follows every partition of a compacted topic from its start: `on_record(key,
    value)` for each record, value None for a tombstone (config topics). `caught_up` is
    set once every record that existed when it started has been handed on, so a service
    can wait for its config before it takes traffic."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topic: str,
        on_record: Callable[[str, bytes | None], None],
    ) -> None:
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "log_level": 3,
                "logger": LIBRDKAFKA_LOG,
            }
        )
        ends: dict[int, int] = {}
        try:
            partitions = _topic_partitions(c, topic, 10)
            for p in partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    ends[p] = high
            c.assign([TopicPartition(topic, p, 0) for p in partitions])
        except BaseException:
            c.close()
            raise
        self.caught_up = threading.Event()
        if not ends:
            self.caught_up.set()

        def on_message(msg: Message) -> None:
            on_record((msg.key() or b"").decode(), msg.value())
            partition = msg.partition() or 0
            if ends and (msg.offset() or 0) + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
                if not ends:
                    self.caught_up.set()

        super().__init__(f"follow-{topic}", c, on_message)


class BrokerWatch:
    """Whether the brokers are reachable, for services that must answer at once when they
    are not (the SIP edge answers 503 with Retry-After instead of letting callers wait for
    a decision that cannot come).

    Pass `on_error` as a client's librdkafka ``error_cb``: "all brokers down" marks the
    cluster unavailable, and a probe thread asks for metadata every `probe_interval`
    seconds until a broker answers again."""

    def __init__(self, bootstrap: str, probe_interval: float = 0.5) -> None:
        self._bootstrap = bootstrap
        self._interval = probe_interval
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return not self._down.is_set()

    def on_error(self, err: KafkaError) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            return
        with self._lock:
            if self._down.is_set():
                return
            log.warning("Kafka brokers unreachable (%s): answering as unavailable", err)
            self._down.set()
            self._probe = threading.Thread(target=self._wait_up, name="broker-probe", daemon=True)
            self._probe.start()

    def _wait_up(self) -> None:
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": self._bootstrap, "log_level": 0})
        while True:
            try:
                client.list_topics(timeout=self._interval)
                break
            except KafkaException:
                time.sleep(self._interval)
        with self._lock:
            self._down.clear()
        log.warning("Kafka brokers reachable again")


# -- consumer lag ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int  # the group's committed offset (the next record it will read)
    end: int  # the partition's end (the next offset a producer will write)

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class GroupLag:
    """How far consumer groups trail their partitions: each group's committed offsets
    against the partitions' ends, as Kafka's tools and lag exporters measure it. One
    admin client, kept across calls; every request is bounded by `timeout`. A group
    shows the partitions it has committed offsets for (a new group, none yet).

    Committed offsets move at each commit (the worker every second, the sink after each
    insert), so the lag includes what was read but not yet committed."""

    def __init__(self, bootstrap: str, groups: Iterable[str], timeout: float = 2.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.groups = list(groups)
        self.timeout = timeout
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "log_level": 3,
            "logger": LIBRDKAFKA_LOG,
        }
        self._admin = AdminClient(conf)

    def measure(self) -> list[Lag]:
        """Every (group, topic, partition) with a committed offset. Raises
        KafkaException when the broker does not answer within the timeout."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        committed: dict[tuple[str, str, int], int] = {}
        asked = [ConsumerGroupTopicPartitions(g) for g in self.groups]
        futures = self._admin.list_consumer_group_offsets(asked, request_timeout=self.timeout)
        for group, future in futures.items():
            for tp in future.result().topic_partitions or []:
                if tp.error is None and tp.offset >= 0:
                    committed[(group, tp.topic, tp.partition)] = tp.offset
        if not committed:
            return []
        partitions = {TopicPartition(t, p) for _, t, p in committed}
        ends = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
            request_timeout=self.timeout,
        )
        end = {(tp.topic, tp.partition): f.result().offset for tp, f in ends.items()}
        return [
            Lag(g, t, p, offset, end[(t, p)])
            for (g, t, p), offset in sorted(committed.items())
            if (t, p) in end
        ]


# -- consumer groups (table generations: trunkline replay) -------------------------------
def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    # no `logger`: librdkafka hands logs to a Python logger through the main queue, which
    # only poll() serves, and these calls wait on their futures without polling
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 4}
    return AdminClient(conf)


def group_members(bootstrap: str, groups: Iterable[str], timeout: float = 15.0) -> dict[str, int]:
    """How many members each consumer group has now (0: empty or unknown group)."""
    out = dict.fromkeys(groups, 0)
    # only groups that exist are described (the broker answers an unknown one with an
    # error, NOT_COORDINATOR on Kafka 4.1, instead of an empty group)
    known = set(group_ids(bootstrap, timeout))
    asked = [g for g in out if g in known]
    if not asked:
        return out
    client = _admin(bootstrap)  # kept until the futures are done (else: _DESTROY)
    futures = client.describe_consumer_groups(asked, request_timeout=timeout)
    for group, future in futures.items():
        try:
            out[group] = len(future.result().members or [])
        except KafkaException as exc:
            raise PublishError(f"describing consumer group {group}: {exc}") from exc
    return out


def set_group_offsets(
    bootstrap: str, group: str, offsets: Mapping[tuple[str, int], int], timeout: float = 15.0
) -> None:
    """Commit `offsets` ((topic, partition) -> the next offset to read) for a consumer
    group that has no members (a new one), without joining it."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    if not offsets:
        return
    tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    client = _admin(bootstrap)  # kept until the futures are done (else: _DESTROY)
    futures = client.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout
    )
    for future in futures.values():
        try:
            result = future.result()
        except KafkaException as exc:
            raise PublishError(f"committing offsets of {group}: {exc}") from exc
        failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
        if failed:
            raise PublishError(
                f"committing offsets of {group}: "
                + ", ".join(f"{tp.topic}[{tp.partition}] {tp.error}" for tp in failed[:4])
            )


def group_ids(bootstrap: str, timeout: float = 15.0) -> list[str]:
    """Every consumer group the cluster knows."""
    try:
        client = _admin(bootstrap)
        result = client.list_consumer_groups(request_timeout=timeout).result()
    except KafkaException as exc:
        raise PublishError(f"listing consumer groups at {bootstrap}: {exc}") from exc
    return sorted(g.group_id for g in result.valid)


def delete_groups(bootstrap: str, groups: Iterable[str], timeout: float = 15.0) -> list[str]:
    """Delete consumer groups (they must have no members); returns those deleted."""
    asked = list(groups)
    if not asked:
        return []
    client = _admin(bootstrap)  # kept until the futures are done (else: _DESTROY)
    futures = client.delete_consumer_groups(asked, request_timeout=timeout)
    deleted = []
    for group, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise PublishError(f"deleting consumer group {group}: {exc}") from exc
        deleted.append(group)
    return deleted
