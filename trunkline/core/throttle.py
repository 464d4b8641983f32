"""Rate limits with `now` passed in: a token bucket (flood control) and a log throttle
(a summary line at most once per interval instead of a line per event). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` tokens a second, up to `burst` saved; `take` spends one if there is one."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:  # first use: a full bucket
            self.tokens, self.stamp = self.burst, now
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class LogThrottle:
    """Counts events and says when a summary is due: at most once per `interval` s.

    `note(now, detail, count=1)` notes `count` events (a batch at once) and returns None
    while the interval runs, else the summary of what was noted since the last one:
    (count, the last detail)."""

    interval: float = 10.0
    count: int = 0
    last_detail: str = ""
    _next: float = field(default=float("-inf"))

    def note(self, now: float, detail: str, count: int = 1) -> tuple[int, str] | None:
        self.count += count
        self.last_detail = detail
        if now < self._next:
            return None
        summary = (self.count, self.last_detail)
        self.count, self._next = 0, now + self.interval
        return summary
