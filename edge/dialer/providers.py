"""Provider create-call requests and what their answers mean. Pure.

Requests are built as the keyword arguments of each provider's official SDK call, so the
I/O layer (`edge.dialer.service`) only calls the SDK:

- **Twilio** `client.calls.create(...)`: inline TwiML `<Connect><Stream url="{mediaUrl}/twilio">`
  with the queue id as `<Parameter name="callQueueId">`, `StatusCallback` =
  `{public}/webhooks/twilio/status?callQueueId=...&attempt=...&dialer=...` (Twilio signs
  the whole URL, so the tags are authentic) and the events initiated, ringing, answered,
  completed; `Timeout` = the ring timeout.
- **Telnyx** `client.calls.dial(...)`: `stream_url={mediaUrl}/telnyx` (both tracks,
  bidirectional RTP), `client_state` = base64 JSON `{callQueueId, attempt, dialer}` (in
  every webhook of the call, signed with the body), `webhook_url` = our Telnyx webhook,
  `command_id` = the attempt's request id (Telnyx drops a repeat), `timeout_secs`.
- **Vonage** `voice.create_call(CreateCallRequest(...))`: an NCCO `connect` to the
  websocket `{mediaUrl}/vonage` (`audio/l16;rate=16000`, header `callQueueId`), numbers
  without the `+`, `event_url` = our Vonage event webhook with the tags and `sig`, an
  HMAC-SHA256 of them keyed by the account's signature secret (Vonage signs the event's
  body, not its URL), `ringing_timer`.

Answers are reduced to an `Outcome` by the I/O layer and classified here: a provider
call id, "unclear" (sent, no answer: the call may exist), or a `Failure` whose
`retryable` says whether the next provider may try.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from twilio.twiml.voice_response import Connect, VoiceResponse

from edge.dialer.machine import Failure

TWILIO_EVENTS = ("initiated", "ringing", "answered", "completed")
#: Twilio error codes that say the number itself is wrong: every provider would refuse it
TWILIO_INVALID_NUMBER = frozenset({"21211", "21217", "13223", "13224"})


@dataclass(frozen=True)
class Target:
    """What one attempt's request needs."""

    call_id: str
    attempt: int
    dialer_id: str
    request_id: str
    to_number: str
    from_number: str
    media_url: str  # the backend's mediaUrl (ws:// or wss://)
    public_url: str  # TRUNKLINE_PUBLIC_URL: where providers reach our webhooks
    ring_timeout_s: int = 30

    def tags(self) -> dict[str, str]:
        return {"callQueueId": self.call_id, "attempt": str(self.attempt), "dialer": self.dialer_id}


# -- requests -----------------------------------------------------------------------------
def twilio_twiml(target: Target) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=f"{target.media_url.rstrip('/')}/twilio")
    stream.parameter(name="callQueueId", value=target.call_id)
    response.append(connect)
    return str(response.to_xml(xml_declaration=False))


def twilio_status_url(target: Target) -> str:
    return f"{target.public_url}/webhooks/twilio/status?{urlencode(target.tags())}"


def twilio_create(target: Target) -> dict[str, Any]:
    """Keyword arguments of `twilio.rest.Client.calls.create`."""
    return {
        "to": target.to_number,
        "from_": target.from_number,
        "twiml": twilio_twiml(target),
        "status_callback": twilio_status_url(target),
        "status_callback_event": list(TWILIO_EVENTS),
        "status_callback_method": "POST",
        "timeout": target.ring_timeout_s,
    }


def client_state(target: Target) -> str:
    return base64.b64encode(json.dumps(target.tags(), separators=(",", ":")).encode()).decode()


