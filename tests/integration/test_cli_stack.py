"""`trunkline up`, `call`, `status`, `calls list` and `down` as an operator runs them
(what ./scripts/up does), on the test broker with a private state folder and free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.harness import free_port
from trunkline.core import procs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "config.yaml"


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trunkline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_up_waits_for_every_part_then_a_call_completes_and_down_stops_everything(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    state = tmp_path / "state"
    config = yaml.safe_load(EXAMPLE.read_text())
    backend = config["backends"][0]
    backend["sipAddress"] = f"127.0.0.1:{free_port()}"
    backend["mediaUrl"] = f"ws://127.0.0.1:{free_port()}"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "TRUNKLINE_STATE_DIR": str(state),
        "TRUNKLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": f"u{tag}.",
        "TRUNKLINE_APP_ID": f"up-test-{tag}",
        "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
        "TRUNKLINE_SINK_WEB_PORT": str(free_port()),
        "TRUNKLINE_SIP_LISTEN": f"127.0.0.1:{free_port()}",
        "TRUNKLINE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
    }
    try:
        up = _cli(env, "up", "--config", str(cfg))
        assert up.returncode == 0, up.stderr
        assert "trunkline is up" in up.stdout
        for part in (
            "topics", "config", "ClickHouse sink", "worker", "SIP edge", "webhook edge",
            "media node",
        ):  # fmt: skip
            assert part in up.stderr  # the progress, on stderr
        assert "Kafka broker" not in up.stderr  # TRUNKLINE_KAFKA_BOOTSTRAP: not ours to start

        # up returned only once routing saw the node's heartbeat: the first call gets through
        call = _cli(env, "call", "+15551234567", "--seconds", "1")
        assert call.returncode == 0, call.stderr
        assert "edge: SIP/2.0 302 Moved Temporarily" in call.stdout
        assert "media node: SIP/2.0 200 OK" in call.stdout
        entry = json.loads(call.stdout[call.stdout.index("{") :])
        assert entry["status"] == "Completed" and entry["processingBackendServerId"] == "backend-1"

        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert all(doc[n]["running"] for n in ("sink", "worker", "sip_edge", "webhook_edge"))
        assert doc["webhook_edge"]["health"]["edge_id"] == "webhook-1"
        assert doc["sip_edge"]["options"] == 200 and doc["sink"]["health"]["sink"]["alive"]
        assert list(doc["media_nodes"]) == ["media-backend-1"]

        listed = _cli(env, "calls", "list", "--json")
        assert [r["id"] for r in json.loads(listed.stdout)] == [entry["id"]]
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    for name in ("sink", "worker", "sip-edge", "webhook-edge", "media-backend-1"):
        assert procs.running_pid(state, name) is None
