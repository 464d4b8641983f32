"""The read side: queries over `calls` and `call_events`, shared by the CLI and the
worker's web views, returning JSON-ready dicts (the seed's queue entry shape)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Queryable(Protocol):
    database: str

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def parse_duration(text: str) -> int:
    """'90s', '15m', '2h', '7d', '1w' -> seconds. Raises ValueError naming the input."""
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 2h, 7d or 1w")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _iso(value: Any) -> Any:
    """ClickHouse DateTime64('UTC') -> ISO 8601 with Z; the zero date -> None."""
    if isinstance(value, datetime):
        if value.year <= 1970:
            return None
        text = value.replace(tzinfo=None).isoformat(timespec="milliseconds")
        return text + "Z"
    return value


def _filters(
    business: str | None, since_s: int | None, time_column: str, limit: int
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause and parameters of the list queries: a business, rows since."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if business:
        where.append("business_id = {business:String}")
        params["business"] = business
    if since_s:
        where.append(f"{time_column} >= now64(3) - toIntervalSecond({{since:UInt32}})")
        params["since"] = since_s
    return ("WHERE " + " AND ".join(where)) if where else "", params


def list_calls(
    store: Queryable, business: str | None = None, since_s: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    clause, params = _filters(business, since_s, "enqueued_at", limit)
    rows = store.query(
        f"""
        SELECT id, status, business_id, route_number_id, provider, provider_call_id,
               processing_backend_server_id AS backend, status_code, reason, enqueued_at,
               ended_at, talk_ms
        FROM {store.database}.calls {clause}
        ORDER BY enqueued_at DESC LIMIT {{limit:UInt32}}
        """,
        params,
    )
    return [{k: _iso(v) for k, v in row.items()} for row in rows]


def show_call(store: Queryable, call_id: str) -> dict[str, Any] | None:
    rows = store.query(
        f"SELECT * FROM {store.database}.calls WHERE id = {{id:String}}", {"id": call_id}
    )
    if not rows:
        return None
    r = rows[0]
    entry: dict[str, Any] = {
        "id": r["id"],
        "status": r["status"],
        "provider": r["provider"] or None,
        "providerCallId": r["provider_call_id"] or None,
        "businessId": r["business_id"] or None,
        "routeNumberId": r["route_number_id"] or None,
        "routeId": r["route_id"] or None,
        "regionId": r["region_id"] or None,
        "processingProxyServerId": r["processing_proxy_server_id"] or None,
        "processingBackendServerId": r["processing_backend_server_id"] or None,
        "enqueuedAt": _iso(r["enqueued_at"]),
    }
    if r.get("provider_account_id"):  # provider calls: the account the webhook came for
        entry["providerAccountId"] = r["provider_account_id"]
    if r["status_code"]:
        entry["statusCode"] = r["status_code"]
    if r["reason"]:
        entry["reason"] = r["reason"]
    if _iso(r["ended_at"]) is not None:
        entry["endedAt"] = _iso(r["ended_at"])
        entry["hangupSide"] = r["hangup_side"] or None
        entry["setupMs"] = r["setup_ms"]
        entry["talkMs"] = r["talk_ms"]
        entry["codec"] = r["codec"] or None
        entry["media"] = {
            "packetsSent": r["packets_sent"],
            "packetsReceived": r["packets_received"],
            "packetsLost": r["packets_lost"],
            "jitterMs": round(float(r["jitter_ms"]), 3),
        }
        if r.get("mos"):
            entry["media"]["mos"] = round(float(r["mos"]), 2)
        if r.get("hangup_cause"):
            entry["hangupCause"] = r["hangup_cause"]
        if r.get("provider_duration_ms"):
            entry["providerDurationMs"] = r["provider_duration_ms"]
    entry["logs"] = [
        {"at": _iso(at), "type": log_type, "message": message}
        for at, _rank, log_type, message in r["logs"]
    ]
    return entry


def call_events(store: Queryable, call_id: str) -> list[dict[str, Any]]:
    rows = store.query(
        f"""SELECT event_id, event_type, occurred_at, producer_id, status, log_message
            FROM {store.database}.call_events WHERE call_id = {{id:String}}
            ORDER BY status_rank, occurred_at""",
        {"id": call_id},
    )
    return [{k: _iso(v) for k, v in row.items()} for row in rows]


def event_counts(store: Queryable) -> dict[str, int]:
    rows = store.query(
        f"SELECT event_type, count() AS n FROM {store.database}.call_events GROUP BY event_type"
    )
    return {row["event_type"]: int(row["n"]) for row in rows}


# -- ad-hoc SQL (`trunkline sql`): read-only, checked twice --------------------------------
#: the statements `trunkline sql` runs; anything else is refused before it reaches
#: ClickHouse, and ClickHouse runs what passes with `readonly=1` (streams.clickhouse)
READ_ONLY_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC")
#: rows returned unless asked otherwise, and the most one query may return
SQL_ROW_LIMIT = 10_000
SQL_MAX_ROWS = 1_000_000
_FORMAT_RE = re.compile(r"\bFORMAT\s+[A-Za-z0-9_]+\s*$", re.IGNORECASE)
#: `readonly=1` does not stop it: the embedded engine writes the file on the sink's host
_OUTFILE_RE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


class ReadOnlyError(ValueError):
    """A query `trunkline sql` refuses, with why."""


def _code(sql: str) -> str:
    """The query with comments and the insides of string and identifier literals blanked
    (spaces, same length, so positions match the query's), for checking its shape only.
    Raises ReadOnlyError on an unterminated literal or comment."""
    out = list(sql)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise ReadOnlyError(f"unterminated {c} literal")
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # a doubled quote stands for itself
                        j += 2
                        continue
                    break
                j += 1
            out[i + 1 : j] = " " * (j - i - 1)
            i = j + 1
        elif sql.startswith("--", i) or c == "#":
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out[i:j] = " " * (j - i)
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise ReadOnlyError("unterminated /* comment")
            out[i : j + 2] = " " * (j + 2 - i)
            i = j + 2
        else:
            i += 1
    return "".join(out)


def check_read_only(sql: str) -> str:
    """The one statement in `sql`, cut after its last token (a trailing `;` or comment
    goes), if it is a query that only reads: SELECT, WITH, SHOW, DESCRIBE (DESC).
    Raises ReadOnlyError otherwise, naming what was wrong: no statement, several, another
    kind, a FORMAT clause (the output format is `--format`'s) or INTO OUTFILE."""
    code = _code(sql).rstrip()
    while code.endswith(";"):
        code = code[:-1].rstrip()
    if not code.strip():
        raise ReadOnlyError("no query given")
    if ";" in code:
        raise ReadOnlyError("one statement at a time: the query has a ';' inside it")
    first = re.split(r"[\s(]", code.lstrip(), maxsplit=1)[0].upper()
    if first not in READ_ONLY_STATEMENTS:
        raise ReadOnlyError(
            f"only {', '.join(READ_ONLY_STATEMENTS[:-1])} queries are run, "
            f"not {first or code.strip()[:20]}"
        )
    if _FORMAT_RE.search(code):
        raise ReadOnlyError("leave FORMAT out: the output format is chosen with --format")
    if _OUTFILE_RE.search(code):
        raise ReadOnlyError("INTO OUTFILE writes a file: write the output with --format instead")
    return sql[: len(code)]


# -- billing ------------------------------------------------------------------------------
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
MONEY_PLACES = Decimal("0.000001")


def parse_month(text: str) -> int:
    """'2026-11' -> 202611 (ClickHouse's toYYYYMM). Raises ValueError naming the input."""
    m = _MONTH_RE.match(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"{text!r} is not a month like 2026-11")
    return int(m.group(1)) * 100 + int(m.group(2))


def _money(value: Any) -> str | None:
    """A ClickHouse Decimal as its exact text with six places ('0.008500')."""
    if value is None:
        return None
    return str(Decimal(str(value)).quantize(MONEY_PLACES))


def _billing_value(key: str, value: Any) -> Any:
    if key in ("per_minute", "connect_fee", "amount", "provider_cost"):
        return _money(value)
    if key == "connected":
        return bool(value)
    return _iso(value)


def list_billing(
    store: Queryable, business: str | None = None, since_s: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Rated calls, newest start first; amounts as exact decimal strings."""
    clause, params = _filters(business, since_s, "started_at", limit)
    rows = store.query(
        f"""
        SELECT call_id, rating_run, business_id, direction, provider, provider_call_id,
               started_at, ended_at, connected, talk_seconds, billable_seconds, rate_plan_id,
               rate_plan_version, increment, currency, per_minute, connect_fee, amount,
               provider_cost, provider_cost_currency, reason
        FROM {store.database}.billing_records {clause}
        ORDER BY started_at DESC, call_id LIMIT {{limit:UInt32}}
        """,
        params,
    )
    return [{k: _billing_value(k, v) for k, v in row.items()} for row in rows]


def billing_summary(
    store: Queryable, business: str, month: int | None = None
) -> list[dict[str, Any]]:
    """Totals per direction, provider and currency for one business (and month of the
    calls' start): calls, connected calls, talk and billable seconds, the exact amount and
    the providers' reported cost."""
    params: dict[str, Any] = {"business": business}
    clause = "business_id = {business:String}"
    if month is not None:
        clause += " AND toYYYYMM(started_at) = {month:UInt32}"
        params["month"] = month
    rows = store.query(
        f"""
        SELECT direction, provider, currency, count() AS n_calls,
               countIf(connected = 1) AS n_connected, sum(talk_seconds) AS total_talk,
               sum(billable_seconds) AS total_billable, sum(amount) AS total_amount,
               sumIf(assumeNotNull(provider_cost), provider_cost IS NOT NULL) AS total_cost,
               countIf(provider_cost IS NOT NULL) AS n_costed
        FROM {store.database}.billing_records WHERE {clause}
        GROUP BY direction, provider, currency ORDER BY direction, provider, currency
        """,
        params,
    )
    out = []
    for r in rows:
        out.append(
            {
                "direction": r["direction"],
                "provider": r["provider"],
                "currency": r["currency"],
                "calls": int(r["n_calls"]),
                "connected": int(r["n_connected"]),
                "talk_seconds": int(r["total_talk"]),
                "billable_seconds": int(r["total_billable"]),
                "amount": _money(r["total_amount"]),
                "provider_cost": _money(r["total_cost"]) if r["n_costed"] else None,
            }
        )
    return out


# -- webhook deliveries -------------------------------------------------------------------
def list_deliveries(
    store: Queryable,
    subscription: str | None = None,
    failed: bool = False,
    since_s: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """One row per delivery (subscription, webhook-id), latest attempt first: the event,
    the last status code and outcome, attempts and the last attempt's latency. `failed`:
    deliveries whose latest outcome is not `delivered`."""
    where: list[str] = []
    having: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if subscription:
        where.append("subscription_id = {sub:String}")
        params["sub"] = subscription
    if since_s:
        having.append("d_last_attempt_at >= now64(3) - toIntervalSecond({since:UInt32})")
        params["since"] = since_s
    if failed:
        having.append("d_outcome != 'delivered'")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    having_clause = ("HAVING " + " AND ".join(having)) if having else ""
    rows = store.query(
        f"""
        SELECT subscription_id, webhook_id, argMax(event_type, attempt) AS d_event_type,
               argMax(call_id, attempt) AS d_call_id,
               argMax(source_event_id, attempt) AS d_event_id,
               argMax(outcome, attempt) AS d_outcome,
               argMax(status_code, attempt) AS d_status_code, count() AS d_attempts,
               argMax(latency_ms, attempt) AS d_latency_ms, argMax(error, attempt) AS d_error,
               argMax(url, attempt) AS d_url, min(attempted_at) AS d_first_attempt_at,
               max(attempted_at) AS d_last_attempt_at
        FROM {store.database}.webhook_deliveries {clause}
        GROUP BY subscription_id, webhook_id {having_clause}
        ORDER BY d_last_attempt_at DESC LIMIT {{limit:UInt32}}
        """,
        params,
    )
    return [
        {
            k.removeprefix("d_"): (None if k == "d_status_code" and not v else _iso(v))
            for k, v in row.items()
        }
        for row in rows
    ]


def delivery_attempts(store: Queryable, subscription: str, webhook_id: str) -> list[dict[str, Any]]:
    """Every attempt of one delivery, in order."""
    rows = store.query(
        f"""
        SELECT attempt, outcome, status_code, latency_ms, error, attempted_at, next_attempt_at
        FROM {store.database}.webhook_deliveries
        WHERE subscription_id = {{sub:String}} AND webhook_id = {{id:String}}
        ORDER BY attempt
        """,
        {"sub": subscription, "id": webhook_id},
    )
    return [{k: _iso(v) for k, v in row.items()} for row in rows]


def redeliverable(
    store: Queryable,
    subscription: str,
    event_id: str | None = None,
    call_id: str | None = None,
    since_s: int | None = None,
) -> list[dict[str, Any]]:
    """The deliveries `webhooks redeliver` sends again: one per webhook-id, with the exact
    body, its event and call, oldest first."""
    where = ["subscription_id = {sub:String}"]
    params: dict[str, Any] = {"sub": subscription}
    if event_id:
        where.append("source_event_id = {event:String}")
        params["event"] = event_id
    if call_id:
        where.append("call_id = {call:String}")
        params["call"] = call_id
    if since_s:
        where.append("attempted_at >= now64(3) - toIntervalSecond({since:UInt32})")
        params["since"] = since_s
    rows = store.query(
        f"""
        SELECT webhook_id, argMax(source_event_id, attempt) AS d_event_id,
               argMax(event_type, attempt) AS d_event_type, any(call_id) AS d_call_id,
               argMax(business_id, attempt) AS d_business_id, argMax(body, attempt) AS d_body,
               min(attempted_at) AS d_first_attempt_at
        FROM {store.database}.webhook_deliveries WHERE {" AND ".join(where)}
        GROUP BY webhook_id ORDER BY d_first_attempt_at, webhook_id
        """,
        params,
    )
    return [{k.removeprefix("d_"): _iso(v) for k, v in row.items()} for row in rows]