def outbound_tags(state: str) -> dict[str, str] | None:
    """The tags a Telnyx `client_state` carries for an outbound attempt, else None (an
    inbound call's state is `{callQueueId}` alone)."""
    try:
        data = json.loads(base64.b64decode(state, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data[k] for k in ("callQueueId", "attempt", "dialer")
    ):
        return None
    return {k: str(data[k]) for k in ("callQueueId", "attempt", "dialer")}


def telnyx_dial(target: Target, connection_id: str) -> dict[str, Any]:
    """Keyword arguments of `telnyx.Telnyx.calls.dial`."""
    return {
        "connection_id": connection_id,
        "to": target.to_number,
        "from_": target.from_number,
        "stream_url": f"{target.media_url.rstrip('/')}/telnyx",
        "stream_track": "both_tracks",
        "stream_bidirectional_mode": "rtp",
        "client_state": client_state(target),
        "command_id": target.request_id,
        "webhook_url": f"{target.public_url}/webhooks/telnyx",
        "timeout_secs": target.ring_timeout_s,
    }


def vonage_sig(secret: str, tags: Mapping[str, str]) -> str:
    """The `sig` of a Vonage event URL's tags (Vonage's JWT covers the body only)."""
    data = "/".join(tags.get(k, "") for k in ("callQueueId", "attempt", "dialer"))
    return hmac.new(secret.encode(), data.encode(), hashlib.sha256).hexdigest()[:32]


def vonage_event_url(target: Target, account_id: str, secret: str) -> str:
    tags = target.tags()
    query = {"account": account_id, **tags, "sig": vonage_sig(secret, tags)}
    return f"{target.public_url}/webhooks/vonage/event?{urlencode(query)}"


def vonage_create(target: Target, account_id: str, secret: str) -> dict[str, Any]:
    """The fields of `vonage_voice.CreateCallRequest`."""
    return {
        "to": [{"type": "phone", "number": target.to_number.lstrip("+")}],
        "from_": {"type": "phone", "number": target.from_number.lstrip("+")},
        "ncco": [
            {
                "action": "connect",
                "from_": target.from_number.lstrip("+"),
                "endpoint": [
                    {
                        "type": "websocket",
                        "uri": f"{target.media_url.rstrip('/')}/vonage",
                        "contentType": "audio/l16;rate=16000",
                        "headers": {"callQueueId": target.call_id},
                    }
                ],
            }
        ],
        "event_url": [vonage_event_url(target, account_id, secret)],
        "event_method": "POST",
        "ringing_timer": max(1, min(120, target.ring_timeout_s)),
    }


# -- answers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Created:
    provider_call_id: str


@dataclass(frozen=True)
class Refused:
    """The provider answered with an error status."""

    http_status: int
    code: str | None = None
    detail: str = ""
    fields: tuple[str, ...] = field(default_factory=tuple)  # request fields blamed


@dataclass(frozen=True)
class NoConnection:
    """The request never reached the provider (connection refused, connect timeout)."""

    detail: str


@dataclass(frozen=True)
class NoResponse:
    """The request was sent and no answer came in time: the call may exist."""

    detail: str


Outcome = Created | Refused | NoConnection | NoResponse


def classify(provider: str, outcome: Outcome) -> str | Failure:
    """What an attempt's answer means for the failover machine: a provider call id,
    "unclear", or a Failure (retryable: the next provider may try)."""
    if isinstance(outcome, Created):
        return outcome.provider_call_id
    if isinstance(outcome, NoResponse):
        return "unclear"
    if isinstance(outcome, NoConnection):
        return Failure("connect_error", True, outcome.detail)
    status, code = outcome.http_status, outcome.code
    if status == 429:
        return Failure("http_429", True, outcome.detail, status, code)
    if status >= 500:
        return Failure("http_5xx", True, outcome.detail, status, code)
    if status in (401, 403, 404):  # this account's credentials or permissions
        return Failure("auth", True, outcome.detail, status, code)
    if _invalid_number(provider, outcome):
        return Failure("invalid_number", False, outcome.detail, status, code)
    return Failure("rejected", False, outcome.detail, status, code)


def _invalid_number(provider: str, outcome: Refused) -> bool:
    if provider == "TWILIO":
        return outcome.code in TWILIO_INVALID_NUMBER
    return "to" in outcome.fields


def telnyx_error(status: int, body: object) -> Refused:
    """A Telnyx error answer (`{"errors": [{"code", "title", "detail", "source":
    {"pointer": "/to"}}]}`)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    fields: list[str] = []
    for error in errors if isinstance(errors, list) else []:
        source = error.get("source") if isinstance(error, dict) else None
        pointer = source.get("pointer") if isinstance(source, dict) else None
        if isinstance(pointer, str):
            fields.append(pointer.strip("/"))
    detail = str(first.get("detail") or first.get("title") or "")[:300]
    code = str(first["code"]) if first.get("code") is not None else None
    return Refused(status, code, detail, tuple(fields))


def vonage_error(status: int, body: object) -> Refused:
    """A Vonage error answer (`{"type", "title", "detail", "invalid_parameters": [{"name",
    "reason"}]}`)."""
    data = body if isinstance(body, dict) else {}
    params = data.get("invalid_parameters")
    fields = tuple(
        str(p.get("name", "")).lower() for p in params if isinstance(p, dict)
    ) if isinstance(params, list) else ()  # fmt: skip
    detail = str(data.get("detail") or data.get("title") or "")[:300]
    title = data.get("title")
    return Refused(status, str(title) if title else None, detail, fields)


def twilio_match(
    calls: Iterable[Mapping[str, Any]], since_ms: int, exclude: Iterable[str] = ()
) -> str | None:
    """The call a timed-out Twilio create made, among the calls listed for the attempt's
    To and From: the first one created at or after `since_ms` (less a second of clock
    skew) that no other attempt of ours holds."""
    taken = set(exclude)
    for call in calls:
        sid = str(call.get("sid") or "")
        created = call.get("date_created")
        at = _ms(created)
        if sid and sid not in taken and at is not None and at >= since_ms - 1000:
            return sid
    return None


def _ms(value: Any) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            return int(parsedate_to_datetime(value).timestamp() * 1000)
        except (TypeError, ValueError):
            try:
                return int(datetime.fromisoformat(value).timestamp() * 1000)
            except ValueError:
                return None
    return None
