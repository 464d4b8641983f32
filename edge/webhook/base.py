"""What the provider adapters share: the events they decode requests into, the answers
they encode, and the one error family (each error carries the HTTP status to answer with
and a short reason, which is also the refusal's counter label). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import parse_qsl

from trunkline.core.events import derived_id

#: the most a webhook body may be: providers send a few KiB
MAX_BODY = 64 * 1024


class WebhookError(Exception):
    """A request we refuse: `status` to answer, `reason` (short, safe to show and log:
    never a secret or a signature), `label` for the refusal counter."""

    def __init__(self, status: int, reason: str, label: str = "bad_request") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.label = label


def forbidden(reason: str, label: str = "bad_signature") -> WebhookError:
    return WebhookError(403, reason, label)


def bad_request(reason: str, label: str = "malformed") -> WebhookError:
    return WebhookError(400, reason, label)


def unsupported_type(content_type: str, expected: str) -> WebhookError:
    return WebhookError(
        415, f"content type {content_type or '(none)'} is not {expected}", "content_type"
    )


class Provider(enum.Enum):
    TWILIO = "TWILIO"
    TELNYX = "TELNYX"
    VONAGE = "VONAGE"

    @property
    def title(self) -> str:
        return self.value.title()


def call_id_for(provider: Provider, account_id: str, provider_call_id: str) -> str:
    """Our queue id for a provider call: derived from the provider's own call id, so a
    retried webhook (on any edge, after any restart) names the same call."""
    return derived_id(f"{provider.value}/{account_id}/{provider_call_id}", "call")


@dataclass(frozen=True)
class InboundCall:
    """A provider asks what to do with a new inbound call."""

    provider: Provider
    account_id: str
    provider_call_id: str
    to_number: str
    from_number: str
    event_key: str  # the provider's identity of this request (for command ids)
    source_ip: str = ""

    @cached_property
    def call_id(self) -> str:  # a uuid5: computed once per request, not per use
        return call_id_for(self.provider, self.account_id, self.provider_call_id)


class Progress(enum.Enum):
    PROGRESS = "progress"  # initiated, ringing...: history only
    ANSWERED = "answered"
    ENDED = "ended"
    COST = "cost"  # what the provider charged for the call (Telnyx call.cost): history only


@dataclass(frozen=True)
class CallEvent:
    """A provider reports a step of a call's life (status callback, hangup event)."""

    provider: Provider
    account_id: str
    provider_call_id: str
    progress: Progress
    status: str  # the provider's own status or event name
    event_key: str  # the provider's identity of this event: ids derive from it
    to_number: str = ""
    from_number: str = ""
    reason: str = "completed"  # CallEnded.reason
    hangup_side: str | None = None
    duration_ms: int | None = None
    mos: float | None = None
    cost: str | None = None  # COST: a decimal string, as the provider sent it
    currency: str = ""
    billed_seconds: int | None = None

    @cached_property
    def call_id(self) -> str:  # a uuid5: computed once per request, not per use
        return call_id_for(self.provider, self.account_id, self.provider_call_id)


@dataclass(frozen=True)
class OutboundEvent:
    """A provider reports a step of one attempt of an outbound call (placed by a dialer
    of ours, whose tags the callback URL or Telnyx's client_state carries)."""

    provider: Provider
    account_id: str
    provider_call_id: str
    call_id: str  # our queue id (the tags' callQueueId)
    attempt: int
    dialer_id: str
    status: str  # the provider's own status or event name
    progress: str  # PROGRESS, RINGING, ANSWERED, ENDED
    event_key: str  # the provider's identity of this event: its id derives from it
    reason: str = "completed"
    sip_code: int | None = None
    hangup_side: str | None = None
    duration_ms: int | None = None
    mos: float | None = None


def outbound_tags(tags: dict[str, str], what: str) -> tuple[str, int, str]:
    """(queue id, attempt, dialer id) from an outbound callback's tags, or 400."""
    call_id, attempt, dialer = (tags.get(k, "") for k in ("callQueueId", "attempt", "dialer"))
    if not call_id or not dialer or not attempt.isdigit():
        raise bad_request(f"{what}: outbound tags need callQueueId, attempt and dialer")
    return call_id, int(attempt), dialer


def sip_code(value: object) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isdigit() and 100 <= int(text) <= 699 else None


@dataclass(frozen=True)
class Ignored:
    """A well-formed, authentic request that needs no event (e.g. a Telnyx event type we
    do not act on)."""

    what: str


@dataclass(frozen=True)
class Routed:
    call_id: str
    media_url: str  # the backend's mediaUrl (ws:// or wss://)
    backend_id: str


@dataclass(frozen=True)
class Refused:
    call_id: str
    status: int  # SIP-style code of the rejection (404, 486, 503...)
    reason: str

    @property
    def busy(self) -> bool:
        return self.status in (486, 503)


Decision = Routed | Refused


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Command:
    """An API request to the provider, carried out by the service (Telnyx commands)."""

    account_id: str
    method: str
    path: str  # below the account's API base URL
    body: dict[str, object] = field(default_factory=dict)


def form_params(body: bytes) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body as (name, value) pairs."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"malformed form body: {exc}") from None


def required(params: dict[str, str], name: str, what: str) -> str:
    value = params.get(name, "")
    if not value:
        raise bad_request(f"{what}: missing {name}", "missing_field")
    return value
