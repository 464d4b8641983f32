"""The billing machine: the increment formula, plan versions by event time, the table, and
replays that rate every call the same way to the last decimal."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import SingleObjectCodec
from streams import billing
from streams.billing import CallState, Input
from trunkline.core import native
from trunkline.core.config import ConfigError, load_config
from trunkline.core.events import TransitionError

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000


# -- the increment formula ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("talk", "a", "b", "billable"),
    [
        # 60/60
        (0, 60, 60, 60), (1, 60, 60, 60), (60, 60, 60, 60), (61, 60, 60, 120),
        (119, 60, 60, 120), (120, 60, 60, 120), (3601, 60, 60, 3660),
        # 6/6
        (0, 6, 6, 6), (1, 6, 6, 6), (6, 6, 6, 6), (7, 6, 6, 12), (601, 6, 6, 606),
        # 1/1: per second
        (0, 1, 1, 1), (1, 1, 1, 1), (2, 1, 1, 2), (3599, 1, 1, 3599),
        # 30/6: the first 30 s, then 6 s steps
        (0, 30, 6, 30), (1, 30, 6, 30), (30, 30, 6, 30), (31, 30, 6, 36), (36, 30, 6, 36),
        (37, 30, 6, 42), (300, 30, 6, 300), (301, 30, 6, 306),
    ],
)  # fmt: skip
def test_increment_formula(talk, a, b, billable):
    assert billing.billable_seconds(talk, a, b) == billable


def test_minimum_seconds_and_refusals():
    assert billing.billable_seconds(5, 1, 1, minimum=30) == 30
    assert billing.billable_seconds(45, 1, 1, minimum=30) == 45
    with pytest.raises(ValueError, match="negative"):
        billing.billable_seconds(-1, 60, 60)
    with pytest.raises(ValueError, match="at least 1"):
        billing.billable_seconds(10, 0, 60)


@pytest.mark.parametrize(
    ("per_minute", "billable", "fee", "expected"),
    [
        ("0.0085", 60, "0", "0.008500"),
        ("0.0085", 120, "0", "0.017000"),
        ("0.0140", 6, "0", "0.001400"),
        ("0.0085", 7, "0", "0.000992"),  # 0.000991666... rounds half-up to 6 places
        ("0.0085", 1, "0.01", "0.010142"),  # 0.0101416666...
        ("0", 600, "0", "0.000000"),
    ],
)
def test_amounts_are_exact_decimals(per_minute, billable, fee, expected):
    value = billing.amount(Decimal(per_minute), billable, Decimal(fee))
    assert isinstance(value, Decimal)
    assert str(value) == expected


def test_talk_time_rounds_up_to_whole_seconds():
    assert [billing.talk_seconds(ms) for ms in (0, 1, 999, 1000, 1001, 61_000)] == [
        0, 1, 1, 1, 2, 61,
    ]  # fmt: skip


# -- configuration ------------------------------------------------------------------------
BASE = """
ratePlans:
  - {id: std, version: 1, effectiveFrom: "2026-01-01T00:00:00Z", currency: USD,
     inboundPerMinute: "0.0085", outboundPerMinute: "0.0140", connectFee: "0",
     increment: "60/60", minimumSeconds: 0}
  - {id: std, version: 2, effectiveFrom: "2026-06-01T00:00:00Z", currency: USD,
     inboundPerMinute: "0.0100", outboundPerMinute: "0.0200", connectFee: "0.0010",
     increment: "6/6"}
  - {id: fine, version: 1, effectiveFrom: "2026-01-01T00:00:00+00:00", currency: EUR,
     inboundPerMinute: "0.0060", outboundPerMinute: "0.0120", increment: "30/6",
     minimumSeconds: 10}
plans:
  - {id: starter, name: Starter, maxConcurrentCalls: 2, ratePlanId: std}
  - {id: euro, maxConcurrentCalls: 5, ratePlanId: fine}
  - {id: free, maxConcurrentCalls: 1}
businesses:
  - {id: 123, name: Acme, plan: starter}
  - {id: 456, name: Globex, plan: euro}
  - {id: 789, name: Initech, plan: free}
