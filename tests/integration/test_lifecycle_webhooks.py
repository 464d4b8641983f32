"""Lifecycle webhooks and billing on a real broker, with real local HTTP receivers.

Every request a receiver gets is verified with the `standardwebhooks` package. Events
are published to `call-events` as the machines write them; the last test places a real
SIP call through the edge, the worker and a media node, and follows it to its CallRated in
ClickHouse and its call.rated webhook."""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from schemas import SingleObjectCodec
from tests.harness import Service, free_port, poll, run_cli
from tests.integration.test_observability import named, scrape, value
from tests.receiver import Answer, Receiver
from trunkline.core.admin import apply_all
from trunkline.core.kafka import Outgoing, make_producer, publish_all
from trunkline.core.settings import Settings
from trunkline.core.topics import CALL_EVENTS

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"trunkline-test-webhook-secret-32b").decode()
CODEC = SingleObjectCodec()
BUSINESS = "b-hooks"


def hook_settings(kafka_bootstrap: str, state: Path, **extra: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    env = {
        "TRUNKLINE_STATE_DIR": str(state),
        "TRUNKLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": f"w{tag}.",
        "TRUNKLINE_APP_ID": f"hooks-test-{tag}",
        "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
        "TRUNKLINE_SINK_WEB_PORT": str(free_port()),
        "TRUNKLINE_BILLING_WEB_PORT": str(free_port()),
        "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
        "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE": "100ms,200ms",
        "TRUNKLINE_WEBHOOK_TIMEOUT_MS": "1000",
        "TRUNKLINE_SINK_FLUSH_MS": "300",
        **extra,
    }
    s = Settings.from_env(env)
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    return s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET, free_port()).start()
    try:
        yield r
    finally:
        r.stop()


def apply_config(s: Settings, subscriptions: list[dict], extra: dict | None = None) -> None:
    config = {
        "plans": [{"id": "wide", "maxConcurrentCalls": 50, "ratePlanId": "std"}],
        "businesses": [{"id": BUSINESS, "name": "Hooks", "plan": "wide"}],
        "ratePlans": [
            {
                "id": "std",
                "version": 1,
                "effectiveFrom": "2026-01-01T00:00:00Z",
                "currency": "USD",
                "inboundPerMinute": "0.0085",
                "outboundPerMinute": "0.0140",
                "connectFee": "0",
                "increment": "60/60",
                "minimumSeconds": 0,
            }
        ],
        "webhookSubscriptions": [
            {"secret": {"env": "HOOK_SECRET"}, "allowPrivateTargets": True, **sub}
            for sub in subscriptions
        ],
        **(extra or {}),
    }
    path = s.state_dir / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    done = run_cli(s, "config", "apply", str(path))
    assert done.returncode == 0, done.stderr


def webhooks(s: Settings) -> Service:
    return Service(s, "webhooks", env={"HOOK_SECRET": SECRET})


def lifecycle(call_id: str, at: int, answered: bool = True) -> list[tuple[str, dict]]:
    def env(what: str, offset: int) -> dict:
        return {
            "event_id": f"{call_id}-{what}",
            "call_id": call_id,
            "occurred_at": at + offset,
            "producer_id": "test",
        }

    events = [
        (
            "CallOffered",
            {
                "envelope": env("offered", 0),
                "provider": "SIP",
                "provider_call_id": f"sip-{call_id}",
                "business_id": BUSINESS,
                "phone_id": "n-1",
                "to_number": "+15550000002",
                "from_number": "+15557770000",
                "source_ip": "127.0.0.1",
                "edge_id": "edge-a",
            },
        )
    ]
    if answered:
        events.append(
            (
                "CallAnswered",
                {"envelope": env("answered", 900), "backend_id": "b-1", "codec": "PCMU/8000"},
            )
        )
    events.append(
        (
            "CallEnded",
            {
                "envelope": env("ended", 30_900),
                "reason": "completed" if answered else "cancelled",
                "hangup_side": "caller",
                "business_id": BUSINESS,
                "talk_ms": 30_000 if answered else None,
            },
        )
    )
    return events


def publish(s: Settings, events: list[tuple[str, dict]]) -> None:
    topic = CALL_EVENTS.name(s.topic_prefix)
    publish_all(
        make_producer(s.kafka_bootstrap),
        [
            Outgoing(topic, r["envelope"]["call_id"].encode(), CODEC.encode(name, r))
            for name, r in events
        ],
    )


