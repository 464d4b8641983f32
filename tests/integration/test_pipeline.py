"""The event backbone end to end on a real broker: topics, config, the worker, ClickHouse."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import ConfigResource

from schemas import SingleObjectCodec
from tests.harness import Sink, run_cli
from tests.samples import sample
from trunkline.core.admin import admin_client, apply_topics
from trunkline.core.kafka import Outgoing, make_producer, publish_all
from trunkline.core.settings import Settings
from trunkline.core.topics import ALL_TOPICS, CALL_EVENTS, CONFIG_TOPICS, DEAD_LETTERS

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
CODEC = SingleObjectCodec()


def high_watermarks(s: Settings, topic: str) -> int:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "hw-probe"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def produce_events(s: Settings, events: list[tuple[str, dict]]) -> None:
    topic = CALL_EVENTS.name(s.topic_prefix)
    publish_all(
        make_producer(s.kafka_bootstrap),
        [Outgoing(topic, r["envelope"]["call_id"].encode(), CODEC.encode(n, r)) for n, r in events],
    )


def test_topics_apply_is_idempotent_and_declares_the_layout(settings):
    again = apply_topics(settings.kafka_bootstrap, settings.topic_prefix)
    assert {r.action for r in again} == {"unchanged"}
    admin = admin_client(settings.kafka_bootstrap)
    meta = admin.list_topics(timeout=10).topics
    for spec in ALL_TOPICS:
        name = spec.name(settings.topic_prefix)
        assert len(meta[name].partitions) == spec.partitions
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        cfg = admin.describe_configs([res])[res].result()
        assert cfg["cleanup.policy"].value == ("compact" if spec.compacted else "delete")


def test_topics_apply_repairs_drifted_config(settings):
    name = CONFIG_TOPICS["plans"].name(settings.topic_prefix)
    admin = admin_client(settings.kafka_bootstrap)
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result()
    probe = ConfigResource(ConfigResource.Type.TOPIC, name)
    deadline = time.monotonic() + 10  # the change travels through the metadata log
    while admin.describe_configs([probe])[probe].result()["cleanup.policy"].value != "delete":
        assert time.monotonic() < deadline, "the broker never showed the drifted config"
        time.sleep(0.1)
    results = {r.name: r for r in apply_topics(settings.kafka_bootstrap, settings.topic_prefix)}
    assert results[name].action == "updated"
    assert "cleanup.policy=compact" in results[name].detail


def test_config_applied_from_yaml_is_read_back_from_the_worker_tables(settings, worker):
    done = run_cli(settings, "config", "apply", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert "published 11 record(s)" in done.stdout
    worker.start()
    numbers = worker.poll("/config/numbers/", lambda b: len(b) == 2)
    assert numbers["abc"] == {
        "id": "abc",
        "business_id": "123",
        "provider": "SIP",
        "number": "+15551234567",
        "route_id": "route-abc123",
        "region_id": "us-east-1",
        "is_e164": True,
        "allowed_source_ips": ["203.0.113.10", "127.0.0.0/8"],
        "provider_account_id": "",
    }
    assert worker.get("/config/plans/")["starter"]["max_concurrent_calls"] == 2
    assert worker.get("/config/businesses/")["123"]["plan_id"] == "starter"
    assert set(worker.get("/config/bypassRules/")) == {"123-backend-1"}

    # a later change reaches the running worker's table; --prune deletes what left the file
    data = yaml.safe_load(EXAMPLE.read_text())
    data["plans"][0]["maxConcurrentCalls"] = 7
    data["numbers"] = data["numbers"][:1]
    changed = settings.state_dir / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    done = run_cli(settings, "config", "apply", "--prune", str(changed))
    assert done.returncode == 0, done.stderr
    assert "deleted numbers/globex-twilio" in done.stdout
    worker.poll("/config/plans/", lambda b: b["starter"]["max_concurrent_calls"] == 7)
    assert set(worker.poll("/config/numbers/", lambda b: len(b) == 1)) == {"abc"}

    shown = run_cli(settings, "config", "show", "numbers")
    assert shown.returncode == 0, shown.stderr
    assert set(yaml.safe_load(shown.stdout)["numbers"]) == {"abc"}


INVALID = [
    (
        "numbers",
        0,
        "allowedSourceIps",
        ["203.0.113.10", "not-an-ip"],
        "numbers[0] (id=abc).allowedSourceIps[1]: 'not-an-ip' is not an IP or CIDR",
    ),
    ("numbers", 0, "number", "555-1234", "numbers[0] (id=abc).number: '555-1234' is not E.164"),
    (
        "numbers",
        0,
        "routeId",
        "route-gone",
        "numbers[0] (id=abc).routeId: route 'route-gone' is not defined in routes",
    ),
    (
        "numbers",
        0,
        "businessId",
        "999",
        "numbers[0] (id=abc).businessId: business '999' is not defined in businesses",
    ),
    (
        "businesses",
        0,
        "plan",
        "gold",
        "businesses[0] (id=123).plan: plan 'gold' is not defined in plans",
    ),
    ("plans", 1, "id", "starter", "plans[1] (id=starter).id: duplicate id 'starter'"),
    ("numbers", 0, "provider", "Plivo", "numbers[0] (id=abc).provider: unknown provider 'Plivo'"),
]


@pytest.mark.parametrize(
    ("section", "index", "field", "value", "message"),
    INVALID,
    ids=[c[2] + "-" + str(c[3]) for c in INVALID],
)
def test_invalid_config_is_refused_and_nothing_is_published(
    settings, section, index, field, value, message
):
    data = yaml.safe_load(EXAMPLE.read_text())
    data[section][index][field] = value
    bad = settings.state_dir / "bad.yaml"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(yaml.safe_dump(data))
    done = run_cli(settings, "config", "apply", str(bad))
    assert done.returncode == 2
    assert message in done.stderr
    for spec in CONFIG_TOPICS.values():
        assert high_watermarks(settings, spec.name(settings.topic_prefix)) == 0


def test_event_produced_twice_appears_in_clickhouse_once(settings, sink):
    sink.start()
    offered = sample("CallOffered", call_id="q-twice")
    routed = sample("CallRouted", call_id="q-twice")
    produce_events(settings, [("CallOffered", offered), ("CallRouted", routed)])
    produce_events(settings, [("CallOffered", offered)])  # the producer retried
    entry = sink.poll("/calls/q-twice/?events=1", lambda b: len(b.get("events", [])) == 2)
    assert [e["event_type"] for e in entry["events"]] == ["CallOffered", "CallRouted"]
    assert entry["status"] == "ProcessedProxy"
    assert entry["processingBackendServerId"] == "backend-2"
    assert [log["message"] for log in entry["logs"]][-1] == "Call routed to backend-2"
    time.sleep(1.5)  # give a late duplicate every chance to show up
    counts = sink.get("/events/counts/")
    assert counts == {"CallOffered": 1, "CallRouted": 1}

    # the CLI reads the same entry through the sink (which owns the embedded engine)
    shown = run_cli(settings, "calls", "show", "q-twice")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["status"] == "ProcessedProxy"
    listed = run_cli(settings, "calls", "list", "--business", "123", "--since", "1h", "--json")
    assert [c["id"] for c in yaml.safe_load(listed.stdout)] == ["q-twice"]
    missing = run_cli(settings, "calls", "show", "q-nope")
    assert missing.returncode == 2 and "no call 'q-nope'" in missing.stderr


def test_undecodable_record_is_parked_not_lost(settings, sink):
    sink.start()
    topic = CALL_EVENTS.name(settings.topic_prefix)
    good = sample("CallOffered", call_id="q-after-garbage")
    publish_all(
        make_producer(settings.kafka_bootstrap),
        [
            Outgoing(topic, b"q-bad", b"\x00garbage"),
            Outgoing(topic, b"q-after-garbage", CODEC.encode("CallOffered", good)),
        ],
    )
    sink.poll("/calls/q-after-garbage/", lambda b: b["status"] == "Queued")
    dlq = DEAD_LETTERS.name(settings.topic_prefix)
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "dlq-probe",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([dlq])
    msg = None
    deadline = time.monotonic() + 20
    while msg is None and time.monotonic() < deadline:
        msg = c.poll(1)
    c.close()
    assert msg is not None and msg.value() == b"\x00garbage"
    headers = dict(msg.headers())
    assert headers["source.topic"] == topic.encode()
    assert b"not Confluent wire format" in headers["error"] or b"single-object" in headers["error"]
    assert sink.get("/health/")["sink"]["dead_lettered"] == 1


def test_sink_killed_mid_stream_loses_nothing(settings, sink):
    sink.start()
    calls = [f"q-crash-{i}" for i in range(400)]
    first = [("CallOffered", sample("CallOffered", call_id=c)) for c in calls[:200]]
    produce_events(settings, first)
    sink.poll("/events/counts/", lambda b: b.get("CallOffered", 0) > 0)
    sink.stop(signal.SIGKILL)  # no shutdown hooks, no final commit
    produce_events(
        settings, [("CallOffered", sample("CallOffered", call_id=c)) for c in calls[200:]]
    )
    produce_events(settings, first[:50])  # and some re-deliveries on top
    restarted = Sink(settings)
    try:
        restarted.start()
        restarted.poll("/events/counts/", lambda b: b.get("CallOffered") == 400, timeout=60)
    finally:
        restarted.stop()
