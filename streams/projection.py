"""Lifecycle event -> ClickHouse row (pure).

Each event advances the call's queue entry to a status (the seed's InboundCallQueue) and
contributes one log line. `status_rank` orders the lifecycle so that the `calls` view
takes the furthest step reached even when producers' clocks disagree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import orjson

from streams import arrow_blocks

COLUMNS: tuple[str, ...] = (
    "event_id", "event_type", "call_id", "occurred_at", "producer_id", "provider",
    "provider_call_id", "business_id", "phone_id", "route_id", "region_id", "edge_id",
    "backend_id", "status", "status_rank", "status_code", "reason", "hangup_side",
    "setup_ms", "talk_ms", "codec", "packets_sent", "packets_received", "packets_lost",
    "jitter_ms", "log_type", "log_message", "payload", "kafka_partition", "kafka_offset",
    "provider_account_id", "hangup_cause", "provider_duration_ms", "mos",
    "direction", "published_at", "plan_id", "plan_limit",
)  # fmt: skip

Row = tuple[Any, ...]

_dumps: Final = orjson.dumps  # a constant to mypyc (`orjson.dumps` is a lookup per call)


class CallStatus(StrEnum):
    """A queue entry's status (the seed's InboundCallQueue), defined here once: the
    projection writes them, the read side and the CLI compare against them."""

    QUEUED = "Queued"
    PROCESSING_PROXY = "ProcessingProxy"
    PROCESSED_PROXY = "ProcessedProxy"
    PROCESSING_BACKEND = "ProcessingBackend"
    IN_PROGRESS = "InProgress"
    REJECTED = "Rejected"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"
    FAILED = "Failed"


#: statuses after which nothing more happens to the call
FINAL_STATUSES = frozenset(
    {CallStatus.REJECTED, CallStatus.COMPLETED, CallStatus.CANCELLED, CallStatus.FAILED}
)

#: event type -> (status after it, rank); CallEnded's status comes from END_STATUS
STATUS: dict[str, tuple[str, int]] = {
    "CallOffered": (CallStatus.QUEUED, 10),
    "CallAdmitted": (CallStatus.PROCESSING_PROXY, 20),
    "CallRouted": (CallStatus.PROCESSED_PROXY, 30),
    "CallRejected": (CallStatus.REJECTED, 40),
    "CallAccepted": (CallStatus.PROCESSING_BACKEND, 50),
    "CallAnswered": (CallStatus.IN_PROGRESS, 60),
    "CallEnded": (CallStatus.FAILED, 70),
    # a provider's progress report (ringing...): a log line that never moves the status
    "CallProgress": (CallStatus.QUEUED, 5),
    # an outbound call (POST /v1/calls) starts its queue entry like an offer; each
    # provider attempt and failed attempt is a log line that never moves the status
    # (only the last attempt's failure is the call's outcome: the dialer's CallEnded)
    "OutboundCallRequested": (CallStatus.QUEUED, 10),
    "OutboundAttempt": (CallStatus.QUEUED, 5),
    "OutboundAttemptFailed": (CallStatus.QUEUED, 5),
    # a provider's cost report (Telnyx call.cost), after the end: a log line only
    "CallCost": (CallStatus.QUEUED, 5),
}
#: CallEnded reason -> status; any other reason is a failure
END_STATUS: dict[str, str] = {
    "completed": CallStatus.COMPLETED,
    "cancelled": CallStatus.CANCELLED,
    "rejected": CallStatus.REJECTED,
}


class ProjectionError(ValueError):
    pass


#: event types that start a call, and the direction each implies when it names none
STARTS: dict[str, str] = {"CallOffered": "INBOUND", "OutboundCallRequested": "OUTBOUND"}


def _direction(name: str, r: dict[str, Any]) -> str:
    """INBOUND / OUTBOUND on the events that start a call; empty on the others (the
    views take the call's direction from its start)."""
    implied = STARTS.get(name)
    if implied is None:
        return ""
    return str(r.get("direction") or implied) if name == "CallOffered" else implied


#: ".000"..".999": the milliseconds of an instant's text, looked up (a format spec is a call)
_MILLIS: Final[tuple[str, ...]] = tuple(f".{ms:03d}" for ms in range(1000))


def _instant(ms: int) -> str:
    """Epoch ms as ClickHouse reads DateTime64(3) exactly: seconds.millis."""
    return f"{ms // 1000}{_MILLIS[ms % 1000]}"


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _title(provider: Any) -> str:
    return str(provider).title()


def _provider_log(name: str, r: dict[str, Any]) -> tuple[str, str] | None:
    """Log lines of provider calls (webhook edge): what the provider said."""
    provider = r.get("provider")
    if not provider or provider == "SIP":
        return None
    if name == "CallOffered":
        account = r.get("provider_account_id") or "?"
        return "Info", (
            f"{_title(provider)} webhook received by {r['edge_id']} (account {account}): "
            f"call {r['provider_call_id']} from {r.get('from_number') or '?'} "
            f"to {r['to_number']}"
        )
    if name == "CallAnswered":
        return "Info", f"{_title(provider)} status {r.get('provider_status')}: call answered"
    if name == "CallProgress":
        return "Info", f"{_title(provider)} status {r.get('provider_status')}"
    if name == "CallCost":
        return "Info", f"{_title(provider)} reported the call's cost: {r['cost']} {r['currency']}"
    if name == "CallEnded":
        duration = r.get("provider_duration_ms")
        took = f" after {duration / 1000:.0f} s" if duration is not None else ""
        mos = (r.get("media") or {}).get("mos")
        quality = f", MOS {mos:.2f}" if mos is not None else ""
        level = "Info" if r["reason"] in ("completed", "cancelled") else "Error"
        return level, (
            f"{_title(provider)} status {r.get('hangup_cause')}: "
            f"call ended: {r['reason']}{took}{quality}"
        )
    return None


def _outbound_log(name: str, r: dict[str, Any]) -> tuple[str, str] | None:
    """Log lines of outbound calls (the REST API and the dialer)."""
    if name == "OutboundCallRequested":
        return "Info", (
            f"Outbound call requested through {r['edge_id']} (API key {r.get('api_key_id') or '?'})"
            f": {r['from_number']} ({r['phone_id']}) to {r['to_number']}, providers "
            f"{', '.join(r.get('providers') or []) or '-'}"
        )
    if name == "OutboundAttempt":
        how = " (found by lookup after a timeout)" if r.get("found_by_lookup") else ""
        return "Info", (
            f"Attempt {r['attempt'] + 1} through {r['account_id']} ({_title(r['provider'])}): "
            f"call {r.get('provider_call_id') or '?'} created from {r.get('from_number')}{how}"
        )
    if name == "OutboundAttemptFailed":
        http = f" HTTP {r['http_status']}" if r.get("http_status") is not None else ""
        code = f" code {r['provider_error_code']}" if r.get("provider_error_code") else ""
        detail = f": {r['detail']}" if r.get("detail") else ""
        then = "trying the next provider" if r.get("retryable") else "no failover"
        return "Warning" if r.get("retryable") else "Error", (
            f"Attempt {r['attempt'] + 1} through {r['account_id']} ({_title(r['provider'])}) "
            f"failed: {r['reason']}{http}{code}{detail} ({then})"
        )
    return None


def _log(name: str, r: dict[str, Any]) -> tuple[str, str]:
    outbound = _outbound_log(name, r)
    if outbound is not None:
        return outbound
    provided = _provider_log(name, r)
    if provided is not None:
        return provided
    if name == "CallOffered":
        return "Info", (
            f"Call offered by {r['edge_id']} from {r['source_ip']} "
            f"({r['provider']} {r.get('transport', '')}) to {r['to_number']}"
        )
    if name == "CallAdmitted":
        return "Info", (
            f"Call admitted for business {r['business_id']} "
            f"({r['active_calls']}/{r['max_concurrent_calls']} calls on plan {r['plan_id']})"
        )
    if name == "CallRejected":
        stage = str(r["stage"]).lower()
        return "Warning", f"Call rejected by {stage}: {r['status_code']} {r['reason']}"
    if name == "CallRouted":
        how = " (bypass rule)" if r.get("bypass") else ""
        return "Info", f"Call routed to {r['backend_id']}{how}"
    if name == "CallAccepted":
        return "Info", f"Call accepted by {r['backend_id']}"
    if name == "CallAnswered":
        return "Info", f"Call answered by {r['backend_id']} ({r['codec']})"
    if name == "CallEnded":
        reason = r["reason"]
        side = f" by {r['hangup_side']}" if r.get("hangup_side") else ""
        talk = f" after {r['talk_ms'] / 1000:.1f} s" if r.get("talk_ms") is not None else ""
        level = "Info" if reason in ("completed", "cancelled") else "Error"
        detail = f" ({r['detail']})" if r.get("detail") else ""
        return level, f"Call ended: {reason}{side}{talk}{detail}"
    raise ProjectionError(f"{name} is not a call lifecycle event")


def event_row(
    name: str,
    r: dict[str, Any],
    partition: int = 0,
    offset: int = 0,
    published_ms: int | None = None,
) -> Row:
    """One `call_events_log` row, values in COLUMNS order, JSON-ready.

    `occurred_at` is written as Unix seconds with milliseconds ("1700000000.123"), which
    ClickHouse parses into DateTime64(3) exactly. `published_ms` is the Kafka record's
    timestamp (when its producer sent it): a decision carries the offer's time as its
    `occurred_at` (machines judge in event time), so its record's timestamp is when it
    was really made. Part of the log, so a replay writes the same value; without one
    (a record that has none), `occurred_at` stands in.
    """
    try:
        status, rank = STATUS[name]
    except KeyError:
        raise ProjectionError(f"{name} is not a call lifecycle event") from None
    env: dict[str, Any] = r["envelope"]
    if not env.get("call_id"):
        raise ProjectionError(f"{name} {env.get('event_id')} has no call_id")
    # the columns below inline `_s` (a call per column was a third of the row) and call
    # `r.get` itself (mypyc makes that a direct dict lookup, a bound alias a Python call)
    media: dict[str, Any] = r.get("media") or {}
    if name == "CallEnded":
        status = END_STATUS.get(r["reason"], CallStatus.FAILED)
    log_type, log_message = _log(name, r)
    at_ms = int(env["occurred_at"])
    published = published_ms if published_ms and published_ms > 0 else at_ms
    admitted = name == "CallAdmitted"
    return (
        env["event_id"],  # event_id
        name,  # event_type
        env["call_id"],  # call_id
        f"{at_ms // 1000}{_MILLIS[at_ms % 1000]}",  # occurred_at (_instant)
        env["producer_id"],  # producer_id
        "" if (v := r.get("provider")) is None else str(v),  # provider
        "" if (v := r.get("provider_call_id")) is None else str(v),  # provider_call_id
        "" if (v := r.get("business_id")) is None else str(v),  # business_id
        "" if (v := r.get("phone_id")) is None else str(v),  # phone_id
        "" if (v := r.get("route_id")) is None else str(v),  # route_id
        "" if (v := r.get("region_id")) is None else str(v),  # region_id
        "" if (v := r.get("edge_id")) is None else str(v),  # edge_id
        "" if (v := r.get("backend_id")) is None else str(v),  # backend_id
        status,  # status
        rank,  # status_rank
        r.get("status_code") or 0,  # status_code
        "" if (v := r.get("reason")) is None else str(v),  # reason
        "" if (v := r.get("hangup_side")) is None else str(v),  # hangup_side
        r.get("setup_ms") or 0,  # setup_ms
        r.get("talk_ms") or 0,  # talk_ms
        "" if (v := r.get("codec")) is None else str(v),  # codec
        media.get("packets_sent", 0),  # packets_sent
        media.get("packets_received", 0),  # packets_received
        media.get("packets_lost", 0),  # packets_lost
        media.get("jitter_ms", 0.0),  # jitter_ms
        log_type,  # log_type
        log_message,  # log_message
        _dumps(r).decode(),  # payload
        partition,  # kafka_partition
        offset,  # kafka_offset
        "" if (v := r.get("provider_account_id") or r.get("account_id")) is None else str(v),
        "" if (v := r.get("hangup_cause")) is None else str(v),  # hangup_cause
        r.get("provider_duration_ms") or 0,  # provider_duration_ms
        media.get("mos") or 0.0,  # mos
        _direction(name, r),  # direction
        f"{published // 1000}{_MILLIS[published % 1000]}",  # published_at (_instant)
        ("" if (v := r.get("plan_id")) is None else str(v)) if admitted else "",  # plan_id
        int(r.get("max_concurrent_calls") or 0) if admitted else 0,  # plan_limit
    )


#: pre-serialized JSON put between the rows of a block (orjson copies a Fragment verbatim)
_NEWLINE = orjson.Fragment(b"\n")


def json_compact_each_row(rows: list[Row]) -> bytes:
    """Rows as ClickHouse JSONCompactEachRow (one JSON array per line, COLUMNS order):
    ClickHouse parses it in C++, so Python only pays for orjson.

    The block is one `orjson.dumps` of `[row, "\\n", row, ...]` (the newlines as raw
    fragments), its outer brackets cut and each `,<newline>,` made a newline: orjson
    never writes a raw newline itself (it escapes those in strings), so the bytes are
    exactly those of one dumps per row joined by newlines, in half the time (one call per
    row costs more than the whole list's serialization)."""
    if not rows:
        return b""
    items: list[Any] = [_NEWLINE] * (2 * len(rows) - 1)
    items[::2] = rows
    return orjson.dumps(items)[1:-1].replace(b",\n,", b"\n")


# -- billing and webhook deliveries (tables of their own) ---------------------------------
BILLING_COLUMNS: tuple[str, ...] = (
    "call_id", "event_id", "rating_run", "business_id", "direction", "provider",
    "provider_account_id", "provider_call_id", "started_at", "ended_at", "connected",
    "talk_seconds", "billable_seconds", "rate_plan_id", "rate_plan_version", "increment",
    "currency", "per_minute", "connect_fee", "amount", "provider_cost",
    "provider_cost_currency", "reason", "rated_event_id", "kafka_partition", "kafka_offset",
)  # fmt: skip
DELIVERY_COLUMNS: tuple[str, ...] = (
    "subscription_id", "webhook_id", "attempt", "event_id", "source_event_id", "event_type",
    "call_id", "business_id", "url", "status_code", "error", "latency_ms", "outcome",
    "next_attempt_at", "attempted_at", "body", "kafka_partition", "kafka_offset",
)  # fmt: skip


def _money(value: Any) -> str | None:
    """A decimal as its exact text (ClickHouse parses it into Decimal(18, 6))."""
    return None if value is None else str(value)


def billing_row(r: dict[str, Any], partition: int = 0, offset: int = 0) -> Row:
    """One `billing_records_log` row from a CallRated record."""
    env: dict[str, Any] = r["envelope"]
    if not env.get("call_id"):
        raise ProjectionError(f"CallRated {env.get('event_id')} has no call_id")
    return (
        env["call_id"], env["event_id"], int(r["rating_run"]), r["business_id"],
        r["direction"], _s(r["provider"]), r.get("provider_account_id") or "",
        r.get("provider_call_id") or "", _instant(int(r["started_at"])),
        _instant(int(r["ended_at"])), 1 if r["connected"] else 0, int(r["talk_seconds"]),
        int(r["billable_seconds"]), r["rate_plan_id"], int(r["rate_plan_version"]),
        r.get("increment") or "", r["currency"], _money(r["per_minute"]),
        _money(r["connect_fee"]), _money(r["amount"]), _money(r.get("provider_cost")),
        r.get("provider_cost_currency") or "", r.get("reason") or "", r["rated_event_id"],
        partition, offset,
    )  # fmt: skip


def delivery_row(r: dict[str, Any], partition: int = 0, offset: int = 0) -> Row:
    """One `webhook_deliveries_log` row from a WebhookAttempt record."""
    env: dict[str, Any] = r["envelope"]
    return (
        r["subscription_id"], r["webhook_id"], int(r["attempt"]), env["event_id"],
        r["source_event_id"], r["event_type"], env.get("call_id") or "",
        r.get("business_id") or "", r["url"], r.get("status_code") or 0, r.get("error") or "",
        int(r.get("latency_ms") or 0), r["outcome"],
        _instant(int(r["next_attempt_at"])) if r.get("next_attempt_at") else None,
        _instant(int(r["attempted_at"])), r["body"], partition, offset,
    )  # fmt: skip


#: ClickHouse table -> its columns, for each kind of row the sink writes
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "call_events_log": COLUMNS,
    "billing_records_log": BILLING_COLUMNS,
    "webhook_deliveries_log": DELIVERY_COLUMNS,
}


def arrow_stream(table: str, rows: list[Row]) -> bytes:
    """Rows of `table` (values in TABLE_COLUMNS order) as an Arrow IPC stream of one
    record batch, for ClickHouse's ArrowStream input (streams/arrow_blocks.py)."""
    return bytes(arrow_blocks.arrow_stream(TABLE_COLUMNS[table], rows))


def table_row(
    name: str,
    r: dict[str, Any],
    partition: int = 0,
    offset: int = 0,
    published_ms: int | None = None,
) -> tuple[str, Row]:
    """(table, row) for any record the sink follows: CallRated -> billing_records_log,
    WebhookAttempt -> webhook_deliveries_log, lifecycle events -> call_events_log."""
    if name == "CallRated":
        return "billing_records_log", billing_row(r, partition, offset)
    if name == "WebhookAttempt":
        return "webhook_deliveries_log", delivery_row(r, partition, offset)
    return "call_events_log", event_row(name, r, partition, offset, published_ms)
