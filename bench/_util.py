"""Shared by the micro-benchmarks: one core, best of three."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def pin_one_core() -> None:
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass


def best_rate(n: int, fn: Callable[[int], None], rounds: int = 3) -> float:
    """Items per second of fn(n), the best of `rounds` runs (the machine is shared)."""
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best
