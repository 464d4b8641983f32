"""A small crafted history with figures computed by hand, for the analytics views, the
report and the dashboards (tests/integration/test_analytics.py says what each view must
give for it).

Business b-1 (plan limit 3), hour 10:00 UTC on 2026-01-05, backend-1, region us-east-1:

    call  provider dir       offer  answer  end    talk  decision        media
    A     SIP      INBOUND   0 s    1.0 s   55 s   54 s  routed  +120ms  PCMU 0% loss
    B     SIP      INBOUND   30 s   31.5 s  91.5 s 60 s  routed  +80ms   PCMU 5% loss
    C     SIP      INBOUND   45 s   45.5 s  75.5 s 30 s  routed  +300ms  PCMA 0%, jitter 10
    D     SIP      INBOUND   50 s   -       -      -     rejected 486 +50ms (plan full)
    F     TELNYX   OUTBOUND  10 s   15 s    30 s   15 s  routed  +200ms  PCMU 0% loss,
          (requested through the API; Twilio's attempt failed, Telnyx's carried it and
          rang at 12 s)

SIP inbound (A-D): attempts 4, answered 3 (ASR 0.75), effective 4 (NER 1: a 486 is the
callee's side), answered seconds 144 (ACD 48 s), PDD 1000/1500/500 ms (average 1000,
p95 1500), rejections {486: 1}. F: PDD 2000 ms (to ringing).
Plan slots of b-1 (and backend-1's slots, the same spans): A 0-55, F 10-30, B 30-91.5,
C 45-75.5: minute 10:00 peaks at 3 (45-55 s; F's end and B's start at 30 s do not
overlap), minute 10:01 at 2; utilisation 1.0 and 2/3.

Business b-2, hour 11:00: call E admitted then refused 503 by routing (no backend): one
attempt, ASR 0, NER 0.

Billing (`billing()`): the billing worker's CallRated for A-F, F (outbound) rated twice
when its provider's cost arrived; `billing_daily` must count it once.
"""

from __future__ import annotations

from typing import Any

from tests.samples import sample

#: 2026-01-05 10:00:00 UTC
T0 = 1_767_607_200_000
PLAN_LIMIT = 3

Event = tuple[str, dict[str, Any], int]  # (record name, record, Kafka timestamp ms)


def _event(
    name: str, call_id: str, at_ms: int, published_ms: int | None = None, **body: Any
) -> Event:
    record = sample(name, call_id=call_id, at_ms=at_ms)
    record.update(body)
    return name, record, published_ms if published_ms is not None else at_ms


def _common(business: str, provider: str = "SIP") -> dict[str, Any]:
    return {"business_id": business, "provider": provider}


def answered_call(
    call_id: str,
    offer_s: float,
    answer_s: float,
    end_s: float,
    decision_ms: int,
    *,
    codec: str = "PCMU/8000",
    received: int = 3000,
    lost: int = 0,
    jitter_ms: float = 0.0,
    business: str = "b-1",
    provider: str = "SIP",
    direction: str = "INBOUND",
    ringing_s: float | None = None,
) -> list[Event]:
    t = T0 + int(offer_s * 1000)
    answer, end = T0 + int(answer_s * 1000), T0 + int(end_s * 1000)
    routed = {"backend_id": "backend-1", "region_id": "us-east-1", **_common(business, provider)}
    if direction == "OUTBOUND":  # the REST API's request, then the dialer's attempts
        start = _event(
            "OutboundCallRequested",
            call_id,
            t,
            **_common(business, "TWILIO"),
            phone_id=f"n-{business}",
        )
    else:
        start = _event(
            "CallOffered",
            call_id,
            t,
            **_common(business, provider),
            direction=direction,
            phone_id=f"n-{business}",
        )
    events = [
        start,
        _event(
            "CallAdmitted",
            call_id,
            t,
            t + decision_ms // 2,
            **_common(business, provider),
            max_concurrent_calls=PLAN_LIMIT,
            plan_id="p-3",
        ),
        _event("CallRouted", call_id, t, t + decision_ms, **routed),
    ]
    if direction == "OUTBOUND":
        events += [
            _event(
                "OutboundAttemptFailed",
                call_id,
                t + 250,
                attempt=0,
                provider="TWILIO",
                account_id="twilio-main",
                business_id=business,
            ),
            _event(
                "OutboundAttempt",
                call_id,
                t + 300,
                attempt=1,
                provider=provider,
                account_id=f"{provider.lower()}-main",
                business_id=business,
            ),
        ]
    if ringing_s is not None:
        ring = T0 + int(ringing_s * 1000)
        events.append(
            _event(
                "CallProgress",
                call_id,
                ring,
                provider=provider,
                provider_status="ringing",
                business_id=business,
            )
        )
    events += [
        _event("CallAccepted", call_id, answer, backend_id="backend-1"),
        _event("CallAnswered", call_id, answer, backend_id="backend-1", codec=codec),
        _event(
            "CallEnded", call_id, end, reason="completed", hangup_side="caller",
            business_id=business, region_id="us-east-1", backend_id="backend-1",
            setup_ms=100, talk_ms=end - answer, codec=codec,
            media={"packets_sent": received + lost, "packets_received": received,
                   "packets_lost": lost, "jitter_ms": jitter_ms, "mos": None},
        ),
    ]  # fmt: skip
    return events


