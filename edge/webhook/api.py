"""The REST API for outbound calls (`POST /v1/calls`, `GET /v1/calls/{id}`). Pure.

- **Keys**: `Authorization: Bearer <key>`; the config holds only `sha256(key)` per key
  (`apiKeys: [{id, businessId, sha256}]`). The presented key is hashed and the digest is
  compared with `hmac.compare_digest`; the key itself is never stored, published or
  logged (records carry the key's id).
- **Body**: JSON `{to, fromNumberId, routeId?, providers?, metadata?, timeout?}`; every
  refusal names the field (`{"error": ..., "field": ...}`) and publishes nothing.
- **Numbers and routes**: `fromNumberId` must exist (404) and belong to the key's business
  (403), and be a provider number (400: SIP numbers cannot dial out through an API);
  `routeId` must be a route of the business (404). Admission checks them again: it is
  the authority, the API answers early.
- **Failover order**: `providers` as given (each must be a known account on which the
  business has a number, and the first must be `fromNumberId`'s own account), else the
  number's account followed by the business's `outboundProviders` on which it has a
  number. An attempt through an account calls from the business's number there; the
  first from `fromNumberId` itself.
- **Idempotency-Key**: the queue id derives from the business and the key, so the same
  key always names the same call: on this edge or after its restart (the dialer's
  journal keeps the request, with the SHA-256 of its normalised body), the same body gets
  the same call and another body gets 409; admission's per-call slot turns a repeat into
  a duplicate, so no second call is admitted or dialed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trunkline.core.events import derived_id, envelope

E164_RE = re.compile(r"^\+[1-9][0-9]{1,14}$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_METADATA = 32
FIELDS = ("to", "fromNumberId", "routeId", "providers", "metadata", "timeout")
DEFAULT_RING_TIMEOUT_S = 30


class ApiError(Exception):
    """A refused API request: HTTP status, message (safe to show), the field at fault."""

    def __init__(
        self, status: int, message: str, field: str = "", retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}: {message}", field)


@dataclass(frozen=True)
class ApiKey:
    id: str
    business_id: str
    sha256: str

    def __repr__(self) -> str:
        return f"ApiKey({self.id!r}, business {self.business_id})"


def authenticate(authorization: str, keys: Mapping[str, ApiKey]) -> ApiKey:
    """The key an `Authorization: Bearer <key>` header presents (`keys` by digest), or 401."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing Authorization: Bearer <API key>", "Authorization")
    digest = hashlib.sha256(token.encode()).hexdigest()
    key = keys.get(digest)
    # the lookup is by the digest, never the key; the final check is constant-time anyway
    if key is None or not hmac.compare_digest(key.sha256.encode(), digest.encode()):
        raise ApiError(401, "unknown API key", "Authorization")
    return key


