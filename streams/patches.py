"""Every monkey-patch of Faust and aiokafka internals, in one place, each with its reason.

`apply()` installs them (idempotent). `tests/unit/test_patches.py` checks that every
internal a patch replaces still exists with the shape the patch expects, so an upgrade
that moves one fails the tests instead of silently dropping the patch.

1. aiokafka's Fetcher is built with short, bounded fetches (`tune_aiokafka_fetcher`):
   Faust hard-codes ``fetch_max_wait_ms=1500`` and does not expose aiokafka's
   ``prefetch_backoff`` (100 ms) or ``fetcher_timeout`` (200 ms); each of those showed as
   a per-hop stall on the decision path.
2. The fetch plan switches between the short 1 KiB poll and a long poll for one byte
   (`fetch_limits`), by patching ``Fetcher._get_actions_per_node`` and
   ``Fetcher._proc_fetch_request``: aiokafka has no hook for per-fetch limits.
3. Faust's producer flush (which precedes every offset commit) also flushes our
   emitters (`flush_with_faust`): the machines emit through librdkafka, not through
   Faust, and an offset must never be committed ahead of the records its event caused.
4. A fetched record the agents never received holds the commits back (`InFlight`,
   `hold_commits_at_undelivered`). Faust hands each record to its streams inside
   ``wait_first(callback(record), suspend_flow.wait())``: when a rebalance suspends the
   flow while the callback waits (flow control, a full queue), the record is dropped,
   while the next record may still get through in the same moment. Faust's
   ``Consumer._new_offset`` then commits over the dropped one: it takes the committed
   offset (the next one to read) for the last one read, so with 592 committed and only
   593 acked it commits 594. The restarted worker never sees 592 (a CallEnded: a plan
   slot held for good, docs/design.md). Now every record handed to the callback is
   registered until the callback returns, and no commit passes the lowest one still
   registered; Faust's seek back to the committed offsets (which ends every rebalance)
   reads the dropped records again.
5. Records reach the agents in offset order, each once, from where the last seek put the
   partition (`Sequencer`, `deliver_in_order`). After a rebalance Faust resumes the
   stream partitions *before* it seeks them to their committed offsets, and its
   ``getmany`` drops the rest of a batch when the flow stops or the generation changes
   (the consumer's position has already moved past them). So a newly assigned
   partition delivered records from far past its committed offset before the seek: a
   worker that took over a killed worker's partitions handled offers 315.. of a
   partition committed at 46, Faust's gap bookkeeping counted 47..314 as handled (it
   takes a jump in offsets for compaction), and the commit passed offers that no agent
   had seen (calls answered 302 whose plan slots nobody held). Now ``getmany`` passes on
   a record of an input topic only if it is the next one expected: before the seek that
   ends every rebalance nothing is expected (records are dropped; the seek reads them
   again), a repeat is dropped, and a jump seeks the partition back to the expected
   offset. A jump that is still there after two seeks back is a real hole in the log
   (records deleted by retention) and is passed on, with a warning. Table changelogs,
   compacted and read by Faust's recovery, are left to Faust.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Flushable(Protocol):
    async def flush_async(self, timeout: float = 30.0) -> None: ...


#: aiokafka sends one fetch at a time per broker, for the partitions that have no records
#: waiting to be consumed; a partition whose records were just consumed is not in the
#: in-flight fetch and waits for it to come back. Faust creates its consumer with
#: fetch_max_wait_ms=1500 (hard-coded), so on a quiet broker a decision could wait up to
#: 1.5 s per hop, and aiokafka's prefetch_backoff (0.1 s, not exposed either) adds up to
#: 100 ms. Short long-polls bound both; a minimum of 1 KiB per answer keeps the broker
#: from answering every record on its own under load.
FETCH_MAX_WAIT_MS = 3
FETCH_MIN_BYTES = 1024
PREFETCH_BACKOFF_S = 0.005
FETCHER_TIMEOUT_S = 0.01
#: After a fetch that brought nothing, the next one asks for a single byte and may wait
#: 100 ms: the broker answers the moment a record arrives, and a quiet worker fetches a
#: few times per tick instead of ~330 times a second. Only when no partition has records
#: waiting for the agents: such a partition is left out of the fetch, and its next
#: records would wait for the long poll. Records older than STUCK_AFTER_S are not
#: waiting for anyone: Faust leaves its own tables' changelog partitions assigned after
#: recovery but never reads them again, so the first records fetched there stay.
IDLE_FETCH_MAX_WAIT_MS = 100
STUCK_AFTER_S = 1.0


def fetch_limits(
    last_was_empty: bool, buffered_since: Iterable[float], now: float
) -> tuple[int, int]:
    """(fetch_min_bytes, fetch_max_wait_ms) for the next fetch: a long poll for one byte
    after an empty fetch while no partition has records waiting for the agents (records
    buffered for STUCK_AFTER_S or more wait for no one), else the short 1 KiB poll."""
    waiting = any(now - t < STUCK_AFTER_S for t in buffered_since)
    if last_was_empty and not waiting:
        return 1, IDLE_FETCH_MAX_WAIT_MS
    return FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS


def tune_aiokafka_fetcher() -> None:
    from aiokafka.consumer import fetcher

    init = fetcher.Fetcher.__init__
    if getattr(init, "_trunkline", False):
        return

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["prefetch_backoff"] = PREFETCH_BACKOFF_S
        kwargs["fetcher_timeout"] = FETCHER_TIMEOUT_S
        kwargs["fetch_min_bytes"] = FETCH_MIN_BYTES
        kwargs["fetch_max_wait_ms"] = min(
            int(kwargs.get("fetch_max_wait_ms", 500)), FETCH_MAX_WAIT_MS
        )
        init(self, *args, **kwargs)

    patched._trunkline = True  # type: ignore[attr-defined]
    fetcher.Fetcher.__init__ = patched  # type: ignore[method-assign]

    proc = fetcher.Fetcher._proc_fetch_request
    plan = fetcher.Fetcher._get_actions_per_node

    async def proc_fetch(self: Any, assignment: Any, node_id: int, request: Any) -> Any:
        got = await proc(self, assignment, node_id, request)
        self._tl_idle = not got  # False when the fetch put records in the buffer
        return got

    def plan_fetches(self: Any, assignment: Any) -> Any:
        now = time.monotonic()
        self._fetch_min_bytes, self._fetch_max_wait_ms = fetch_limits(
            getattr(self, "_tl_idle", False),
            (getattr(r, "_created", now) for r in self._records.values()),
            now,
        )
        return plan(self, assignment)

    fetcher.Fetcher._proc_fetch_request = proc_fetch  # type: ignore[method-assign]
    fetcher.Fetcher._get_actions_per_node = plan_fetches  # type: ignore[method-assign]


_flushables: list[Flushable] = []


def flush_with_faust(emitter: Flushable) -> None:
    """Make Faust's producer flush (which precedes every offset commit) flush `emitter`."""
    from faust.transport.drivers import aiokafka

    _flushables.append(emitter)
    flush = aiokafka.Producer.flush
    if getattr(flush, "_trunkline", False):
        return

    async def flush_both(self: Any) -> None:
        await flush(self)
        for em in list(_flushables):
            await em.flush_async()

    flush_both._trunkline = True  # type: ignore[attr-defined]
    aiokafka.Producer.flush = flush_both  # type: ignore[method-assign]


