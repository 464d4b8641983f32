"""What the machines emit goes out through the Kafka module's producers, not Faust's.

Faust's ``Topic.send`` costs the worker's only thread roughly 100-150 us per record
(futures, channel machinery, aiokafka's pure-Python accumulator and sender); librdkafka
batches and talks to the broker on its own threads, so a ``produce`` is a few
microseconds of the caller's time, and each record is encoded once however many topics it
goes to.

At-least-once is kept: Faust flushes its producer before it commits consumer offsets, and
`streams.patches.flush_with_faust` makes that flush wait for the emitter too, so an
offset is never committed ahead of the records its events caused. A refused record raises
from that flush: the commit does not happen, and the events are processed again after the
restart (every handler is idempotent by event id).

Records someone waits for (the next hop, an edge's decision, a media node's assignment)
leave through the ``decision`` profile; the call's history (call-events) and the tables'
changelogs through the lingering ``history`` profile (trunkline.core.kafka).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.codec import Codec
from trunkline.core.events import Emit
from trunkline.core.kafka import HISTORY_LINGER_MS, Producers, PublishError

#: destinations nothing on the call path waits for
HISTORY_DESTS = frozenset({"call-events"})
#: what a failed flush raises: the offsets behind the refused records must not be committed
EmitError = PublishError


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
        self.out = Producers(
            bootstrap,
            ("decision", "history"),
            name="emitter",
            overrides={"history": {"linger.ms": history_linger_ms}},
            **conf,
        )

    @property
    def sent(self) -> int:
        return self.out.sent

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
        """Queue one record; ``partition`` -1 lets the murmur2 partitioner choose;
        ``history`` sends it through the lingering producer."""
        self.out.produce(
            topic, key, value, partition=partition, profile="history" if history else "decision"
        )

    def queued(self) -> int:
        """Records not yet acknowledged, both producers."""
        return self.out.queued()

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued record is acknowledged; raise if any was refused."""
        self.out.flush(timeout)

    async def flush_async(self, timeout: float = 30.0) -> None:
        if self.queued() == 0 and not self.out.refused_pending():
            return
        await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def close(self) -> None:
        self.out.close()
