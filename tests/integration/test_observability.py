"""What an operator's Prometheus scrapes and log shipper reads, on a real stack: every
process's /metrics parses with prometheus_client's own parser and its counters move
after a real call; with TRUNKLINE_LOG_FORMAT=json every line of every process's log is
one JSON object, and the call's id follows it from the edge through the worker to the
media node. `trunkline sql` and `trunkline report` read the same call through the sink.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from media.caller import place_call
from tests.harness import run_cli
from tests.stack import Stack, running_stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("observability"),
        edges=("edge-a",),
        media=True,
        env={"TRUNKLINE_LOG_FORMAT": "json", "TRUNKLINE_LOG_LEVEL": "debug"},
    ) as s:
        s.worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b, timeout=30)
        yield s


def urls(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {
        "worker": f"{s.worker_url}/metrics",
        "sink": f"{s.sink_url}/metrics",
        "sip-edge": f"http://127.0.0.1:{stack.edge_metrics['edge-a']}/metrics",
        "media": f"http://127.0.0.1:{stack.media_ws_port}/metrics",
    }


def scrape(url: str) -> Samples:
    """Every sample, through prometheus_client's parser (a malformed page raises)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=15) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture(scope="module")
def call(stack: Stack) -> dict:
    """One real call (SIP INVITE, 302, the media node's 200 OK, RTP both ways, BYE) with
    every process's metrics before it and once the history holds it."""
    before = {name: scrape(url) for name, url in urls(stack).items()}
    r = place_call("127.0.0.1", stack.edges["edge-a"], "+15550000002", seconds=2)
    assert r.error is None, r.error
    assert r.redirect.status == 302 and r.answer.status == 200 and r.bye_status == 200
    stack.sink.poll(
        f"/calls/{r.queue_id}/",
        lambda e: isinstance(e, dict) and e.get("status") == "Completed",
        timeout=30,
    )
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-main", []) == [])
    deadline = time.monotonic() + 30
    while True:  # the sink's counters move once its commit is done: poll, never sleep
        after = {name: scrape(url) for name, url in urls(stack).items()}
        moved = value(after["sink"], "trunkline_sink_rows_total") - value(
            before["sink"], "trunkline_sink_rows_total"
        )
        if moved >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    return {"queue_id": r.queue_id, "before": before, "after": after}


def moved(call: dict, process: str, name: str, **labels: str) -> float:
    return value(call["after"][process], name, **labels) - value(
        call["before"][process], name, **labels
    )


def test_the_sip_edge_counts_the_invite_its_302_and_the_latency(call):
    assert moved(call, "sip-edge", "trunkline_sip_requests_total", method="INVITE") == 1
    assert moved(call, "sip-edge", "trunkline_sip_responses_total", code="302") == 1
    assert moved(call, "sip-edge", "trunkline_sip_invite_final_seconds_count", code="302") == 1


def test_the_worker_counts_decisions_and_shows_state_and_its_lag(call, stack):
    w = "worker"
    assert (
        moved(call, w, "trunkline_decisions_total", stage="admission", outcome="admitted", code="")
        == 1
    )
    assert (
        moved(call, w, "trunkline_decisions_total", stage="routing", outcome="routed", code="302")
        == 1
    )
    assert (
        moved(call, w, "trunkline_worker_events_total", agent="admission", type="CallOffered") == 1
    )
    assert moved(call, w, "trunkline_worker_events_total", agent="admission", type="CallEnded") >= 1
    after = call["after"][w]
    # the call ended: no slot held; the plan and its utilisation are there for each business
    assert value(after, "trunkline_active_calls", scope="business", id="b-main") == 0
    assert value(after, "trunkline_active_calls", scope="backend", id="backend-1") == 0
    assert value(after, "trunkline_plan_limit", business="b-main") == 50
    assert value(after, "trunkline_plan_limit", business="b-limit") == 1
    assert ("trunkline_plan_utilisation", (("business", "b-main"),)) in after
    assert value(after, "trunkline_backend_capacity", backend="backend-1") == 100
    lag = named(after, "trunkline_consumer_lag")
    groups = {dict(labels)["group"] for labels in lag}
    topics = {dict(labels)["topic"] for labels in lag}
    assert groups == {stack.settings.app_id}
    assert f"{stack.settings.topic_prefix}admission" in topics
    assert all(v >= 0 for v in lag.values())
    assert value(after, "trunkline_consumer_lag_up", group=stack.settings.app_id) == 1


def test_the_worker_shows_a_live_call_holding_its_slots(stack):
    """During a call the active-call gauges count it, against the plan."""
    import threading

    result: dict = {}
    caller = threading.Thread(
        target=lambda: result.update(
            r=place_call("127.0.0.1", stack.edges["edge-a"], "+15550000002", seconds=4)
        )
    )
    caller.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            live = scrape(urls(stack)["worker"])
            if value(live, "trunkline_active_calls", scope="business", id="b-main") == 1:
                break
            assert time.monotonic() < deadline, named(live, "trunkline_active_calls")
            time.sleep(0.1)
        assert value(live, "trunkline_plan_utilisation", business="b-main") == 1 / 50
        media = scrape(urls(stack)["media"])
        assert value(media, "trunkline_media_active_calls") == 1
    finally:
        caller.join(30)
    assert result["r"].error is None


