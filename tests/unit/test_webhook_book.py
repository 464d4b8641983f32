"""Lifecycle webhooks, the pure pieces: signatures checked by the `standardwebhooks`
package, the retry schedule on a hand-held clock, the target checks, payloads, and the
delivery book (table, ordering rule, gating, restart, redelivery)."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from streams.webhooks import book as bk
from streams.webhooks import payload, retry, signing, targets
from streams.webhooks.book import Book, Input, Result, State
from trunkline.core.config import ConfigError, load_config
from trunkline.core.events import TransitionError
from trunkline.core.settings import SettingsError, parse_schedule
from trunkline.core.targets import refusal

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
T = 1_767_225_600_000


# -- signing ------------------------------------------------------------------------------
def test_signatures_verify_with_the_standardwebhooks_package():
    key = signing.secret_key(SECRET)
    body = b'{"type":"call.ended","timestamp":"2026-01-01T00:00:00.000Z","data":{}}'
    now = 1_767_225_600
    headers = signing.headers(key, "msg_abc", now, body)
    hook = Webhook(SECRET)
    hook._Webhook__verify_timestamp = lambda ts: __import__("datetime").datetime.fromtimestamp(
        int(ts), tz=__import__("datetime").UTC
    )  # the package checks the timestamp against its own clock: ours is fixed
    assert hook.verify(body, headers)["type"] == "call.ended"
    with pytest.raises(WebhookVerificationError):
        hook.verify(body.replace(b"ended", b"rated"), headers)
    other = "whsec_" + base64.b64encode(b"another key, another signature!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("0123", "starts with whsec_"),
        ("whsec_!!!", "followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_refused_without_echoing_them(secret, message):
    with pytest.raises(signing.SecretFormatError, match=message) as info:
        signing.secret_key(secret)
    assert secret not in str(info.value)


# -- retries ------------------------------------------------------------------------------
def test_the_default_schedule_and_the_test_schedule():
    assert parse_schedule("5s,5m,30m,2h,5h,10h,10h") == (
        5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
    )  # fmt: skip
    assert parse_schedule("100ms,200ms") == (100, 200)
    with pytest.raises(SettingsError, match="'soon' is not a positive delay"):
        parse_schedule("5s,soon")
    with pytest.raises(SettingsError, match="'0s'"):
        parse_schedule("0s")


def test_jitter_is_seeded_and_bounded():
    delays = {retry.jittered(10_000, f"msg_{i}", 1) for i in range(200)}
    assert all(8_000 <= d <= 12_000 for d in delays)
    assert len(delays) > 100  # spread out
    assert retry.jittered(10_000, "msg_x", 2) == retry.jittered(10_000, "msg_x", 2)


def test_next_attempt_follows_the_schedule_then_stops():
    schedule = (100, 200)
    first = retry.next_attempt_at(schedule, 0, "msg_a", 1, T)
    second = retry.next_attempt_at(schedule, 1, "msg_a", 2, T)
    assert T + 80 <= first <= T + 120
    assert T + 160 <= second <= T + 240
    assert retry.next_attempt_at(schedule, 2, "msg_a", 3, T) is None
    # Retry-After: no sooner than it asks
    assert retry.next_attempt_at(schedule, 0, "msg_a", 1, T, retry_after=5_000) == T + 5_000


def test_retry_after_forms():
    assert retry.retry_after_ms("3", T) == 3_000
    assert retry.retry_after_ms("Thu, 01 Jan 2026 00:00:10 GMT", T) == 10_000
    assert retry.retry_after_ms("tomorrow", T) is None
    assert retry.retry_after_ms(None, T) is None
    assert retry.retry_after_ms("999999999", T) == retry.MAX_RETRY_AFTER_MS


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (204, "delivered"), (299, "delivered"), (410, "gone"),
     (301, "failed"), (400, "failed"), (404, "failed"), (500, "failed"), (None, "failed")],
)  # fmt: skip
def test_verdicts(status, verdict):
    assert retry.verdict(status).value == verdict


# -- targets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "private_ok", "refused"),
    [
        ("169.254.169.254", True, "link-local or cloud metadata"),
        ("169.254.1.1", True, "link-local"),
        ("fd00:ec2::254", True, "metadata"),
        ("fe80::1", True, "link-local"),
        ("::ffff:169.254.169.254", True, "link-local"),
        ("127.0.0.1", False, "loopback"),
        ("::1", False, "loopback"),
        ("10.1.2.3", False, "private"),
        ("192.168.0.10", False, "private"),
        ("100.64.0.1", False, "private"),
        ("0.0.0.0", False, "private"),
        ("224.0.0.1", False, "not a public"),
        ("127.0.0.1", True, None),
        ("10.1.2.3", True, None),
        ("93.184.216.34", False, None),
        ("2606:4700::1111", False, None),
    ],
)
def test_target_addresses(address, private_ok, refused):
    why = refusal(address, private_ok)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_resolved_addresses_are_filtered_and_none_left_is_refused():
    assert targets.allowed_addresses("h", ["10.0.0.1", "93.184.216.34"], False) == ["93.184.216.34"]
    with pytest.raises(targets.TargetRefused, match="private address"):
        targets.allowed_addresses("internal.example", ["10.0.0.1"], False)
    with pytest.raises(targets.TargetRefused, match="metadata"):
        targets.allowed_addresses("meta", ["169.254.169.254"], True)
    with pytest.raises(targets.TargetRefused, match="only http"):
        targets.check_url("ftp://example.com/x")
    assert targets.check_url("https://crm.example/hooks") == ("crm.example", 443)


SUBS = """
businesses: [{id: 123, name: Acme, plan: starter}]
plans: [{id: starter, maxConcurrentCalls: 2}]
webhookSubscriptions:
  - {id: crm, url: "https://crm.example/hooks/calls", events: ["call.answered", "call.ended",
     "call.rated"], businessId: 123, secret: {env: CRM_WEBHOOK_SECRET}}
  - {id: all, url: "http://127.0.0.1:9999/hooks", events: ["*"], secret: {file: keys/all},
     allowPrivateTargets: true}
