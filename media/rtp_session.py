"""One call's RTP on the media node: an asyncio datagram endpoint that receives (jitter
buffer -> decode -> agent, RFC 4733 DTMF -> agent) and sends the agent's audio when the
node's media clock ticks (every 20 ms, one clock for every call). The packet format is
media/rtp.py, the codecs media/codecs.py; this module owns the socket and the counters.

`clock` is the node's monotonic clock: it stamps arrivals for the jitter buffer and
`last_rx`, which the call machine's media timeout reads."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from media.agents import Agent
from media.agents.base import FRAME_BYTES, SAMPLE_RATE, SILENCE
from media.codecs import open_codec
from media.rtp import JitterBuffer, RtpPacket
from media.sdp import Answer

_RTP_HEADER = struct.Struct("!BBHII")
DTMF_EVENTS = "0123456789*#ABCD"


class RtpSession(asyncio.DatagramProtocol):
    """receive -> jitter buffer -> decode -> agent; agent -> encode -> send on `tick()`."""

    def __init__(
        self, answer: Answer, agent: Agent, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.answer = answer
        self.agent = agent
        self.clock = clock
        self.codec = open_codec(answer.codec.name, answer.codec.payload_type)
        self.jitter = JitterBuffer(answer.codec.clock_rate)
        self.transport: asyncio.DatagramTransport | None = None
        self.remote = answer.remote
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.sent = 0
        self.last_rx = clock()
        self._last_dtmf_ts: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def update(self, answer: Answer) -> None:
        """A re-INVITE's new answer (hold, resume, a new remote address)."""
        self.answer = answer
        self.remote = answer.remote

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return  # not RTP (or RTCP): ignore
        now = self.clock()
        self.last_rx = now
        dtmf = self.answer.dtmf
        if dtmf is not None and packet.payload_type == dtmf.payload_type:
            self._dtmf(packet)
            return
        if packet.payload_type != self.answer.codec.payload_type:
            return
        self.jitter.push(packet, now)
        for _ext, p in self.jitter.pop():
            if p is None:
                self.agent.on_audio(SILENCE)
                continue
            pcm = self.codec.decode(p.payload, p.timestamp, SAMPLE_RATE)
            for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
                self.agent.on_audio(pcm[i : i + FRAME_BYTES])

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable and the like: the caller's RTP port went away. Nothing to
        do here; the call machine's media timeout ends the call if nothing arrives."""

    def _dtmf(self, packet: RtpPacket) -> None:
        """RFC 4733: one event per timestamp; act on the first packet (end bit and marker
        are not relied on, carriers drop them)."""
        if len(packet.payload) < 4 or packet.timestamp == self._last_dtmf_ts:
            return
        self._last_dtmf_ts = packet.timestamp
        event = packet.payload[0]
        if event < len(DTMF_EVENTS):
            self.agent.on_dtmf(DTMF_EVENTS[event])

    def tick(self) -> None:
        """Send the next 20 ms (called by the node's media clock)."""
        if self.transport is None or self.answer.on_hold:
            return
        frame = self.agent.next_frame()
        for payload in self.codec.encode(frame, SAMPLE_RATE):
            # the fixed 12-byte header (RFC 3550 §5.1, V=2, no CSRC) packed directly: this
            # runs 50 times a second per call, where building an RtpPacket costs more
            header = _RTP_HEADER.pack(
                0x80, self.answer.codec.payload_type & 0x7F, self.seq, self.ts, self.ssrc
            )
            self.transport.sendto(header + payload, self.remote)
            self.seq = (self.seq + 1) % 65536
            self.sent += 1
        self.ts = (self.ts + self.codec.timestamp_step) % (1 << 32)

    def stats(self) -> dict[str, Any]:
        s = self.jitter.stats
        return {
            "packets_sent": self.sent,
            "packets_received": s.received,
            "packets_lost": s.lost,
            "jitter_ms": round(s.jitter_ms(self.jitter.clock_rate), 3),
        }

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
