"""The analytics views on the real engine (chDB) against figures computed by hand for the
crafted history in tests/analytics_events.py (its docstring has the table)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from html.parser import HTMLParser

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
    assert names.count("CallOffered") == 5 and names.count("OutboundCallRequested") == 1
    assert names.count("CallAnswered") == 4
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
    # the provider that carried the call: its last attempt's (Twilio's failed first)
    assert (out["business_id"], out["provider"], out["attempts"], out["answered"]) == (
        "b-1",
        "TELNYX",
        1,
        1,
    )
    assert out["pdd_avg_ms"] == 2000.0  # to the provider's ringing, not the answer
    (b2,) = q(store, "SELECT * FROM {db}.calls_hourly WHERE business_id = 'b-2'")
    assert (b2["hour"], b2["attempts"], b2["asr"], b2["ner"]) == (HOUR11, 1, 0.0, 0.0)
    assert b2["acd_s"] is None and b2["rejections"] == {503: 1}  # no capacity: the network's
    # re-aggregated across rows from the counts, as docs/analytics.md shows
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
    """docs/analytics.md's formula, by hand: G.711 with PLC (Ie 0, Bpl 25.1)."""
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


# -- trunkline sql: ClickHouse's readonly=1 behind our check --------------------------------
def test_read_only_queries_run_in_the_store_database_with_row_limits(store):
    from streams.queries import check_read_only

    result = store.read_only(
        check_read_only("SELECT call_id, pdd_ms FROM call_facts ORDER BY call_id;"), 10
    )
    assert result["columns"] == ["call_id", "pdd_ms"]
    assert result["types"] == ["String", "Nullable(Int64)"]
    assert result["rows"][:2] == [["call-a", 1000], ["call-b", 1500]]
    assert result["truncated"] is False
    two = store.read_only("SELECT call_id FROM call_facts ORDER BY call_id", 2)
    assert (len(two["rows"]), two["truncated"]) == (2, True)
    shown = store.read_only("SHOW TABLES", 100)
    assert ["calls_hourly"] in shown["rows"]
    described = store.read_only("DESCRIBE TABLE calls_hourly", 100)
    assert ["asr", "Float64"] in [r[:2] for r in described["rows"]]


def test_clickhouse_refuses_what_passes_the_first_check_and_the_writer_still_writes(store):
    from streams.clickhouse import QueryRefused
    from streams.queries import check_read_only

    # a SELECT that changes a setting, and one that writes through a table function
    for query in ("SELECT 1 SETTINGS readonly = 0", "SELECT * FROM file('x.csv', 'CSV')"):
        with pytest.raises(QueryRefused, match="readonly mode"):
            store.read_only(check_read_only(query), 10)
    with pytest.raises(QueryRefused, match=r"UNKNOWN_TABLE|Unknown table"):
        store.read_only("SELECT * FROM no_such_view", 10)
    # readonly=1 stayed on the reader's session: the sink's writes go on
    store.insert_events(rows()[:1])
    store.client.command(f"CREATE TABLE {store.database}.w (x UInt8) ENGINE = Memory")
    with pytest.raises(QueryRefused, match="readonly mode"):
        store.read_only(f"SELECT * FROM {store.database}.w SETTINGS max_threads = 1", 10)


