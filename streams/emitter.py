"""What the machines emit goes out through one confluent-kafka producer, not Faust's.

Faust's ``Topic.send`` costs the worker's only thread roughly 100-150 us per record
(futures, channel machinery, aiokafka's pure-Python accumulator and sender); a call
crosses about eleven sends, so at 300 calls/s sends alone took most of a core and a
RoutingTick that expired 30 calls held the routing agent for 50-70 ms. librdkafka
batches and talks to the broker on its own threads: a ``produce`` is a few microseconds
of the caller's time, and each record is encoded once however many topics it goes to.

At-least-once is kept: Faust flushes its producer before it commits consumer offsets,
and `install_flush_hook` makes that flush wait for this producer too, so an offset is
never committed ahead of the records its events caused. A delivery failure raises from
that flush: the commit does not happen, and the events are processed again after the
restart (every handler is idempotent by event id).

Keys are partitioned with murmur2 (``murmur2_random``), as aiokafka and the Java client do,
so a record lands in the partition Faust reads it from.

Two producers. Records that someone is waiting for (the next hop, the edge's decision,
the media node's assignment) leave through one that lingers 1 ms. The call's history
(call-events) and the tables' changelogs leave through a second that lingers
`HISTORY_LINGER_MS`: nothing waits for them on the call path, and librdkafka puts one
partition in each ProduceRequest (librdkafka issue 1700), so records that linger together
in a partition share a request. Both producers are flushed before every offset commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Producer

from schemas.codec import Codec
from streams.events import Emit

log = logging.getLogger("trunkline.emitter")
#: what the history and changelog producer waits to fill a partition's batch; the sink
#: stores call-events every 2 s (TRUNKLINE_SINK_FLUSH_MS), and only a recovery reads the
#: changelogs
HISTORY_LINGER_MS = 50
#: destinations nothing on the call path waits for
HISTORY_DESTS = frozenset({"call-events"})


class EmitError(RuntimeError):
    """Records the broker did not take; the offsets behind them must not be committed."""


class Emitter:
    def __init__(
        self,
        bootstrap: str,
        codec: Codec,
        topics: Mapping[str, str],
        history_linger_ms: int = HISTORY_LINGER_MS,
        **conf: Any,
    ) -> None:
        self.codec = codec
        self.topics = dict(topics)
        settings = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # ordered, no duplicates on retry
            "acks": "all",
            "linger.ms": 1,
            "partitioner": "murmur2_random",
            "log_level": 4,
            # a Python callback per record cost the poll thread ~10% of the worker's
            # samples; only failures matter (they fail the next flush)
            "delivery.report.only.error": True,
            **conf,
        }
        self.producer = Producer(settings)
        self.history = Producer({**settings, "linger.ms": history_linger_ms})
        self._producers = (self.producer, self.history)
        self.sent = 0
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="emitter-poll", daemon=True)
        self._poller.start()

    # -- producing --------------------------------------------------------------------
    def emit(self, emits: Iterable[Emit], encoded: dict[int, bytes] | None = None) -> None:
        """Queue every record (non-blocking unless librdkafka's queue is full).

        ``encoded`` maps ``id(record)`` to bytes already at hand for that record (an
        input passed on unchanged), so it is not encoded again; it is used as this call's
        cache, so pass a mapping made for the call."""
        encoded = {} if encoded is None else encoded
        for e in emits:  # fan-out shares one record object: encode it once
            value = encoded.get(id(e.record))
            if value is None:
                value = encoded[id(e.record)] = self.codec.encode(e.name, e.record)
            self.send_raw(
                self.topics[e.dest], e.key.encode(), value, history=e.dest in HISTORY_DESTS
            )

    def send_raw(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int = -1,
        history: bool = False,
    ) -> None:
        """Queue one record; ``partition`` -1 (librdkafka's unassigned) lets the murmur2
        partitioner choose; ``history`` sends it through the lingering producer."""
        producer = self.history if history else self.producer
        while True:
            try:
                producer.produce(
                    topic, value, key, partition=partition, on_delivery=self._delivered
                )
                break
            except BufferError:  # the local queue is full: let librdkafka drain it
                producer.poll(0.005)
        self.sent += 1

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")
            log.error("emit to %s failed: %s", msg.topic(), err)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.history.poll(0)
            self.producer.poll(0.05)

    def queued(self) -> int:
        """Records not yet acknowledged, both producers."""
        return sum(len(p) for p in self._producers)

    # -- flushing ---------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued record is acknowledged; raise if any was refused."""
        deadline = time.monotonic() + timeout
        remaining = sum(p.flush(max(0.0, deadline - time.monotonic())) for p in self._producers)
        if remaining:
            raise EmitError(f"{remaining} emitted record(s) not acknowledged in {timeout:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise EmitError(f"{len(errors)} emitted record(s) refused: {errors[:3]}")

    async def flush_async(self, timeout: float = 30.0) -> None:
        if self.queued() == 0 and not self._errors:
            return
        await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def close(self) -> None:
        self._stop.set()
        self._poller.join(1)
        for p in self._producers:
            p.flush(10)


_emitters: list[Emitter] = []


def install_flush_hook(emitter: Emitter) -> None:
    """Make Faust's producer flush (which precedes every offset commit) flush `emitter`."""
    from faust.transport.drivers import aiokafka

    _emitters.append(emitter)
    flush = aiokafka.Producer.flush
    if getattr(flush, "_trunkline", False):
        return

    async def flush_both(self: Any) -> None:
        await flush(self)
        for em in list(_emitters):
            await em.flush_async()

    flush_both._trunkline = True  # type: ignore[attr-defined]
    aiokafka.Producer.flush = flush_both  # type: ignore[method-assign]
