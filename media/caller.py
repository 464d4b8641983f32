"""A caller for demos and tests: INVITE through the edge, follow the 302 to the media
node, talk RTP (PCMU) for a while, optionally press a DTMF key, hang up with BYE.

    result = place_call("127.0.0.1", 5060, "+15551234567", seconds=3)

Blocking and single-threaded but for one RTP thread; it is a client tool, not a server.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from edge.sip.message import NameAddr, Response, parse_message
from media.codecs import open_codec
from media.rtp import RtpPacket
from media.sdp import SessionDescription

RATE = 8000
FRAME = RATE // 50


@dataclass
class CallResult:
    redirect: Response | None = None
    answer: Response | None = None
    queue_id: str | None = None
    received_pcm: bytearray = field(default_factory=bytearray)
    sent_pcm: bytearray = field(default_factory=bytearray)
    packets_received: int = 0
    packets_sent: int = 0
    bye_status: int | None = None
    remote_bye: bool = False
    error: str | None = None


def tone(ms: int, freq: float, start: int = 0) -> bytes:
    n = RATE * ms // 1000
    t = (np.arange(n) + start) / RATE
    return (np.sin(2 * np.pi * freq * t) * 6000).astype("<i2").tobytes()


class _Sip:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()
        self.tag = uuid.uuid4().hex[:8]
        self.call_id = uuid.uuid4().hex + "@trunkline-caller"

    def request(
        self,
        method: str,
        target: str,
        addr: tuple[str, int],
        cseq: int,
        to: str,
        extra: str = "",
        body: bytes = b"",
    ) -> None:
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        data = (
            f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {self.host}:{self.port};"
            f"branch={branch};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:+15550009999@{self.host}>;tag={self.tag}\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:caller@{self.host}:{self.port}>\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._last = (data, addr)
        self.sock.sendto(data, addr)

    def final(self, method: str, timeout: float) -> Response | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            msg = parse_message(data)
            if isinstance(msg, Response) and msg.cseq[1] == method and msg.status >= 200:
                return msg
        return None


def place_call(
    host: str,
    port: int,
    number: str,
    seconds: float = 3.0,
    dtmf: str | None = None,
    hang_up: bool = True,
    drop_queue_id: bool = False,
) -> CallResult:
    """`drop_queue_id` follows the 302 without the Contact's URI headers, as some UAs do
    (the media node then matches the call by its Call-ID)."""
    result = CallResult()
    sip = _Sip()
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp_port = rtp.getsockname()[1]
    sdp = (
        f"v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
    ).encode()
    to = f"<sip:{number}@{host}>"
    try:
        sip.request(
            "INVITE",
            f"sip:{number}@{host}:{port}",
            (host, port),
            1,
            to,
            "Content-Type: application/sdp\r\n",
            sdp,
        )
        redirect = sip.final("INVITE", 10)
        result.redirect = redirect
        if redirect is None:
            result.error = "no answer from the edge"
            return result
        sip.request(
            "ACK", f"sip:{number}@{host}:{port}", (host, port), 1, f"{to};tag={redirect.to.tag}"
        )
        if redirect.status != 302:
            result.error = f"the edge answered {redirect.status} {redirect.reason}"
            return result
        contact = NameAddr.parse(redirect.headers.get("contact") or "").uri
        result.queue_id = contact.headers.get("X-CallQueue-Id")
        node = (contact.host, contact.port or 5060)
        target = f"sip:{contact.user}@{contact.host}:{node[1]}"
        extra = (
            "" if drop_queue_id else "".join(f"{k}: {v}\r\n" for k, v in contact.headers.items())
        )
        sip.request(
            "INVITE",
            target,
            node,
            2,
            f"<{target}>",
            extra + "Content-Type: application/sdp\r\n",
            sdp,
        )
        answer = sip.final("INVITE", 10)
        result.answer = answer
        if answer is None or answer.status != 200:
            result.error = f"the media node answered {answer.status if answer else 'nothing'}"
            return result
        remote_to = f"<{target}>;tag={answer.to.tag}"
        sip.request("ACK", target, node, 2, remote_to)
        media = SessionDescription.parse(answer.body).audio()
        assert media is not None
        remote = (SessionDescription.parse(answer.body).connection_for(media) or host, media.port)
        try:
            _talk(rtp, remote, seconds, dtmf, result, sip)
            if hang_up and not result.remote_bye:
                sip.request("BYE", target, node, 3, remote_to)
                bye = sip.final("BYE", 5)
                result.bye_status = bye.status if bye else None
        except OSError as exc:  # the node went away mid-call (ICMP port unreachable)
            result.error = f"the media node went away: {exc}"
        return result
    finally:
        sip.sock.close()
        rtp.close()


def _talk(
    rtp: socket.socket,
    remote: tuple[str, int],
    seconds: float,
    dtmf: str | None,
    result: CallResult,
    sip: _Sip,
) -> None:
    codec = open_codec("PCMU", 0)
    stop = threading.Event()

    def receive() -> None:
        rtp.settimeout(0.05)
        while not stop.is_set():
            try:
                data, _ = rtp.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                p = RtpPacket.parse(data)
            except ValueError:
                continue
            if p.payload_type == 0:
                result.packets_received += 1
                result.received_pcm += codec.decode(p.payload, p.timestamp, RATE)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    seq, ts, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
    frames = int(seconds * 50)
    start = time.monotonic()
    for i in range(frames):
        pcm = tone(20, 440.0, i * FRAME)
        for payload in codec.encode(pcm, RATE):
            rtp.sendto(
                RtpPacket(
                    payload_type=0, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload
                ).serialize(),
                remote,
            )
            seq = (seq + 1) % 65536
            result.packets_sent += 1
        result.sent_pcm += pcm
        ts = (ts + FRAME) % (1 << 32)
        if dtmf and i == frames - 10:
            event = "0123456789*#".index(dtmf)
            for n in range(3):  # RFC 4733: the same event, growing duration, end bit last
                body = bytes([event, 0x80 if n == 2 else 0x0A]) + (160 * (n + 1)).to_bytes(2, "big")
                rtp.sendto(
                    RtpPacket(
                        payload_type=101, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=body
                    ).serialize(),
                    remote,
                )
                seq = (seq + 1) % 65536
        time.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    time.sleep(0.3)
    stop.set()
    rx.join(1)
