"""A worker killed with SIGKILL while calls are in flight, several times: every output of
every event still reaches its topic (at-least-once covers all of them, not only some),
so every offered call reaches a final status in ClickHouse and no slot stays held."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.load import Load
from tests.stack import roomy_config, running_stack

pytestmark = pytest.mark.integration
TERMINAL = {"Rejected", "Failed", "Completed", "Cancelled"}
KILLS = 2


def test_a_worker_killed_mid_flight_loses_no_output(kafka_bootstrap, tmp_path):
    """Routed calls are never taken (no media node), so routing ends each one itself when
    its redirect deadline passes: the worker writes CallEnded to admission and to the
    history, and its reservation changelog, all the time. It is killed while that flows,
    and while new calls are being decided. Before the emitter held changelogs back, a kill
    after a RELEASED record reached the changelog but before the history batch did lost
    the call's CallEnded for good (the re-processed tick found the slot released)."""
    config = roomy_config(100_000)
    env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "1000"}
    with running_stack(
        kafka_bootstrap, tmp_path, edges=("edge-a",), env=env, config=config, capacity=100_000
    ) as s:
        load = Load(s.uac(), "+15550000002", rate=40).start()
        try:
            for _ in range(KILLS):
                # kill once this worker has been routing calls for a while: decisions,
                # expirations and their history in flight
                seen = len(load.routed)
                deadline = time.monotonic() + 60
                while len(load.routed) < seen + 60:
                    assert time.monotonic() < deadline, (load.finals, s.worker.log_tail())
                    time.sleep(0.05)
                s.worker.stop(signal.SIGKILL)
                s.worker.start()
            seen = len(load.routed)
            deadline = time.monotonic() + 60
            while len(load.routed) < seen + 20:  # the last restart is deciding again
                assert time.monotonic() < deadline, load.finals
                time.sleep(0.05)
        finally:
            load.stop()
        assert load.unanswered == 0
        # every call reaches a final status: routed ones by their redirect deadline, the
        # ones the edge gave up on (while no worker ran) by the edge's own CallEnded
        deadline = time.monotonic() + 60
        while True:
            calls = s.sink.get("/calls/?limit=10000")
            statuses = Counter(c["status"] for c in calls)
            if len(calls) == load.sent and set(statuses) <= TERMINAL:
                break
            assert time.monotonic() < deadline, (
                f"{load.sent} calls offered, ClickHouse has {len(calls)}: {dict(statuses)}; "
                f"not final: {[c for c in calls if c['status'] not in TERMINAL][:3]}; "
                f"{_state(s)}"
            )
            time.sleep(0.5)
        assert s.worker.get("/state/admission-active/").get("b-main", []) == []
        assert s.worker.get("/state/routing-held/").get("backend-1", 0) == 0


def _state(s) -> str:
    """What the worker holds, for a failure's message."""
    open_calls = s.worker.get("/state/routing-open/")
    return (
        f"ticks {s.worker.get('/state/routing-ticks/')}, now {time.time() * 1000:.0f}; "
        f"open { ({r: len(c) for r, c in open_calls.items()}) }; "
        f"held {s.worker.get('/state/routing-held/')}; "
        f"active { ({b: len(c) for b, c in s.worker.get('/state/admission-active/').items()}) }; "
        f"worker log: {s.worker.log_tail()[-1500:]}"
    )
