"""The SIP edge while its broker is away: INVITEs get 503 with Retry-After at once (not
after the decision timeout), and calls get their 302 again once the broker is back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge.sip.uac import Call
from tests.harness import free_port
from tests.stack import running_stack
from trunkline.core import kafka_local

pytestmark = pytest.mark.integration


def test_invites_get_503_during_a_broker_outage_and_302_after(tmp_path: Path):
    paths = kafka_local.BrokerPaths(tmp_path / "kafka")
    port, controller = free_port(), free_port()
    cache = Path(os.environ.get("TRUNKLINE_CACHE_DIR") or Path.home() / ".cache" / "trunkline")
    kafka_local.start(paths, cache, port, controller)
    try:
        with running_stack(f"127.0.0.1:{port}", tmp_path / "stack", edges=("edge-a",)) as s:
            uac = s.uac()
            first = uac.invite(Call("+15550000002"))
            assert first is not None and first.status == 302
            kafka_local.stop(paths)
            deadline = time.monotonic() + 30
            while True:  # the edge learns of the outage from librdkafka within moments
                started = time.monotonic()
                final = uac.invite(Call("+15550000002"), timeout=10)
                assert final is not None
                if final.status == 503 and "event log unavailable" in final.headers.get("warning"):
                    break
                assert time.monotonic() < deadline, f"still {final.status} after 30 s"
            assert time.monotonic() - started < 1.0  # at once, not after the 5 s timeout
            assert final.headers.get("retry-after") == "5"
            kafka_local.start(paths, cache, port, controller)
            deadline = time.monotonic() + 90
            while True:
                final = uac.invite(Call("+15550000002"), timeout=10)
                if final is not None and final.status == 302:
                    break
                assert time.monotonic() < deadline, (
                    f"no 302 within 90 s of the broker's return; last answer "
                    f"{final and final.status} {final and final.headers.get('warning')}; "
                    f"worker log: {s.worker.log_tail()}"
                )
                time.sleep(0.5)
            uac.close()
    finally:
        kafka_local.stop(paths)