@dataclass(frozen=True)
class CallRequest:
    """A validated POST /v1/calls body."""

    to: str
    from_number_id: str
    route_id: str = ""
    providers: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    timeout_s: int = DEFAULT_RING_TIMEOUT_S

    def digest(self) -> str:
        """SHA-256 of the normalised body: the same request always hashes the same."""
        doc = {
            "to": self.to,
            "fromNumberId": self.from_number_id,
            "routeId": self.route_id,
            "providers": list(self.providers),
            "metadata": dict(sorted(self.metadata.items())),
            "timeout": self.timeout_s,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def parse_body(body: bytes, content_type: str) -> CallRequest:
    if content_type != "application/json":
        raise ApiError(415, f"content type {content_type or '(none)'} is not application/json")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object", "body")
    for name in data:
        if name not in FIELDS:
            raise bad(str(name), f"unknown field (expected {', '.join(FIELDS)})")
    to = data.get("to")
    if to is None:
        raise bad("to", "is required")
    if not isinstance(to, str) or not E164_RE.match(to):
        raise bad("to", f"{to!r} is not an E.164 number (+ then 2-15 digits)")
    number_id = _ident(data, "fromNumberId", required=True)
    route_id = _ident(data, "routeId", required=False)
    providers: list[str] = []
    raw = data.get("providers")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise bad("providers", "must be a non-empty list of provider account ids")
        for i, item in enumerate(raw):
            if not isinstance(item, str) or not ID_RE.match(item):
                raise bad(f"providers[{i}]", f"{item!r} is not a provider account id")
            if item in providers:
                raise bad(f"providers[{i}]", f"{item!r} is listed twice")
            providers.append(item)
    metadata: dict[str, str] = {}
    raw = data.get("metadata")
    if raw is not None:
        if not isinstance(raw, dict):
            raise bad("metadata", "must be an object of names to strings or numbers")
        if len(raw) > MAX_METADATA:
            raise bad("metadata", f"has {len(raw)} entries; at most {MAX_METADATA}")
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or len(str(v)) > 500:
                raise bad(f"metadata.{k}", "must be a string or number of at most 500 characters")
            metadata[str(k)[:100]] = str(v)
    timeout = data.get("timeout", DEFAULT_RING_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 5 <= timeout <= 120:
        raise bad("timeout", f"must be whole seconds from 5 to 120, got {timeout!r}")
    return CallRequest(to, number_id, route_id, tuple(providers), metadata, timeout)


def _ident(data: Mapping[str, Any], name: str, required: bool) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise bad(name, "is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not ID_RE.match(str(value)):
        raise bad(name, f"{value!r} is not an id")
    return str(value)


class Directory:
    """What the API looks up in the config (the edge's followers fill it)."""

    def __init__(self) -> None:
        self.numbers: dict[str, dict[str, Any]] = {}  # PhoneNumber records by id
        self.routes: dict[str, dict[str, Any]] = {}
        self.businesses: dict[str, dict[str, Any]] = {}
        self.kinds: dict[str, str] = {}  # provider account id -> TWILIO, TELNYX, VONAGE

    def number_on(self, business_id: str, account_id: str, region_id: str) -> str | None:
        """The business's number on an account (same region first, then by id)."""
        mine = [
            n
            for n in self.numbers.values()
            if n.get("business_id") == business_id
            and n.get("provider_account_id") == account_id
            and n.get("provider") != "SIP"
        ]
        mine.sort(key=lambda n: (n.get("region_id") != region_id, str(n["id"])))
        return str(mine[0]["number"]) if mine else None


def outbound_request(
    req: CallRequest,
    key: ApiKey,
    directory: Directory,
    *,
    dialer_id: str,
    idempotency_key: str,
    fresh_id: Callable[[], str],
    now: float,
) -> dict[str, Any]:
    """The OutboundCallRequested record for a validated request, or ApiError (404 unknown
    number or route, 403 another business's number, 400 an unusable provider list)."""
    business_id = key.business_id
    number = directory.numbers.get(req.from_number_id)
    if number is None:
        raise ApiError(404, f"fromNumberId: number {req.from_number_id} is not configured",
                       "fromNumberId")  # fmt: skip
    if number.get("business_id") != business_id:
        raise ApiError(
            403,
            f"fromNumberId: number {req.from_number_id} belongs to another business",
            "fromNumberId",
        )
    if number.get("provider") == "SIP" or not number.get("provider_account_id"):
        raise bad(
            "fromNumberId",
            f"number {req.from_number_id} is not on a provider account "
            "(outbound calls are placed through Twilio, Telnyx or Vonage accounts)",
        )
    if req.route_id:
        route = directory.routes.get(req.route_id)
        if route is None or route.get("business_id") != business_id:
            raise ApiError(404, f"routeId: route {req.route_id} is not configured", "routeId")
    own = str(number["provider_account_id"])
    region = str(number.get("region_id") or "")
    numbers = {own: str(number["number"])}
    if req.providers:
        if req.providers[0] != own:
            raise bad(
                "providers",
                f"must start with {own}, the account of fromNumberId {req.from_number_id}",
            )
        for i, account in enumerate(req.providers[1:], start=1):
            if account not in directory.kinds:
                raise bad(f"providers[{i}]", f"unknown provider account {account!r}")
            there = directory.number_on(business_id, account, region)
            if there is None:
                raise bad(
                    f"providers[{i}]",
                    f"business {business_id} has no number on account {account}",
                )
            numbers[account] = there
        providers = list(req.providers)
    else:
        providers = [own]
        business = directory.businesses.get(business_id) or {}
        for account in business.get("outbound_providers") or []:
            there = directory.number_on(business_id, account, region)
            if account not in providers and account in directory.kinds and there is not None:
                providers.append(account)
                numbers[account] = there
    if idempotency_key:
        key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        call_id = derived_id(f"api/{business_id}/{key_digest}", "call")
    else:
        key_digest, call_id = "", fresh_id()
    return {
        "envelope": envelope(
            call_id, dialer_id, int(now * 1000), derived_id(call_id, "OutboundCallRequested")
        ),
        "provider": number["provider"],
        "business_id": business_id,
        "phone_id": req.from_number_id,
        "route_id": req.route_id,
        "to_number": req.to,
        "from_number": numbers[own],
        "providers": providers,
        "from_numbers": numbers,
        "ring_timeout_s": req.timeout_s,
        "metadata": dict(req.metadata),
        "api_key_id": key.id,
        "request_sha256": req.digest(),
        "idempotency_key_sha256": key_digest,
        "edge_id": dialer_id,
    }


#: a refusal's SIP-style code (admission, routing) -> the API's HTTP status
REFUSAL_STATUS = {403: 403, 404: 404, 486: 429, 503: 503}


def refusal(status: int, reason: str, retry_after: int | None) -> ApiError:
    """The API's answer for admission's or routing's refusal."""
    http = REFUSAL_STATUS.get(status, 503 if status >= 500 else 403)
    if http == 429 and retry_after is None:
        retry_after = 5
    field = "fromNumberId" if http == 404 and "number" in reason else ""
    if http == 404 and "route" in reason:
        field = "routeId"
    return ApiError(http, reason, field, retry_after)
