"""Telnyx Call Control v2 webhooks. Pure.

- Signature: `telnyx-signature-ed25519` (base64) over `"{telnyx-timestamp}|{raw body}"`
  with the account's Ed25519 public key; a timestamp more than 300 s from `now` is stale.
- Events: `call.initiated` (inbound) becomes an InboundCall; the webhook itself is
  answered 200 at once, and the decision becomes a Call Control command:
  `answer` with `stream_url={mediaUrl}/telnyx`, `stream_track=both_tracks`,
  `stream_bidirectional_mode=rtp` and the queue id in `client_state` (base64 JSON
  `{"callQueueId": ...}`), or `reject` with `USER_BUSY` / `CALL_REJECTED`. Each command's
  `command_id` derives from the webhook's event id, so a retried webhook re-sends a
  command Telnyx ignores.
- `call.answered` -> answered; `call.hangup` -> ended, with `hangup_cause`,
  `hangup_source`, the duration (`start_time` to `occurred_at`) and the inbound MOS from
  `call_quality_stats`. Other event types are acknowledged and ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.dialer.providers import outbound_tags as tags_in_state
from edge.webhook.base import (
    CallEvent,
    Command,
    Decision,
    Ignored,
    InboundCall,
    OutboundEvent,
    Progress,
    Provider,
    Refused,
    WebhookError,
    bad_request,
    forbidden,
    outbound_tags,
    sip_code,
    unsupported_type,
)
from trunkline.core.events import derived_id

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE_S = 300

#: hangup_cause -> CallEnded.reason
HANGUP_REASONS = {
    "normal_clearing": "completed",
    "originator_cancel": "cancelled",
    "call_rejected": "rejected",
    "user_busy": "busy",
    "no_answer": "no_answer",
    "timeout": "no_answer",
    "time_limit": "completed",
    "not_found": "failed",
    "unspecified": "completed",
}
#: hangup_source -> CallEnded.hangup_side
SIDES = {"caller": "caller", "callee": "agent", "unknown": None}


def verify(public_key: str, headers: dict[str, str], body: bytes, now: float) -> None:
    sig = headers.get(SIGNATURE_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    if not sig or not stamp:
        raise forbidden(
            f"missing {SIGNATURE_HEADER if not sig else TIMESTAMP_HEADER}", "missing_signature"
        )
    if not stamp.isdigit():
        raise forbidden(f"{TIMESTAMP_HEADER} {stamp[:20]!r} is not Unix seconds")
    skew = abs(now - int(stamp))
    if skew > TOLERANCE_S:
        raise forbidden(f"stale signature: timestamp {int(skew)} s from now", "stale_signature")
    try:
        raw_sig = base64.b64decode(sig, validate=True)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
    except (binascii.Error, ValueError):
        raise forbidden(f"{SIGNATURE_HEADER} is not base64 Ed25519") from None
    try:
        key.verify(raw_sig, stamp.encode() + b"|" + body)
    except InvalidSignature:
        raise forbidden(f"{SIGNATURE_HEADER} does not match") from None


def parse(body: bytes, content_type: str) -> dict[str, Any]:
    if content_type != "application/json":
        raise unsupported_type(content_type, "application/json")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON body: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        raise bad_request("not a Call Control event: no data.payload object")
    for name in ("event_type", "id"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise bad_request(f"Call Control event without data.{name}", "missing_field")
    return data


def connection_id(data: dict[str, Any]) -> str:
    return str(data["payload"].get("connection_id") or "")


def _text(payload: dict[str, Any], name: str, required: bool = False) -> str:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"Call Control event without payload.{name}", "missing_field")
        return ""
    if not isinstance(value, str):
        raise bad_request(f"payload.{name} must be a string")
    return value


def _ms(text: str) -> int | None:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _mos(payload: dict[str, Any]) -> float | None:
    stats = payload.get("call_quality_stats") or {}
    inbound = stats.get("inbound") if isinstance(stats, dict) else None
    raw = inbound.get("mos") if isinstance(inbound, dict) else None
    try:
        mos = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return mos if mos is not None and 1.0 <= mos <= 5.0 else None


def decode(
    data: dict[str, Any], account_id: str
) -> InboundCall | CallEvent | OutboundEvent | Ignored:
    kind, event_id, payload = data["event_type"], data["id"], data["payload"]
    if kind not in ("call.initiated", "call.answered", "call.hangup", "call.cost"):
        return Ignored(kind)
    call_control_id = _text(payload, "call_control_id", required=True)
    if kind == "call.cost":
        return _cost(payload, account_id, call_control_id, event_id)
    tags = tags_in_state(_text(payload, "client_state"))
    if tags is not None:  # a call our dialer placed
        return _outbound(kind, event_id, data, payload, account_id, call_control_id, tags)
    to, from_ = _text(payload, "to"), _text(payload, "from")
    if kind == "call.initiated":
        direction = _text(payload, "direction") or "incoming"
        if direction != "incoming":
            return Ignored(f"{kind} ({direction})")
        if not to:
            raise bad_request("call.initiated without payload.to", "missing_field")
        return InboundCall(Provider.TELNYX, account_id, call_control_id, to, from_, event_id)
    if kind == "call.answered":
        return CallEvent(
            Provider.TELNYX, account_id, call_control_id, Progress.ANSWERED, kind, event_id,
            to_number=to, from_number=from_,
        )  # fmt: skip
    cause = _text(payload, "hangup_cause") or "unspecified"
    start = _ms(_text(payload, "start_time"))
    end = _ms(str(data.get("occurred_at") or "")) or _ms(_text(payload, "end_time"))
    return CallEvent(
        Provider.TELNYX,
        account_id,
        call_control_id,
        Progress.ENDED,
        cause,
        event_id,
        to_number=to,
        from_number=from_,
        reason=HANGUP_REASONS.get(cause, "failed"),
        hangup_side=SIDES.get(_text(payload, "hangup_source") or "unknown"),
        duration_ms=max(0, end - start) if start is not None and end is not None else None,
        mos=_mos(payload),
    )


def _outbound(
    kind: str,
    event_id: str,
    data: dict[str, Any],
    payload: dict[str, Any],
    account_id: str,
    call_control_id: str,
    tags: dict[str, str],
) -> OutboundEvent:
    call_id, attempt, dialer = outbound_tags(tags, f"{kind} client_state")
    progress = {"call.initiated": "PROGRESS", "call.answered": "ANSWERED"}.get(kind, "ENDED")
    cause = _text(payload, "hangup_cause") or ("" if progress != "ENDED" else "unspecified")
    start = _ms(_text(payload, "start_time"))
    end = _ms(str(data.get("occurred_at") or "")) or _ms(_text(payload, "end_time"))
    return OutboundEvent(
        Provider.TELNYX,
        account_id,
        call_control_id,
        call_id,
        attempt,
        dialer,
        cause or kind,
        progress,
        event_id,
        reason=HANGUP_REASONS.get(cause, "failed") if progress == "ENDED" else "completed",
        sip_code=sip_code(payload.get("sip_hangup_cause")),
        hangup_side=SIDES.get(_text(payload, "hangup_source") or "unknown"),
        duration_ms=max(0, end - start) if start is not None and end is not None else None,
        mos=_mos(payload),
    )


def _cost(
    payload: dict[str, Any], account_id: str, call_control_id: str, event_id: str
) -> CallEvent:
    """call.cost: what Telnyx charged for the call (`total_cost`, a decimal string, and
    its `currency`), kept beside our own rating for margin."""
    raw = payload.get("total_cost")
    try:
        cost = Decimal(str(raw)) if isinstance(raw, str | int | float) else None
    except InvalidOperation:
        cost = None
    if cost is None or not cost.is_finite():
        raise bad_request("call.cost without a decimal payload.total_cost", "missing_field")
    currency = _text(payload, "currency")
    if len(currency) != 3 or not currency.isalpha():
        raise bad_request("call.cost without a currency code", "missing_field")
    billed = payload.get("billed_duration_secs")
    return CallEvent(
        Provider.TELNYX, account_id, call_control_id, Progress.COST, "call.cost", event_id,
        cost=str(raw).strip(), currency=currency.upper(),
        billed_seconds=billed if isinstance(billed, int) and not isinstance(billed, bool) else None,
    )  # fmt: skip


def client_state(call_id: str) -> str:
    return base64.b64encode(json.dumps({"callQueueId": call_id}).encode()).decode()


def command(call: InboundCall, decision: Decision) -> Command:
    """The Call Control command that carries out the decision for this call."""
    path = f"/v2/calls/{call.provider_call_id}/actions"
    if isinstance(decision, Refused):
        return Command(
            call.account_id,
            "POST",
            f"{path}/reject",
            {
                "cause": "USER_BUSY" if decision.busy else "CALL_REJECTED",
                "command_id": derived_id(call.event_key, "telnyx/reject"),
            },
        )
    return Command(
        call.account_id,
        "POST",
        f"{path}/answer",
        {
            "stream_url": f"{decision.media_url.rstrip('/')}/telnyx",
            "stream_track": "both_tracks",
            "stream_bidirectional_mode": "rtp",
            "client_state": client_state(decision.call_id),
            "command_id": derived_id(call.event_key, "telnyx/answer"),
        },
    )


def reject(call: InboundCall) -> Command:
    """Reject a call we could not offer (a number not configured)."""
    return command(call, Refused(call.call_id, 404, "not configured"))


__all__ = ["WebhookError", "command", "decode", "parse", "reject", "verify"]
