"""RTP for the media node: packets (aiortc's parser and serializer) and a jitter buffer.

The jitter buffer is pure: packets go in with their arrival time, 20 ms frames come out
in sequence order with gaps marked as lost. Sequence numbers are extended past the 16-bit
wrap (RFC 3550 A.1) and interarrival jitter is computed as RFC 3550 §6.4.1 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc.rtp import RtpPacket

__all__ = ["JitterBuffer", "JitterStats", "RtpPacket", "extend_sequence"]

SEQ_MOD = 1 << 16


def extend_sequence(seq: int, highest: int | None) -> int:
    """The 32-bit extended sequence number of `seq` nearest to `highest` (RFC 3550 A.1)."""
    if highest is None:
        return seq
    base = highest - (highest % SEQ_MOD)
    candidates = (base - SEQ_MOD + seq, base + seq, base + SEQ_MOD + seq)
    return min(candidates, key=lambda c: abs(c - highest))


@dataclass
class JitterStats:
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    jitter: float = 0.0  # RTP timestamp units

    def jitter_ms(self, clock_rate: int) -> float:
        return self.jitter * 1000 / clock_rate


@dataclass
class JitterBuffer:
    clock_rate: int
    depth: int = 3  # frames held back to reorder (60 ms at 20 ms)
    stats: JitterStats = field(default_factory=JitterStats)
    _packets: dict[int, RtpPacket] = field(default_factory=dict)
    _highest: int | None = None
    _next: int | None = None  # next extended sequence number to hand out
    _last_transit: float | None = None

    def push(self, packet: RtpPacket, arrival_s: float) -> None:
        ext = extend_sequence(packet.sequence_number, self._highest)
        if self._next is not None and ext < self._next:
            self.stats.late += 1
            return
        if ext in self._packets:
            self.stats.duplicates += 1
            return
        self.stats.received += 1
        self._packets[ext] = packet
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if self._next is None:
            self._next = ext
        transit = arrival_s * self.clock_rate - packet.timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            self.stats.jitter += (d - self.stats.jitter) / 16
        self._last_transit = transit

    def pop(self, flush: bool = False) -> list[tuple[int, RtpPacket | None]]:
        """Frames ready in order: (extended sequence, packet or None when it was lost)."""
        out: list[tuple[int, RtpPacket | None]] = []
        if self._next is None or self._highest is None:
            return out
        while self._next <= self._highest:
            packet = self._packets.pop(self._next, None)
            if packet is None and not flush and self._highest - self._next < self.depth:
                break  # the gap may still fill
            if packet is None:
                self.stats.lost += 1
            out.append((self._next, packet))
            self._next += 1
        return out