def cli_json(s: Settings, *args: str) -> object:
    done = run_cli(s, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- retries ------------------------------------------------------------------------------
def test_two_500s_then_accepted_three_attempts_one_webhook_id(kafka_bootstrap, tmp_path, receiver):
    s = hook_settings(kafka_bootstrap, tmp_path / "state")
    apply_config(s, [{"id": "flaky", "url": receiver.url("flaky"), "events": ["call.ended"]}])
    receiver.behave = lambda path, n, body: Answer(500 if n < 2 else 200)
    sink, hooks = Service(s, "sink"), webhooks(s)
    sink.start()
    hooks.start()
    try:
        publish(s, lifecycle("c-flaky", int(time.time() * 1000)))
        receiver.wait_for(lambda seen: any(x.status == 200 for x in seen), 30, "an accepted POST")
        tries = receiver.on("flaky")
        assert [t.status for t in tries] == [500, 500, 200]
        assert len({t.webhook_id for t in tries}) == 1
        assert all(t.payload is not None for t in tries)  # standardwebhooks verified each
        body = tries[-1].payload
        assert body["type"] == "call.ended" and body["data"]["id"] == "c-flaky"
        assert body["data"]["fromNumber"] == "+15557770000"  # the entry, not just the event
        assert tries[1].at - tries[0].at >= 0.07  # 100 ms minus the jitter
        webhook_id = tries[0].webhook_id

        def logged():
            rows = cli_json(s, "webhooks", "deliveries", "--subscription", "flaky", "--json")
            return rows if rows and rows[0]["outcome"] == "delivered" else None

        (row,) = poll(logged, 30, "the delivery in ClickHouse")
        assert (row["webhook_id"], row["attempts"], row["status_code"]) == (webhook_id, 3, 200)
        attempts = cli_json(
            s, "webhooks", "deliveries", "--subscription", "flaky", "--webhook-id", webhook_id
        )
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
            (1, "retrying", 500), (2, "retrying", 500), (3, "delivered", 200),
        ]  # fmt: skip
        # the service's /metrics: the attempts by outcome, what it owes, its group's lag
        got = scrape(f"{s.webhooks_url}/metrics")
        by = {"subscription": "flaky", "event_type": "call.ended"}
        assert value(got, "trunkline_webhook_deliveries_total", **by, outcome="retrying") == 2
        assert value(got, "trunkline_webhook_deliveries_total", **by, outcome="delivered") == 1
        assert value(got, "trunkline_webhook_attempt_seconds_count", subscription="flaky") == 3
        assert value(got, "trunkline_webhook_pending", subscription="flaky") == 0
        assert value(got, "trunkline_webhook_subscription_disabled", subscription="flaky") == 0
        group = f"{s.app_id}-webhooks"
        assert value(got, "trunkline_consumer_lag_up", group=group) == 1
        lag = named(got, "trunkline_consumer_lag")
        assert {dict(labels)["group"] for labels in lag} == {group}
        assert f"{s.topic_prefix}call-events" in {dict(labels)["topic"] for labels in lag}
    finally:
        hooks.stop()
        sink.stop()


def test_a_receiver_past_the_timeout_is_retried(kafka_bootstrap, tmp_path, receiver):
    s = hook_settings(kafka_bootstrap, tmp_path / "state")
    apply_config(s, [{"id": "slow", "url": receiver.url("slow"), "events": ["call.ended"]}])
    receiver.behave = lambda path, n, body: Answer(200, delay_s=2.5 if n == 0 else 0)
    hooks = webhooks(s)
    hooks.start()
    try:
        publish(s, lifecycle("c-slow", int(time.time() * 1000)))
        receiver.wait_for(lambda seen: len(seen) >= 2, 30, "the retry after the timeout")
        first, second = sorted(receiver.on("slow"), key=lambda x: x.attempt)[:2]
        assert first.webhook_id == second.webhook_id
        assert (first.attempt, second.attempt) == (1, 2)
        assert second.at < first.at  # the retry was answered before the first, given up at 1 s
        health = hooks.poll("/health/", lambda h: h["stats"]["delivered"] >= 1)
        assert health["stats"]["failed_attempts"] >= 1
    finally:
        hooks.stop()


