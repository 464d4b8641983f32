"""Operator config (YAML) -> validated config records, with no I/O.

`load_config(text)` parses and validates the whole file and returns every record to
publish, or raises :class:`ConfigError` listing each problem as ``section[i] (id=X).field:
message``. Validation is all-or-nothing: the caller publishes only after it passes.

YAML keys are camelCase (the seed's JSON); Avro fields are snake_case.

Secrets (a provider's auth token, API key, private key, signature secret) are written as
references, ``{env: NAME}`` or ``{file: PATH}``, never as values: a literal is refused
naming the field. Records carry the reference (``env:NAME``), so no secret value ever
reaches a topic or ``config show``; each process that needs one resolves it from its own
environment at start (`resolve_secret`) and refuses to start naming what is missing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

import yaml

from trunkline.core.events import envelope
from trunkline.core.targets import refusal

PROVIDERS = ("SIP", "TWILIO", "TELNYX", "VONAGE")
E164_RE = re.compile(r"^\+[1-9][0-9]{1,14}$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
CONFIG_NAMESPACE = uuid.UUID("5b0f3c9e-6a34-4d5e-9a56-3f4c1b7d2e10")

SECTIONS = (
    "plans", "businesses", "routes", "numbers", "backends", "bypassRules", "providers", "apiKeys",
    "ratePlans", "webhookSubscriptions",
)  # fmt: skip
AVRO_NAME = {
    "ratePlans": "RatePlan",
    "webhookSubscriptions": "WebhookSubscription",
    "providers": "ProviderAccount",
    "plans": "Plan",
    "businesses": "Business",
    "routes": "Route",
    "numbers": "PhoneNumber",
    "backends": "BackendServer",
    "bypassRules": "BypassRule",
    "apiKeys": "ApiKey",
}
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"config has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class ConfigRecord:
    section: str  # YAML section, e.g. "numbers"
    key: str  # the record id, the Kafka key
    avro_name: str  # e.g. "PhoneNumber"
    body: dict[str, Any]  # Avro fields without the envelope

    def event_id(self) -> str:
        """Deterministic: the same record content always gets the same event id."""
        digest = json.dumps([self.section, self.key, self.body], sort_keys=True)
        return str(uuid.uuid5(CONFIG_NAMESPACE, digest))

    def to_avro(self, occurred_at_ms: int, producer_id: str = "config") -> dict[str, Any]:
        return {
            "envelope": envelope("", producer_id, occurred_at_ms, self.event_id()),
            **self.body,
        }


@dataclass
class Config:
    records: list[ConfigRecord] = field(default_factory=list)

    def section(self, name: str) -> dict[str, ConfigRecord]:
        return {r.key: r for r in self.records if r.section == name}

    def fingerprint(self) -> str:
        blob = json.dumps([[r.section, r.key, r.body] for r in self.records], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Checker:
    """Collects problems for one record; each getter returns a value or None."""

    def __init__(self, where: str, item: dict[str, Any], problems: list[Problem]) -> None:
        self.where = where
        self.item = item
        self.problems = problems
        self.used: set[str] = set()

    def fail(self, fieldname: str | None, message: str) -> None:
        where = f"{self.where}.{fieldname}" if fieldname else self.where
        self.problems.append(Problem(where, message))

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self.item or self.item[name] is None:
            if required:
                self.fail(name, "is required")
            return None
        return self.item[name]

    def ident(self, name: str, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(name, f"must be a string or integer id, got {type(value).__name__}")
            return None
        text = str(value)
        if not ID_RE.match(text):
            self.fail(name, f"{text!r} is not a valid id (letters, digits, . _ : @ -; max 128)")
            return None
        return text

    def text(self, name: str, required: bool = True, default: str | None = None) -> str | None:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.fail(name, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool | None:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {value!r}")
            return None
        return value

    def positive_int(self, name: str, maximum: int = 1_000_000) -> int | None:
        value = self._get(name, True)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            self.fail(name, f"must be an integer from 1 to {maximum}, got {value!r}")
            return None
        return value

    def finish(self) -> None:
        for extra in sorted(set(self.item) - self.used):
            self.fail(extra, "unknown field")


def _host_port(value: str) -> str | None:
    """Return an error message, or None when value is host:port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"{value!r} is not host:port"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{value!r} has no valid port (1..65535)"
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", host):
            return f"{value!r}: {host!r} is neither an IP address nor a host name"
    return None


