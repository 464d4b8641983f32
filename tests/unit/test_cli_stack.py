"""The CLI over trunkline.stack without a broker: status and down on an empty state
folder, refusals before anything starts, a service that dies while `up` waits for it,
progress rendering, and the call statuses defined once."""

import io
import json
import sys

import pytest
from rich.console import Console

from streams import projection
from streams.projection import FINAL_STATUSES, CallStatus
from trunkline import cli
from trunkline.cli.common import RichProgress
from trunkline.core import procs
from trunkline.core.settings import Settings
from trunkline.stack import local
from trunkline.stack.base import StackError
from trunkline.stack.services import Service


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUNKLINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TRUNKLINE_KAFKA_BOOTSTRAP", raising=False)
    return tmp_path / "state"


def test_status_of_nothing_running_is_a_failure_with_the_whole_document(state, capsys):
    assert cli.main(["status", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "state_dir", "kafka", "sink", "worker", "sip_edge", "webhook_edge", "media_nodes",
        "heartbeats_standin", "clickhouse", "topic_prefix", "billing_worker", "webhooks",
    }  # fmt: skip
    assert doc["kafka"]["running"] is False and doc["kafka"]["bootstrap"] == "127.0.0.1:19092"
    assert doc["worker"] == {
        "running": False,
        "pid": None,
        "web": "http://127.0.0.1:6066",
        "log": str(state / "logs" / "worker.log"),
        "health": None,
    }
    assert doc["sip_edge"]["listen"] == "127.0.0.1:5060" and doc["sip_edge"]["options"] is None
    assert doc["webhook_edge"]["listen"] == "127.0.0.1:8080"
    assert doc["webhook_edge"]["health"] is None
    assert doc["billing_worker"]["web"] == "http://127.0.0.1:6068"
    assert doc["webhooks"]["web"] == "http://127.0.0.1:6069"


def test_status_with_a_broker_of_someone_else_is_not_a_failure(state, capsys, monkeypatch):
    monkeypatch.setenv("TRUNKLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "external" in out and "127.0.0.1:1" in out and "sip-edge" in out


def test_down_with_nothing_running_says_so(state, capsys):
    assert cli.main(["down"]) == 0
    err = capsys.readouterr().err
    for name in (
        "heartbeats", "webhooks", "webhook-edge", "sip-edge", "billing-worker", "worker", "sink",
        "Kafka broker",
    ):  # fmt: skip
        assert name in err
    assert err.count("was not running") == 8


def test_up_refuses_a_bad_config_before_starting_anything(state, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("plans: [{id: p, name: P, maxConcurrentCalls: 0}]\n")
    assert cli.main(["up", "--config", str(bad)]) == 2
    assert "plans[0] (id=p).maxConcurrentCalls" in capsys.readouterr().err
    assert not state.exists()


def test_config_show_refuses_an_unknown_section_without_connecting(state, capsys):
    assert cli.main(["--bootstrap", "127.0.0.1:1", "config", "show", "plan"]) == 2
    assert "unknown section 'plan'; one of plans, businesses" in capsys.readouterr().err


def test_call_refuses_an_edge_that_is_not_host_port(state, capsys):
    assert cli.main(["call", "+15551234567", "--edge", "nowhere"]) == 2
    assert "'nowhere' is not host:port" in capsys.readouterr().err


def _silent_service() -> Service:
    return Service(
        name="dier",
        title="a service that dies",
        args=lambda s: [],
        address=lambda s: "nowhere",
        address_key="web",
        probe=lambda s: None,
        health_key="health",
        ready=lambda s, h: None,
    )


def test_up_stops_waiting_for_a_service_that_exited_and_quotes_its_log(tmp_path):
    s = Settings.from_env({"TRUNKLINE_STATE_DIR": str(tmp_path)})
    code = "import sys; print('cannot bind 127.0.0.1:6066'); sys.exit(3)"
    procs.start(tmp_path, "dier", [sys.executable, "-c", code])
    with pytest.raises(StackError, match=r"(?s)the dier exited; log .*dier.log:\ncannot bind"):
        local.wait_ready(s, _silent_service(), timeout=30)


def test_up_gives_up_on_a_service_that_never_answers(tmp_path):
    s = Settings.from_env({"TRUNKLINE_STATE_DIR": str(tmp_path)})
    procs.start(tmp_path, "dier", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(StackError, match="the dier to become healthy at nowhere: not within"):
            local.wait_ready(s, _silent_service(), timeout=0.5)
    finally:
        procs.stop(tmp_path, "dier")


def test_progress_marks_finished_and_failed_steps():
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False)
    with RichProgress(console) as progress:
        with progress.step("topics", total=2) as step:
            step.advance("a")
            step.advance("b")
            step.update("2 declared")
        with pytest.raises(RuntimeError), progress.step("worker [web]") as step:
            raise RuntimeError("died")
    text = buffer.getvalue()
    assert "✓ topics" in text and "2 declared" in text
    assert "✗ worker [web]" in text


def test_every_status_the_projection_writes_is_a_defined_status():
    written = {status for status, _ in projection.STATUS.values()}
    written |= set(projection.END_STATUS.values()) | {CallStatus.FAILED}
    assert written <= set(CallStatus)
    assert set(CallStatus) > FINAL_STATUSES
    assert CallStatus.IN_PROGRESS not in FINAL_STATUSES
