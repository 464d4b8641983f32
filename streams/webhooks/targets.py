"""Where a delivery may go (pure): the URL's scheme, and each address its host resolves to.

The service resolves the host itself (an aiohttp resolver that keeps only the allowed
addresses, `streams/webhooks/service.py`) and connects to an address this module let
through, so a name that resolves to a private address, or changes between a check and
the connection (DNS rebinding), never reaches an internal service. The rule for addresses
is `trunkline.core.targets.refusal`.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlparse

from trunkline.core.targets import refusal


class TargetRefused(ValueError):
    """A URL or every address of its host is not a permitted webhook target."""


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; TargetRefused otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"{url!r}: only http:// and https:// URLs are accepted")
    if not parsed.hostname:
        raise TargetRefused(f"{url!r} has no host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused(f"{url!r} has an invalid port") from None
    return parsed.hostname, port


def allowed_addresses(host: str, addresses: Iterable[str], allow_private: bool) -> list[str]:
    """The resolved `addresses` a delivery may connect to; TargetRefused naming why when
    none is left."""
    kept, reasons = [], []
    for address in addresses:
        why = refusal(address, allow_private)
        if why is None:
            kept.append(address)
        else:
            reasons.append(why)
    if not kept:
        detail = "; ".join(dict.fromkeys(reasons)) or "it does not resolve"
        raise TargetRefused(f"{host}: {detail}")
    return kept