def _plan(c: _Checker) -> dict[str, Any]:
    return {
        "id": c.ident("id"),
        "name": c.text("name", required=False),
        "max_concurrent_calls": c.positive_int("maxConcurrentCalls"),
        "rate_plan_id": c.ident("ratePlanId", required=False),
    }


# -- billing: rate plans ------------------------------------------------------------------
#: money and prices carry at most this many decimal places (CallRated's Avro decimals)
MONEY_SCALE = 6
INCREMENT_RE = re.compile(r"^([0-9]+)/([0-9]+)$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def parse_increment(text: str) -> tuple[int, int]:
    """``"a/b"`` -> (a, b), both whole seconds >= 1; ValueError naming what is wrong."""
    m = INCREMENT_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not an increment a/b (e.g. 60/60, 6/6, 1/1, 30/6)")
    first, step = int(m.group(1)), int(m.group(2))
    if first < 1 or step < 1 or first > 86_400 or step > 86_400:
        raise ValueError(f"{text!r}: both parts must be whole seconds from 1 to 86400")
    return first, step


def parse_price(value: Any) -> Decimal:
    """A price written as a decimal string (never a float): ValueError naming the fault."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = "a float" if isinstance(value, float) else type(value).__name__
        raise ValueError(f'must be a decimal string such as "0.0085" (quoted), not {kind}')
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not price.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal number")
    if price < 0:
        raise ValueError(f"{value!r} is negative: prices must be 0 or more")
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MONEY_SCALE:
        raise ValueError(f"{value!r} has more than {MONEY_SCALE} decimal places")
    return price


def parse_instant(value: Any) -> int:
    """An ISO-8601 instant with its offset (or a YAML timestamp) -> epoch ms (UTC)."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        raise ValueError(f"{value!r} is a date: give an instant, e.g. 2026-01-01T00:00:00Z")
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO-8601 instant such as 2026-01-01T00:00:00Z"
            ) from None
    else:
        raise ValueError(f"must be an ISO-8601 instant string, got {type(value).__name__}")
    if when.tzinfo is None:
        if isinstance(value, datetime):  # YAML's unquoted timestamps are UTC
            when = when.replace(tzinfo=UTC)
        else:
            raise ValueError(f"{value!r} has no UTC offset (add Z or +hh:mm)")
    return int(when.timestamp() * 1000)


def _rate_plan(c: _Checker) -> dict[str, Any]:
    prices: dict[str, str | None] = {}
    for name, field_name, required in (
        ("inboundPerMinute", "inbound_per_minute", True),
        ("outboundPerMinute", "outbound_per_minute", True),
        ("connectFee", "connect_fee", False),
    ):
        raw = c._get(name, required)
        if raw is None:
            prices[field_name] = None if required else "0"
            continue
        try:
            prices[field_name] = str(parse_price(raw))
        except ValueError as exc:
            c.fail(name, str(exc))
            prices[field_name] = None
    first = step = None
    raw_increment = c._get("increment", False)
    if raw_increment is None:
        first, step = 60, 60
    else:
        try:
            first, step = parse_increment(raw_increment)
        except ValueError as exc:
            c.fail("increment", str(exc))
    effective = None
    raw_from = c._get("effectiveFrom", True)
    if raw_from is not None:
        try:
            effective = parse_instant(raw_from)
        except ValueError as exc:
            c.fail("effectiveFrom", str(exc))
    currency = c.text("currency")
    if currency is not None and not CURRENCY_RE.match(currency):
        c.fail("currency", f"{currency!r} is not an ISO 4217 code (three capital letters)")
    minimum = c._get("minimumSeconds", False)
    if minimum is None:
        minimum = 0
    elif isinstance(minimum, bool) or not isinstance(minimum, int) or not 0 <= minimum <= 86_400:
        c.fail("minimumSeconds", f"must be whole seconds from 0 to 86400, got {minimum!r}")
        minimum = None
    version = c.positive_int("version")
    return {
        "id": c.ident("id"),
        "version": version,
        "effective_from": effective,
        "currency": currency,
        **prices,
        "increment_first": first,
        "increment_step": step,
        "minimum_seconds": minimum,
    }


