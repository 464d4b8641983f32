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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
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


def apply() -> None:
    """Install the fetcher and commit patches (the flush hook is installed per emitter)."""
    tune_aiokafka_fetcher()
    hold_commits_at_undelivered()