# -- trunkline report ------------------------------------------------------------------------
class _Page(HTMLParser):
    """The report's chart data elements and summary, as a browser would find them."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, object] = {}
        self.plots: set[str] = set()
        self.scripts: list[str] = []
        self.external: list[str] = []  # what a browser would fetch: scripts, stylesheets
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "plot":
            self.plots.add(a["id"].removeprefix("plot-"))
        if (tag == "script" and a.get("src")) or (tag == "link" and a.get("href")):
            self.external.append(a.get("src") or a["href"])
        if tag == "script":
            self._in = a.get("id") or ""
            self.scripts.append("")

    def handle_data(self, data):
        if self._in is not None:
            self.scripts[-1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in is not None:
            if self._in.startswith("data-"):
                self.data[self._in.removeprefix("data-")] = json.loads(self.scripts[-1])
            self._in = None


def _run(store):
    from streams.queries import check_read_only

    return lambda sql: store.read_only(check_read_only(sql), 10_000)


def _traces(figure):
    return {t.get("name"): t for t in figure["data"]}


def test_the_report_renders_every_chart_with_the_views_figures(store, tmp_path):
    from tests.analytics_events import billing_rows
    from trunkline.stack.report import CHARTS, write_report

    store.insert_rows("billing_records_log", billing_rows())
    out = tmp_path / "report.html"
    written = write_report(
        _run(store), out, 6 * 3600, now_ms=T0 + 3 * 3600_000, database=store.database
    )
    assert written.calls == 6 and written.charts == CHARTS
    page = _Page()
    page.feed(out.read_text())
    assert set(page.data) == set(CHARTS) == page.plots
    # self-contained: plotly.js is in the page, nothing is fetched
    assert any("newPlot" in s and len(s) > 1_000_000 for s in page.scripts)  # the library
    assert any("Plotly.newPlot('plot-' + key" in s for s in page.scripts)  # the charts
    assert page.external == []

    calls = _traces(page.data["calls"])
    assert calls["answered"]["y"] == [4] and calls["answered"]["x"] == ["2026-01-05 10:00:00"]
    assert calls["rejected"]["x"] == ["2026-01-05 10:00:00", "2026-01-05 11:00:00"]
    assert calls["rejected"]["y"] == [1, 1]

    conc = _traces(page.data["concurrency"])
    assert conc["b-1 peak"]["y"] == [3, 2] and conc["b-1 plan limit"]["y"] == [3, 3]

    asr = _traces(page.data["asr_acd_pdd"])
    assert asr["ASR"]["y"] == [0.8, 0]  # 4 of 5 at 10:00, E refused at 11:00
    assert asr["ACD (s)"]["y"][0] == pytest.approx(159 / 4)  # A 54, B 60, C 30, F 15
    assert asr["PDD p95 (ms)"]["y"][0] == 2000 and asr["PDD p95 (ms)"]["yaxis"] == "y3"

    quality = _traces(page.data["quality"])
    assert quality["backend-1 p5"]["y"] == [pytest.approx(e_model_mos(5))]
    assert quality["backend-1 median"]["y"] == [pytest.approx(e_model_mos(0))]

    (table,) = page.data["decisions"]["data"]
    ms, decision, business, call, _ = table["cells"]["values"]
    assert call[:3] == ["call-c", "call-f", "call-a"] and ms[:3] == [300, 200, 120]
    assert decision[-1] == "rejected 486" and ms[-1] == 50 and business[-1] == "b-1"

    billing = _traces(page.data["billing"])  # billing_daily: F counted once, at run 2
    assert set(billing) == {"b-1 (USD)", "b-2 (EUR)"}
    assert billing["b-1 (USD)"]["x"] == ["2026-01-05"]
    assert billing["b-1 (USD)"]["y"] == [pytest.approx(0.0255 + 0.014)]  # inbound + outbound
    assert billing["b-2 (EUR)"]["y"] == [0]


def test_the_report_for_one_business_and_an_empty_window(store, tmp_path):
    from trunkline.stack.report import write_report

    out = tmp_path / "b2.html"
    written = write_report(
        _run(store), out, 6 * 3600, "b-2", now_ms=T0 + 3 * 3600_000, database=store.database
    )
    page = _Page()
    page.feed(out.read_text())
    assert written.calls == 1
    assert _traces(page.data["calls"])["rejected"]["y"] == [1]
    assert page.data["concurrency"]["data"] == []  # E held its slot for no time
    empty = write_report(_run(store), tmp_path / "e.html", 3600, now_ms=T0, database=store.database)
    assert empty.calls == 0
    page = _Page()
    page.feed((tmp_path / "e.html").read_text())
    assert all(fig["data"] == [] for fig in page.data.values())


def test_billing_daily_sums_exact_amounts_once_per_call(store):
    from decimal import Decimal

    from tests.analytics_events import billing_rows

    store.insert_rows("billing_records_log", billing_rows())
    got = {
        (r["business_id"], r["direction"], r["provider"], r["currency"]): r
        for r in q(store, "SELECT * FROM {db}.billing_daily")
    }
    assert set(got) == {
        ("b-1", "INBOUND", "SIP", "USD"),
        ("b-1", "OUTBOUND", "TELNYX", "USD"),
        ("b-2", "INBOUND", "SIP", "EUR"),
    }
    inbound = got[("b-1", "INBOUND", "SIP", "USD")]
    assert (inbound["calls"], inbound["connected_calls"]) == (4, 3)
    assert (inbound["talk_seconds"], inbound["billable_seconds"]) == (144, 180)
    assert inbound["amount"] == Decimal("0.025500")  # exact: Decimal, never a float
    assert (inbound["costed_calls"], inbound["provider_cost"]) == (0, Decimal(0))
    outbound = got[("b-1", "OUTBOUND", "TELNYX", "USD")]
    # rated twice (its provider's cost re-issued it): counted once, at the latest run
    assert (outbound["calls"], outbound["amount"]) == (1, Decimal("0.014000"))
    assert (outbound["costed_calls"], outbound["provider_cost"]) == (1, Decimal("0.0042"))
    assert got[("b-2", "INBOUND", "SIP", "EUR")]["amount"] == Decimal(0)
    assert {r["day"].isoformat() for r in got.values()} == {"2026-01-05"}


def test_every_example_query_of_the_analytics_page_runs_and_finds_the_crafted_calls(store):
    """docs/analytics.md has one example query per view: each passes `trunkline sql`'s
    check and returns rows for the crafted history (the time-bounded one excepted: its
    hour is long past)."""
    import re
    from pathlib import Path

    from streams.queries import check_read_only
    from tests.analytics_events import billing_rows

    store.insert_rows("billing_records_log", billing_rows())
    page = (Path(__file__).parents[2] / "docs" / "analytics.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", page, re.S)
    views = ("call_facts", "calls_hourly", "concurrency_minutely", "billing_daily")
    assert all(any(f"FROM {v} " in sql for sql in queries) for v in views)
    assert any("FROM call_quality_hourly" in sql for sql in queries)
    for sql in queries:
        result = store.read_only(check_read_only(sql), 100)
        assert result["columns"], sql
        if "now()" not in sql:
            assert result["rows"], sql
    (billing,) = [sql for sql in queries if "FROM billing_daily" in sql]
    rows = store.read_only(billing, 100)["rows"]
    assert ["2026-01-05", "b-1", "OUTBOUND", "TELNYX", "USD", 1, "0.014", "0.0042"] in [
        [str(v) if i == 0 else v for i, v in enumerate(r)] for r in rows
    ]
