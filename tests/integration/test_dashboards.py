"""Every Grafana panel's SQL runs on the real engine (chDB): the ClickHouse datasource
plugin's macros are expanded as the plugin does (grafana/clickhouse-datasource,
pkg/macros/macros.go, through grafana/sqlds' `$__name(args)` matching), the dashboard
variables as Grafana would, and the query runs read-only over the crafted history of
tests/analytics_events.py. A broken panel fails here, not on an operator's screen."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.analytics_events import T0, billing_rows, rows

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
FROM_MS, TO_MS = T0 - 3600_000, T0 + 3 * 3600_000
INTERVAL_MS = 60_000  # Grafana's $__interval for the panel


def _datetime(ms: int) -> str:
    return f"toDateTime({ms // 1000})"


def _date(ms: int) -> str:
    return f"toDate('{time.strftime('%Y-%m-%d', time.gmtime(ms / 1000))}')"


def _filter(column: str, low: str, high: str) -> str:
    return f"{column} >= {low} AND {column} <= {high}"


#: the plugin's macros (macros.go), name -> (number of arguments, expansion)
MACROS = {
    "fromTime": (0, lambda: _datetime(FROM_MS)),
    "toTime": (0, lambda: _datetime(TO_MS)),
    "fromTime_ms": (0, lambda: f"fromUnixTimestamp64Milli({FROM_MS})"),
    "toTime_ms": (0, lambda: f"fromUnixTimestamp64Milli({TO_MS})"),
    "timeFilter": (1, lambda c: _filter(c, _datetime(FROM_MS), _datetime(TO_MS))),
    "timeFilter_ms": (
        1,
        lambda c: _filter(
            c, f"fromUnixTimestamp64Milli({FROM_MS})", f"fromUnixTimestamp64Milli({TO_MS})"
        ),
    ),
    "dateFilter": (1, lambda c: _filter(c, _date(FROM_MS), _date(TO_MS))),
    "dateTimeFilter": (
        2,
        lambda d, t: (
            f"({_filter(d, _date(FROM_MS), _date(TO_MS))}) AND "
            f"({_filter(t, _datetime(FROM_MS), _datetime(TO_MS))})"
        ),
    ),
    "timeInterval": (
        1,
        lambda c: (
            f"toStartOfInterval(toDateTime({c}), INTERVAL {max(INTERVAL_MS // 1000, 1)} second)"
        ),
    ),
    "timeInterval_ms": (
        1,
        lambda c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {INTERVAL_MS} millisecond)",
    ),
    "interval_s": (0, lambda: str(max(INTERVAL_MS // 1000, 1))),
}
MACROS["dt"] = MACROS["dateTimeFilter"]
_MACRO_RE = re.compile(r"\$__(\w+)(?:\((.*?)\))?")  # sqlds: arguments up to the first ')'


def expand_macros(sql: str) -> str:
    def one(m: re.Match[str]) -> str:
        name, args = m.group(1), m.group(2)
        if name not in MACROS:
            raise AssertionError(f"$__{name} is not a macro of the ClickHouse plugin")
        count, expand = MACROS[name]
        values = [a.strip() for a in args.split(",")] if args is not None else []
        assert len(values) == count, f"$__{name} takes {count} arguments, got {values}"
        return expand(*values)

    return _MACRO_RE.sub(one, sql)


def expand_variables(sql: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        sql = sql.replace(f"${{{name}}}", value).replace(f"${name}", value)
    left = re.findall(r"\$\{?\w+", sql)
    assert not left, f"unexpanded variables: {left}"
    return sql


def panels(dashboard: dict) -> list[dict]:
    found = []
    for p in dashboard["panels"]:
        found.extend(panels(p) if p.get("type") == "row" else [p])
    return found


def cases() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, SQL) for every target and every variable query."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in panels(board):
            for t in p["targets"]:
                out.append((path.name, p["title"], t["rawSql"]))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append((path.name, f"variable {var['name']}", var["query"]))
    return out


@pytest.fixture(scope="module")
def store(chdb_dsn):
    import uuid

    from streams.clickhouse import ClickHouseStore

    # the session's chDB path (tests/conftest.py: one engine per process)
    s = ClickHouseStore(chdb_dsn, database=f"t_{uuid.uuid4().hex[:10]}")
    s.ensure_schema()
    s.insert_events(rows())
    s.insert_rows("billing_records_log", billing_rows())
    yield s
    s.client.command(f"DROP DATABASE IF EXISTS {s.database}")


def run_panel(store, sql: str, business: str = "__all") -> list[dict]:
    from streams.queries import check_read_only

    text = expand_variables(expand_macros(sql), {"business": business})
    text = text.replace("trunkline.", f"{store.database}.")
    result = store.read_only(check_read_only(text), 10_000)
    return [dict(zip(result["columns"], r, strict=True)) for r in result["rows"]]


def test_there_are_dashboards_and_every_panel_has_sql():
    assert {p.name for p in DASHBOARDS} >= {"trunkline-calls.json", "trunkline-quality.json"}
    for name, title, sql in cases():
        assert sql.strip(), f"{name}: {title} has no SQL"
        for m in _MACRO_RE.finditer(sql):
            # arguments the plugin's older parser (up to the first ')') reads the same
            assert m.group(2) is None or "(" not in m.group(2), f"{name}: {title}: {m.group(0)}"


@pytest.mark.parametrize(("board", "title", "sql"), cases(), ids=lambda v: str(v)[:60])
@pytest.mark.parametrize("business", ["__all", "b-1"])
def test_every_panel_runs(store, board, title, sql, business):
    run_panel(store, sql, business)


def _panel_sql(board: str, title: str) -> str:
    return next(sql for b, t, sql in cases() if (b, t) == (board, title))


def test_panels_show_the_views_figures(store):
    calls = "trunkline-calls.json"
    assert run_panel(store, _panel_sql(calls, "Calls")) == [{"calls": 6}]
    assert run_panel(store, _panel_sql(calls, "ASR"), "b-1") == [{"asr": 0.8}]
    (by_hour,) = [r for r in run_panel(store, _panel_sql(calls, "ASR and NER per hour"), "b-1")]
    assert (by_hour["ASR"], by_hour["NER"]) == (0.8, 1.0)
    peaks = run_panel(store, _panel_sql(calls, "Peak concurrent calls against the plan limit"))
    assert [(r["business"], r["peak"], r["plan_limit"]) for r in peaks] == [
        ("b-1", 3, 3),
        ("b-1", 2, 3),
    ]
    codes = run_panel(store, _panel_sql(calls, "Rejections by SIP code per hour"))
    assert sorted((r["code"], r["calls"]) for r in codes) == [("486", 1), ("503", 1)]
    slow = run_panel(store, _panel_sql(calls, "The slowest decisions"))
    assert [r["call_id"] for r in slow[:2]] == ["call-c", "call-f"]
    worst = run_panel(store, _panel_sql("trunkline-quality.json", "The worst calls"))
    assert worst[0]["call_id"] == "call-b" and worst[0]["loss_pct"] == 5.0
    billed = run_panel(store, _panel_sql(calls, "Billed per day"), "b-1")
    assert [(r["direction"], r["provider"], r["calls"], r["amount"]) for r in billed] == [
        ("INBOUND", "SIP", 4, "0.0255"),
        ("OUTBOUND", "TELNYX", 1, "0.014"),  # rated twice, counted once
    ]
    businesses = run_panel(store, _panel_sql(calls, "variable business"))
    assert [r["business_id"] for r in businesses] == ["b-1", "b-2"]


def test_the_dashboards_use_the_provisioned_datasource():
    import yaml

    provisioned = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text()
    )["datasources"]
    (ds,) = provisioned
    assert ds["type"] == "grafana-clickhouse-datasource"
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        (var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert var["query"] == ds["type"] and var["current"]["value"] == ds["uid"]
        for p in panels(board):
            assert p["datasource"] == {"type": ds["type"], "uid": "${datasource}"}
