"""The analytics views on the real engine (chDB) against figures computed by hand for the
crafted history in tests/analytics_events.py (its docstring has the table)."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from tests.analytics_events import T0, history, rows

HOUR10 = datetime(2026, 1, 5, 10, 0)
HOUR11 = datetime(2026, 1, 5, 11, 0)


@pytest.fixture
def store(ch_store):
    ch_store.insert_events(rows())
    return ch_store


def q(store, sql):
    return store.query(sql.replace("{db}", store.database))


def test_the_crafted_history_is_what_the_docstring_says():
    names = [name for name, _, _ in history()]
    assert names.count("CallOffered") == 6 and names.count("CallAnswered") == 4
    assert min(r["envelope"]["occurred_at"] for _, r, _ in history()) == T0


def test_calls_hourly_asr_three_of_four_ner_acd_pdd_and_rejections(store):
    (sip,) = q(
        store,
        "SELECT * FROM {db}.calls_hourly WHERE business_id = 'b-1' AND provider = 'SIP'",
    )
    assert (sip["hour"], sip["region_id"], sip["direction"]) == (HOUR10, "us-east-1", "INBOUND")
    assert (sip["attempts"], sip["answered"], sip["asr"]) == (4, 3, 0.75)
    assert (sip["effective"], sip["ner"]) == (4, 1.0)  # a plan's 486 is the callee's side
    assert (sip["answered_seconds"], sip["acd_s"]) == (144.0, 48.0)
    assert (sip["pdd_calls"], sip["pdd_avg_ms"], sip["pdd_p95_ms"]) == (3, 1000.0, 1500)
    assert (sip["rejected"], sip["rejections"]) == (1, {486: 1})


def test_calls_hourly_splits_by_provider_direction_and_business(store):
    (out,) = q(store, "SELECT * FROM {db}.calls_hourly WHERE direction = 'OUTBOUND'")
    assert (out["business_id"], out["provider"], out["attempts"], out["answered"]) == (
        "b-1",
        "TWILIO",
        1,
        1,
    )
    assert out["pdd_avg_ms"] == 2000.0  # to the provider's ringing, not the answer
    (b2,) = q(store, "SELECT * FROM {db}.calls_hourly WHERE business_id = 'b-2'")
    assert (b2["hour"], b2["attempts"], b2["asr"], b2["ner"]) == (HOUR11, 1, 0.0, 0.0)
    assert b2["acd_s"] is None and b2["rejections"] == {503: 1}  # no capacity: the network's
    # re-aggregated across rows from the counts, as README shows
    (total,) = q(
        store,
        "SELECT sum(answered) / sum(attempts) AS asr FROM {db}.calls_hourly WHERE hour = "
        "toDateTime('2026-01-05 10:00:00', 'UTC')",
    )
    assert total["asr"] == 0.8  # 4 answered of 5 (A, B, C, F of A-D and F)


def test_concurrency_peaks_with_overlapping_calls_against_the_plan(store):
    got = {
        (r["scope"], r["id"], r["minute"].minute): (
            r["peak_calls"],
            r["plan_limit"],
            r["utilisation"],
        )
        for r in q(store, "SELECT * FROM {db}.concurrency_minutely")
    }
    assert got == {
        # A 0-55, F 10-30, B 30-91.5, C 45-75.5: three at 45-55 s; F ends as B starts
        ("business", "b-1", 0): (3, 3, 1.0),
        ("business", "b-1", 1): (2, 3, pytest.approx(2 / 3)),
        ("backend", "backend-1", 0): (3, None, None),
        ("backend", "backend-1", 1): (2, None, None),
    }  # b-2's call E was refused by routing at once: a slot held for no time


def test_a_call_still_live_counts_until_now(store):
    from streams.projection import event_row
    from tests.analytics_events import answered_call

    live = [
        e for e in answered_call("call-live", 0, 1, 2, 10, business="b-live") if e[0] != "CallEnded"
    ]
    store.insert_events([event_row(n, r, 0, 0, p) for n, r, p in live])
    peaks = q(
        store,
        "SELECT count() AS minutes, max(peak_calls) AS peak FROM {db}.concurrency_minutely "
        "WHERE id = 'b-live'",
    )
    # from 2026-01-05 10:00 for a day at most: 1440 minutes at one call
    assert peaks == [{"minutes": 1440, "peak": 1}]


def e_model_mos(loss_pct: float, jitter_ms: float = 0.0, lookahead_ms: float = 0.0) -> float:
    """The README's formula, by hand: G.711 with PLC (Ie 0, Bpl 25.1)."""
    d = 20 + lookahead_ms + 2 * jitter_ms
    i_d = 0.024 * d + 0.11 * max(d - 177.3, 0)
    ie_eff = 95 * loss_pct / (loss_pct + 25.1)
    r = 93.2 - i_d - ie_eff
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def test_call_quality_mos_bands_at_no_loss_and_five_percent(store):
    got = {r["call_id"]: r for r in q(store, "SELECT * FROM {db}.call_quality")}
    assert set(got) == {"call-a", "call-b", "call-c", "call-f"}  # D and E had no media
    a, b, c = got["call-a"], got["call-b"], got["call-c"]
    assert (a["loss_pct"], b["loss_pct"]) == (0.0, 5.0)
    assert 4.3 <= a["mos"] <= 4.5  # toll quality: R 92.7
    assert 3.8 <= b["mos"] <= 4.0  # 5% random loss with PLC: R 76.9
    assert a["mos"] == pytest.approx(4.3998, abs=1e-4)
    assert a["mos"] == pytest.approx(e_model_mos(0))
    assert b["mos"] == pytest.approx(3.9033, abs=1e-4)
    assert b["mos"] == pytest.approx(e_model_mos(5))
    assert c["mos"] == pytest.approx(e_model_mos(0, jitter_ms=10))  # 40 ms: Id 0.96
    assert c["mos"] < a["mos"]


