"""`trunkline replay` on a real broker and a real stack.

The first test places real SIP calls through edge, worker, media node, billing worker,
webhook service and sink, stops the producers, and rebuilds: every ClickHouse table and
every machine table is hash-equal to the live one (through the sink's API, which owns
chDB). Then one row of the live `call_events_log` is changed: `--verify` reports that
table and that call (opening chDB itself, with the sink stopped), `--swap` repairs it,
and `replay clean` drops what the swap kept.

The second exports events to JSON lines and re-publishes them: the copy holds the same
bytes, which decode to the same events."""

from __future__ import annotations

import base64
import json
import time
import uuid
from decimal import Decimal

import pytest

from schemas import SingleObjectCodec
from streams.clickhouse import ClickHouseStore
from tests.harness import Service, free_port, poll, run_cli
from tests.receiver import Receiver
from trunkline.core import kafka
from trunkline.core.admin import apply_topics
from trunkline.core.settings import Settings
from trunkline.core.topics import BILLING, CALL_EVENTS, WEBHOOK_DELIVERIES, TopicSpec

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"trunkline-test-webhook-secret-32b").decode()
CODEC = SingleObjectCodec()


def rebuild(s: Settings, *flags: str) -> tuple[int, dict]:
    done = run_cli(s, "replay", "rebuild", *flags, "--json", timeout=300)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    return done.returncode, json.loads(done.stdout)


def summary(report: dict) -> list:
    """The tables that differ, with what the report says of them."""
    return [
        (c["table"], c["live"], c["shadow"], c["differing"], c["note"])
        for c in report["checks"]
        if not c["equal"]
    ]


def sink_caught_up(s: Settings) -> bool:
    """The sink committed every record of its topics (so ClickHouse holds them)."""
    topics = [t.name(s.topic_prefix) for t in (CALL_EVENTS, BILLING, WEBHOOK_DELIVERIES)]
    ends = {(r.topic, r.partition): r.end for r in kafka.offset_ranges(s.kafka_bootstrap, topics)}
    committed = kafka.committed_offsets(s.kafka_bootstrap, f"{s.app_id}-clickhouse-sink", ends)
    return all(end == 0 or committed.get(k) == end for k, end in ends.items())


