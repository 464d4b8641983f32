"""The media node waits for an assignment still in flight, whichever way it looks it up."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from media.node import MediaNode


def _node(wait_s: float) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(assignment_wait_s=wait_s))


def test_a_lookup_that_succeeds_later_is_waited_for() -> None:
    ready_at = time.monotonic() + 0.2
    found = asyncio.run(
        MediaNode._in_flight(  # type: ignore[arg-type]
            _node(2.0), lambda: "q-1" if time.monotonic() >= ready_at else None
        )
    )
    assert found == "q-1"


def test_a_lookup_that_never_succeeds_gives_up_after_the_wait() -> None:
    t0 = time.monotonic()
    found = asyncio.run(MediaNode._in_flight(_node(0.3), lambda: None))  # type: ignore[arg-type]
    assert found is None
    assert 0.25 <= time.monotonic() - t0 < 2.0


def test_a_lookup_that_succeeds_at_once_does_not_sleep() -> None:
    t0 = time.monotonic()
    assert asyncio.run(MediaNode._in_flight(_node(2.0), lambda: "q-2")) == "q-2"  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 0.05