# -- lifecycle webhooks -------------------------------------------------------------------
#: the event types a subscription may name (or "*")
WEBHOOK_EVENT_TYPES = (
    "call.offered",
    "call.rejected",
    "call.routed",
    "call.answered",
    "call.ended",
    "call.rated",
    "call.attempt_failed",
)


def target_url_problem(url: str, allow_private: bool) -> str | None:
    """What is wrong with a webhook URL as written (scheme, host, a literal IP that is
    refused); names are resolved and checked again at every delivery."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return f"{url!r}: only http:// and https:// URLs are accepted"
    host = parsed.hostname
    if not host:
        return f"{url!r} has no host"
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{url!r} has an invalid port"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: checked after resolution, at delivery time
    why = refusal(host, allow_private)
    return f"{url!r}: {why}" if why else None


def _webhook_subscription(c: _Checker) -> dict[str, Any]:
    allow_private = c.boolean("allowPrivateTargets", False)
    url = c.text("url")
    if url is not None and (why := target_url_problem(url, bool(allow_private))):
        c.fail("url", why)
    events = c._get("events", True)
    names: list[str] = []
    if events is not None:
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) for e in events)
        ):
            c.fail("events", 'must be a non-empty list of event types, or ["*"]')
        elif "*" in events and len(events) > 1:
            c.fail("events", '"*" means every event type: list it alone')
        else:
            for e in events:
                if e != "*" and e not in WEBHOOK_EVENT_TYPES:
                    c.fail(
                        "events",
                        f"unknown event type {e!r}; expected {', '.join(WEBHOOK_EVENT_TYPES)} or *",
                    )
                elif e in names:
                    c.fail("events", f"lists {e!r} twice")
                else:
                    names.append(e)
    return {
        "id": c.ident("id"),
        "url": url,
        "events": names,
        "business_id": c.ident("businessId", required=False),
        "secret_ref": secret_ref(c, "secret", True),
        "allow_private_targets": allow_private,
        "description": c.text("description", required=False),
    }


def _business(c: _Checker) -> dict[str, Any]:
    return {
        "id": c.ident("id"),
        "name": c.text("name"),
        "active": c.boolean("active", True),
        "plan_id": c.ident("plan"),
        "outbound_providers": _id_list(c, "outboundProviders"),
    }


def _id_list(c: _Checker, name: str) -> list[str]:
    value = c._get(name, False)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) and ID_RE.match(str(v)) for v in value
    ):
        c.fail(name, "must be a list of ids")
        return []
    out = [str(v) for v in value]
    if len(set(out)) != len(out):
        c.fail(name, "lists an id twice")
    return out


def _api_key(c: _Checker) -> dict[str, Any]:
    digest = c._get("sha256", True)
    if digest is not None and (not isinstance(digest, str) or not SHA256_RE.match(digest.lower())):
        c.fail("sha256", "must be the lowercase hex SHA-256 of the key (64 hex digits)")
        digest = None
    if "key" in c.item:
        c.fail("key", "is a secret: configure only its sha256, never the key itself")
        c.used.add("key")
    return {
        "id": c.ident("id"),
        "business_id": c.ident("businessId"),
        "sha256": digest.lower() if isinstance(digest, str) else None,
    }


def _route(c: _Checker) -> dict[str, Any]:
    options = c._get("agentOptions", False) or {}
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in options.items()
    ):
        c.fail("agentOptions", "must be a mapping of names to scalar values")
        options = {}
    return {
        "id": c.ident("id"),
        "business_id": c.ident("businessId"),
        "agent": c.text("agent", required=False, default="greeting"),
        "agent_options": {k: str(v) for k, v in options.items()},
    }


def _number(c: _Checker) -> dict[str, Any]:
    provider = c.text("provider")
    if provider is not None and provider.upper() not in PROVIDERS:
        c.fail("provider", f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
        provider = None
    is_e164 = c.boolean("isE164Number", True)
    number = c.text("number")
    if number is not None and is_e164 and not E164_RE.match(number):
        c.fail("number", f"{number!r} is not E.164 (+ then 2-15 digits) but isE164Number is true")
    ips = c._get("allowedSourceIps", False)
    allowed: list[str] = []
    if ips is not None:
        if not isinstance(ips, list):
            c.fail("allowedSourceIps", "must be a list of IP addresses or CIDR blocks")
        else:
            for i, entry in enumerate(ips):
                try:
                    net = ipaddress.ip_network(str(entry), strict=True)
                except ValueError as exc:
                    c.fail(f"allowedSourceIps[{i}]", f"{entry!r} is not an IP or CIDR: {exc}")
                    continue
                allowed.append(str(net) if "/" in str(entry) else str(net.network_address))
    return {
        "id": c.ident("id"),
        "business_id": c.ident("businessId"),
        "provider": provider.upper() if provider else None,
        "number": number,
        "route_id": c.ident("routeId"),
        "region_id": c.ident("regionId"),
        "is_e164": is_e164,
        "allowed_source_ips": allowed,
        # resolved against the providers section in parse_config (may be left out when
        # the number's provider kind has exactly one account)
        "provider_account_id": c.ident("providerAccountId", required=False) or "",
    }


def _backend(c: _Checker) -> dict[str, Any]:
    sip = c.text("sipAddress")
    if sip is not None and (err := _host_port(sip)):
        c.fail("sipAddress", err)
    media = c.text("mediaUrl")
    if media is not None:
        parsed = urlparse(media)
        if parsed.scheme not in ("ws", "wss") or not parsed.netloc:
            c.fail("mediaUrl", f"{media!r} must be a ws:// or wss:// URL with a host")
    return {
        "id": c.ident("id"),
        "region_id": c.ident("regionId"),
        "sip_address": sip,
        "media_url": media,
        "max_concurrent_calls": c.positive_int("maxConcurrentCalls"),
        "enabled": c.boolean("enabled", True),
    }


def _bypass(c: _Checker) -> dict[str, Any]:
    business = c.ident("businessId")
    backend = c.ident("backendId")
    phone = c.ident("phoneId", required=False)
    rule_id = c.ident("id", required=False)
    if rule_id is None and business and backend:
        rule_id = f"{business}-{backend}" + (f"-{phone}" if phone else "")
    return {"id": rule_id, "business_id": business, "backend_id": backend, "phone_id": phone}


class SecretError(ValueError):
    """A secret reference this process cannot resolve; the message names the variable or
    file (never a value)."""


SECRET_NAMES = ("authToken", "apiKey", "privateKey", "signatureSecret", "answerToken")
#: provider kind -> (required secrets, optional secrets)
KIND_SECRETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "TWILIO": (("authToken",), ()),
    "TELNYX": (("apiKey",), ()),
    "VONAGE": (("signatureSecret",), ("privateKey", "answerToken")),
}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def secret_ref(c: _Checker, name: str, required: bool) -> str | None:
    """A secret field: ``{env: NAME}`` or ``{file: PATH}`` -> ``env:NAME`` / ``file:PATH``.
    A literal value is refused, naming the field and never echoing the value."""
    value = c._get(name, required)
    if value is None:
        return None
    if not isinstance(value, dict):
        c.fail(
            name,
            "is a secret: write a reference {env: VARIABLE} or {file: PATH}, not the value itself",
        )
        return None
    if len(value) != 1 or next(iter(value)) not in ("env", "file"):
        c.fail(name, "a secret reference has exactly one key, env or file")
        return None
    kind, target = next(iter(value.items()))
    if not isinstance(target, str) or not target.strip():
        c.fail(
            name,
            f"{{{kind}: ...}} needs a non-empty {'variable name' if kind == 'env' else 'path'}",
        )
        return None
    if kind == "env" and not _ENV_NAME_RE.match(target):
        c.fail(name, f"{target!r} is not an environment variable name")
        return None
    return f"{kind}:{target}"


def describe_ref(ref: str) -> str:
    """How a reference reads in messages: 'environment variable X' / 'file P'."""
    kind, _, target = ref.partition(":")
    return f"environment variable {target}" if kind == "env" else f"file {target}"


def resolve_secret(
    ref: str, env: Mapping[str, str] | None = None, read: Callable[[str], str] | None = None
) -> str:
    """The value behind a reference, from this process's environment (or a file it can
    read, relative to its working directory). Raises SecretError naming what is missing."""
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = (os.environ if env is None else env).get(target, "")
        if not value:
            raise SecretError(f"environment variable {target} is not set (or empty)")
        return value
    if kind == "file":
        try:
            value = (read or _read_text)(target)
        except OSError as exc:
            raise SecretError(f"file {target} cannot be read: {exc.strerror or exc}") from None
        if not value.strip():
            raise SecretError(f"file {target} is empty")
        return value.strip() if not value.lstrip().startswith("-----BEGIN") else value
    raise SecretError(f"{ref!r} is not a secret reference (env:NAME or file:PATH)")


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _url(c: _Checker, name: str) -> str | None:
    value = c.text(name, required=False)
    if value is not None:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            c.fail(name, f"{value!r} must be an http:// or https:// URL with a host")
            return None
    return value


def _provider(c: _Checker) -> dict[str, Any]:
    kind = c.text("kind")
    if kind is not None and kind.upper() not in PROVIDERS[1:]:
        c.fail("kind", f"unknown provider kind {kind!r}; expected Twilio, Telnyx or Vonage")
        kind = None
    kind = kind.upper() if kind else None
    body: dict[str, Any] = {
        "id": c.ident("id"),
        "kind": kind,
        "account_sid": None,
        "connection_id": None,
        "public_key": None,
        "application_id": None,
        "api_base_url": _url(c, "apiBaseUrl"),
        "secret_refs": {},
    }
    if kind is None:
        for name in SECRET_NAMES:  # still refuse literal secrets, and mark fields used
            secret_ref(c, name, False)
        for name in ("accountSid", "connectionId", "publicKey", "applicationId"):
            c._get(name, False)
        return body
    required, optional = KIND_SECRETS[kind]
    for name in SECRET_NAMES:
        if name in required or name in optional:
            ref = secret_ref(c, name, name in required)
            if ref is not None:
                body["secret_refs"][name] = ref
        elif name in c.item:
            secret_ref(c, name, False)  # a literal is still refused as a secret
            c.fail(name, f"is not used by {kind.title()} accounts")
    if kind == "TWILIO":
        sid = c.text("accountSid")
        if sid is not None and not re.match(r"^AC[A-Za-z0-9]{1,64}$", sid):
            c.fail("accountSid", f"{sid!r} is not a Twilio account SID (AC...)")
        body["account_sid"] = sid
    elif kind == "TELNYX":
        key = c.text("publicKey")
        if key is not None:
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                c.fail("publicKey", "must be the base64 Ed25519 public key (32 bytes)")
        body["public_key"] = key
        body["connection_id"] = c.text("connectionId", required=False)
    else:
        body["application_id"] = c.text("applicationId")
    return body


_BUILDERS: dict[str, Callable[[_Checker], dict[str, Any]]] = {
    "providers": _provider,
    "plans": _plan,
    "businesses": _business,
    "routes": _route,
    "numbers": _number,
    "backends": _backend,
    "bypassRules": _bypass,
    "apiKeys": _api_key,
    "ratePlans": _rate_plan,
    "webhookSubscriptions": _webhook_subscription,
}
#: sections whose records are keyed by more than their id
_KEYS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "ratePlans": lambda b: (
        f"{b['id']}@{b['version']}" if b["id"] is not None and b["version"] is not None else None
    ),
}


def _label(section: str, index: int, item: Any) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{section}[{index}]" + (f" (id={ident})" if ident is not None else "")


def parse_config(data: Any) -> Config:
    """Validate an already-parsed YAML document."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem("<file>", "must be a mapping with sections " + ", ".join(SECTIONS))]
        )
    for extra in sorted(set(data) - set(SECTIONS)):
        problems.append(Problem(str(extra), f"unknown section; expected {', '.join(SECTIONS)}"))
    built: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SECTIONS}
    for section in SECTIONS:
        items = data.get(section) or []
        if not isinstance(items, list):
            problems.append(Problem(section, "must be a list"))
            continue
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            where = _label(section, i, item)
            if not isinstance(item, dict):
                problems.append(Problem(where, "must be a mapping"))
                continue
            checker = _Checker(where, item, problems)
            body = _BUILDERS[section](checker)
            checker.finish()
            key = _KEYS[section](body) if section in _KEYS else body.get("id")
            if key is None:
                continue
            if key in seen:
                what = "version" if section in _KEYS else "id"
                problems.append(
                    Problem(
                        f"{where}.{what}", f"duplicate {what} {key!r} (also {section}[{seen[key]}])"
                    )
                )
                continue
            seen[key] = i
            built[section].append((where, body))

    ids = {s: {b["id"] for _, b in built[s]} for s in SECTIONS}
    bodies = {s: {b["id"]: b for _, b in built[s]} for s in SECTIONS}

    def ref(where: str, fieldname: str, value: Any, section: str, what: str) -> None:
        if value is not None and value not in ids[section]:
            problems.append(
                Problem(f"{where}.{fieldname}", f"{what} {value!r} is not defined in {section}")
            )

    for where, b in built["businesses"]:
        ref(where, "plan", b["plan_id"], "plans", "plan")
        for i, account in enumerate(b["outbound_providers"]):
            ref(where, f"outboundProviders[{i}]", account, "providers", "provider account")
    digests: dict[str, str] = {}
    for where, b in built["apiKeys"]:
        ref(where, "businessId", b["business_id"], "businesses", "business")
        if b["sha256"] is not None:
            if b["sha256"] in digests:
                problems.append(
                    Problem(
                        f"{where}.sha256", f"the same key is also api key {digests[b['sha256']]!r}"
                    )
                )
            digests[b["sha256"]] = b["id"]
    rate_plan_ids = {b["id"] for _, b in built["ratePlans"]}
    for where, b in built["plans"]:
        if b["rate_plan_id"] is not None and b["rate_plan_id"] not in rate_plan_ids:
            problems.append(
                Problem(
                    f"{where}.ratePlanId",
                    f"rate plan {b['rate_plan_id']!r} is not defined in ratePlans",
                )
            )
    effective: dict[tuple[str, int], int] = {}
    for where, b in built["ratePlans"]:
        if b["effective_from"] is None:
            continue
        other = effective.get((b["id"], b["effective_from"]))
        if other is not None:
            problems.append(
                Problem(
                    f"{where}.effectiveFrom",
                    f"version {other} of rate plan {b['id']!r} takes effect at the same "
                    "instant: each version needs its own effectiveFrom",
                )
            )
        else:
            effective[(b["id"], b["effective_from"])] = b["version"]
    for where, b in built["webhookSubscriptions"]:
        if b["business_id"] is not None:
            ref(where, "businessId", b["business_id"], "businesses", "business")
    for where, b in built["routes"]:
        ref(where, "businessId", b["business_id"], "businesses", "business")
    for where, b in built["numbers"]:
        ref(where, "businessId", b["business_id"], "businesses", "business")
        ref(where, "routeId", b["route_id"], "routes", "route")
        route = bodies["routes"].get(b["route_id"])
        if (
            route is not None
            and b["business_id"] is not None
            and route["business_id"] != b["business_id"]
        ):
            problems.append(
                Problem(
                    f"{where}.routeId",
                    f"route {b['route_id']!r} belongs to business {route['business_id']!r}, "
                    f"not {b['business_id']!r}",
                )
            )
    accounts_by_kind: dict[str, list[str]] = {}
    for _, b in built["providers"]:
        if b["kind"]:
            accounts_by_kind.setdefault(b["kind"], []).append(b["id"])
    for where, b in built["numbers"]:
        _number_account(where, b, bodies["providers"], accounts_by_kind, problems)
    numbers_by_value: dict[str, str] = {}
    for where, b in built["numbers"]:
        if b["number"] is None or b["provider"] is None:
            continue
        key = f"{b['provider']}:{b['number']}"
        if key in numbers_by_value:
            problems.append(
                Problem(
                    f"{where}.number",
                    f"{b['number']!r} ({b['provider']}) is already registered "
                    f"as number {numbers_by_value[key]!r}",
                )
            )
        else:
            numbers_by_value[key] = b["id"]
    for where, b in built["bypassRules"]:
        ref(where, "businessId", b["business_id"], "businesses", "business")
        ref(where, "backendId", b["backend_id"], "backends", "backend")
        ref(where, "phoneId", b["phone_id"], "numbers", "number")
        phone = bodies["numbers"].get(b["phone_id"]) if b["phone_id"] else None
        if phone is not None and phone["business_id"] != b["business_id"]:
            problems.append(
                Problem(
                    f"{where}.phoneId",
                    f"number {b['phone_id']!r} belongs to business {phone['business_id']!r}",
                )
            )
    if problems:
        raise ConfigError(problems)
    config = Config()
    for section in SECTIONS:
        for _, body in built[section]:
            key = _KEYS[section](body) if section in _KEYS else body["id"]
            assert key is not None  # records without a key were left out above
            config.records.append(ConfigRecord(section, key, AVRO_NAME[section], body))
    return config