def test_mos_falls_with_loss_and_delay_and_stays_on_the_scale(store):
    from streams.projection import event_row
    from tests.analytics_events import answered_call

    cases = {"l20": (800, 200, 0.0), "l60": (400, 600, 0.0), "j200": (1000, 0, 200.0)}
    for name, (received, lost, jitter) in cases.items():
        events = answered_call(
            name, 0, 1, 2, 10, received=received, lost=lost, jitter_ms=jitter, business="b-q"
        )
        store.insert_events([event_row(n, r, 0, 0, p) for n, r, p in events])
    got = {r["call_id"]: r["mos"] for r in q(store, "SELECT * FROM {db}.call_quality")}
    assert 1.0 <= got["l60"] < got["l20"] < got["call-b"]
    # 420 ms one way: the delay impairment's second slope applies
    assert got["j200"] == pytest.approx(e_model_mos(0, jitter_ms=200))
    assert got["j200"] < got["call-a"] and not math.isnan(got["j200"])


def test_call_quality_hourly_percentiles_per_backend_and_provider(store):
    (sip,) = q(store, "SELECT * FROM {db}.call_quality_hourly WHERE provider = 'SIP'")
    assert (sip["hour"], sip["backend_id"], sip["calls"]) == (HOUR10, "backend-1", 3)
    assert sip["mos_p5"] == pytest.approx(e_model_mos(5))  # the worst of three
    assert sip["mos_p50"] == pytest.approx(e_model_mos(0, jitter_ms=10))
    assert (sip["loss_p50_pct"], sip["loss_p95_pct"]) == (0.0, 5.0)
    assert sip["jitter_p95_ms"] == 10.0


def test_call_facts_decisions_are_timed_by_their_publication(store):
    got = {
        r["call_id"]: (r["decision"], r["decision_ms"])
        for r in q(store, "SELECT call_id, decision, decision_ms FROM {db}.call_facts")
    }
    assert got == {
        "call-a": ("routed", 120),
        "call-b": ("routed", 80),
        "call-c": ("routed", 300),
        "call-d": ("rejected 486", 50),
        "call-e": ("rejected 503", 90),
        "call-f": ("routed", 200),
    }


def test_views_count_a_redelivered_event_once(store):
    store.insert_events(rows()[:20])  # the sink re-delivering a batch
    (sip,) = q(
        store,
        "SELECT attempts, answered FROM {db}.calls_hourly WHERE business_id = 'b-1' "
        "AND provider = 'SIP'",
    )
    assert sip == {"attempts": 4, "answered": 3}


def test_a_table_from_before_the_analytics_columns_gets_them_in_the_same_order(ch_store):
    """`SELECT *` (and a digest over it, as a rebuild's check compares) reads the same
    columns in the same order on an older table as on a new one."""
    from streams.clickhouse import ddl_statements

    db = ch_store.database
    fresh = [r["name"] for r in ch_store.query(f"DESCRIBE TABLE {db}.call_events_log")]
    for view in ("call_quality_hourly", "call_quality", "concurrency_minutely", "calls_hourly"):
        ch_store.client.command(f"DROP TABLE {db}.{view}")
    for view in ("call_facts", "calls", "call_events", "call_events_log"):
        ch_store.client.command(f"DROP TABLE {db}.{view}")
    create = ddl_statements(db)[0]
    new = ("direction", "published_at", "plan_id", "plan_limit")
    old = "\n".join(
        line for line in create.splitlines() if line.split()[:1] not in [[n] for n in new]
    )
    assert old.count("\n") == create.count("\n") - len(new)
    ch_store.client.command(old)
    ch_store.ensure_schema()
    assert [r["name"] for r in ch_store.query(f"DESCRIBE TABLE {db}.call_events_log")] == fresh
    ch_store.insert_events(rows())
    (row,) = q(ch_store, "SELECT count() AS n FROM {db}.calls_hourly WHERE business_id = 'b-1'")
    assert row["n"] == 2
