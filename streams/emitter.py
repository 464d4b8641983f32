"""What the machines emit goes out through the Kafka module's producers, not Faust's.

Faust's ``Topic.send`` costs the worker's only thread roughly 100-150 us per record
(futures, channel machinery, aiokafka's pure-Python accumulator and sender); librdkafka
batches and talks to the broker on its own threads, so a ``produce`` is a few
microseconds of the caller's time, and each record is encoded once however many topics it
goes to.

Records someone waits for (the next hop, an edge's decision, a media node's assignment)
leave through the ``decision`` profile at once; the call's history (call-events) through
the lingering ``history`` profile (trunkline.core.kafka).

At-least-once covers every output of an event. Faust flushes its producer before it
commits consumer offsets, and `streams.patches.flush_with_faust` makes that flush run
`Emitter.flush_async`, so an offset is never committed ahead of the records its events
caused. The tables' changelogs (`streams.app.EmittedTable`) are held back further, by
this rule:

    a changelog record is written only after every output queued before it was
    acknowledged, and acknowledged itself before the offset commit.

A flush therefore (1) takes the changelog records held so far, (2) waits until every
output queued so far is acknowledged, (3) writes those changelog records and waits for
them. A worker killed at any point leaves a changelog that is at most as far as the
outputs: the events behind a state that reached the changelog were fully emitted, and an
event whose outputs may be missing is processed again from the state before it, so it
emits them again (with the same derived ids). Were a changelog ahead of its outputs (a
kill after the changelog reached the broker and before the history batch did), the
re-processed event would find the state already moved and emit nothing: a CallEnded lost
from call-events for good, or an admitted call whose CallAdmitted never reached it.

The rule costs the decision path nothing: outputs leave as before, and only the
changelog (which nothing reads until a recovery) waits, at most a commit interval
(1 s). Held records are merged per key (a compacted changelog keeps only the last value
of a key), so a key written several times within an interval is written once.

A flush waits as long as librdkafka still tries to deliver (the broker away: records are
kept until ``message.timeout.ms``), so a broker restart does not crash the worker; a
refused record raises `EmitError`, the commit does not happen, Faust stops the worker, and
the events are processed again after the restart (every handler is idempotent by event
id).

RoutingTicks leave through a producer of their own (`Emitter.emit_ticks`): a tick is
sent only once the previous one was acknowledged, so while the broker is away no ticks
pile up to be delivered later with times that hide the outage (streams/routing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from schemas.codec import Codec
from trunkline.core.events import Emit
from trunkline.core.kafka import HISTORY_LINGER_MS, Producers, PublishError, PublishTimeout

log = logging.getLogger("trunkline.emitter")

#: destinations nothing on the call path waits for
HISTORY_DESTS = frozenset({"call-events"})
#: what a failed flush raises: the offsets behind the refused records must not be committed
EmitError = PublishError
#: while the broker is away, a flush says so this often (not once per retry)
WAITING_LOG_EVERY_S = 5.0


class Out(Protocol):
    """What the emitter needs of `trunkline.core.kafka.Producers` (tests pass a fake)."""

    sent: int

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int = -1,
        profile: Any = None,
    ) -> None: ...

    def queued(self) -> int: ...

    def refused_pending(self) -> bool: ...

    def flush(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


#: a held changelog record: (topic, partition, key) -> value (None: a tombstone)
Held = dict[tuple[str, int, bytes], bytes | None]


class Emitter:
    def __init__(
        self,
        bootstrap: str,
        codec: Codec,
        topics: Mapping[str, str],
        history_linger_ms: int = HISTORY_LINGER_MS,
        *,
        out: Out | None = None,
        ticks: Out | None = None,
        **conf: Any,
    ) -> None:
        self.codec = codec
        self.topics = dict(topics)
        self.out: Out = (
            out
            if out is not None
            else Producers(
                bootstrap,
                ("decision", "history"),
                name="emitter",
                overrides={"history": {"linger.ms": history_linger_ms}},
                **conf,
            )
        )
        if ticks is None:
            ticks = Producers(bootstrap, ("decision",), name="ticks", **conf)
        self._ticks: Out = ticks
        self._held: Held = {}
        self._flushing = asyncio.Lock()

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

    def changelog(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        """Hold a table's changelog record until the next flush has seen every output
        queued before it acknowledged (the module docstring's rule)."""
        self._held[(topic, partition, key)] = value

    def held(self) -> int:
        """Changelog records waiting for the next flush."""
        return len(self._held)

    def emit_ticks(self, ticks: Iterable[tuple[str, bytes, bytes]]) -> bool:
        """Send (topic, key, value) ticks unless the previous ones are not acknowledged
        yet (the broker away or slow); False when nothing was sent."""
        if self._ticks.queued():
            return False
        for topic, key, value in ticks:
            self._ticks.produce(topic, key, value)
        return True

    def queued(self) -> int:
        """Records not yet acknowledged (outputs and written changelogs)."""
        return self.out.queued()

    def flush(self, timeout: float | None = None) -> None:
        """Outputs acknowledged, then the changelog records held until now written and
        acknowledged. Waits while librdkafka still retries (or up to `timeout` seconds:
        `PublishTimeout`); raises `EmitError` if the broker refused a record."""
        held = self._take_held()
        try:
            self._write_after_outputs(held, timeout)
        except Exception:
            self._restore(held)
            raise

    async def flush_async(self, timeout: float | None = None) -> None:
        """`flush` without blocking the event loop. The held records are taken here, on
        the loop's thread, between two agent steps: the outputs of the events behind them
        were queued in the same step as their table writes, so they are queued already.
        Flushes run one at a time, so changelog batches are written in order."""
        async with self._flushing:
            if not self._held and self.queued() == 0 and not self.out.refused_pending():
                return
            held = self._take_held()
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self._write_after_outputs, held, timeout)
            except Exception:
                self._restore(held)  # whatever was not written yet waits for the next flush
                raise

    def _take_held(self) -> Held:
        held, self._held = self._held, {}
        return held

    def _restore(self, held: Held) -> None:
        held.update(self._held)  # records held since are newer
        self._held = held

    def _write_after_outputs(self, held: Held, timeout: float | None) -> None:
        self._wait_acknowledged(timeout)  # every output queued before `held` was taken
        for (topic, partition, key), value in held.items():
            self.out.produce(topic, key, value, partition=partition, profile="history")
        held.clear()  # written: nothing to restore from here on
        self._wait_acknowledged(timeout)

    def _wait_acknowledged(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        started = time.monotonic()
        while True:
            left = WAITING_LOG_EVERY_S if deadline is None else deadline - time.monotonic()
            try:
                self.out.flush(max(0.0, min(left, WAITING_LOG_EVERY_S)))
                return
            except PublishTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                log.warning(
                    "waiting for the broker: %d record(s) not acknowledged after %.0f s",
                    self.out.queued(),
                    time.monotonic() - started,
                )

    def close(self) -> None:
        self._ticks.close()
        self.out.close()