def _number_account(
    where: str,
    number: dict[str, Any],
    accounts: dict[str, dict[str, Any]],
    by_kind: dict[str, list[str]],
    problems: list[Problem],
) -> None:
    """Check (or fill in) a number's providerAccountId against the providers section."""
    provider, account_id = number["provider"], number["provider_account_id"]
    if provider is None:
        return
    if provider == "SIP":
        if account_id:
            problems.append(
                Problem(f"{where}.providerAccountId", "SIP numbers take no provider account")
            )
        return
    kind_name = provider.title()
    if account_id:
        account = accounts.get(account_id)
        if account is None:
            problems.append(
                Problem(
                    f"{where}.providerAccountId",
                    f"account {account_id!r} is not defined in providers",
                )
            )
        elif account["kind"] != provider:
            problems.append(
                Problem(
                    f"{where}.providerAccountId",
                    f"account {account_id!r} is a {str(account['kind']).title()} account, "
                    f"the number is a {kind_name} number",
                )
            )
        return
    candidates = by_kind.get(provider, [])
    if len(candidates) == 1:
        number["provider_account_id"] = candidates[0]
    elif len(candidates) > 1:
        problems.append(
            Problem(
                f"{where}.providerAccountId",
                f"is required: {len(candidates)} {kind_name} accounts are configured "
                f"({', '.join(candidates)})",
            )
        )
    # no account of the kind: the number is kept (its calls cannot come in by webhook
    # until an account is configured)


def load_config(text: str) -> Config:
    """Parse YAML text and validate it; raises ConfigError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ConfigError(
            [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from exc
    return parse_config(data)
