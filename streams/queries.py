"""The read side: queries over `calls` and `call_events`, shared by the CLI and the
worker's web views, returning JSON-ready dicts (the seed's queue entry shape)."""

from __future__ import annotations

import re
from datetime import datetime
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


def list_calls(
    store: Queryable, business: str | None = None, since_s: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if business:
        where.append("business_id = {business:String}")
        params["business"] = business
    if since_s:
        where.append("enqueued_at >= now64(3) - toIntervalSecond({since:UInt32})")
        params["since"] = since_s
    clause = ("WHERE " + " AND ".join(where)) if where else ""
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