class InFlight:
    """Offsets of the records handed to the agents' callback that have not come back from
    it, per partition: the callback was cut off (dropped record) or is still running."""

    def __init__(self) -> None:
        self.by_tp: dict[Any, set[int]] = {}

    def wrap(self, callback: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """`callback` that registers the record when called, not when first scheduled: a
        task cancelled before its first step must still count."""
        by_tp = self.by_tp

        async def through(message: Any, offsets: set[int], offset: int) -> None:
            await callback(message)
            offsets.discard(offset)

        def handing(message: Any) -> Awaitable[None]:
            offsets = by_tp.get(message.tp)
            if offsets is None:
                offsets = by_tp[message.tp] = set()
            offsets.add(message.offset)
            return through(message, offsets, message.offset)

        return handing

    def limit(self, tp: Any, proposed: int | None) -> int | None:
        """The commit for `tp`: `proposed` (the next offset to read), never past a record
        still in flight."""
        held = self.by_tp.get(tp)
        if proposed is None or not held:
            return proposed
        return min(proposed, min(held))

    def lowest(self, tp: Any) -> int | None:
        held = self.by_tp.get(tp)
        return min(held) if held else None

    def forget(self, tps: Iterable[Any] | None = None) -> None:
        """After a seek to the committed offsets: every record in flight is read again."""
        if tps is None:
            self.by_tp.clear()
        else:
            for tp in tps:
                self.by_tp.pop(tp, None)


def hold_commits_at_undelivered() -> None:
    from faust.transport import consumer as fc

    cls = fc.Consumer
    if getattr(cls._new_offset, "_trunkline", False):
        return
    init = cls.__init__
    new_offset = cls._new_offset
    perform_seek = cls.perform_seek
    seek = cls.seek

    def patched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._tl_in_flight = InFlight()
        self.callback = self._tl_in_flight.wrap(self.callback)

    def patched_new_offset(self: Any, tp: Any) -> int | None:
        in_flight: InFlight = self._tl_in_flight
        floor = in_flight.lowest(tp)
        if floor is None:
            return new_offset(self, tp)
        acked = self._acked[tp]
        above = [o for o in acked if o >= floor]
        if not above:
            return in_flight.limit(tp, new_offset(self, tp))
        # the acks past the record in flight wait (still in the ack index) for a commit
        # that covers it
        acked[:] = [o for o in acked if o < floor]
        try:
            got = new_offset(self, tp)
        finally:
            acked.extend(above)
            acked.sort()
        log.info(
            "commit of %s held at offset %d: that record never reached the agents "
            "(%d later ones acked; it is read again after the seek)",
            tp,
            floor,
            len(above),
        )
        return in_flight.limit(tp, got)

    async def patched_perform_seek(self: Any) -> None:
        await perform_seek(self)
        self._tl_in_flight.forget()

    async def patched_seek(self: Any, partition: Any, offset: int) -> None:
        await seek(self, partition, offset)
        self._tl_in_flight.forget([partition])

    patched_new_offset._trunkline = True  # type: ignore[attr-defined]
    cls.__init__ = patched_init  # type: ignore[method-assign]
    cls._new_offset = patched_new_offset  # type: ignore[method-assign]
    cls.perform_seek = patched_perform_seek  # type: ignore[method-assign]
    cls.seek = patched_seek  # type: ignore[method-assign]


class Verdict(enum.Enum):
    DELIVER = "deliver"  # the next record expected: to the agents
    WAIT = "wait"  # nothing expected yet (before the seek ending a rebalance): dropped
    REPEAT = "repeat"  # handed over already: dropped
    REWIND = "rewind"  # records before it are missing: seek back to the expected one
    SKIP = "skip"  # a later record while a seek back is under way: dropped
    HOLE = "hole"  # the records before it are not in the log: to the agents, hole and all


#: a jump still there after this many seeks back (each in a later batch) is a real hole
REWINDS_BEFORE_HOLE = 2


class Sequencer:
    """Per partition, the offset of the next record the agents must get, and whether a
    seek back to it is under way. Pure: the patched ``getmany`` asks `judge` for each
    record and seeks when told to; `start` and `seek` follow the consumer's seeks."""

    def __init__(self) -> None:
        self.generation: int | None = None
        self.next: dict[tuple[str, int], int | None] = {}  # None: take the first record
        self.rewinding: dict[tuple[str, int], tuple[int, int, int]] = {}  # (offset, batch, n)
        self.batch = 0
        self.holes: dict[tuple[str, int], int | None] = {}  # the offset before each hole

    def new_batch(self, generation: int) -> None:
        """A batch of records from one fetch, in consumer generation `generation`: a new
        generation (a rebalance) expects nothing until the seek that ends it."""
        self.batch += 1
        if generation != self.generation:
            self.generation = generation
            self.next.clear()
            self.rewinding.clear()

    def start(self, generation: int, positions: Mapping[tuple[str, int], int | None]) -> None:
        """The seek that ends a rebalance: each partition's next record is at its
        position (None: the first record the consumer reads there)."""
        self.generation = generation
        self.next = dict(positions)
        self.rewinding.clear()

    def seek(self, key: tuple[str, int], offset: int) -> None:
        """A seek of one partition (ours, or one of Faust's)."""
        self.next[key] = offset
        rewinding = self.rewinding.get(key)
        if rewinding is not None and rewinding[0] != offset:
            del self.rewinding[key]

    def take_first(self, key: tuple[str, int]) -> None:
        """Nothing to expect at `key`: the first record read there starts it."""
        self.next[key] = None
        self.rewinding.pop(key, None)

    def judge(self, key: tuple[str, int], offset: int) -> Verdict:
        if key not in self.next:
            return Verdict.WAIT
        want = self.next[key]
        if want is None or offset == want:
            self.next[key] = offset + 1
            self.rewinding.pop(key, None)
            return Verdict.DELIVER
        if offset < want:
            return Verdict.REPEAT
        at, batch, n = self.rewinding.get(key, (want, -1, 0))
        if at == want and batch == self.batch:
            return Verdict.SKIP  # the rest of the batch that asked for the seek
        if at == want and n >= REWINDS_BEFORE_HOLE:
            self.holes[key] = want - 1 if want > 0 else None
            self.next[key] = offset + 1
            self.rewinding.pop(key, None)
            return Verdict.HOLE
        self.rewinding[key] = (want, self.batch, n + 1)
        return Verdict.REWIND

    def expected(self, key: tuple[str, int]) -> int | None:
        return self.next.get(key)

    def seeking(self, key: tuple[str, int], offset: int) -> bool:
        """Whether this batch asked for a seek back to `offset` at `key` already."""
        return self.rewinding.get(key, (None, None, 0))[:2] == (offset, self.batch)

    def hole_start(self, key: tuple[str, int]) -> int | None:
        """The offset just before the last hole accepted at `key` (None: the log's start)."""
        return self.holes.pop(key, None)


async def in_order(
    consumer: Any, records: AsyncIterator[tuple[Any, Any]]
) -> AsyncIterator[tuple[Any, Any]]:
    """One batch of `records` (tp, message) from Faust's ``getmany``, with every record
    of an input topic that is not the next one expected left out (`Sequencer`), and a
    seek back where records are missing."""
    seq: Sequencer = consumer._tl_sequencer
    seq.new_batch(consumer.app.consumer_generation_id)
    changelog: dict[str, bool] = {}  # by topic, for this batch (Faust builds a set per ask)
    read_offset = consumer._read_offset

    def is_changelog(tp: Any) -> bool:
        known = changelog.get(tp.topic)
        if known is None:
            known = changelog[tp.topic] = consumer._is_changelog_tp(tp)
        return known

    async for tp, message in records:
        if is_changelog(tp):
            yield tp, message
            continue
        key = (tp.topic, tp.partition)
        offset = message.offset
        verdict = seq.judge(key, offset)
        if verdict is Verdict.DELIVER:
            # Faust's drain loop drops a record below its read offset and counts a jump
            # above it as handled; its read offset is the last record read, except after
            # a seek (the next one) or once a record cut off by a rebalance came back
            # late: set it so that this record is handed over, with no gap
            read_offset[tp] = offset - 1 if offset > 0 else None
            yield tp, message
        elif verdict is Verdict.HOLE:
            before = seq.hole_start(key)
            log.warning(
                "%s[%d]: offsets %d..%d are not in the log (deleted by retention?); "
                "going on from %d",
                tp.topic,
                tp.partition,
                0 if before is None else before + 1,
                offset - 1,
                offset,
            )
            read_offset[tp] = before  # Faust counts the hole as handled
            yield tp, message
        elif verdict is Verdict.REWIND:
            want = seq.expected(key)
            assert want is not None
            log.warning(
                "%s[%d]: got offset %d while %d was expected (records dropped by the "
                "consumer); reading again from %d",
                tp.topic,
                tp.partition,
                message.offset,
                want,
                want,
            )
            await consumer.seek(tp, want)
    # Faust's getmany stops handing a batch over when the flow stops or the generation
    # changes, and leaves out partitions it paused: those records are out of the
    # consumer's buffer already. Read them again now, rather than when the partition's
    # next record shows the jump (on a quiet partition, a heartbeat interval later).
    pulled = consumer.__dict__.pop("_tl_pulled", None) or {}
    for tp, got in pulled.items():
        if not got or is_changelog(tp):
            continue
        key = (tp.topic, tp.partition)
        want = seq.expected(key)
        if want is not None and got[-1].offset >= want and not seq.seeking(key, want):
            log.info(
                "%s[%d]: offsets %d..%d were fetched but not handed over; reading again from %d",
                tp.topic,
                tp.partition,
                want,
                got[-1].offset,
                want,
            )
            await consumer.seek(tp, want)


def deliver_in_order() -> None:
    from faust.transport import consumer as fc

    cls = fc.Consumer
    if getattr(cls.getmany, "_trunkline", False):
        return
    init = cls.__init__
    getmany = cls.getmany
    wait_next_records = cls._wait_next_records
    perform_seek = cls.perform_seek
    seek = cls.seek

    def patched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._tl_sequencer = Sequencer()

    def patched_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        return in_order(self, getmany(self, timeout))

    async def patched_wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await wait_next_records(self, timeout)
        self._tl_pulled = records  # what left the consumer's buffer for this batch
        return records, active

    async def patched_perform_seek(self: Any) -> None:
        generation = self.app.consumer_generation_id
        await perform_seek(self)
        # Faust's perform_seek left each partition's read offset at its committed offset
        # (next to read), or None where nothing was committed: aiokafka did not seek
        # those, so records dropped before now would never come back; read them from the
        # start of the log (the consumer's reset policy, earliest, would anyway)
        inputs = [tp for tp in self.assignment() if not self._is_changelog_tp(tp)]
        read = self._read_offset
        placed = {tp: read[tp] for tp in inputs if read.get(tp)}
        fresh = [tp for tp in inputs if tp not in placed]
        self._tl_sequencer.start(generation, {(t.topic, t.partition): o for t, o in placed.items()})
        # records fetched from those positions before now were dropped (nothing was
        # expected yet): put the consumer back at each position (no request to the broker)
        for tp, offset in placed.items():
            if generation != self.app.consumer_generation_id:
                return
            await self.seek(tp, offset)
        if fresh:
            try:
                earliest = await self.earliest_offsets(*fresh)
            except Exception as exc:  # the broker did not answer: Faust's way, as before
                log.warning("earliest offsets of %s: %r; reading on from where it is", fresh, exc)
                earliest = {}
            for tp in fresh:
                if generation != self.app.consumer_generation_id:
                    return  # rebalanced meanwhile: the next seek decides
                start = earliest.get(tp)
                if start is None:  # no answer: take what the consumer reads first
                    self._tl_sequencer.take_first((tp.topic, tp.partition))
                else:
                    await self.seek(tp, start)

    async def patched_seek(self: Any, partition: Any, offset: int) -> None:
        await seek(self, partition, offset)
        if not self._is_changelog_tp(partition):
            self._tl_sequencer.seek((partition.topic, partition.partition), offset)

    patched_getmany._trunkline = True  # type: ignore[attr-defined]
    cls.__init__ = patched_init  # type: ignore[method-assign]
    cls.getmany = patched_getmany  # type: ignore[method-assign]
    cls._wait_next_records = patched_wait_next_records  # type: ignore[method-assign]
    cls.perform_seek = patched_perform_seek  # type: ignore[method-assign]
    cls.seek = patched_seek  # type: ignore[method-assign]


def apply() -> None:
    """Install the fetcher and commit patches (the flush hook is installed per emitter)."""
    tune_aiokafka_fetcher()
    hold_commits_at_undelivered()
    deliver_in_order()
