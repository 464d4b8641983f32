"""`trunkline report`: one self-contained HTML page with the six charts an analytics team
looks at first, from the analytics views (schemas/clickhouse/004_analytics.sql):

    calls          calls per hour by outcome (answered, rejected, cancelled, failed, open)
    concurrency    peak concurrent calls per minute and business against the plan limit
    asr_acd_pdd    ASR, NER, ACD and PDD (average and p95) per hour
    quality        estimated MOS per hour and backend (median and 5th percentile)
    billing        amounts per day, business and currency (billing_daily)
    decisions      the slowest decisions: offer to CallRouted / CallRejected published

Every query is a read-only SELECT through `CallHistory.sql`, so the report works the same
on the embedded engine (through the sink, or opened directly when no sink runs) and on a
ClickHouse server DSN. Plotly's library is written into the page, so it opens offline.
Each chart's figure is a `<script type="application/json" id="data-KEY">` element (plain
JSON lists, no binary arrays) that a loop at the end hands to Plotly.newPlot: tests and
other tools read the same data the page draws.

A view the database lacks (`billing_daily` before billing runs) leaves its chart empty
with the reason, rather than failing the report.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.clickhouse import DEFAULT_DATABASE, QueryRefused
from trunkline.stack.base import BadInput, StackError

#: runs one read-only query: {columns, types, rows, truncated} (CallHistory.sql)
Run = Callable[[str], dict[str, Any]]

CHARTS = ("calls", "concurrency", "asr_acd_pdd", "quality", "billing", "decisions")
OUTCOMES = ("answered", "rejected", "cancelled", "failed", "open")
MAX_BUSINESSES = 10  # concurrency lines: the busiest ones
SLOWEST = 20


@dataclass
class Window:
    """The report's time window [from_ms, to_ms) and its business filter."""

    from_ms: int
    to_ms: int
    business: str | None = None

    def where(self, time_column: str, business_column: str | None = "business_id") -> str:
        clause = (
            f"{time_column} >= fromUnixTimestamp64Milli({self.from_ms}, 'UTC') "
            f"AND {time_column} < fromUnixTimestamp64Milli({self.to_ms}, 'UTC')"
        )
        if self.business and business_column:
            clause += f" AND {business_column} = {literal(self.business)}"
        return clause


@dataclass
class Chart:
    key: str
    title: str
    figure: dict[str, Any]
    note: str = ""  # why it is empty, when it is


@dataclass
class Report:
    window: Window
    summary: dict[str, Any]
    charts: list[Chart] = field(default_factory=list)


def literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _records(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]


def _query(run: Run, sql: str) -> tuple[list[dict[str, Any]], str]:
    """Rows, or none and why (a view the database does not have yet)."""
    try:
        return _records(run(sql)), ""
    except (BadInput, QueryRefused) as exc:
        if "UNKNOWN_TABLE" in str(exc) or "does not exist" in str(exc):
            return [], str(exc)
        raise


def _layout(title: str, **more: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "template": "plotly_white",
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "legend": {"orientation": "h"},
        **more,
    }


def _empty(layout: dict[str, Any], why: str) -> dict[str, Any]:
    layout["annotations"] = [
        {"text": why, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}
    ]
    return {"data": [], "layout": layout}


# -- the charts ---------------------------------------------------------------------------
def summary(run: Run, db: str, w: Window) -> dict[str, Any]:
    (row,) = _records(
        run(
            # an alias must not be the name of a column an aggregate reads (ClickHouse
            # would put one aggregate inside another): answered_calls, not answered
            f"""SELECT count() AS attempts, countIf(answered) AS answered_calls,
                   countIf(answered) / greatest(count(), 1) AS asr,
                   countIf(effective) / greatest(count(), 1) AS ner,
                   sumIf(talk_s, answered) / greatest(countIf(answered), 1) AS acd_s,
                   avg(pdd_ms) AS pdd_avg_ms, quantileExact(0.95)(pdd_ms) AS pdd_p95_ms,
                   countIf(status = 'Rejected') AS rejected
            FROM {db}.call_facts WHERE {w.where("attempted_at")}"""
        )
    )
    return row


