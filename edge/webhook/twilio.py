"""Twilio voice webhooks. Pure.

- Signature: `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + every POST
  parameter name and value, sorted by name)), checked against the public URL Twilio
  called (with and without the default port, as Twilio's own validator does). JSON
  bodies: the URL carries `bodySHA256=<hex>`; the HMAC covers the URL alone and the
  body's hash is compared separately. Compared in constant time.
- The voice webhook (`/webhooks/twilio/voice`) becomes an InboundCall; the answer is
  TwiML built with the Twilio SDK's `VoiceResponse`: full-duplex `<Connect><Stream>` to the
  backend's `/twilio` with the queue id as `<Parameter name="callQueueId">`, or
  `<Reject reason="busy|rejected"/>`.
- Status callbacks (`/webhooks/twilio/status`) become CallEvents: `in-progress`/`answered`
  -> answered; `completed`, `busy`, `no-answer`, `failed`, `canceled` -> ended (with
  `CallDuration`); `queued`, `initiated`, `ringing` -> progress. Their identity (and so
  the derived event ids) is `SequenceNumber`, else Twilio's `I-Twilio-Idempotency-Token`,
  else the status itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

from twilio.twiml.voice_response import Connect, VoiceResponse

from edge.webhook.base import (
    CallEvent,
    Decision,
    HttpAnswer,
    InboundCall,
    OutboundEvent,
    Progress,
    Provider,
    Refused,
    bad_request,
    forbidden,
    form_params,
    outbound_tags,
    required,
    sip_code,
    unsupported_type,
)

SIGNATURE_HEADER = "x-twilio-signature"
IDEMPOTENCY_HEADER = "i-twilio-idempotency-token"
TWIML = "text/xml"

#: CallStatus -> (progress, CallEnded.reason)
STATUSES: dict[str, tuple[Progress, str]] = {
    "queued": (Progress.PROGRESS, ""),
    "initiated": (Progress.PROGRESS, ""),
    "ringing": (Progress.PROGRESS, ""),
    "in-progress": (Progress.ANSWERED, ""),
    "answered": (Progress.ANSWERED, ""),
    "completed": (Progress.ENDED, "completed"),
    "busy": (Progress.ENDED, "busy"),
    "no-answer": (Progress.ENDED, "no_answer"),
    "failed": (Progress.ENDED, "failed"),
    "canceled": (Progress.ENDED, "cancelled"),
}


def _with_port(url: str, add: bool) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if add:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        netloc = f"{host}:{port}"
    else:
        netloc = host
    if parts.username:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit(parts._replace(netloc=netloc))


def signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """What Twilio would put in X-Twilio-Signature for this URL and these parameters."""
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    data = url + "".join(n + v for n in sorted(by_name) for v in sorted(by_name[n]))
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def verify(
    token: str,
    url: str,
    params: list[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes = b"",
    json_body: bool = False,
) -> None:
    """Raise 403 unless the request carries a valid signature for `url` (the public URL
    Twilio called, query included)."""
    given = headers.get(SIGNATURE_HEADER, "")
    if not given:
        raise forbidden("missing X-Twilio-Signature", "missing_signature")
    signed = params
    if json_body:
        query = parse_qs(urlsplit(url).query)
        wanted = (query.get("bodySHA256") or [""])[0]
        if not wanted:
            raise forbidden("JSON body without bodySHA256 in the URL", "missing_signature")
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), wanted.lower()):
            raise forbidden("body does not match bodySHA256")
        signed = []
    for candidate in (_with_port(url, False), _with_port(url, True)):
        if hmac.compare_digest(signature(token, candidate, signed).encode(), given.encode()):
            return
    raise forbidden("X-Twilio-Signature does not match")


def parse(body: bytes, content_type: str) -> tuple[list[tuple[str, str]], bool]:
    """The request's parameters and whether they came as JSON (bodySHA256 variant)."""
    if content_type == "application/x-www-form-urlencoded":
        return form_params(body), False
    if content_type == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("JSON body must be an object")
        return [(str(k), "" if v is None else str(v)) for k, v in data.items()], True
    raise unsupported_type(content_type, "application/x-www-form-urlencoded")