def history() -> list[Event]:
    """Every event of the crafted history, in no particular order of calls."""
    d = T0 + 50_000
    e = T0 + 3_600_000
    return [
        *answered_call("call-a", 0, 1.0, 55, 120),
        *answered_call("call-b", 30, 31.5, 91.5, 80, lost=150, received=2850),
        *answered_call("call-c", 45, 45.5, 75.5, 300, codec="PCMA/8000", jitter_ms=10.0),
        _event("CallOffered", "call-d", d, **_common("b-1"), phone_id="n-b-1"),
        _event(
            "CallRejected",
            "call-d",
            d,
            d + 50,
            stage="ADMISSION",
            status_code=486,
            reason="plan p-3 at its limit of 3 calls",
            business_id="b-1",
            region_id="us-east-1",
        ),
        *answered_call(
            "call-f", 10, 15, 30, 200, provider="TELNYX", direction="OUTBOUND", ringing_s=12
        ),
        _event("CallOffered", "call-e", e, **_common("b-2"), phone_id="n-b-2"),
        _event(
            "CallAdmitted",
            "call-e",
            e,
            e + 40,
            **_common("b-2"),
            max_concurrent_calls=5,
            plan_id="p-5",
        ),
        _event(
            "CallRejected",
            "call-e",
            e,
            e + 90,
            stage="ROUTING",
            status_code=503,
            reason="no live backend in us-east-1",
            business_id="b-2",
            region_id="us-east-1",
        ),
    ]


def rows() -> list[tuple[Any, ...]]:
    """The history as `call_events_log` rows (what the sink would insert)."""
    from streams.projection import event_row

    return [event_row(name, r, 0, i, published) for i, (name, r, published) in enumerate(history())]


# -- billing (the billing worker's CallRated records for the same calls) -----------------
def _rated(
    call_id: str,
    business: str,
    direction: str,
    provider: str,
    talk: int,
    amount: str,
    *,
    run: int = 1,
    currency: str = "USD",
    cost: str | None = None,
    offer_s: float = 0,
) -> dict[str, Any]:
    from decimal import Decimal

    record = sample("CallRated", call_id=call_id, at_ms=T0 + 3600_000)
    connected = talk > 0
    record.update(
        business_id=business, direction=direction, provider=provider,
        started_at=T0 + int(offer_s * 1000), ended_at=T0 + int(offer_s * 1000) + talk * 1000,
        connected=connected, talk_seconds=talk, billable_seconds=60 if connected else 0,
        currency=currency, amount=Decimal(amount), rating_run=run,
        provider_cost=Decimal(cost) if cost is not None else None,
        provider_cost_currency="USD" if cost is not None else "",
        reason="" if connected else "not connected: rejected",
    )  # fmt: skip
    return record


def billing() -> list[dict[str, Any]]:
    """CallRated for A-F: 0.0085/min inbound and 0.014/min outbound, 60/60 increments;
    F rated twice (its provider's cost report re-issued it as run 2). Per day 2026-01-05:
    b-1 INBOUND SIP USD 4 calls, 3 connected, 144 talk s, 180 billable s, 0.025500;
    b-1 OUTBOUND TELNYX USD 1 call, 0.014000, provider cost 0.0042; b-2 INBOUND SIP EUR
    1 call, 0."""
    return [
        _rated("call-a", "b-1", "INBOUND", "SIP", 54, "0.008500"),
        _rated("call-b", "b-1", "INBOUND", "SIP", 60, "0.008500", offer_s=30),
        _rated("call-c", "b-1", "INBOUND", "SIP", 30, "0.008500", offer_s=45),
        _rated("call-d", "b-1", "INBOUND", "SIP", 0, "0", offer_s=50),
        _rated("call-f", "b-1", "OUTBOUND", "TELNYX", 15, "0.014000", offer_s=10),
        _rated("call-f", "b-1", "OUTBOUND", "TELNYX", 15, "0.014000", run=2, cost="0.0042",
               offer_s=10),
        _rated("call-e", "b-2", "INBOUND", "SIP", 0, "0", currency="EUR", offer_s=3600),
    ]  # fmt: skip


def billing_rows() -> list[tuple[Any, ...]]:
    """The CallRated records as `billing_records_log` rows (what the sink would insert)."""
    from streams.projection import billing_row

    return [billing_row(r, 0, i) for i, r in enumerate(billing())]