def test_410_disables_the_subscription_until_an_operator_enables_it(
    kafka_bootstrap, tmp_path, receiver
):
    s = hook_settings(kafka_bootstrap, tmp_path / "state")
    apply_config(s, [{"id": "gone", "url": receiver.url("gone"), "events": ["call.ended"]}])
    status = {"now": 410}
    receiver.behave = lambda path, n, body: Answer(status["now"])
    sink, hooks = Service(s, "sink"), webhooks(s)
    sink.start()
    hooks.start()
    try:
        now = int(time.time() * 1000)
        publish(s, lifecycle("c-gone-1", now))
        receiver.wait_for(lambda seen: len(seen) == 1, 30, "the 410")
        hooks.poll("/health/", lambda h: h["subscriptions"]["gone"]["disabled"])
        publish(s, lifecycle("c-gone-2", now + 1))
        poll(
            lambda: {r["outcome"] for r in cli_json(
                s, "webhooks", "deliveries", "--subscription", "gone", "--failed", "--json"
            )} == {"gone", "skipped"},
            30,
            "gone and skipped in the log",
        )  # fmt: skip
        assert len(receiver.on("gone")) == 1  # nothing was sent to a disabled subscription
        status["now"] = 200
        done = run_cli(s, "webhooks", "enable", "--subscription", "gone")
        assert done.returncode == 0, done.stderr
        hooks.poll("/health/", lambda h: not h["subscriptions"]["gone"]["disabled"])
        done = run_cli(s, "webhooks", "redeliver", "--subscription", "gone", "--since", "1h")
        assert done.returncode == 0, done.stderr
        assert "send 2 delivery(ies) again" in done.stdout
        receiver.wait_for(lambda seen: len([x for x in seen if x.status == 200]) == 2, 30, "both")
        calls = {x.payload["data"]["id"]: x.webhook_id for x in receiver.accepted("gone")}
        assert set(calls) == {"c-gone-1", "c-gone-2"}
        assert receiver.on("gone")[0].webhook_id == calls["c-gone-1"]  # the same webhook-id
    finally:
        hooks.stop()
        sink.stop()


# -- isolation and order ------------------------------------------------------------------
def test_a_dead_receiver_does_not_slow_a_live_one(kafka_bootstrap, tmp_path, receiver):
    s = hook_settings(
        kafka_bootstrap, tmp_path / "state", TRUNKLINE_WEBHOOK_TIMEOUT_MS="60000",
        TRUNKLINE_WEBHOOK_CONCURRENCY="8",
    )  # fmt: skip
    apply_config(
        s,
        [
            {"id": "dead", "url": receiver.url("dead"), "events": ["*"]},
            {"id": "live", "url": receiver.url("live"), "events": ["*"]},
        ],
    )
    receiver.behave = lambda path, n, body: Answer(200, hold=path == "dead")
    hooks = webhooks(s)
    hooks.start()
    try:
        now = int(time.time() * 1000)
        events = [e for i in range(40) for e in lifecycle(f"c-{i}", now + i)]
        publish(s, events)
        receiver.wait_for(lambda seen: len(receiver.accepted("live")) == len(events), 60, "live")
        # the dead subscriber holds every request it got and answered none
        assert receiver.on("dead") == []
        assert receiver.held == 8  # its in-flight limit: it waits only for itself
    finally:
        receiver.release()
        hooks.stop()


def test_ended_never_before_answered_while_answered_is_retried(kafka_bootstrap, tmp_path, receiver):
    s = hook_settings(
        kafka_bootstrap, tmp_path / "state", TRUNKLINE_WEBHOOK_RETRY_SCHEDULE="300ms,300ms,300ms"
    )
    apply_config(s, [{"id": "crm", "url": receiver.url("crm"), "events": ["*"]}])

    def behave(path, n, body):
        return Answer(503 if body["type"] == "call.answered" and n < 2 else 200)

    receiver.behave = behave
    hooks = webhooks(s)
    hooks.start()
    try:
        calls = [f"c-order-{i}" for i in range(5)]
        now = int(time.time() * 1000)
        publish(s, [e for i, c in enumerate(calls) for e in lifecycle(c, now + i)])
        receiver.wait_for(
            lambda seen: sum(x.payload["type"] == "call.ended" for x in seen if x.payload) == 5,
            60,
            "every call.ended",
        )
        for call_id in calls:
            mine = [x for x in receiver.on("crm") if x.payload["data"]["id"] == call_id]
            types = [x.payload["type"] for x in mine]
            assert types == ["call.offered", "call.answered", "call.answered", "call.answered",
                             "call.ended"], types  # fmt: skip
            assert [x.status for x in mine] == [200, 503, 503, 200, 200]
    finally:
        hooks.stop()


