"""Flood control at the SIP edge, in the spirit of Kamailio's `pike` module. Pure.

Each source IP has a token bucket for the requests it sends: `rate` a second with a
`burst` saved. A source inside a configured number's `allowedSourceIps` (a carrier's
trunk) has its own, higher limit. Over the limit a request is dropped silently (an answer
would cost as much as the request and tell the sender to keep going) and counted.

As with pike, a source that empties its bucket is blocked, not merely rate-limited: all
its requests are dropped for a `window` (2 s, pike's sampling unit), and at the end of
each window it stays blocked if it sent more than its rate allows in that window
(`rate * window`), else it is let go and its bucket (refilled meanwhile) takes over
again. A flooder so gets its burst and then nothing while it floods: none of its
requests reach the decision path, which would otherwise decide `rate` of its calls a
second at the expense of everyone else's. A source that stays under its rate is never
blocked.

Table (per source, `now` given):

| state   | request                                   | next                                  |
|---------|-------------------------------------------|---------------------------------------|
| open    | a token in the bucket: admitted            | open                                  |
| open    | bucket empty: dropped                      | blocked until now + window, count 1   |
| blocked | before `until`: dropped, counted           | blocked                               |
| blocked | at/after `until`, count > rate * window    | blocked until now + window, count 1   |
| blocked | at/after `until`, count <= rate * window   | open (this request judged by bucket)  |

Our own UDP retransmissions toward a source also spend from a budget: an un-ACKed INVITE
draws the final response up to ten more times (RFC 3261 Timer G), so a sender that never
ACKs would turn the edge into an amplifier. A retransmission toward a source whose
response budget is spent is skipped (the transaction still ends on Timer H).

Sources are remembered while active: at most `max_sources`, the least recently seen
forgotten first (a forgotten source starts again with a full bucket).

The check comes first: `admit` takes the datagrams one read of the UDP socket returned
and keeps those within their source's limit, before anything parses them. A blocked
source costs one dict lookup, a comparison and an increment a datagram.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trunkline.core.throttle import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Limits:
    rate: float = 100.0  # requests a second per source
    burst: float = 200.0
    trusted_rate: float = 5000.0  # sources in a number's allowedSourceIps
    trusted_burst: float = 10000.0
    #: retransmissions of our responses a second per untrusted source (trusted sources
    #: may draw as many as they may send)
    retransmit_rate: float = 20.0
    max_sources: int = 100_000
    #: seconds a source over its limit stays blocked before it is judged again (pike's
    #: sampling unit)
    window: float = 2.0


@dataclass
class _Source:
    requests: TokenBucket
    retransmits: TokenBucket


@dataclass
class Admitted:
    """What `FloodGuard.admit` kept of a batch of datagrams."""

    #: (data, (host, port)) within their source's limit, in the order they came
    requests: list[tuple[bytes, tuple[str, int]]]
    received: int  # datagrams other than keep-alives
    dropped: int  # over their source's limit
    last_dropped: str = ""  # the source of the last one dropped


@dataclass
class FloodGuard:
    limits: Limits = field(default_factory=Limits)
    trusted: tuple[Network, ...] = ()
    dropped: int = 0
    skipped_retransmits: int = 0
    _sources: OrderedDict[str, _Source] = field(default_factory=OrderedDict)
    #: blocked sources -> [until, requests seen since the window began]
    _blocked: dict[str, list[float]] = field(default_factory=dict)

    def trust(self, entries: Iterable[str]) -> None:
        """Replace the trusted networks (from every number's allowedSourceIps)."""
        nets = []
        for entry in entries:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue
        self.trusted = tuple(nets)
        self._sources.clear()  # limits may have changed for known sources
        self._blocked.clear()

    def _source(self, ip: str) -> _Source:
        found = self._sources.get(ip)
        if found is not None:
            self._sources.move_to_end(ip)
            return found
        lim = self.limits
        if self._is_trusted(ip):
            source = _Source(
                TokenBucket(lim.trusted_rate, lim.trusted_burst),
                TokenBucket(lim.trusted_rate, lim.trusted_burst),
            )
        else:
            source = _Source(
                TokenBucket(lim.rate, lim.burst),
                TokenBucket(lim.retransmit_rate, lim.retransmit_rate),
            )
        self._sources[ip] = source
        if len(self._sources) > lim.max_sources:
            forgotten, _ = self._sources.popitem(last=False)
            self._blocked.pop(forgotten, None)
        return source

    def _is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def allow_request(self, ip: str, now: float) -> bool:
        blocked = self._blocked.get(ip)
        if blocked is not None:
            if now < blocked[0]:
                blocked[1] += 1
                self.dropped += 1
                return False
            bucket = self._source(ip).requests
            if blocked[1] > bucket.rate * self.limits.window:
                blocked[0], blocked[1] = now + self.limits.window, 1
                self.dropped += 1
                return False
            del self._blocked[ip]
        else:
            bucket = self._source(ip).requests
        if bucket.take(now):
            return True
        self._blocked[ip] = [now + self.limits.window, 1]
        self.dropped += 1
        return False

    def is_blocked(self, ip: str, now: float) -> bool:
        blocked = self._blocked.get(ip)
        return blocked is not None and now < blocked[0]

    def admit(self, batch: Sequence[tuple[bytes, Any]], now: float) -> Admitted:
        """Keep the datagrams of `batch` ((data, address as the socket gives it)) whose
        source is within its limit; keep-alives are neither kept nor charged."""
        allow = self.allow_request
        kept: list[tuple[bytes, tuple[str, int]]] = []
        received = dropped = 0
        last = ""
        for data, addr in batch:
            if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
                continue  # a CRLF keep-alive (RFC 5626 §4.4.1) or empty: not a request
            received += 1
            if allow(addr[0], now):
                kept.append((data, (addr[0], addr[1])))
            else:
                dropped += 1
                last = addr[0]
        return Admitted(kept, received, dropped, last)

    def allow_retransmit(self, ip: str, now: float) -> bool:
        if self._source(ip).retransmits.take(now):
            return True
        self.skipped_retransmits += 1
        return False
