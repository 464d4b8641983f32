"""Lifecycle events -> webhook payloads (pure).

A webhook's body is ``{"type": "call.ended", "timestamp": "2026-11-30T10:00:00.000Z",
"data": {...}}``: the timestamp is the event's own time, and `data` is the call's queue
entry as it stands after the event (the shape `trunkline calls show` prints, without the
logs), accumulated over the call's events (`apply`), so a call.ended carries the numbers
and provider ids its CallOffered brought. call.rated adds ``rating`` (amounts as exact
decimal strings), call.attempt_failed adds ``attempt``.

Event types and their records: call.offered (CallOffered, OutboundCallRequested),
call.rejected (CallRejected), call.routed (CallRouted), call.answered (CallAnswered),
call.ended (CallEnded), call.rated (CallRated), call.attempt_failed (OutboundAttemptFailed).
A call has one of each of the first five however many records say so (a media node and a
provider may both report the answer and the end): the first one fires. call.rated fires
for every rating run, call.attempt_failed for every failed attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from streams.projection import END_STATUS, STATUS, CallStatus

#: record type -> webhook event type
TYPES: dict[str, str] = {
    "CallOffered": "call.offered",
    "OutboundCallRequested": "call.offered",
    "CallRejected": "call.rejected",
    "CallRouted": "call.routed",
    "CallAnswered": "call.answered",
    "CallEnded": "call.ended",
    "CallRated": "call.rated",
    "OutboundAttemptFailed": "call.attempt_failed",
}
#: the event types a call fires once (the first record wins)
ONCE = frozenset({"call.offered", "call.rejected", "call.routed", "call.answered", "call.ended"})
#: lifecycle order of the types: a subscriber's deliveries for one call go out in it
RANK: dict[str, int] = {
    "call.offered": 10,
    "call.attempt_failed": 15,
    "call.routed": 30,
    "call.rejected": 40,
    "call.answered": 60,
    "call.ended": 70,
    "call.rated": 80,
}
#: records that update a call's entry without a webhook of their own
ENTRY_ONLY = frozenset({"CallAdmitted", "CallAccepted", "CallProgress", "CallCost"})


_ISO_SECONDS: dict[int, str] = {}


def iso(ms: int) -> str:
    """Epoch ms -> ISO 8601 UTC with milliseconds and Z (the second's text is cached:
    consecutive events share it, and strftime was a tenth of an event's handling)."""
    seconds, millis = divmod(ms, 1000)
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) > 4096:
            _ISO_SECONDS.clear()
        prefix = _ISO_SECONDS[seconds] = datetime.fromtimestamp(seconds, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{millis:03d}Z"


def _set(entry: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, ""):
        entry[key] = value


def apply(entry: Mapping[str, Any], name: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """The call's queue entry after record `name` (a new dict; `entry` is not changed)."""
    out = dict(entry)
    env = r["envelope"]
    at = int(env["occurred_at"])
    out["id"] = env["call_id"]
    status, rank = STATUS.get(name, ("", 0))
    if name == "CallEnded":
        status = END_STATUS.get(str(r.get("reason")), CallStatus.FAILED)
    if status and rank > int(out.get("_rank", 0)):
        out["status"], out["_rank"] = str(status), rank
    _set(out, "businessId", r.get("business_id"))
    _set(out, "provider", r.get("provider"))
    _set(out, "providerCallId", r.get("provider_call_id"))
    _set(out, "providerAccountId", r.get("provider_account_id"))
    if name in ("CallOffered", "OutboundCallRequested"):
        out.setdefault("enqueuedAt", iso(at))
        out["direction"] = "OUTBOUND" if name == "OutboundCallRequested" else r.get("direction")
        _set(out, "routeNumberId", r.get("phone_id"))
        _set(out, "fromNumber", r.get("from_number"))
        _set(out, "toNumber", r.get("to_number"))
        _set(out, "processingProxyServerId", r.get("edge_id"))
    elif name == "CallAdmitted":
        _set(out, "routeId", r.get("route_id"))
        _set(out, "regionId", r.get("region_id"))
        _set(out, "planId", r.get("plan_id"))
    elif name in ("CallRouted", "CallAccepted"):
        _set(out, "regionId", r.get("region_id"))
        _set(out, "processingBackendServerId", r.get("backend_id"))
    elif name == "CallAnswered":
        out.setdefault("answeredAt", iso(at))
        _set(out, "processingBackendServerId", r.get("backend_id"))
        _set(out, "codec", r.get("codec"))
    elif name == "CallRejected":
        out["statusCode"] = r.get("status_code")
        out["reason"] = r.get("reason")
        out.setdefault("endedAt", iso(at))
    elif name == "CallEnded" and "endedAt" not in out:  # the first end is the call's end
        out["endedAt"] = iso(at)
        out["reason"] = r.get("reason")
        _set(out, "statusCode", r.get("status_code"))
        _set(out, "hangupSide", r.get("hangup_side"))
        _set(out, "setupMs", r.get("setup_ms"))
        _set(out, "talkMs", r.get("talk_ms"))
        _set(out, "codec", r.get("codec"))
        _set(out, "hangupCause", r.get("hangup_cause"))
        _set(out, "providerDurationMs", r.get("provider_duration_ms"))
    return out


def _decimal(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def rating(r: Mapping[str, Any]) -> dict[str, Any]:
    """call.rated's `rating` object: the charge, money as exact decimal strings."""
    return {
        "ratingRun": r["rating_run"],
        "connected": r["connected"],
        "talkSeconds": r["talk_seconds"],
        "billableSeconds": r["billable_seconds"],
        "ratePlanId": r["rate_plan_id"] or None,
        "ratePlanVersion": r["rate_plan_version"] or None,
        "increment": r.get("increment") or None,
        "currency": r["currency"] or None,
        "perMinute": _decimal(r["per_minute"]),
        "connectFee": _decimal(r["connect_fee"]),
        "amount": _decimal(r["amount"]),
        "providerCost": _decimal(r.get("provider_cost")),
        "providerCostCurrency": r.get("provider_cost_currency") or None,
        "reason": r.get("reason") or None,
    }


def attempt(r: Mapping[str, Any]) -> dict[str, Any]:
    """call.attempt_failed's `attempt` object (an outbound provider attempt)."""
    return {
        "attempt": int(r.get("attempt") or 0) + 1,
        "provider": r.get("provider"),
        "accountId": r.get("account_id"),
        "reason": r.get("reason"),
        "detail": r.get("detail") or None,
        "httpStatus": r.get("http_status"),
        "retryable": r.get("retryable"),
    }


def data(entry: Mapping[str, Any], name: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """The payload's `data`: the entry (its private keys left out) plus what the event
    type adds."""
    out = {k: v for k, v in entry.items() if not k.startswith("_")}
    if name == "CallRated":
        out["rating"] = rating(r)
    elif name == "OutboundAttemptFailed":
        out["attempt"] = attempt(r)
    return out


def body(event_type: str, at_ms: int, payload_data: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed)."""
    return orjson.dumps({"type": event_type, "timestamp": iso(at_ms), "data": payload_data})