def calls_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT toStartOfHour(attempted_at) AS hour,
               multiIf(answered, 'answered', status = 'Rejected', 'rejected',
                       status = 'Cancelled', 'cancelled', status = 'Failed', 'failed',
                       'open') AS outcome,
               count() AS calls
        FROM {db}.call_facts WHERE {w.where("attempted_at")}
        GROUP BY hour, outcome ORDER BY hour, outcome""",
    )
    layout = _layout(
        "Calls per hour by outcome",
        barmode="stack",
        yaxis={"title": {"text": "calls"}},
    )
    if not rows:
        return Chart("calls", "Calls per hour by outcome", _empty(layout, why or "no calls"))
    data = []
    for outcome in OUTCOMES:
        mine = [r for r in rows if r["outcome"] == outcome]
        if mine:
            data.append(
                {
                    "type": "bar",
                    "name": outcome,
                    "x": [r["hour"] for r in mine],
                    "y": [r["calls"] for r in mine],
                }
            )
    return Chart("calls", "Calls per hour by outcome", {"data": data, "layout": layout})


def concurrency_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT minute, id AS business_id, peak_calls, plan_limit
        FROM {db}.concurrency_minutely
        WHERE scope = 'business' AND {w.where("minute", "id")}
          AND id IN (SELECT id FROM {db}.concurrency_minutely
                     WHERE scope = 'business' AND {w.where("minute", "id")}
                     GROUP BY id ORDER BY max(peak_calls) DESC, id LIMIT {MAX_BUSINESSES})
        ORDER BY business_id, minute""",
    )
    title = "Peak concurrent calls per minute against the plan limit"
    layout = _layout(title, yaxis={"title": {"text": "calls"}, "rangemode": "tozero"})
    if not rows:
        return Chart("concurrency", title, _empty(layout, why or "no calls held a plan slot"))
    data = []
    for business in sorted({r["business_id"] for r in rows}):
        mine = [r for r in rows if r["business_id"] == business]
        x = [r["minute"] for r in mine]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "line": {"shape": "hv"},
                "name": f"{business} peak",
                "x": x,
                "y": [r["peak_calls"] for r in mine],
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "line": {"dash": "dash", "shape": "hv"},
                "name": f"{business} plan limit",
                "x": x,
                "y": [r["plan_limit"] for r in mine],
            }
        )
    return Chart("concurrency", title, {"data": data, "layout": layout})


