"""SIP parse + serialize rate for an INVITE with SDP, one core (messages/s).

Measures the parser the edge runs (the mypyc build when scripts/setup made one from the
current source, see trunkline/core/native.py) and the pure-Python module beside it.

.venv/bin/python -m bench.sip_parse [--n 50000]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench._util import best_rate, pin_one_core
from edge.sip import message
from trunkline.core import native

VECTOR = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "sip" / "valid"
SDP = (
    b"v=0\r\no=- 53655765 2353687637 IN IP4 203.0.113.10\r\ns=-\r\n"
    b"c=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
)
INVITE = (
    b"INVITE sip:+15551234567@proxy.example.com:5060;user=phone?X-Business-Id=123&X-Phone-Id=abc"
    b" SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\nTo: <sip:+15551234567@proxy.example.com>\r\n"
    b'From: "Caller" <sip:+15550001111@203.0.113.10>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+15550001111@203.0.113.10:5060>\r\nUser-Agent: bench\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def measure(label: str, module: Any, n: int) -> None:
    parse_message = module.parse_message
    msg = parse_message(INVITE)

    def parse(n: int) -> None:
        for _ in range(n):
            parse_message(INVITE)

    def serialize(n: int) -> None:
        for _ in range(n):
            bytes(msg)

    def both(n: int) -> None:
        for _ in range(n):
            bytes(parse_message(INVITE))

    print(label)
    print(f"  parse                {best_rate(n, parse):>10,.0f} messages/s")
    print(f"  serialize            {best_rate(n, serialize):>10,.0f} messages/s")
    print(f"  parse + serialize    {best_rate(n, both):>10,.0f} messages/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    args = ap.parse_args()
    pin_one_core()
    print(f"INVITE with SDP, {len(INVITE)} bytes, {args.n} messages, 1 core")
    source = native.ROOT / native.MODULES["edge.sip.message"]
    state = native.state(source)
    if state == "compiled":
        measure("edge.sip.message, mypyc build (what the edge runs)", message, args.n)
    pure = native.load_pure("bench_sip_message_pure", source)
    label = "pure Python" + ("" if state == "compiled" else f" (what the edge runs: {state})")
    measure(label, pure, args.n)


if __name__ == "__main__":
    main()