def test_the_sink_counts_rows_and_inserts_and_shows_its_lag(call, stack):
    assert moved(call, "sink", "trunkline_sink_rows_total") >= 6  # offer .. ended
    assert moved(call, "sink", "trunkline_sink_batches_total") >= 1
    assert moved(call, "sink", "trunkline_sink_insert_seconds_count") >= 1
    after = call["after"]["sink"]
    assert value(after, "trunkline_sink_up") == 1
    assert value(after, "trunkline_sink_last_commit_timestamp_seconds") > time.time() - 120
    group = f"{stack.settings.app_id}-clickhouse-sink"
    lag = named(after, "trunkline_consumer_lag")
    assert {dict(labels)["group"] for labels in lag} == {group}
    assert {dict(labels)["topic"] for labels in lag} == {
        f"{stack.settings.topic_prefix}call-events"
    }


def test_the_media_node_counts_the_call_and_its_rtp(call):
    m = "media"
    assert moved(call, m, "trunkline_media_calls_accepted_total") == 1
    assert moved(call, m, "trunkline_media_calls_answered_total") == 1
    assert moved(call, m, "trunkline_media_calls_ended_total", reason="completed") == 1
    assert moved(call, m, "trunkline_media_rtp_packets_total", direction="received") >= 50
    assert moved(call, m, "trunkline_media_rtp_packets_total", direction="sent") >= 50
    assert moved(call, m, "trunkline_media_rtp_packets_lost_total") == 0  # loopback
    assert moved(call, m, "trunkline_media_call_jitter_ms_count") == 1
    assert moved(call, m, "trunkline_media_call_loss_ratio_bucket", le="0.001") == 1
    assert value(call["after"][m], "trunkline_media_active_calls") == 0


def _log_lines(stack: Stack) -> dict[str, list[dict]]:
    files = {
        "worker": stack.worker.log,
        "sink": stack.sink.log,
        "sip-edge": stack.settings.state_dir / "edge-a.log",
        "media": stack.settings.state_dir / "media.log",
    }
    out: dict[str, list[dict]] = {}
    for process, path in files.items():
        assert path is not None
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, f"{process} logged nothing"
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{process}: a log line that is not JSON: {line[:200]!r}")
        out[process] = parsed
    return out


def test_every_log_line_is_json_and_the_call_can_be_followed_across_processes(call, stack):
    logs = _log_lines(stack)
    for process, lines in logs.items():
        for line in lines:
            assert {"ts", "level", "service", "logger", "msg", "pid"} <= set(line), line
        assert {line["service"] for line in lines} == {process}
    queue_id = call["queue_id"]
    followed = {
        process
        for process, lines in logs.items()
        if any(line.get("call_id") == queue_id for line in lines)
    }
    # the edge (offer and decision), the worker (admission and routing), the media node
    assert followed == {"sip-edge", "worker", "media"}
    media = [line["msg"] for line in logs["media"] if line.get("call_id") == queue_id]
    assert any("ended: completed by caller" in m for m in media)
    worker = [line["msg"] for line in logs["worker"] if line.get("call_id") == queue_id]
    assert any("admission (none) -> ADMITTED" in m for m in worker)


def test_trunkline_sql_reads_the_call_through_the_sink(call, stack):
    queue_id = call["queue_id"]
    done = run_cli(
        stack.settings,
        "sql",
        f"SELECT call_id, status, answered, decision FROM call_facts WHERE call_id = '{queue_id}'",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"call_id": queue_id, "status": "Completed", "answered": 1, "decision": "routed"}
    ]
    refused = run_cli(stack.settings, "sql", "DROP TABLE call_events_log")
    assert refused.returncode == 2 and "not DROP" in refused.stderr
    by_clickhouse = run_cli(stack.settings, "sql", "SELECT 1 SETTINGS readonly = 0")
    assert by_clickhouse.returncode == 2 and "readonly" in by_clickhouse.stderr
    csv = run_cli(stack.settings, "sql", "SELECT count() AS n FROM calls", "--format", "csv")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0] == "n"


def test_trunkline_report_reads_through_the_sink(call, stack, tmp_path):
    out = tmp_path / "report.html"
    done = run_cli(stack.settings, "report", "--since", "1h", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "6 charts" in done.stdout

    class Data(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.figures: dict[str, dict] = {}
            self._id: str | None = None

        def handle_starttag(self, tag, attrs):
            self._id = dict(attrs).get("id") if tag == "script" else None
            self._text = ""

        def handle_data(self, data):
            if self._id:
                self._text += data

        def handle_endtag(self, tag):
            if tag == "script" and self._id and self._id.startswith("data-"):
                self.figures[self._id[5:]] = json.loads(self._text)
            self._id = None

    page = Data()
    page.feed(out.read_text())
    answered = {t["name"]: t for t in page.figures["calls"]["data"]}["answered"]
    assert sum(answered["y"]) >= 1
    (table,) = page.figures["decisions"]["data"]
    assert call["queue_id"] in table["cells"]["values"][3]
