"""Flood control at the SIP edge, in the spirit of Kamailio's `pike` module. Pure.

Each source IP has a token bucket for the requests it sends: `rate` a second with a
`burst` saved. A source inside a configured number's `allowedSourceIps` (a carrier's
trunk) has its own, higher limit. Over the limit a request is dropped silently (an answer
would cost as much as the request and tell the sender to keep going) and counted.

Our own UDP retransmissions toward a source also spend from a budget: an un-ACKed INVITE
draws the final response up to ten more times (RFC 3261 Timer G), so a sender that never
ACKs would turn the edge into an amplifier. A retransmission toward a source whose
response budget is spent is skipped (the transaction still ends on Timer H).

Sources are remembered while active: at most `max_sources`, the least recently seen
forgotten first (a forgotten source starts again with a full bucket).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

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


@dataclass
class _Source:
    requests: TokenBucket
    retransmits: TokenBucket


@dataclass
class FloodGuard:
    limits: Limits = field(default_factory=Limits)
    trusted: tuple[Network, ...] = ()
    dropped: int = 0
    skipped_retransmits: int = 0
    _sources: OrderedDict[str, _Source] = field(default_factory=OrderedDict)

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
            self._sources.popitem(last=False)
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
        if self._source(ip).requests.take(now):
            return True
        self.dropped += 1
        return False

    def allow_retransmit(self, ip: str, now: float) -> bool:
        if self._source(ip).retransmits.take(now):
            return True
        self.skipped_retransmits += 1
        return False
