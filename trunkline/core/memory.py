"""Freed memory kept for reuse in the processes that insert big blocks into ClickHouse.

A replay (or the sink taking its blocks) frees and allocates the same hundreds of MiB
once per insert: a block's Python rows (glibc malloc for their longer strings), its
Arrow batches (pyarrow's mimalloc pool) and chDB's insert buffers (the jemalloc linked
into chDB). By default each allocator hands freed pages back to the kernel within a few
seconds (jemalloc: 5 s dirty, muzzy at once; mimalloc: 10 ms; glibc: once 128 KiB are
free at the top of its heap), about the time between two inserts, so every block
page-faulted its memory in again: 0.8 faults and 3 us of system time an event in
`bench.replay` (docs/benchmarks.md, 2026-12-01 11:30). Keeping the pages for `keep_ms`
(or for the process's life) takes that to about 0.15 faults an event. glibc has no
time limit, only a size: its heap keeps up to 1 GiB free at its top only when the pages
are kept for the process's life (a command that ends: the replay), not in a server.

jemalloc and mimalloc read their settings from the environment when their library is
loaded, so `keep_freed_memory` loads them (imports `pyarrow`, and `chdb` when asked)
with the settings in the environment and takes them out again afterwards: processes
started later do not inherit them. A setting the operator put in the environment
(`JE_MALLOC_CONF`, `MIMALLOC_PURGE_DELAY`) is theirs and stays; a library imported
before the call keeps what it started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import os
import sys
from collections.abc import Iterable

log = logging.getLogger("trunkline.memory")

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): a block's lists and
#: strings stay in the heap below it
_MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory glibc keeps at its heap's top before trimming it, and grows it by
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_TOP_PAD = 64 * 1024 * 1024


def allocator_settings(keep_ms: int | None) -> dict[str, str]:
    """The environment that makes chDB's jemalloc and pyarrow's mimalloc keep freed pages
    `keep_ms` (None: never give them back)."""
    decay = "-1" if keep_ms is None else str(int(keep_ms))
    return {
        "JE_MALLOC_CONF": f"dirty_decay_ms:{decay},muzzy_decay_ms:{decay}",
        "MIMALLOC_PURGE_DELAY": decay,
    }


def keep_freed_memory(
    keep_ms: int | None, modules: Iterable[str] = ("pyarrow", "chdb")
) -> dict[str, str]:
    """Load `modules` with their allocators keeping freed pages `keep_ms` (None: for the
    process's life, glibc's heap too). Returns what was applied."""
    wanted = allocator_settings(keep_ms)
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    applied = {k: os.environ.get(k, v) for k, v in wanted.items()}
    os.environ.update(added)
    try:
        for name in modules:
            if name in sys.modules:
                log.debug("%s was loaded before: its allocator keeps its settings", name)
                applied[name] = "loaded before"
            else:
                importlib.import_module(name)
    finally:
        for k in added:
            os.environ.pop(k, None)
    if keep_ms is None and _mallopt_heap():
        applied["glibc"] = f"trim {_TRIM_THRESHOLD}, top pad {_TOP_PAD}, mmap {_MMAP_THRESHOLD}"
    log.debug("freed memory kept: %s", applied)
    return applied


def _mallopt_heap() -> bool:
    """glibc's heap kept (mallopt); False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD),
    ):
        ok = bool(mallopt(param, value)) and ok
    return ok
