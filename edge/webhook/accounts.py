"""Provider accounts as the edge uses them: the config record (identifiers, references)
plus the secrets resolved from this process's environment. Pure: the environment and the
file reader are passed in.

Each request is tied to one account before its signature is checked: Twilio by the
`AccountSid` it carries, Telnyx by `connection_id`, Vonage by the JWT's
`application_id` (events) or the answer URL's `account` parameter; a `?account=ID` on
any webhook URL names it explicitly, and a provider with a single account needs neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.webhook.base import Provider, WebhookError
from trunkline.core.config import SecretError, resolve_secret

DEFAULT_API = {
    Provider.TWILIO: "https://api.twilio.com",
    Provider.TELNYX: "https://api.telnyx.com",
    Provider.VONAGE: "https://api.nexmo.com",
}


@dataclass(frozen=True)
class Account:
    id: str
    provider: Provider
    account_sid: str = ""
    connection_id: str = ""
    public_key: str = ""
    application_id: str = ""
    api_base_url: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict)  # name -> value (never logged)
    missing: str = ""  # why a secret could not be resolved (names the variable or file)

    def __repr__(self) -> str:  # never print secrets
        return f"Account({self.id!r}, {self.provider.value})"

    def secret(self, name: str) -> str:
        if self.missing:
            raise WebhookError(
                503, f"account {self.id} is not usable on this edge: {self.missing}", "no_secret"
            )
        value = self.secrets.get(name)
        if not value:
            raise WebhookError(403, f"account {self.id} has no {name} configured", "no_secret")
        return value

    @property
    def api(self) -> str:
        return (self.api_base_url or DEFAULT_API[self.provider]).rstrip("/")


def account_from_record(
    record: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    read: Callable[[str], str] | None = None,
) -> Account:
    """Build an Account, resolving every secret reference; an unresolvable one leaves the
    account marked `missing` (the message names the variable or file, never a value)."""
    secrets: dict[str, str] = {}
    problems: list[str] = []
    for name, ref in sorted((record.get("secret_refs") or {}).items()):
        try:
            secrets[name] = resolve_secret(ref, env, read)
        except SecretError as exc:
            problems.append(f"{name}: {exc}")
    return Account(
        id=str(record["id"]),
        provider=Provider(record["kind"]),
        account_sid=record.get("account_sid") or "",
        connection_id=record.get("connection_id") or "",
        public_key=record.get("public_key") or "",
        application_id=record.get("application_id") or "",
        api_base_url=record.get("api_base_url") or "",
        secrets=secrets,
        missing="; ".join(problems),
    )


class Accounts:
    """The accounts this edge knows, by id, and the lookups requests need."""

    def __init__(self) -> None:
        self.by_id: dict[str, Account] = {}

    def put(self, account: Account) -> None:
        self.by_id[account.id] = account

    def remove(self, account_id: str) -> None:
        self.by_id.pop(account_id, None)

    def unusable(self) -> list[Account]:
        return [a for a in self.by_id.values() if a.missing]

    def of(self, provider: Provider) -> list[Account]:
        return sorted(
            (a for a in self.by_id.values() if a.provider is provider), key=lambda a: a.id
        )

    def find(self, provider: Provider, explicit: str = "", **match: str) -> Account:
        """The account a request belongs to: `explicit` (?account=ID), else the one whose
        identifier equals `match` (e.g. account_sid="AC..."), else the only one of the kind."""
        if explicit:
            account = self.by_id.get(explicit)
            if account is None or account.provider is not provider:
                raise WebhookError(
                    403, f"unknown {provider.title} account {explicit!r}", "unknown_account"
                )
            return account
        candidates = self.of(provider)
        wanted = {k: v for k, v in match.items() if v}
        if wanted:
            hits = [a for a in candidates if all(getattr(a, k) == v for k, v in wanted.items())]
            if hits:
                return hits[0]
            if len(candidates) == 1 and not any(getattr(candidates[0], k) for k in wanted):
                return candidates[0]  # the only account, configured without the identifier
            shown = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
            raise WebhookError(
                403, f"unknown {provider.title} account ({shown})", "unknown_account"
            )
        if len(candidates) == 1:
            return candidates[0]
        raise WebhookError(
            403,
            f"no {provider.title} account identified"
            + (f" (add ?account=ID: {len(candidates)} are configured)" if candidates else ""),
            "unknown_account",
        )