# -- crash --------------------------------------------------------------------------------
def test_sigkill_with_retries_pending_loses_nothing(kafka_bootstrap, tmp_path, receiver):
    s = hook_settings(
        kafka_bootstrap, tmp_path / "state", TRUNKLINE_WEBHOOK_RETRY_SCHEDULE="1s,1s,1s,1s,1s,1s"
    )
    apply_config(s, [{"id": "crm", "url": receiver.url("crm"), "events": ["*"]}])
    accepting = {"yes": False}
    receiver.behave = lambda path, n, body: Answer(200 if accepting["yes"] else 503)
    hooks = webhooks(s)
    hooks.start()
    now = int(time.time() * 1000)
    first = [e for i in range(10) for e in lifecycle(f"c-kill-{i}", now + i)]
    try:
        publish(s, first)
        expected = {bk_id(name, r) for name, r in first}
        heads = {bk_id(name, r) for name, r in first if name == "CallOffered"}
        receiver.wait_for(
            lambda seen: {x.webhook_id for x in seen} >= heads, 60, "a first attempt of each call"
        )
        hooks.stop(signal.SIGKILL)  # retries pending (each call's queue behind them), none dead
        assert receiver.accepted("crm") == []
        assert {x.webhook_id for x in receiver.on("crm")} == heads
        later = [e for i in range(10, 15) for e in lifecycle(f"c-kill-{i}", now + i)]
        publish(s, later)  # while the service is down
        accepting["yes"] = True
        hooks.start()
        expected |= {bk_id(name, r) for name, r in later}
        receiver.wait_for(
            lambda seen: {x.webhook_id for x in seen if x.status == 200} >= expected,
            60,
            "every delivery accepted after the restart",
        )
        accepted = {x.webhook_id for x in receiver.accepted("crm")}
        assert accepted == expected  # at least once; deduped by webhook-id: exactly once
        for i in range(15):  # and each call's events in lifecycle order
            mine = [x.payload["type"] for x in receiver.accepted("crm")
                    if x.payload["data"]["id"] == f"c-kill-{i}"]  # fmt: skip
            assert list(dict.fromkeys(mine)) == ["call.offered", "call.answered", "call.ended"]
    finally:
        hooks.stop()


def bk_id(name: str, r: dict) -> str:
    from streams.webhooks.book import webhook_id

    return webhook_id("crm", r["envelope"]["event_id"])