"""


def test_subscriptions_in_the_config():
    config = load_config(SUBS)
    crm = config.section("webhookSubscriptions")["crm"].body
    assert crm["secret_ref"] == "env:CRM_WEBHOOK_SECRET"
    assert crm["business_id"] == "123" and crm["allow_private_targets"] is False
    assert config.section("webhookSubscriptions")["all"].body["events"] == ["*"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"https://crm.example/hooks/calls"', '"ftp://crm.example/x"', "only http:// and https://"),
        ('"https://crm.example/hooks/calls"', '"http://169.254.169.254/latest"', "metadata"),
        ('"https://crm.example/hooks/calls"', '"http://10.0.0.5/hooks"', "allowPrivateTargets"),
        ('"call.rated"]', '"call.billed"]', "unknown event type 'call.billed'"),
        ('["*"]', '["*", "call.ended"]', "list it alone"),
        ("{env: CRM_WEBHOOK_SECRET}", '"whsec_abc"', "is a secret"),
        ("businessId: 123", "businessId: 999", "business '999' is not defined"),
    ],
)
def test_config_check_refuses_bad_subscriptions(old, new, message):
    assert old in SUBS
    with pytest.raises(ConfigError, match=message) as info:
        load_config(SUBS.replace(old, new, 1))
    assert "whsec_abc" not in str(info.value)


# -- payloads -----------------------------------------------------------------------------
def env(call_id, at, event_id):
    return {"event_id": event_id, "call_id": call_id, "occurred_at": at, "producer_id": "t"}


def offered(call_id="q1", at=T, business="123", event_id=None):
    return "CallOffered", {
        "envelope": env(call_id, at, event_id or f"{call_id}-off"),
        "provider": "TWILIO", "provider_call_id": "CA1", "direction": "INBOUND",
        "business_id": business, "phone_id": "tw-1", "to_number": "+15551234567",
        "from_number": "+15550001111", "source_ip": "1.2.3.4", "edge_id": "webhook-1",
        "provider_account_id": "twilio-main",
    }  # fmt: skip


def answered(call_id="q1", at=T + 1000, event_id=None):
    return "CallAnswered", {
        "envelope": env(call_id, at, event_id or f"{call_id}-ans"),
        "backend_id": "backend-1",
        "codec": "PCMU/8000",
    }


def ended(call_id="q1", at=T + 61_000, event_id=None, business="123"):
    return "CallEnded", {
        "envelope": env(call_id, at, event_id or f"{call_id}-end"),
        "reason": "completed", "hangup_side": "caller", "business_id": business,
        "backend_id": "backend-1", "setup_ms": 900, "talk_ms": 60_000,
    }  # fmt: skip


def rated(call_id="q1", at=T + 61_000, run=1):
    return "CallRated", {
        "envelope": env(call_id, at, f"{call_id}-rated-{run}"),
        "business_id": "123", "direction": "INBOUND", "provider": "TWILIO",
        "connected": True, "talk_seconds": 60, "billable_seconds": 60, "rate_plan_id": "std",
        "rate_plan_version": 1, "increment": "60/60", "currency": "USD",
        "per_minute": Decimal("0.008500"), "connect_fee": Decimal("0.000000"),
        "amount": Decimal("0.008500"), "provider_cost": None, "provider_cost_currency": "",
        "reason": "", "rating_run": run, "rated_event_id": f"{call_id}-end",
    }  # fmt: skip


def test_payloads_carry_the_call_entry_accumulated_over_its_events():
    entry: dict = {}
    for name, r in (offered(), answered(), ended()):
        entry = payload.apply(entry, name, r)
    name, r = ended()
    body = json.loads(payload.body("call.ended", T + 61_000, payload.data(entry, name, r)))
    assert body["type"] == "call.ended"
    assert body["timestamp"] == "2026-01-01T00:01:01.000Z"
    data = body["data"]
    assert data["id"] == "q1" and data["status"] == "Completed"
    assert (data["fromNumber"], data["toNumber"]) == ("+15550001111", "+15551234567")
    assert data["providerCallId"] == "CA1" and data["talkMs"] == 60_000
    assert data["enqueuedAt"] == "2026-01-01T00:00:00.000Z"
    assert not any(k.startswith("_") for k in data)
    name, r = rated()
    rating = payload.data(entry, name, r)["rating"]
    assert rating["amount"] == "0.008500" and rating["currency"] == "USD"


# -- the book -----------------------------------------------------------------------------
def subscription(sub_id="crm", events=("*",), business="123"):
    return {
        "id": sub_id,
        "url": f"https://{sub_id}.example/hooks",
        "events": list(events),
        "business_id": business,
        "secret_ref": "env:X",
        "allow_private_targets": False,
    }


def new_book(*subs, schedule=(100, 200)):
    b = Book(schedule, retention_ms=60_000)
    for s in subs or (subscription(),):
        b.set_subscription(s["id"], s)
    return b


def feed(b, *events, now=T, gated=False):
    changes = bk.Changes()
    for name, r in events:
        changes.extend(b.on_record(name, r, now, gated=gated))
    return changes


@pytest.mark.parametrize("state", [None, *State])
@pytest.mark.parametrize("event", list(Input))
def test_every_state_and_input_pair(state, event):
    listed = bk.TRANSITIONS.get(state, {})
    if event in listed:
        assert bk.step(state, event) is listed[event]
    else:
        with pytest.raises(TransitionError):
            bk.step(state, event)


def test_one_delivery_per_subscription_and_event_and_the_same_webhook_id_every_time():
    b = new_book(subscription("crm"), subscription("ops", events=("call.ended",), business=None))
    changes = feed(b, offered(), answered(), ended())
    assert {d.event_type for d in b.deliveries.values() if d.subscription_id == "crm"} == {
        "call.offered", "call.answered", "call.ended",
    }  # fmt: skip
    assert [d.event_type for d in b.deliveries.values() if d.subscription_id == "ops"] == [
        "call.ended"
    ]
    assert changes.woken == {"crm", "ops"}
    again = feed(b, ended())  # a re-delivered record
    assert [w for w in again.writes if w.key.startswith("d/")] == []
    assert bk.webhook_id("crm", "q1-end") == b.deliveries[("crm", "q1-end")].webhook_id
    assert bk.webhook_id("crm", "q1-end") != bk.webhook_id("ops", "q1-end")


def test_a_second_end_of_the_call_fires_no_second_call_ended():
    b = new_book()
    feed(b, offered(), ended(), ended(event_id="provider-end", at=T + 62_000))
    assert [d.event_id for d in b.deliveries.values() if d.event_type == "call.ended"] == ["q1-end"]


def test_business_filter_and_event_filter():
    b = new_book(subscription("crm", events=("call.ended",), business="123"))
    feed(b, offered("q9", business="456"), ended("q9", business="456"), offered(), ended())
    assert [d.call_id for d in b.deliveries.values()] == ["q1"]


def test_ordering_a_later_event_waits_for_the_head_being_retried():
    b = new_book()
    feed(b, offered(), answered(), ended())
    sent, _ = b.due("crm", T, 10)
    assert [d.event_type for d in sent] == ["call.offered"]  # one at a time per call
    b.on_result(sent[0].key, Result(200), T + 5)
    sent, _ = b.due("crm", T + 5, 10)
    assert [d.event_type for d in sent] == ["call.answered"]
    b.on_result(sent[0].key, Result(500, "HTTP 500"), T + 10)  # retried in ~100 ms
    assert b.due("crm", T + 11, 10)[0] == []  # call.ended must not overtake it
    due_at = b.next_due("crm")
    assert T + 90 <= due_at <= T + 130
    sent, _ = b.due("crm", due_at, 10)
    assert [d.event_type for d in sent] == ["call.answered"]
    b.on_result(sent[0].key, Result(204), due_at + 1)
    sent, _ = b.due("crm", due_at + 1, 10)
    assert [d.event_type for d in sent] == ["call.ended"]


def test_lifecycle_rank_orders_events_read_out_of_order_and_calls_do_not_wait_for_each_other():
    b = new_book()
    feed(b, ended(), answered(), offered(), offered("q2"))
    sent, _ = b.due("crm", T, 10)
    assert sorted((d.call_id, d.event_type) for d in sent) == [
        ("q1", "call.offered"), ("q2", "call.offered"),
    ]  # fmt: skip


def test_retries_then_dead_letter_then_redeliver_with_the_same_webhook_id():
    b = new_book(schedule=(100, 200))
    feed(b, ended())
    now = T
    outcomes = []
    for _ in range(3):
        now = b.next_due("crm")
        (d,), _ = b.due("crm", now, 10)
        changes = b.on_result(d.key, Result(503, "HTTP 503"), now)
        outcomes.append(changes.attempts[0]["outcome"])
        assert changes.attempts[0]["webhook_id"] == d.webhook_id
    assert outcomes == ["retrying", "retrying", "dead"]
    dead = b.deliveries[("crm", "q1-end")]
    assert dead.state is State.DEAD and dead.attempts == 3
    assert b.next_due("crm") is None
    command = {
        "envelope": env("q1", now, "cmd-1"), "action": "redeliver", "subscription_id": "crm",
        "webhook_id": dead.webhook_id, "source_event_id": "q1-end", "event_type": "call.ended",
        "business_id": "123", "occurred_at": T + 61_000, "body": dead.body,
    }  # fmt: skip
    b.on_command(command, now + 1000)
    (d,), _ = b.due("crm", now + 1000, 10)
    changes = b.on_result(d.key, Result(200), now + 1001)
    assert changes.attempts[0]["attempt"] == 4  # the count goes on
    assert changes.attempts[0]["webhook_id"] == dead.webhook_id
    assert b.deliveries[("crm", "q1-end")].state is State.DELIVERED


def test_410_disables_the_subscription_and_its_other_deliveries_are_skipped():
    b = new_book()
    feed(b, ended(), ended("q2"))
    sent, _ = b.due("crm", T, 10)
    gone = b.on_result(sent[0].key, Result(410, "HTTP 410 Gone"), T + 1)
    assert gone.attempts[0]["outcome"] == "gone"
    assert any(w.key == "s/crm" and w.value["disabled"] for w in gone.writes)
    b.on_result(sent[1].key, Result(500), T + 1)
    later, changes = b.due("crm", T + 10_000, 10)
    assert later == []
    assert [a["outcome"] for a in changes.attempts] == ["skipped"]
    enable = {"envelope": env("", T, "c"), "action": "enable", "subscription_id": "crm"}
    assert any(
        w.key == "s/crm" and w.value is None for w in b.on_command(enable, T + 20_000).writes
    )
    feed(b, ended("q3"))
    assert [d.call_id for d in b.due("crm", T + 20_000, 10)[0]] == ["q3"]


def test_call_rated_waits_for_its_gate():
    b = new_book()
    feed(b, rated(), gated=True)  # read from billing before the end from call-events
    assert b.due("crm", T, 10)[0] == []
    feed(b, offered(), ended())
    sent, _ = b.due("crm", T, 10)
    assert [d.event_type for d in sent] == ["call.offered"]
    b.on_result(sent[0].key, Result(200), T)
    (d,), _ = b.due("crm", T, 10)
    assert d.event_type == "call.ended"
    b.on_result(d.key, Result(200), T)
    assert b.due("crm", T, 10)[0] == []  # still gated
    assert b.ungate("q1").woken == {"crm"}
    assert [d.event_type for d in b.due("crm", T, 10)[0]] == ["call.rated"]


def test_a_restarted_book_holds_every_pending_delivery_from_its_state_records():
    b = new_book()
    state: dict[str, dict | None] = {}

    def keep(changes):
        for w in changes.writes:
            state[w.key] = w.value

    keep(feed(b, offered(), answered(), ended(), rated()))
    (d,), changes = b.due("crm", T, 10)
    keep(changes)
    keep(b.on_result(d.key, Result(200), T + 1))
    (d,), changes = b.due("crm", T + 1, 10)
    keep(b.on_result(d.key, Result(500), T + 2))  # call.answered retrying
    # killed here (call.answered retrying; call.ended and call.rated queued behind it)
    again = new_book()
    for key, value in state.items():
        again.load(key, json.loads(json.dumps(value)) if value is not None else None)
    again.loaded()
    assert again.gate_loaded_ratings() == {"q1"}
    assert again.pending() == 3
    due_at = again.next_due("crm")
    assert due_at == b.deliveries[("crm", "q1-ans")].next_at
    (d,), _ = again.due("crm", due_at, 10)
    assert (d.event_type, d.attempts, d.webhook_id) == (
        "call.answered", 1, bk.webhook_id("crm", "q1-ans"),
    )  # fmt: skip
    assert json.loads(d.body)["type"] == "call.answered"


def test_settled_deliveries_and_quiet_entries_are_forgotten_after_the_retention():
    b = new_book()
    feed(b, ended())
    (d,), _ = b.due("crm", T, 10)
    b.on_result(d.key, Result(200), T)
    assert b.sweep(T + 59_000) == []
    keys = sorted(w.key for w in b.sweep(T + 60_000))
    assert keys == ["d/crm/q1-end", "e/q1"]
    assert b.deliveries == {} and b.entries == {}


def test_no_subscription_keeps_nothing():
    b = Book((100,), 60_000)
    assert feed(b, offered(), ended()).writes == []


def test_an_outbound_call_fires_offered_attempt_failed_answered_and_ended():
    """The records the REST API and the dialer write for a call Twilio refused (503) and
    Telnyx carried: call.offered (outbound), one call.attempt_failed, then the rest."""
    from tests.samples import sample

    def rec(name, at, **fields):
        r = sample(name, call_id="q-out", at_ms=at)
        r["envelope"]["event_id"] = f"q-out-{name}-{at}"
        r.update(fields)
        return name, r

    b = new_book(subscription(business="456"))
    feed(
        b,
        rec("OutboundCallRequested", T),
        rec("OutboundAttemptFailed", T + 100),
        rec("OutboundAttempt", T + 200, attempt=1, provider="TELNYX", account_id="telnyx-main"),
        answered("q-out", T + 5_000),
        ended("q-out", T + 65_000, business="456"),
    )
    bodies = {
        d.event_type: json.loads(d.body)
        for d in b.deliveries.values()
        if d.subscription_id == "crm"
    }
    assert set(bodies) == {"call.offered", "call.attempt_failed", "call.answered", "call.ended"}
    offered_data = bodies["call.offered"]["data"]
    assert offered_data["direction"] == "OUTBOUND"
    assert (offered_data["fromNumber"], offered_data["toNumber"]) == (
        "+15557654321", "+4915112345678",
    )  # fmt: skip
    failed = bodies["call.attempt_failed"]["data"]["attempt"]
    assert failed == {
        "attempt": 1, "provider": "TWILIO", "accountId": "twilio-main", "reason": "http_5xx",
        "detail": "Service Unavailable", "httpStatus": 503, "retryable": True,
    }  # fmt: skip
    assert bodies["call.ended"]["data"]["status"] == "Completed"
