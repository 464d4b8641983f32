"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure.

A subscription's secret is ``whsec_`` + base64 of the key. Each request carries
``webhook-id`` (one per event and subscription, the same on every retry),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature`` =
``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). Tests verify what we send
with the `standardwebhooks` package, not with this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


class SecretFormatError(ValueError):
    """A signing secret that is not whsec_ + base64 (the message never shows the value)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key behind a ``whsec_...`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretFormatError("a webhook secret starts with whsec_ (Standard Webhooks)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SecretFormatError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise SecretFormatError("a webhook secret's key must be at least 16 bytes")
    return key


def sign(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    message = b"%s.%d.%s" % (webhook_id.encode(), timestamp_s, body)
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The request headers of one attempt."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign(key, webhook_id, timestamp_s, body),
    }