# -- a real call, rated ---------------------------------------------------------------------
def test_a_real_call_is_rated_in_clickhouse_and_in_a_call_rated_webhook(
    kafka_bootstrap, tmp_path, receiver
):
    from tests.stack import CONFIG, running_stack

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
            "id": "billing",
            "url": receiver.url("billing"),
            "events": ["call.ended", "call.rated"],
            "businessId": "b-main",
            "secret": {"env": "HOOK_SECRET"},
            "allowPrivateTargets": True,
        }
    ]
    env = {
        "TRUNKLINE_BILLING_WEB_PORT": str(free_port()),
        "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
        "TRUNKLINE_SINK_FLUSH_MS": "300",
        "TRUNKLINE_LOG_FORMAT": "json",  # the billing worker's and webhook service's too
        "TRUNKLINE_LOG_LEVEL": "debug",
    }
    with running_stack(
        kafka_bootstrap, tmp_path / "state", edges=("edge-a",), config=config, env=env, media=True
    ) as stack:
        s = stack.settings
        rater, hooks = Service(s, "billing-worker"), webhooks(s)
        rater.start()
        hooks.start()
        try:
            done = run_cli(
                s, "call", "+15550000002", "--edge", f"127.0.0.1:{stack.edges['edge-a']}",
                "--seconds", "2",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr + done.stdout
            receiver.wait_for(
                lambda seen: any(x.payload and x.payload["type"] == "call.rated" for x in seen),
                60,
                "call.rated",
            )
            seen = receiver.accepted("billing")
            assert [x.payload["type"] for x in seen] == ["call.ended", "call.rated"]
            rating = seen[1].payload["data"]["rating"]
            call_id = seen[1].payload["data"]["id"]
            assert rating["amount"] == "0.008500"  # 2 s talk: the first 60 s at 0.0085/min
            assert (rating["billableSeconds"], rating["currency"]) == (60, "USD")
            assert (rating["ratePlanId"], rating["ratePlanVersion"]) == ("std", 1)

            def listed():
                done = run_cli(s, "billing", "list", "--business", "b-main", "--json")
                assert done.returncode == 0, done.stderr
                rows = [json.loads(line) for line in done.stdout.splitlines() if line]
                return [r for r in rows if r["call_id"] == call_id]

            (record,) = poll(listed, 30, "the call in billing_records")
            assert record["amount"] == "0.008500" and record["connected"] is True
            assert Decimal(record["per_minute"]) == Decimal("0.0085")
            month = time.strftime("%Y-%m", time.gmtime(record_ms(record["started_at"]) / 1000))
            summary = cli_json(
                s, "billing", "summary", "--business", "b-main", "--month", month, "--json"
            )
            assert summary == [
                {
                    "direction": "INBOUND", "provider": "SIP", "currency": "USD", "calls": 1,
                    "connected": 1, "talk_seconds": record["talk_seconds"],
                    "billable_seconds": 60, "amount": "0.008500", "provider_cost": None,
                }
            ]  # fmt: skip
            text = run_cli(s, "billing", "summary", "--business", "b-main")
            assert "0.008500 USD" in text.stdout
            # the analytics view over billing_records has the call too
            done = run_cli(
                s, "sql", "--format", "json",
                "SELECT business_id, direction, calls, toString(amount) AS amount "
                "FROM billing_daily WHERE business_id = 'b-main'",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            (daily,) = json.loads(done.stdout)
            assert (daily["business_id"], daily["direction"], daily["calls"]) == (
                "b-main", "INBOUND", 1,
            )  # fmt: skip
            assert Decimal(daily["amount"]) == Decimal("0.0085")  # exact, as a string
            # the billing worker's /metrics: the rating counted, its own group's lag
            got = scrape(f"{s.billing_url}/metrics")
            rated = {"direction": "INBOUND", "currency": "USD", "run": "first"}
            assert value(got, "trunkline_billing_rated_total", **rated) == 1
            group = f"{s.app_id}-billing"
            assert value(got, "trunkline_consumer_lag_up", group=group) == 1
            assert {dict(labels)["group"] for labels in named(got, "trunkline_consumer_lag")} == {
                group
            }
            # the webhook service's: both deliveries counted as delivered
            got = scrape(f"{s.webhooks_url}/metrics")
            for kind in ("call.ended", "call.rated"):
                by = {"subscription": "billing", "event_type": kind, "outcome": "delivered"}
                assert value(got, "trunkline_webhook_deliveries_total", **by) == 1
            # every line each one logged is one JSON object, and the call can be followed
            for service, name in ((rater, "billing-worker"), (hooks, "webhooks")):
                assert service.log is not None
                lines = [json.loads(x) for x in service.log.read_text().splitlines() if x.strip()]
                assert lines and {line["service"] for line in lines} == {name}
                assert any(line.get("call_id") == call_id for line in lines), name
        finally:
            hooks.stop()
            rater.stop()


def record_ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_a_name_that_resolves_to_a_private_address_is_refused_after_resolution(
    kafka_bootstrap, tmp_path, receiver
):
    s = hook_settings(kafka_bootstrap, tmp_path / "state", TRUNKLINE_WEBHOOK_RETRY_SCHEDULE="100ms")
    url = f"http://localhost:{receiver.port}/ssrf"  # a name: the config cannot judge it
    apply_config(
        s,
        [
            {"id": "ssrf", "url": url, "events": ["call.ended"], "allowPrivateTargets": False},
            {"id": "ok", "url": receiver.url("ok"), "events": ["call.ended"]},
        ],
    )
    hooks = webhooks(s)
    hooks.start()
    try:
        publish(s, lifecycle("c-ssrf", int(time.time() * 1000)))
        receiver.wait_for(lambda seen: len(receiver.accepted("ok")) == 1, 30, "the allowed one")
        health = hooks.poll("/health/", lambda h: h["stats"]["dead"] == 1)
        assert health["stats"]["delivered"] == 1
        assert receiver.on("ssrf") == []  # no request ever reached the loopback address
    finally:
        hooks.stop()
    log = hooks.log.read_text() if hooks.log else ""
    assert "target refused" in log and "loopback" in log