def asr_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT toStartOfHour(attempted_at) AS hour, count() AS attempts,
               countIf(answered) / count() AS asr, countIf(effective) / count() AS ner,
               if(countIf(answered) > 0, sumIf(talk_s, answered) / countIf(answered), NULL)
                   AS acd_s,
               avg(pdd_ms) AS pdd_avg_ms, quantileExact(0.95)(pdd_ms) AS pdd_p95_ms
        FROM {db}.call_facts WHERE {w.where("attempted_at")}
        GROUP BY hour ORDER BY hour""",
    )
    title = "ASR, NER, ACD and PDD per hour"
    layout = _layout(
        title,
        grid={"rows": 3, "columns": 1, "pattern": "independent"},
        height=720,
        yaxis={"title": {"text": "ratio"}, "range": [0, 1.05]},
        yaxis2={"title": {"text": "ACD (s)"}, "rangemode": "tozero"},
        yaxis3={"title": {"text": "PDD (ms)"}, "rangemode": "tozero"},
    )
    if not rows:
        return Chart("asr_acd_pdd", title, _empty(layout, why or "no calls"))
    x = [r["hour"] for r in rows]

    def trace(name: str, key: str, axis: str, **style: Any) -> dict[str, Any]:
        return {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": x,
            "y": [r[key] for r in rows],
            "xaxis": axis.replace("y", "x"),
            "yaxis": axis,
            **style,
        }

    data = [
        trace("ASR", "asr", "y"),
        trace("NER", "ner", "y", line={"dash": "dot"}),
        trace("ACD (s)", "acd_s", "y2"),
        trace("PDD average (ms)", "pdd_avg_ms", "y3"),
        trace("PDD p95 (ms)", "pdd_p95_ms", "y3", line={"dash": "dot"}),
    ]
    return Chart("asr_acd_pdd", title, {"data": data, "layout": layout})


def quality_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT toStartOfHour(assumeNotNull(ended_at)) AS hour, backend_id, count() AS calls,
               quantileExact(0.5)(mos) AS mos_p50, quantileExact(0.05)(mos) AS mos_p5,
               quantileExact(0.95)(loss_pct) AS loss_p95_pct
        FROM {db}.call_quality WHERE {w.where("ended_at")}
        GROUP BY hour, backend_id ORDER BY backend_id, hour""",
    )
    title = "Estimated MOS per hour and backend (E-model: median and 5th percentile)"
    layout = _layout(title, yaxis={"title": {"text": "MOS"}, "range": [1, 4.5]})
    if not rows:
        return Chart("quality", title, _empty(layout, why or "no calls with media"))
    data = []
    for backend in sorted({r["backend_id"] for r in rows}):
        mine = [r for r in rows if r["backend_id"] == backend]
        x = [r["hour"] for r in mine]
        for name, key, dash in (("median", "mos_p50", "solid"), ("p5", "mos_p5", "dot")):
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "line": {"dash": dash},
                    "name": f"{backend or '(none)'} {name}",
                    "x": x,
                    "y": [r[key] for r in mine],
                    "customdata": [[r["calls"], r["loss_p95_pct"]] for r in mine],
                    "hovertemplate": "%{y:.2f} (%{customdata[0]} calls, loss p95 "
                    "%{customdata[1]:.1f}%)",
                }
            )
    return Chart("quality", title, {"data": data, "layout": layout})


def billing_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT day, business_id, currency, sum(amount) AS amount, sum(calls) AS calls
        FROM {db}.billing_daily
        WHERE day >= toDate(fromUnixTimestamp64Milli({w.from_ms}, 'UTC'))
          AND day <= toDate(fromUnixTimestamp64Milli({w.to_ms}, 'UTC'))
          {f"AND business_id = {literal(w.business)}" if w.business else ""}
        GROUP BY day, business_id, currency ORDER BY currency, business_id, day""",
    )
    title = "Billed amounts per day, business and currency"
    layout = _layout(title, barmode="stack", yaxis={"title": {"text": "amount"}})
    if not rows:
        return Chart(
            "billing", title, _empty(layout, "no billing records" + (f": {why}" if why else ""))
        )
    data = []
    for business, currency in sorted({(r["business_id"], r["currency"]) for r in rows}):
        mine = [r for r in rows if (r["business_id"], r["currency"]) == (business, currency)]
        data.append(
            {
                "type": "bar",
                "name": f"{business} ({currency})",
                "x": [r["day"] for r in mine],
                "y": [float(r["amount"]) for r in mine],
            }
        )
    return Chart("billing", title, {"data": data, "layout": layout})


def decisions_chart(run: Run, db: str, w: Window) -> Chart:
    rows, why = _query(
        run,
        f"""SELECT call_id, business_id, decision, decision_ms, attempted_at
        FROM {db}.call_facts
        WHERE decision_ms IS NOT NULL AND {w.where("attempted_at")}
        ORDER BY decision_ms DESC, call_id LIMIT {SLOWEST}""",
    )
    title = f"The {SLOWEST} slowest decisions (offer to the decision published)"
    layout = _layout(title, height=120 + 26 * max(len(rows), 1))
    if not rows:
        return Chart("decisions", title, _empty(layout, why or "no decisions"))
    columns = ("decision_ms", "decision", "business_id", "call_id", "attempted_at")
    data = [
        {
            "type": "table",
            "header": {"values": ["ms", "decision", "business", "call", "offered at"]},
            "cells": {"values": [[r[c] for r in rows] for c in columns], "align": "left"},
        }
    ]
    return Chart("decisions", title, {"data": data, "layout": layout})


def gather(run: Run, window: Window, database: str = DEFAULT_DATABASE) -> Report:
    """The report's data: a summary and the six charts, in CHARTS order."""
    builders = (
        calls_chart,
        concurrency_chart,
        asr_chart,
        quality_chart,
        billing_chart,
        decisions_chart,
    )
    report = Report(window, summary(run, database, window))
    report.charts = [build(run, database, window) for build in builders]
    return report


