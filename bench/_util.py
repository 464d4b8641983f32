"""Shared by the micro-benchmarks: one core, best of three."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def _spin(core: int, seconds: float) -> float:
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10_000):
            n += 1
    return n / (time.perf_counter() - t0) / 1e6


def machine_speed(seconds: float = 1.0) -> list[float]:
    """Millions of plain Python loop iterations per second on each core, all cores at once.

    The benchmark machines are shared: a core's figure dropped by up to 45% between hours
    (about 42 when quiet), so a latency figure means little without this number beside it.
    """
    from concurrent.futures import ProcessPoolExecutor

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    with ProcessPoolExecutor(len(cores)) as pool:
        return list(pool.map(_spin, cores, [seconds] * len(cores)))


def speed_line(speeds: list[float]) -> str:
    return "# machine speed (M loop iterations/s per core, all busy at once): " + ", ".join(
        f"{s:.1f}" for s in speeds
    )


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    """Poll `url` until it answers; if `proc` exits first, stop with its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_broker(root: Path, bootstrap: str | None = None) -> tuple[str, Any]:
    """`bootstrap` when one is given; else a private broker started under `root` (its
    `kafka_local.BrokerPaths` returned for `stop_broker`, None when none was started)."""
    if bootstrap:
        return bootstrap, None
    from tests.harness import free_port
    from trunkline.core import kafka_local
    from trunkline.core.settings import Settings

    paths = kafka_local.BrokerPaths(root / "kafka")
    port = free_port()
    kafka_local.start(paths, Settings.from_env().cache_dir, port, free_port())
    return f"127.0.0.1:{port}", paths


def stop_broker(paths: Any) -> None:
    """Stop a broker `start_broker` started (None: it started none)."""
    if paths is not None:
        from trunkline.core import kafka_local

        kafka_local.stop(paths)