def test_a_rebuilt_history_is_hash_equal_and_verify_names_a_changed_row(kafka_bootstrap, tmp_path):
    from tests.stack import CONFIG, running_stack

    receiver = Receiver(SECRET, free_port()).start()
    config = json.loads(json.dumps(CONFIG))
    config["ratePlans"] = [
        {
            "id": "std", "version": 1, "effectiveFrom": "2026-01-01T00:00:00Z",
            "currency": "USD", "inboundPerMinute": "0.0085", "outboundPerMinute": "0.0140",
            "connectFee": "0", "increment": "60/60", "minimumSeconds": 0,
        },
    ]  # fmt: skip
    for plan in config["plans"]:
        plan["ratePlanId"] = "std"
    config["webhookSubscriptions"] = [
        {
            "id": "ops", "url": receiver.url("ops"), "events": ["call.ended", "call.rated"],
            "businessId": "b-main", "secret": {"env": "HOOK_SECRET"},
            "allowPrivateTargets": True,
        }
    ]  # fmt: skip
    env = {
        "TRUNKLINE_BILLING_WEB_PORT": str(free_port()),
        "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
        "TRUNKLINE_SINK_FLUSH_MS": "300",
    }
    try:
        with running_stack(
            kafka_bootstrap, tmp_path / "state", edges=("edge-a",), config=config, env=env,
            media=True,
        ) as stack:  # fmt: skip
            s = stack.settings
            rater = Service(s, "billing-worker")
            hooks = Service(s, "webhooks", env={"HOOK_SECRET": SECRET})
            rater.start()
            hooks.start()
            try:
                edge = f"127.0.0.1:{stack.edges['edge-a']}"
                # two calls answered and ended, one refused by the ACL, one unknown number
                for number in ("+15550000002", "+15550000002", "+15550000003", "+15559999999"):
                    run_cli(s, "call", number, "--edge", edge, "--seconds", "1")
                receiver.wait_for(
                    lambda seen: (
                        len([x for x in seen if x.payload and x.payload["type"] == "call.rated"])
                        >= 2
                    ),
                    60,
                    "two call.rated deliveries",
                )

                # every call rated and stored (the refused ones too, at zero) before the
                # producers stop
                def rated() -> list:
                    done = run_cli(s, "billing", "list", "--json")
                    rows = [json.loads(x) for x in done.stdout.splitlines() if x]
                    return [(r["call_id"], r["reason"]) for r in rows]

                seen: list = []
                deadline = time.monotonic() + 120
                while len(seen) != 4 and time.monotonic() < deadline:
                    seen = rated()
                    time.sleep(0.5)
                assert len(seen) == 4, (seen, receiver.seen)
                # everything that produces stops (Faust commits on a clean stop)
                for p in stack.procs:
                    p.terminate()
                    p.wait(10)
                hooks.stop()
                rater.stop()
                stack.worker.stop()
                poll(lambda: sink_caught_up(s), 60, "the sink to store every record")

                code, report = rebuild(s, "--verify")
                assert code == 0 and report["equal"], summary(report)
                assert "the sink" in report["via"]
                checks = {c["table"]: c for c in report["checks"]}
                assert {k: c["equal"] for k, c in checks.items()} == {
                    "call_events_log": True, "billing_records_log": True,
                    "webhook_deliveries_log": True, "admission-slots": True,
                    "routing-reservations": True, "routing-heartbeats": True,
                    "routing-ticks": True, "billing-calls": True,
                }  # fmt: skip
                # the tables were not empty: four calls rated, each call's events...
                assert checks["billing_records_log"]["live"]["count"] == 4
                assert checks["billing-calls"]["live"]["count"] == 4
                assert checks["call_events_log"]["live"]["count"] >= 4 * 3
                assert checks["webhook_deliveries_log"]["live"]["count"] >= 4
                # the edge refuses the unknown number itself (404): three offers reached
                # admission; two calls were routed
                assert checks["admission-slots"]["live"]["count"] == 3
                assert checks["routing-reservations"]["live"]["count"] == 2
                assert (
                    report["rows"]["call_events_log"] >= checks["call_events_log"]["live"]["count"]
                )
                # a second rebuild of the same range gives the same digests
                _, again = rebuild(s, "--verify")
                assert [c["shadow"] for c in again["checks"]] == [
                    c["shadow"] for c in report["checks"]
                ]
            finally:
                hooks.stop()
                rater.stop()
            ended = json.loads(
                run_cli(s, "calls", "list", "--business", "b-main", "--json").stdout or "[]"
            )
            victim = sorted(c["id"] for c in ended if c["status"] == "Completed")[0]

            # one row of the live table changed (the newest copy is what FINAL shows)
            stack.sink.stop()
            store = ClickHouseStore(s.clickhouse_dsn)
            try:
                store.commands(
                    [
                        "INSERT INTO trunkline.call_events_log SELECT * REPLACE "
                        "(talk_ms + 1 AS talk_ms) FROM trunkline.call_events_log FINAL "
                        f"WHERE call_id = '{victim}' AND event_type = 'CallEnded'"
                    ]
                )
            finally:
                store.close()
            code, report = rebuild(s, "--verify")
            assert code == 1 and not report["equal"]
            assert report["via"].startswith("ClickHouse at chdb:")  # no sink: opened here
            checks = {c["table"]: c for c in report["checks"]}
            assert not checks["call_events_log"]["equal"]
            assert checks["call_events_log"]["differing"] == [victim]
            assert (
                checks["call_events_log"]["live"]["count"]
                == (checks["call_events_log"]["shadow"]["count"])
            )  # same rows, one changed
            assert all(c["equal"] for t, c in checks.items() if t != "call_events_log")

            # the swap promotes the shadow: the live table is right again
            code, swapped = rebuild(s, "--swap")
            assert code == 0
            assert sorted(x["table"] for x in swapped["swapped"]) == sorted(
                ["call_events_log", "billing_records_log", "webhook_deliveries_log"]
            )
            code, report = rebuild(s, "--verify")
            assert code == 0 and report["equal"], summary(report)
            done = run_cli(s, "replay", "clean", "--json")
            assert done.returncode == 0, done.stderr
            dropped = json.loads(done.stdout)["dropped"]
            assert "call_events_log__old" in dropped and "billing_records_log__old" in dropped
            done = run_cli(s, "replay", "clean", "--json")
            assert json.loads(done.stdout)["dropped"] == []
    finally:
        receiver.stop()


def _rated(call_id: str, at: int) -> dict:
    return {
        "envelope": {"event_id": f"{call_id}-rated", "call_id": call_id, "occurred_at": at,
                     "producer_id": "billing"},
        "business_id": "b-1", "direction": "INBOUND", "provider": "SIP",
        "provider_account_id": "", "provider_call_id": f"sip-{call_id}", "started_at": at,
        "ended_at": at + 61_000, "connected": True, "talk_seconds": 61,
        "billable_seconds": 120, "rate_plan_id": "std", "rate_plan_version": 1,
        "increment": "60/60", "currency": "USD", "per_minute": Decimal("0.008500"),
        "connect_fee": Decimal("0.000000"), "amount": Decimal("0.017000"),
        "provider_cost": None, "provider_cost_currency": "", "reason": "", "rating_run": 1,
        "rated_event_id": f"{call_id}-ended",
    }  # fmt: skip


def _ended(call_id: str, at: int, business: str) -> dict:
    return {
        "envelope": {"event_id": f"{call_id}-ended", "call_id": call_id, "occurred_at": at,
                     "producer_id": "media"},
        "reason": "completed", "hangup_side": "caller", "business_id": business,
        "talk_ms": 61_000,
    }  # fmt: skip


