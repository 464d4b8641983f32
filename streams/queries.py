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
