"""The webhook call core on a hand-held clock: offer -> decision -> answer, retries,
timeouts, lifecycle reports, and every (state, input) pair of its table."""

from __future__ import annotations

import itertools

import pytest

from edge.webhook.base import (
    CallEvent,
    InboundCall,
    Progress,
    Provider,
    Refused,
    Routed,
    WebhookError,
)
from edge.webhook.calls import (
    TRANSITIONS,
    Answer,
    CallState,
    Input,
    NumberEntry,
    Publish,
    Wait,
    WebhookCalls,
    step,
)
from schemas import SingleObjectCodec
from tests.samples import sample
from trunkline.core.events import TransitionError

CODEC = SingleObjectCodec()
NUMBERS = {("TWILIO", "+15557654321"): NumberEntry("tw-1", "b-main", "twilio-main")}
T0 = 1_700_000_000.0


def core(timeout: float = 5.0) -> WebhookCalls:
    return WebhookCalls(
        "webhook-1",
        directory=lambda p, n: NUMBERS.get((p.value, n)),
        decision_timeout=timeout,
        retention=60.0,
    )


def call(sid: str = "CA1", to: str = "+15557654321", account: str = "twilio-main") -> InboundCall:
    return InboundCall(Provider.TWILIO, account, sid, to, "+15550001111", sid)


def routed(call_id: str) -> dict:
    r = sample("CallRouted", call_id=call_id)
    r.update(backend_id="backend-1", backend_media_url="ws://127.0.0.1:8081", edge_id="webhook-1")
    return r


def test_every_state_input_pair():
    states = [None, *CallState]
    for state, event in itertools.product(states, Input):
        if event in TRANSITIONS.get(state, {}):
            assert step(state, event) is TRANSITIONS[state][event]
        else:
            with pytest.raises(TransitionError):
                step(state, event)


def test_offer_publishes_once_and_retries_get_the_same_answer():
    c, first = core(), call()
    outs = c.offer(first, T0)
    assert [type(o) for o in outs] == [Publish, Wait]
    offer = outs[0]
    assert isinstance(offer, Publish)
    assert (offer.dest, offer.key, offer.name) == ("admission", "b-main", "CallOffered")
    record = offer.record
    assert record["provider"] == "TWILIO" and record["provider_call_id"] == "CA1"
    assert record["provider_account_id"] == "twilio-main" and record["phone_id"] == "tw-1"
    assert record["envelope"]["call_id"] == first.call_id
    CODEC.encode("CallOffered", record)  # fits the schema
    assert c.offer(call(), T0 + 0.1) == [Wait(first.call_id)]  # a retry while waiting
    answer = c.on_decision("CallRouted", routed(first.call_id), T0 + 0.2)
    decision = Routed(first.call_id, "ws://127.0.0.1:8081", "backend-1")
    assert answer == [Answer(first.call_id, decision)]
    assert c.entries[first.call_id].state is CallState.ANSWERED
    for later in (0.3, 1.0, 30.0):  # retries: the same answer, nothing published
        assert c.offer(call(), T0 + later) == [Answer(first.call_id, decision)]
    assert c.on_decision("CallRouted", routed(first.call_id), T0 + 1) == []  # replayed


def test_a_rejection_is_the_answer():
    c, first = core(), call()
    c.offer(first, T0)
    rejected = sample("CallRejected", call_id=first.call_id)
    rejected.update(status_code=486, reason="plan one limit reached")
    assert c.on_decision("CallRejected", rejected, T0) == [
        Answer(first.call_id, Refused(first.call_id, 486, "plan one limit reached"))
    ]