def account_sid(params: list[tuple[str, str]]) -> str:
    return dict(params).get("AccountSid", "")


def voice_call(params: list[tuple[str, str]], account_id: str, source_ip: str) -> InboundCall:
    p = dict(params)
    direction = p.get("Direction", "inbound")
    if direction != "inbound":
        raise bad_request(f"voice webhook for a {direction} call: only inbound calls are offered")
    sid = required(p, "CallSid", "voice webhook")
    return InboundCall(
        Provider.TWILIO,
        account_id,
        sid,
        required(p, "To", "voice webhook"),
        p.get("From", ""),
        event_key=sid,
        source_ip=source_ip,
    )


def status_event(
    params: list[tuple[str, str]], headers: Mapping[str, str], account_id: str
) -> CallEvent:
    p = dict(params)
    sid = required(p, "CallSid", "status callback")
    status = required(p, "CallStatus", "status callback")
    try:
        progress, reason = STATUSES[status]
    except KeyError:
        raise bad_request(f"status callback: unknown CallStatus {status!r}") from None
    seq = p.get("SequenceNumber", "")
    if seq and not seq.isdigit():
        raise bad_request(f"status callback: SequenceNumber {seq!r} is not a number")
    key = f"seq/{seq}" if seq else headers.get(IDEMPOTENCY_HEADER, "") or f"status/{status}"
    duration = p.get("CallDuration", "")
    return CallEvent(
        Provider.TWILIO,
        account_id,
        sid,
        progress,
        status,
        key,
        to_number=p.get("To", ""),
        from_number=p.get("From", ""),
        reason=reason or "completed",
        duration_ms=int(duration) * 1000 if duration.isdigit() else None,
    )


def answer(decision: Decision) -> HttpAnswer:
    """TwiML for the decision."""
    response = VoiceResponse()
    if isinstance(decision, Refused):
        response.reject(reason="busy" if decision.busy else "rejected")
    else:
        connect = Connect()
        stream = connect.stream(url=f"{decision.media_url.rstrip('/')}/twilio")
        stream.parameter(name="callQueueId", value=decision.call_id)
        response.append(connect)
    return HttpAnswer(200, TWIML, response.to_xml(xml_declaration=True).encode())


def reject(busy: bool = False) -> HttpAnswer:
    """TwiML that refuses a call we could not offer (e.g. a number not configured)."""
    response = VoiceResponse()
    response.reject(reason="busy" if busy else "rejected")
    return HttpAnswer(200, TWIML, response.to_xml(xml_declaration=True).encode())


#: CallStatus -> an outbound attempt's progress
OUTBOUND_PROGRESS = {
    "queued": "PROGRESS", "initiated": "PROGRESS", "ringing": "RINGING",
    "in-progress": "ANSWERED", "answered": "ANSWERED",
}  # fmt: skip


def outbound_status(
    params: list[tuple[str, str]],
    query: dict[str, str],
    headers: Mapping[str, str],
    account_id: str,
) -> OutboundEvent:
    """A status callback of a call our dialer placed: the StatusCallback URL carries the
    tags (callQueueId, attempt, dialer) and Twilio signs the whole URL."""
    event = status_event(params, headers, account_id)
    call_id, attempt, dialer = outbound_tags(query, "outbound status callback")
    progress = OUTBOUND_PROGRESS.get(event.status, "ENDED")
    return OutboundEvent(
        Provider.TWILIO,
        account_id,
        event.provider_call_id,
        call_id,
        attempt,
        dialer,
        event.status,
        progress,
        event.event_key,
        reason=event.reason,
        sip_code=sip_code(dict(params).get("SipResponseCode")),
        duration_ms=event.duration_ms,
    )
