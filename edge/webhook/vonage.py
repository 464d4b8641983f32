"""Vonage Voice API webhooks. Pure.

- The event webhook is signed: `Authorization: Bearer <JWT>`, HS256 with the account's
  signature secret, whose `payload_hash` claim is the hex SHA-256 of the body; a JWT
  issued (`iat`) more than 300 s from `now` is stale. Verified with PyJWT.
- Vonage does not sign the answer webhook, so its URL carries a per-account token:
  `{public URL}/webhooks/vonage/answer?account=ID&token=TOKEN` (TOKEN is the account's
  `answerToken` secret), compared in constant time.
- The answer webhook (GET query or POST JSON: `uuid`, `to`, `from`) becomes an
  InboundCall; the answer is an NCCO `connect` to the backend's `/vonage` WebSocket
  (`audio/l16;rate=16000`) with the queue id in the `callQueueId` header, or a `talk`
  action, after which the call ends.
- Events (`status`): `answered` -> answered; `completed` (with `duration`), `busy`,
  `cancelled`, `failed`, `rejected`, `timeout`, `unanswered` -> ended; `started`,
  `ringing` -> progress; others are ignored. Identity: `uuid` plus `status`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import jwt

from edge.dialer.providers import vonage_sig
from edge.webhook.base import (
    CallEvent,
    Decision,
    HttpAnswer,
    Ignored,
    InboundCall,
    OutboundEvent,
    Progress,
    Provider,
    Refused,
    bad_request,
    forbidden,
    outbound_tags,
    sip_code,
    unsupported_type,
)

TOLERANCE_S = 300
NCCO = "application/json"

STATUSES: dict[str, tuple[Progress, str]] = {
    "started": (Progress.PROGRESS, ""),
    "ringing": (Progress.PROGRESS, ""),
    "answered": (Progress.ANSWERED, ""),
    "completed": (Progress.ENDED, "completed"),
    "busy": (Progress.ENDED, "busy"),
    "cancelled": (Progress.ENDED, "cancelled"),
    "failed": (Progress.ENDED, "failed"),
    "rejected": (Progress.ENDED, "rejected"),
    "timeout": (Progress.ENDED, "no_answer"),
    "unanswered": (Progress.ENDED, "no_answer"),
}


def bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise forbidden("missing Authorization: Bearer JWT", "missing_signature")
    return token.strip()


def unverified_application_id(token: str) -> str:
    """The application id a JWT claims (to pick the account whose secret verifies it)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise forbidden("Authorization is not a JWT") from None
    return str(claims.get("application_id") or "")


def verify(secret: str, token: str, body: bytes, now: float) -> dict[str, Any]:
    """The JWT's claims, once its signature, age and payload_hash are right."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["iat"], "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise forbidden(f"JWT refused: {exc}") from None
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or abs(now - iat) > TOLERANCE_S:
        raise forbidden("stale signature: JWT iat too far from now", "stale_signature")
    wanted = str(claims.get("payload_hash") or "")
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), wanted.lower()):
        raise forbidden("payload_hash does not match the body")
    return claims


def check_answer_token(expected: str, given: str) -> None:
    if not given:
        raise forbidden("answer URL without token", "missing_signature")
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise forbidden("answer URL token does not match")


def parse_json(body: bytes, content_type: str) -> dict[str, Any]:
    if content_type != "application/json":
        raise unsupported_type(content_type, "application/json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("JSON body must be an object")
    return data


def _text(data: Mapping[str, Any], name: str, what: str, required: bool = True) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"{what}: missing {name}", "missing_field")
        return ""
    return str(value)


def answer_call(params: Mapping[str, Any], account_id: str) -> InboundCall:
    uuid = _text(params, "uuid", "answer webhook")
    to = _text(params, "to", "answer webhook")
    return InboundCall(
        Provider.VONAGE, account_id, uuid, _e164(to), _e164(_text(params, "from", "", False)),
        event_key=uuid,
    )  # fmt: skip


def _e164(number: str) -> str:
    """Vonage sends numbers without the leading '+'; our config holds E.164."""
    return f"+{number}" if number.isdigit() else number


def event(data: Mapping[str, Any], account_id: str) -> CallEvent | Ignored:
    status = _text(data, "status", "event webhook")
    if status not in STATUSES:
        return Ignored(f"status {status}")
    uuid = _text(data, "uuid", "event webhook")
    progress, reason = STATUSES[status]
    duration = str(data.get("duration") or "")
    return CallEvent(
        Provider.VONAGE,
        account_id,
        uuid,
        progress,
        status,
        f"{uuid}/{status}",
        to_number=_e164(_text(data, "to", "", False)),
        from_number=_e164(_text(data, "from", "", False)),
        reason=reason or "completed",
        duration_ms=int(duration) * 1000 if duration.isdigit() else None,
    )


def answer(decision: Decision, call: InboundCall) -> HttpAnswer:
    if isinstance(decision, Refused):
        return reject(busy=decision.busy)
    ncco = [
        {
            "action": "connect",
            "from": call.to_number.lstrip("+"),
            "endpoint": [
                {
                    "type": "websocket",
                    "uri": f"{decision.media_url.rstrip('/')}/vonage",
                    "content-type": "audio/l16;rate=16000",
                    "headers": {"callQueueId": decision.call_id},
                }
            ],
        }
    ]
    return HttpAnswer(200, NCCO, json.dumps(ncco).encode())


def reject(busy: bool = False) -> HttpAnswer:
    text = (
        "All lines are busy. Please call again later."
        if busy
        else "This call cannot be taken. Goodbye."
    )
    return HttpAnswer(200, NCCO, json.dumps([{"action": "talk", "text": text}]).encode())


#: Vonage's `detail` of a failed call -> the SIP cause it stands for
DETAIL_SIP = {
    "cannot_route": 503, "internal_error": 500, "unavailable": 480, "restricted": 403,
    "number_out_of_service": 404, "invalid_number": 484, "declined": 603, "busy": 486,
}  # fmt: skip
OUTBOUND_PROGRESS = {"started": "PROGRESS", "ringing": "RINGING", "answered": "ANSWERED"}


def outbound_event(
    data: Mapping[str, Any], query: Mapping[str, str], account_id: str, secret: str
) -> OutboundEvent | Ignored:
    """An event of a call our dialer placed: the event URL carries the tags and their
    `sig` (HMAC keyed by the signature secret: Vonage's JWT covers the body only)."""
    tags = {k: str(query.get(k, "")) for k in ("callQueueId", "attempt", "dialer")}
    if not hmac.compare_digest(
        vonage_sig(secret, tags).encode(), str(query.get("sig", "")).encode()
    ):
        raise forbidden("outbound event URL sig does not match")
    call_id, attempt, dialer = outbound_tags(tags, "outbound event")
    decoded = event(data, account_id)
    if isinstance(decoded, Ignored):
        return decoded
    progress = OUTBOUND_PROGRESS.get(decoded.status, "ENDED")
    code = sip_code(data.get("sip_code")) or DETAIL_SIP.get(str(data.get("detail") or ""))
    return OutboundEvent(
        Provider.VONAGE,
        account_id,
        decoded.provider_call_id,
        call_id,
        attempt,
        dialer,
        decoded.status,
        progress,
        decoded.event_key,
        reason=decoded.reason,
        sip_code=code,
        duration_ms=decoded.duration_ms,
    )
