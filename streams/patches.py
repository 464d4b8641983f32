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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol


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


def apply() -> None:
    """Install the fetcher patches (the flush hook is installed per emitter)."""
    tune_aiokafka_fetcher()
