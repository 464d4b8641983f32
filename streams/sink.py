"""The ClickHouse sink: `call-events` -> `call_events_log`, in batches, at least once.

It follows several topics in one consumer: the history, `billing` (CallRated ->
`billing_records_log`) and `webhook-deliveries` (WebhookAttempt ->
`webhook_deliveries_log`); each record goes to its record type's table
(`streams.projection.table_row`), each table's rows in one insert per batch.

It runs inside the worker as a thread with its own confluent-kafka consumer (group
``<app id>-clickhouse-sink``) rather than as a per-event Faust agent: batches of thousands
of records are decoded and inserted at once, and offsets are committed only after
ClickHouse accepted the batch, so a crash re-delivers (and ReplacingMergeTree folds the
copies) but never loses an event. Records that cannot be decoded are parked on the
dead-letter topic with headers naming their origin, then skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)
from prometheus_client import Histogram

from schemas.codec import Codec, CodecError
from streams.clickhouse import ClickHouseStore
from streams.projection import ProjectionError, Row, table_row
from trunkline.core import kafka

log = logging.getLogger("trunkline.sink")

#: one insert's time (the sink's /metrics; its counts come from SinkStats)
INSERT_SECONDS = Histogram(
    "trunkline_sink_insert_seconds",
    "One batch's insert into ClickHouse, retries included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


@dataclass
class SinkStats:
    inserted: int = 0
    batches: int = 0
    dead_lettered: int = 0
    last_batch_size: int = 0
    last_insert_ms: float = 0.0
    errors: int = 0
    started_at: float = field(default_factory=time.time)
    first_message_at: float = 0.0  # wall clock of the first record consumed
    last_commit_at: float = 0.0  # wall clock of the latest commit

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ClickHouseSink:
    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str | list[str],
        dead_letter_topic: str,
        group_id: str,
        codec: Codec,
        store: ClickHouseStore,
        batch_size: int = 10_000,
        flush_interval: float = 2.0,
    ) -> None:
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.topic = self.topics[0]
        self.dead_letter_topic = dead_letter_topic
        self.codec = codec
        self.store = store
        self.batch_size = batch_size
        # seconds between inserts: each insert is a new part on disk, and merging parts
        # rewrites them; on the local stack's one disk, inserts twice a second stalled the
        # broker's writes (TRUNKLINE_SINK_FLUSH_MS, docs/design.md)
        self.flush_interval = flush_interval
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bootstrap = bootstrap
        self.group_id = group_id

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="clickhouse-sink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------
    # Two stages overlap: while batch N is inserted (ClickHouse works outside the GIL),
    # batch N+1 is consumed, decoded and turned into rows. Offsets of batch N are
    # committed only once its insert succeeded, in order.
    def _run(self) -> None:
        consumer = kafka.consumer(
            self._bootstrap,
            self.group_id,
            # the sink stores every flush_interval anyway: let the broker gather 64 KiB
            # (or wait 200 ms) per fetch instead of answering each new record at once
            **{"fetch.wait.max.ms": 200, "fetch.min.bytes": 65536, "queued.min.messages": 200_000},
        )
        dlq = kafka.Producers(self._bootstrap, ("config",), name="dead-letters")
        consumer.subscribe(self.topics)
        inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert")
        in_flight: tuple[Future[None], list[TopicPartition], int] | None = None
        pending: list[Message] = []
        deadline = time.monotonic() + self.flush_interval
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=self.batch_size - len(pending), timeout=0.1)
                if msgs and not self.stats.first_message_at:
                    self.stats.first_message_at = time.time()
                for msg in msgs:
                    err = msg.error()
                    if err is None:
                        pending.append(msg)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", err)
                full = len(pending) >= self.batch_size
                if pending and (full or time.monotonic() >= deadline):
                    rows, offsets = self._prepare(dlq, pending)
                    pending = []
                    if in_flight is not None:
                        self._finish(consumer, in_flight)
                    in_flight = (inserter.submit(self._insert, rows), offsets, _count(rows))
                elif in_flight is not None and in_flight[0].done():
                    self._finish(consumer, in_flight)
                    in_flight = None
                if not pending:
                    deadline = time.monotonic() + self.flush_interval
            if pending:
                rows, offsets = self._prepare(dlq, pending)
                if in_flight is not None:
                    self._finish(consumer, in_flight)
                in_flight = (inserter.submit(self._insert, rows), offsets, _count(rows))
            if in_flight is not None:
                self._finish(consumer, in_flight)
        finally:
            inserter.shutdown(wait=True)
            dlq.close()
            consumer.close()

    def _prepare(
        self, dlq: kafka.Producers, msgs: list[Message]
    ) -> tuple[dict[str, list[Row]], list[TopicPartition]]:
        """Decode a batch into rows per table; park what cannot be decoded. Returns the
        rows and the offsets to commit once they are stored."""
        rows: dict[str, list[Row]] = {}
        seen: set[tuple[str, str]] = set()
        parked = self.stats.dead_lettered
        decode = self.codec.decode
        for msg in msgs:
            try:
                name, record = decode(msg.value() or b"")
                # the record's Kafka timestamp: when its producer sent it (event_row)
                kind, published_ms = msg.timestamp()
                table, row = table_row(
                    name,
                    record,
                    msg.partition() or 0,
                    msg.offset() or 0,
                    published_ms if kind != TIMESTAMP_NOT_AVAILABLE else None,
                )
                key = (table, record["envelope"]["event_id"])
            except (CodecError, ProjectionError, KeyError, TypeError, ValueError) as exc:
                self._dead_letter(dlq, msg, exc)
                continue
            if key in seen:  # the same record twice in one batch
                continue
            seen.add(key)
            rows.setdefault(table, []).append(row)
        if self.stats.dead_lettered != parked:
            dlq.flush(30)  # raises when the dead-letter topic did not take them: no commit
        offsets: dict[tuple[str, int], int] = {}
        for msg in msgs:
            key = (msg.topic() or "", msg.partition() or 0)
            offsets[key] = max(offsets.get(key, -1), (msg.offset() or 0) + 1)
        return rows, [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

    def _insert(self, rows: dict[str, list[Row]]) -> None:
        """Insert, retrying with backoff while ClickHouse refuses: hold, never drop."""
        backoff = 0.2
        first_try = time.perf_counter()
        while True:
            try:
                started = time.perf_counter()
                for table, table_rows in rows.items():
                    self.store.insert_rows(table, table_rows)
                self.stats.last_insert_ms = (time.perf_counter() - started) * 1000
                INSERT_SECONDS.observe(time.perf_counter() - first_try)
                return
            except Exception as exc:
                self.stats.errors += 1
                log.error(
                    "insert of %d rows failed, retrying in %.1fs: %s", _count(rows), backoff, exc
                )
                if self._stop.wait(backoff) and backoff >= 5:
                    raise  # stopping and still refused: leave the offsets uncommitted
                backoff = min(backoff * 2, 10.0)

    def _finish(
        self, consumer: Consumer, in_flight: tuple[Future[None], list[TopicPartition], int]
    ) -> None:
        future, offsets, n = in_flight
        future.result()  # raises if the insert gave up: nothing is committed
        if offsets:
            # a broker outage leaves no coordinator to commit to: wait for it (the rows
            # are stored; only their commit waits), never die
            kafka.commit(consumer, offsets, self._stop)
        self.stats.inserted += n
        self.stats.last_commit_at = time.time()
        self.stats.batches += 1
        self.stats.last_batch_size = n

    def _dead_letter(self, dlq: kafka.Producers, msg: Message, exc: Exception) -> None:
        self.stats.dead_lettered += 1
        log.warning(
            "parking undecodable record %s[%s]@%s: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            exc,
        )
        dlq.produce(
            self.dead_letter_topic,
            msg.key(),
            msg.value(),
            headers=[
                ("source.topic", (msg.topic() or "").encode()),
                ("source.partition", str(msg.partition()).encode()),
                ("source.offset", str(msg.offset()).encode()),
                ("error", str(exc).encode()[:1000]),
            ],
        )


def _count(rows: dict[str, list[Row]]) -> int:
    return sum(len(r) for r in rows.values())
