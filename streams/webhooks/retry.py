"""When to try a failed delivery again (pure: `now` and a seed are passed in).

The schedule is a list of delays, one per retry (`TRUNKLINE_WEBHOOK_RETRY_SCHEDULE`,
default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: a delivery is attempted once plus once
per entry). Each delay gets jitter of up to ±20 %, drawn from a generator seeded by the
webhook id and the attempt, so retries of many deliveries spread out, and the same
delivery's schedule is the same in every run. A ``Retry-After`` answer (seconds, or an HTTP
date) is respected: the next attempt is no sooner than it asks, up to `MAX_RETRY_AFTER_MS`.

Outcomes: 2xx delivered; 410 Gone disables the subscription; anything else (another
status, a timeout, a connection error, a refused target) is retried while the schedule
has entries, then the delivery is dead (a dead-letter record `trunkline webhooks
redeliver` can send again).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

JITTER = 0.2
MAX_RETRY_AFTER_MS = 24 * 3600 * 1000


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    GONE = "gone"
    FAILED = "failed"


def verdict(status: int | None) -> Verdict:
    """2xx: delivered; 410: gone; anything else, or no answer (None): failed."""
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    return Verdict.FAILED


def jittered(delay_ms: int, webhook_id: str, attempt: int) -> int:
    """`delay_ms` scaled by a factor in [1 - JITTER, 1 + JITTER], drawn from a generator
    seeded by the delivery and attempt (the same inputs, the same delay)."""
    factor = random.Random(f"{webhook_id}/{attempt}").uniform(1 - JITTER, 1 + JITTER)
    return max(1, round(delay_ms * factor))


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A Retry-After header (delta seconds or an HTTP date) as a delay in ms, or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(int(text) * 1000, MAX_RETRY_AFTER_MS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, min(int(when.timestamp() * 1000) - now_ms, MAX_RETRY_AFTER_MS))


def next_attempt_at(
    schedule: Sequence[int],
    retries_used: int,
    webhook_id: str,
    attempt: int,
    now_ms: int,
    retry_after: int | None = None,
) -> int | None:
    """When to try again after the failed attempt number `attempt`, having used
    `retries_used` entries of the schedule; None when the schedule is used up."""
    if retries_used >= len(schedule):
        return None
    delay = jittered(schedule[retries_used], webhook_id, attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now_ms + delay