def test_no_decision_in_time_answers_busy_and_releases():
    c, first = core(timeout=5.0), call()
    c.offer(first, T0)
    assert c.next_deadline() == T0 + 5.0
    assert c.expire(T0 + 4.9) == []
    outs = c.expire(T0 + 5.0)
    assert outs[0] == Answer(
        first.call_id, Refused(first.call_id, 503, "no routing decision within 5s")
    )
    ended = [o for o in outs if isinstance(o, Publish)]
    assert [(o.dest, o.key, o.name) for o in ended] == [
        ("admission", "b-main", "CallEnded"),
        ("call-events", first.call_id, "CallEnded"),
    ]
    assert ended[0].record["reason"] == "edge_timeout"
    CODEC.encode("CallEnded", ended[0].record)
    assert c.on_decision("CallRouted", routed(first.call_id), T0 + 6) == []  # too late
    assert c.offer(call(), T0 + 7) == [outs[0]]  # the same busy answer


def test_answered_calls_are_forgotten_after_the_retention():
    c, first = core(), call()
    c.offer(first, T0)
    c.on_decision("CallRouted", routed(first.call_id), T0 + 1)
    c.expire(T0 + 60.5)
    assert first.call_id in c.entries
    c.expire(T0 + 61.0)
    assert first.call_id not in c.entries
    assert [type(o) for o in c.offer(call(), T0 + 62)] == [Publish, Wait]  # offered again


@pytest.mark.parametrize(
    "bad", [call(to="+15550000000"), call(account="twilio-other")], ids=["number", "account"]
)
def test_a_number_not_configured_for_the_account_is_404_and_publishes_nothing(bad):
    c = core()
    with pytest.raises(WebhookError) as info:
        c.offer(bad, T0)
    assert info.value.status == 404 and info.value.label == "unknown_number"
    assert "is not configured for Twilio account" in str(info.value)
    assert c.entries == {}


def test_lifecycle_reports_become_events_with_ids_from_the_provider():
    c = core()
    first = call()

    def report(progress: Progress, status: str, key: str, **kw: object) -> list[Publish]:
        event = CallEvent(
            Provider.TWILIO, "twilio-main", "CA1", progress, status, key,
            to_number="+15557654321", **kw,
        )  # fmt: skip
        return c.on_event(event, T0)

    (ringing,) = report(Progress.PROGRESS, "ringing", "seq/0")
    assert (ringing.dest, ringing.name) == ("call-events", "CallProgress")
    assert ringing.record["provider_status"] == "ringing"
    CODEC.encode("CallProgress", ringing.record)
    (answered,) = report(Progress.ANSWERED, "in-progress", "seq/1")
    assert (answered.dest, answered.name) == ("call-events", "CallAnswered")
    assert answered.record["provider_status"] == "in-progress"
    CODEC.encode("CallAnswered", answered.record)
    ended = report(
        Progress.ENDED, "completed", "seq/2", reason="completed", duration_ms=42_000, mos=4.2
    )
    assert [(o.dest, o.key) for o in ended] == [
        ("admission", "b-main"),
        ("call-events", first.call_id),
    ]
    record = ended[0].record
    assert record["envelope"]["call_id"] == first.call_id
    assert record["hangup_cause"] == "completed" and record["provider_duration_ms"] == 42_000
    assert record["media"]["mos"] == 4.2
    CODEC.encode("CallEnded", record)
    again = report(
        Progress.ENDED, "completed", "seq/2", reason="completed", duration_ms=42_000, mos=4.2
    )
    assert again[0].record["envelope"]["event_id"] == record["envelope"]["event_id"]


def test_a_providers_cost_report_is_history_only():
    c = core()
    first = call()
    c.offer(first, T0)
    event = CallEvent(
        Provider.TWILIO, "twilio-main", "CA1", Progress.COST, "call.cost", "ev-cost",
        cost="0.0042", currency="USD", billed_seconds=60,
    )  # fmt: skip
    (out,) = c.on_event(event, T0 + 90)
    assert (out.dest, out.name, out.key) == ("call-events", "CallCost", first.call_id)
    assert (out.record["cost"], out.record["currency"], out.record["business_id"]) == (
        "0.0042", "USD", "b-main",
    )  # fmt: skip
    CODEC.encode("CallCost", out.record)
    assert c.on_event(event, T0 + 91)[0].record == {
        **out.record,
        "envelope": {**out.record["envelope"], "occurred_at": T0 * 1000 + 91_000},
    }  # a retried report: the same event id