def test_replay_events_out_round_trips_through_a_republished_copy(settings, tmp_path):
    s = settings
    now = int(time.time() * 1000)
    producer = kafka.make_producer(s.kafka_bootstrap)
    events = [kafka.Outgoing(CALL_EVENTS.name(s.topic_prefix), f"c{i}".encode(),
                             CODEC.encode("CallEnded", _ended(f"c{i}", now + i, f"b-{i % 2}")))
              for i in range(20)]  # fmt: skip
    events += [kafka.Outgoing(BILLING.name(s.topic_prefix), f"c{i}".encode(),
                              CODEC.encode("CallRated", _rated(f"c{i}", now + i)))
               for i in range(5)]  # fmt: skip
    kafka.publish_all(producer, events)

    out = tmp_path / "ended.jsonl"
    done = run_cli(s, "replay", "events", "--topic", "call-events", "--from", "10m",
                   "--out", str(out), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 20
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {x["record"]["envelope"]["call_id"] for x in lines} == {f"c{i}" for i in range(20)}
    assert all(x["topic"] == CALL_EVENTS.name(s.topic_prefix) and x["type"] == "CallEnded"
               for x in lines)  # fmt: skip
    assert all(isinstance(x["partition"], int) and isinstance(x["offset"], int) for x in lines)

    # filters: one business, one call, a type; --dry-run counts
    done = run_cli(s, "replay", "events", "--topic", "call-events", "--business", "b-1",
                   "--dry-run", "--json")  # fmt: skip
    assert json.loads(done.stdout)["matched"] == 10
    done = run_cli(s, "replay", "events", "--topic", "call-events", "--call", "c3",
                   "--type", "CallEnded", "--dry-run", "--json")  # fmt: skip
    assert json.loads(done.stdout)["matched"] == 1

    # re-published to a topic that is not a live input: the same bytes, the same events
    copy = f"{s.topic_prefix}replayed-{uuid.uuid4().hex[:6]}"
    apply_topics(s.kafka_bootstrap, "", (TopicSpec(copy, 6, False, None, "call_id", ("*",), ""),))
    done = run_cli(s, "replay", "events", "--topic", "call-events", "--to-topic", copy, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 20
    again = tmp_path / "copy.jsonl"
    done = run_cli(s, "replay", "events", "--topic", copy, "--out", str(again), "--json")
    assert done.returncode == 0, done.stderr
    copied = [json.loads(line) for line in again.read_text().splitlines()]

    def key(x: dict) -> str:
        return x["record"]["envelope"]["event_id"]

    assert sorted((key(x), x["key"], x["record"]) for x in copied) == sorted(
        (key(x), x["key"], x["record"]) for x in lines
    )
    raw = {m.key(): m.value() for b in kafka.read_ranges(s.kafka_bootstrap, kafka.offset_ranges(
        s.kafka_bootstrap, [CALL_EVENTS.name(s.topic_prefix)])) for m in b}  # fmt: skip
    raw_copy = {m.key(): m.value() for b in kafka.read_ranges(
        s.kafka_bootstrap, kafka.offset_ranges(s.kafka_bootstrap, [copy])) for m in b}  # fmt: skip
    assert raw_copy == raw  # byte for byte

    # decimals survive as exact strings
    done = run_cli(s, "replay", "events", "--topic", "billing", "--out", str(tmp_path / "b.jsonl"))
    rated = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert {r["record"]["amount"] for r in rated} == {"0.017000"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--topic", "nope", "--dry-run"), "unknown topic 'nope'"),
        (("--topic", "call-events", "--from", "yesterday", "--dry-run"), "--from: 'yesterday'"),
        (("--topic", "call-events", "--from", "1h", "--to", "2h", "--dry-run"), "earlier"),
        (("--topic", "call-events", "--type", "CallEndd", "--dry-run"), "unknown record type"),
        (("--topic", "call-events", "--to-topic", "admission"), "live input"),
        (("--topic", "billing", "--to-topic", "call-events"), "live input"),
        (("--topic", "call-events", "--to-topic", "not a topic"), "not a valid Kafka topic"),
        (("--topic", "call-events", "--to-topic", "absent-topic"), "does not exist"),
    ],
)
def test_replay_events_refuses_bad_arguments_clearly(settings, args, message):
    done = run_cli(settings, "replay", "events", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


def test_a_live_input_target_is_allowed_with_force(settings):
    s = settings
    now = int(time.time() * 1000)
    kafka.publish_all(
        kafka.make_producer(s.kafka_bootstrap),
        [
            kafka.Outgoing(
                BILLING.name(s.topic_prefix), b"c1", CODEC.encode("CallRated", _rated("c1", now))
            )
        ],
    )
    done = run_cli(s, "replay", "events", "--topic", "billing", "--to-topic",
                   "webhook-deliveries", "--force", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["destination"] == WEBHOOK_DELIVERIES.name(s.topic_prefix)