"""


def rating_config(text: str = BASE) -> billing.RatingConfig:
    config = load_config(text)
    sections: dict[str, dict[str, dict]] = {}
    for r in config.records:
        sections.setdefault(r.section, {})[r.key] = r.to_avro(0)
    return billing.RatingConfig(sections)


def test_rate_plan_versions_are_records_keyed_by_id_and_version():
    config = load_config(BASE)
    assert sorted(config.section("ratePlans")) == ["fine@1", "std@1", "std@2"]
    v1 = config.section("ratePlans")["std@1"].body
    assert v1["effective_from"] == T0
    assert (v1["increment_first"], v1["increment_step"]) == (60, 60)
    assert v1["inbound_per_minute"] == "0.0085"
    assert config.section("plans")["starter"].body["rate_plan_id"] == "std"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('increment: "60/60"', 'increment: "60"'), "is not an increment a/b"),
        (('increment: "60/60"', 'increment: "0/60"'), "whole seconds from 1"),
        (('increment: "60/60"', 'increment: "60/-6"'), "is not an increment a/b"),
        (('inboundPerMinute: "0.0085"', 'inboundPerMinute: "-0.0085"'), "is negative"),
        (('connectFee: "0.0010"', 'connectFee: "-1"'), "is negative"),
        (('inboundPerMinute: "0.0085"', "inboundPerMinute: 0.0085"), "not a float"),
        (('inboundPerMinute: "0.0085"', 'inboundPerMinute: "cheap"'), "not a decimal"),
        (('inboundPerMinute: "0.0085"', 'inboundPerMinute: "0.00000001"'), "decimal places"),
        (("ratePlanId: std", "ratePlanId: gold"), "rate plan 'gold' is not defined in ratePlans"),
        (
            ('effectiveFrom: "2026-06-01T00:00:00Z"', 'effectiveFrom: "2026-01-01T00:00:00Z"'),
            "takes effect at the same instant",
        ),
        (("version: 2", "version: 1"), "duplicate version 'std@1'"),
        (("currency: USD", "currency: usd"), "ISO 4217"),
        (('effectiveFrom: "2026-01-01T00:00:00Z"', 'effectiveFrom: "2026-01-01"'), "UTC offset"),
    ],
)
def test_config_check_refuses_bad_rate_plans(change, message):
    old, new = change
    assert old in BASE
    with pytest.raises(ConfigError, match=message):
        load_config(BASE.replace(old, new, 1))


def test_same_instant_written_two_ways_is_still_the_same_instant():
    text = BASE.replace('"2026-06-01T00:00:00Z"', '"2026-01-01T01:00:00+01:00"')
    with pytest.raises(ConfigError, match="takes effect at the same instant"):
        load_config(text)


# -- versions chosen by event time --------------------------------------------------------
def test_the_version_in_effect_at_the_calls_start_applies():
    cfg = rating_config()
    versions = cfg.versions("std")
    assert billing.version_at(versions, T0 - 1) is None
    assert billing.version_at(versions, T0).version == 1
    june = 1_780_272_000_000  # 2026-06-01T00:00:00Z
    assert billing.version_at(versions, june - 1).version == 1
    assert billing.version_at(versions, june).version == 2


def offer(call_id, at, business="123", direction="INBOUND", provider="SIP"):
    return (
        "CallOffered",
        {
            "envelope": env(call_id, at, f"{call_id}-offer"),
            "provider": provider,
            "provider_call_id": f"pc-{call_id}",
            "direction": direction,
            "business_id": business,
            "phone_id": "abc",
            "to_number": "+15551234567",
            "from_number": "+15550001111",
            "source_ip": "127.0.0.1",
            "edge_id": "edge-1",
            "provider_account_id": "",
        },
    )


def env(call_id, at, event_id):
    return {"event_id": event_id, "call_id": call_id, "occurred_at": at, "producer_id": "t"}


def admitted(call_id, at, plan="starter", business="123"):
    return (
        "CallAdmitted",
        {"envelope": env(call_id, at, f"{call_id}-adm"), "business_id": business, "plan_id": plan},
    )


def answered(call_id, at, event_id=None):
    return ("CallAnswered", {"envelope": env(call_id, at, event_id or f"{call_id}-ans")})


def ended(call_id, at, talk_ms, reason="completed", event_id=None, business="123"):
    return (
        "CallEnded",
        {
            "envelope": env(call_id, at, event_id or f"{call_id}-end"),
            "reason": reason,
            "business_id": business,
            "talk_ms": talk_ms,
        },
    )


def run(events, cfg=None):
    cfg = cfg or rating_config()
    state: dict[str, billing.Call | None] = {}
    out = []
    for name, record in events:
        call_id = record["envelope"]["call_id"]
        result = billing.handle(name, record, state.get(call_id), cfg)
        state[call_id] = result.call
        out += [e.record for e in result.emits]
    return out, state


def test_a_call_started_before_a_new_version_is_rated_with_the_old_one():
    june = 1_780_272_000_000
    # starts a minute before the new prices, ends after them: version 1, 60/60
    rated, _ = run(
        [offer("q1", june - MIN), answered("q1", june - MIN + 500), ended("q1", june + MIN, 90_500)]
    )
    assert len(rated) == 1
    r = rated[0]
    assert (r["rate_plan_id"], r["rate_plan_version"], r["increment"]) == ("std", 1, "60/60")
    assert (r["talk_seconds"], r["billable_seconds"]) == (91, 120)
    assert r["amount"] == Decimal("0.017000")
    # the same call an hour later: version 2 (6/6, connect fee)
    later, _ = run([offer("q2", june + 3600_000), ended("q2", june + 3700_000, 91_000)])
    r2 = later[0]
    assert (r2["rate_plan_version"], r2["billable_seconds"]) == (2, 96)
    assert r2["amount"] == Decimal("0.0010") + Decimal("0.0100") * 96 / 60


def test_outbound_calls_use_the_outbound_price():
    rated, _ = run([offer("q1", T0 + 1, direction="OUTBOUND"), ended("q1", T0 + 2, 60_000)])
    assert rated[0]["direction"] == "OUTBOUND"
    assert rated[0]["per_minute"] == Decimal("0.014000")
    assert rated[0]["amount"] == Decimal("0.014000")


def test_a_call_that_never_connected_is_rated_at_zero_with_a_reason():
    rejected = (
        "CallRejected",
        {
            "envelope": env("q1", T0 + 5, "q1-rej"),
            "stage": "ADMISSION",
            "status_code": 486,
            "reason": "plan starter limit reached",
            "business_id": "123",
        },
    )
    rated, _ = run(
        [offer("q1", T0 + 1), rejected, offer("q2", T0 + 1), ended("q2", T0 + 9, None, "cancelled")]
    )
    assert [r["amount"] for r in rated] == [Decimal("0.000000")] * 2
    assert not rated[0]["connected"] and rated[0]["billable_seconds"] == 0
    assert rated[0]["reason"] == "not connected: rejected 486 plan starter limit reached"
    assert rated[1]["reason"] == "not connected: cancelled"
    assert rated[1]["currency"] == "USD"  # the plan was still found


def test_no_rate_plan_is_zero_with_a_reason():
    rated, _ = run(
        [offer("q1", T0 + 1, business="789"), ended("q1", T0 + 9, 30_000, business="789")]
    )
    assert rated[0]["amount"] == Decimal("0.000000")
    assert rated[0]["reason"] == "plan free has no rate plan"


def test_talk_time_from_the_answer_when_the_end_does_not_carry_it():
    rated, _ = run([offer("q1", T0), answered("q1", T0 + 1000), ended("q1", T0 + 62_000, None)])
    assert (rated[0]["talk_seconds"], rated[0]["billable_seconds"]) == (61, 120)


def test_minimum_seconds_and_30_6():
    rated, _ = run([offer("q1", T0, business="456"), ended("q1", T0 + 5000, 4_000, business="456")])
    r = rated[0]
    assert (r["increment"], r["talk_seconds"], r["billable_seconds"]) == ("30/6", 4, 30)
    assert r["currency"] == "EUR" and r["amount"] == Decimal("0.003000")


# -- idempotency --------------------------------------------------------------------------
def test_a_duplicated_or_second_end_never_charges_twice():
    events = [offer("q1", T0), ended("q1", T0 + 60_000, 59_000)]
    rated, state = run([*events, events[1], ended("q1", T0 + 61_000, 70_000, event_id="other")])
    assert len(rated) == 1
    assert state["q1"].state is CallState.RATED and state["q1"].run == 1


def test_rated_ids_derive_from_the_end_so_a_reprocessed_end_is_byte_identical():
    codec = SingleObjectCodec()
    events = [offer("q1", T0), admitted("q1", T0 + 1), ended("q1", T0 + 60_000, 59_000)]
    first, _ = run(events)
    again, _ = run(events)
    assert codec.encode("CallRated", first[0]) == codec.encode("CallRated", again[0])


def test_a_provider_cost_report_reissues_the_record_with_the_next_run():
    cost = (
        "CallCost",
        {
            "envelope": env("q1", T0 + 70_000, "cost-1"),
            "provider": "TELNYX",
            "provider_call_id": "v3:abc",
            "cost": "0.0042",
            "currency": "USD",
        },
    )
    rated, _ = run(
        [offer("q1", T0, provider="TELNYX"), ended("q1", T0 + 60_000, 59_000), cost, cost]
    )
    assert [r["rating_run"] for r in rated] == [1, 2]
    assert rated[1]["provider_cost"] == Decimal("0.004200")
    assert rated[1]["amount"] == rated[0]["amount"]
    assert rated[1]["envelope"]["event_id"] != rated[0]["envelope"]["event_id"]
    # a cost that comes before the end is carried by the first rating
    early, _ = run([offer("q2", T0), (cost[0], {**cost[1], "envelope": env("q2", T0 + 5, "c2")}),
                    ended("q2", T0 + 60_000, 59_000)])  # fmt: skip
    assert [r["rating_run"] for r in early] == [1]
    assert early[0]["provider_cost"] == Decimal("0.004200")


def test_rated_records_fit_the_avro_schema_with_decimal_money():
    codec = SingleObjectCodec()
    rated, _ = run([offer("q1", T0), ended("q1", T0 + 7000, 6_500)])
    name, back = codec.decode(codec.encode("CallRated", rated[0]))
    assert name == "CallRated"
    assert back["amount"] == rated[0]["amount"] and isinstance(back["amount"], Decimal)
    schema = codec.schemas["CallRated"].expanded
    amount = next(f for f in schema["fields"] if f["name"] == "amount")
    assert amount["type"]["logicalType"] == "decimal"


def test_the_state_survives_its_json_table_value():
    _, state = run([offer("q1", T0), answered("q1", T0 + 10), ended("q1", T0 + 60_000, 59_000)])
    call = state["q1"]
    assert billing.Call.from_json(call.to_json()) == call


# -- the table ----------------------------------------------------------------------------
@pytest.mark.parametrize("state", [None, *CallState])
@pytest.mark.parametrize("event", list(Input))
def test_every_state_and_input_pair(state, event):
    listed = billing.TRANSITIONS.get(state, {})
    if event in listed:
        assert billing.step(state, event) is listed[event]
    else:
        with pytest.raises(TransitionError):
            billing.step(state, event)


def test_records_that_are_not_inputs_are_refused():
    assert billing.input_for("CallRouted") is None
    with pytest.raises(TransitionError, match="does not take CallRouted"):
        billing.handle("CallRouted", {"envelope": env("q", 1, "e")}, None, rating_config())


# -- replay: the same events, the same money ----------------------------------------------
call_spec = st.tuples(
    st.integers(min_value=0, max_value=400 * 24 * 3600 * 1000),  # start offset from T0
    st.one_of(st.none(), st.integers(min_value=0, max_value=4 * 3600 * 1000)),  # talk ms
    st.sampled_from(["123", "456", "789"]),
    st.sampled_from(["INBOUND", "OUTBOUND"]),
    st.booleans(),  # the end delivered twice
)


@settings(max_examples=60, deadline=None)
@given(st.lists(call_spec, min_size=1, max_size=40))
def test_a_replay_of_the_same_events_sums_to_the_same_amount(calls):
    events = []
    for i, (start, talk, business, direction, twice) in enumerate(calls):
        call_id = f"q{i}"
        events.append(offer(call_id, T0 + start, business, direction))
        plan = {"123": "starter", "456": "euro", "789": "free"}[business]
        events.append(admitted(call_id, T0 + start + 5, plan=plan, business=business))
        if talk is not None:
            events.append(answered(call_id, T0 + start + 1000))
        reason = "completed" if talk is not None else "cancelled"
        end = ended(call_id, T0 + start + 2000 + (talk or 0), talk, reason, business=business)
        events.append(end)
        if twice:
            events.append(end)
    first, _ = run(events)
    replay, _ = run(events)
    assert len(first) == len(calls)  # one charge per call, duplicates or not
    total = sum((r["amount"] for r in first), Decimal(0))
    assert total == sum((r["amount"] for r in replay), Decimal(0))
    assert str(total) == str(sum((r["amount"] for r in replay), Decimal(0)))  # to the last place
    codec = SingleObjectCodec()
    buf = io.BytesIO()
    for r in first:
        buf.write(codec.encode("CallRated", r))  # every record fits the schema


def test_an_outbound_call_is_rated_outbound_with_the_provider_that_carried_it():
    """The REST API's records as the dialer writes them: the request, Twilio's attempt
    failed, Telnyx's carried the call; one CallRated, outbound price, Telnyx's call."""
    from tests.samples import sample

    def rec(name, at, **fields):
        r = sample(name, call_id="q-out", at_ms=at)
        r["envelope"]["event_id"] = f"q-out-{name}-{at}"
        r.update(fields)
        return name, r

    events = [
        rec("OutboundCallRequested", T0 + 1, business_id="123"),
        admitted("q-out", T0 + 2),
        rec("OutboundAttemptFailed", T0 + 3, attempt=0, provider="TWILIO", business_id="123"),
        rec("OutboundAttempt", T0 + 4, attempt=1, provider="TELNYX", account_id="telnyx-main",
            provider_call_id="v3:abc", business_id="123"),
        answered("q-out", T0 + 5_000),
        ended("q-out", T0 + 95_000, 90_000),
    ]  # fmt: skip
    # the agent hands the machine only what it takes (a failed attempt changes nothing)
    rated, _ = run([(name, r) for name, r in events if billing.input_for(name) is not None])
    (r,) = rated
    assert (r["direction"], r["provider"]) == ("OUTBOUND", "TELNYX")
    assert (r["provider_account_id"], r["provider_call_id"]) == ("telnyx-main", "v3:abc")
    assert (r["talk_seconds"], r["billable_seconds"]) == (90, 120)
    assert r["per_minute"] == Decimal("0.014000") and r["amount"] == Decimal("0.028000")
    assert r["started_at"] == T0 + 1  # the API's request, not the attempt


def test_an_event_that_changes_nothing_gives_the_call_back_itself():
    """Callers (the rebuild's machine) write the table only when `handle` returns another
    object: an event that changes nothing must return the very call it was given."""
    cfg = rating_config()
    call = billing.handle(*offer("q9", T0), None, cfg).call
    assert call is not None
    admitted_once = billing.handle(*admitted("q9", T0 + 1), call, cfg).call
    assert admitted_once is not call and admitted_once is not None
    assert admitted_once.plan_id == "starter"
    again = billing.handle(*admitted("q9", T0 + 2), admitted_once, cfg).call
    assert again is admitted_once  # the same plan again
    rated = billing.handle(*ended("q9", T0 + 9_000, 8_000), again, cfg).call
    assert rated is not None and rated.state is CallState.RATED
    for late in (answered("q9", T0 + 9_500), ended("q9", T0 + 9_600, 1)):
        assert billing.handle(*late, rated, cfg).call is rated
    # a first event always makes a call (a table entry), even one that says nothing new
    first = billing.handle("CallAnswered", {"envelope": env("q8", T0, "e")}, None, cfg).call
    assert first is not None and first.state is CallState.OPEN and first.answered_at == T0


def test_calls_are_equal_by_value_and_unhashable():
    a = billing.Call(CallState.OPEN, "123", started_at=T0)
    assert a == billing.Call(CallState.OPEN, "123", started_at=T0)
    assert a != billing.Call(CallState.OPEN, "123", started_at=T0 + 1)
    assert a != billing.Call(CallState.RATED, "123", started_at=T0)
    assert billing.Call(CallState.OPEN).rated == {} and a != "a call"
    with pytest.raises(TypeError):
        hash(a)


def _every_kind_of_history():
    """Calls of every shape: inbound and outbound, answered or not, rejected, costs before
    and after the end, duplicates, no plan."""
    from tests.samples import sample

    def rec(name, call_id, at, **fields):
        r = sample(name, call_id=call_id, at_ms=at)
        r["envelope"]["event_id"] = f"{call_id}-{name}-{at}"
        r.update(fields)
        return name, r

    events = []
    for i in range(40):
        c, at = f"n{i}", T0 + i * 60_000
        business = ["123", "456", "789", "nobody"][i % 4]
        if i % 5 == 4:
            events.append(rec("OutboundCallRequested", c, at, business_id=business))
            events.append(rec("OutboundAttempt", c, at + 2, provider="TELNYX", account_id="a"))
        else:
            events.append(offer(c, at, business, provider=["SIP", "TWILIO"][i % 2]))
        plan = {"123": "starter", "456": "euro", "789": "free"}.get(business, "")
        events.append(admitted(c, at + 5, plan=plan, business=business))
        if i % 7 == 3:
            events.append(rec("CallRejected", c, at + 9, status_code=486, reason="busy"))
            continue
        if i % 3 == 0:
            events.append(rec("CallCost", c, at + 7, cost="0.0123", currency="USD"))
        if i % 4 != 1:
            events.append(answered(c, at + 1_000 + i))
            events.append(answered(c, at + 1_100))
        reason = "completed" if i % 4 != 1 else "cancelled"
        talk = None if i % 6 == 5 else 1_000 * i + 7
        events.append(ended(c, at + 50_000, talk, reason, business=business))
        events.append(ended(c, at + 50_000, talk, reason, business=business))
        if i % 2 == 0:
            events.append(rec("CallCost", c, at + 60_000 + i, cost=f"0.{i:04d}", currency="USD"))
            events.append(rec("CallCost", c, at + 60_000 + i, cost=f"0.{i:04d}", currency="USD"))
    return events


def test_the_history_reaches_every_input_and_state():
    out, state = run(_every_kind_of_history())
    names = {name for name, _ in _every_kind_of_history()}
    assert {billing.input_for(n) for n in names} == set(Input)
    assert {c.state for c in state.values() if c} == {CallState.RATED}
    assert {r["rating_run"] for r in out} == {1, 2}
    assert any(r["reason"].startswith("not connected: rejected") for r in out)


BILLING_SOURCE = Path(billing.__file__ or "").with_name("billing.py")


@pytest.mark.skipif(
    native.state(BILLING_SOURCE) != "compiled", reason="no mypyc build (scripts/setup makes one)"
)
def test_the_build_rates_every_history_as_the_pure_module():
    """The live worker and the rebuild run the mypyc build (trunkline/core/native.py):
    the same emits and the same table values as the pure source, event by event."""
    assert billing.__file__ and not billing.__file__.endswith(".py")  # the build is in use
    pure = native.load_pure("tl_billing_pure", BILLING_SOURCE)
    built_cfg, pure_cfg = rating_config(), pure.RatingConfig(rating_config().sections)
    built: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for name, record in _every_kind_of_history():
        call_id = record["envelope"]["call_id"]
        a = billing.handle(name, record, built.get(call_id), built_cfg)
        b = pure.handle(name, record, plain.get(call_id), pure_cfg)
        assert [(e.dest, e.key, e.name, e.record) for e in a.emits] == [
            (e.dest, e.key, e.name, e.record) for e in b.emits
        ]
        assert (a.call is built.get(call_id)) == (b.call is plain.get(call_id))
        assert (a.call and a.call.to_json()) == (b.call and b.call.to_json())
        built[call_id], plain[call_id] = a.call, b.call