# -- the page -----------------------------------------------------------------------------
def _json_script(data: Any) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(data, default=str, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def _figure(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(report: Report, plotly_js: str) -> str:
    w, s = report.window, report.summary
    facts = [
        ("calls", _figure(s["attempts"])),
        ("answered", _figure(s["answered_calls"])),
        ("ASR", _figure(s["asr"])),
        ("NER", _figure(s["ner"])),
        ("ACD", f"{_figure(s['acd_s'], 1)} s"),
        ("PDD avg / p95", f"{_figure(s['pdd_avg_ms'], 0)} / {_figure(s['pdd_p95_ms'], 0)} ms"),
        ("rejected", _figure(s["rejected"])),
    ]
    sections = []
    for chart in report.charts:
        note = f'<p class="note">{html.escape(chart.note)}</p>' if chart.note else ""
        sections.append(
            f'<section id="chart-{chart.key}"><h2>{html.escape(chart.title)}</h2>{note}'
            f'<div class="plot" id="plot-{chart.key}"></div>'
            f'<script type="application/json" id="data-{chart.key}">'
            f"{_json_script(chart.figure)}</script></section>"
        )
    scope = f"business {html.escape(w.business)}" if w.business else "all businesses"
    summary_items = "".join(f"<div><dt>{k}</dt><dd>{html.escape(v)}</dd></div>" for k, v in facts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>trunkline report {_iso(w.from_ms)} to {_iso(w.to_ms)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
dl {{ display: grid; grid-template-columns: repeat(7, auto); gap: .2em 1.5em; }}
dt {{ color: #666; font-size: .85em; }} dd {{ margin: 0; font-size: 1.3em; }}
section {{ margin-top: 2.5em; }} .note {{ color: #a60; }}
</style>
<script>{plotly_js}</script>
</head><body>
<h1>trunkline report</h1>
<p>{_iso(w.from_ms)} to {_iso(w.to_ms)}, {scope}.</p>
<dl id="summary">{summary_items}</dl>
{"".join(sections)}
<script>
for (const el of document.querySelectorAll('script[id^="data-"]')) {{
  const key = el.id.slice(5), fig = JSON.parse(el.textContent);
  Plotly.newPlot('plot-' + key, fig.data, fig.layout, {{responsive: true}});
}}
</script>
</body></html>
"""


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    calls: int
    charts: tuple[str, ...]


def write_report(
    run: Run,
    out: Path,
    since_s: int,
    business: str | None = None,
    *,
    now_ms: int | None = None,
    database: str = DEFAULT_DATABASE,
) -> Written:
    """Gather the report for the `since_s` seconds before `now_ms` (default: now) and
    write it to `out`."""
    to_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    report = gather(run, Window(to_ms - since_s * 1000, to_ms, business), database)
    page = render(report, plotly_js())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise StackError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return Written(
        out,
        len(page.encode()),
        int(report.summary["attempts"]),
        tuple(c.key for c in report.charts),
    )
