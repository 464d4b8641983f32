"""Concurrent G.711 calls on one media node with the greeting/echo agent.

The benchmark publishes the node's assignments itself (no edge or worker: the node is
what is measured), opens N calls with INVITE/200/ACK, sends PCMU every 20 ms on each
and records when each of the node's packets arrives. For each N it prints: calls up,
the node's CPU (share of one core) and CPU per call, packets the node lost (from its
CallEnded media stats), packets we missed from it, and the p99 of the node's send jitter
(|inter-arrival - 20 ms| of its packets per call, from kernel receive timestamps).
Floor: 200 calls per core, no loss, send jitter p99 <= 5 ms.

    .venv/bin/python -m bench.media [--calls 50,100,200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench._util import start_broker, stop_broker
from bench.proxy import cpu_seconds
from edge.sip.message import Response, parse_message
from media.rtp import RtpPacket
from media.sdp import SessionDescription
from schemas import SingleObjectCodec
from tests.harness import ROOT, child_env, free_port
from tests.samples import sample
from trunkline.core.admin import apply_all
from trunkline.core.kafka import Outgoing, make_producer, publish_all
from trunkline.core.settings import Settings
from trunkline.core.topics import ASSIGNMENTS, CALL_EVENTS

CODEC = SingleObjectCodec()
PAYLOAD = b"\xff" * 160  # PCMU silence: the generator must stay cheap


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class Leg:
    """One call's RTP socket on the generator side. Arrival times are the kernel's
    (SO_TIMESTAMPNS, stamped when the node's sendto delivers the datagram on loopback),
    read after the measured window: the generator's own scheduling does not enter the
    jitter figure, and it does no receive work while the node is measured."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self.seqs: list[int] = []

    def drain(self, keep: bool) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, 64)
            except BlockingIOError:
                return
            if not keep or len(data) < 12:
                continue
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    self.arrivals.append(sec + nsec / 1e9)
                    self.seqs.append(int.from_bytes(data[2:4], "big"))


async def run_level(s: Settings, node_port: int, node_pid: int, n: int, seconds: float) -> str:
    loop = asyncio.get_running_loop()
    qids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    routed = []
    for q in qids:
        r = sample("CallRouted", call_id=q)
        r.update(
            backend_id="backend-1",
            region_id="us-east-1",
            business_id="b-bench",
            redirect_deadline=int(time.time() * 1000) + 600_000,
        )
        routed.append(
            Outgoing(ASSIGNMENTS.name(s.topic_prefix), b"backend-1", CODEC.encode("CallRouted", r))
        )
    publish_all(make_producer(s.kafka_bootstrap), routed)
    await asyncio.sleep(0.5)
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    sip.setblocking(False)
    host, sport = sip.getsockname()
    legs = {q: Leg() for q in qids}
    answers: dict[str, Response] = {}

    def invite(q: str, call_id: str) -> bytes:
        port = legs[q].port
        sdp = (
            f"v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ).encode()
        return (
            f"INVITE sip:+15550000002@127.0.0.1:{node_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:b@{host}>;tag=b\r\n"
            f"To: <sip:+15550000002@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"X-CallQueue-Id: {q}\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n"
        ).encode() + sdp

    call_ids = {q: f"{q}@bench" for q in qids}
    by_call = {v: k for k, v in call_ids.items()}
    for i, q in enumerate(qids):
        sip.sendto(invite(q, call_ids[q]), ("127.0.0.1", node_port))
        if i % 20 == 19:
            await asyncio.sleep(0.02)
    deadline = time.monotonic() + 20
    while len(answers) < n and time.monotonic() < deadline:
        try:
            data = await loop.sock_recv(sip, 65535)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        msg = parse_message(data)
        if isinstance(msg, Response) and msg.status == 200 and msg.cseq[1] == "INVITE":
            q = by_call[msg.call_id]
            if q not in answers:
                answers[q] = msg
                sip.sendto(
                    (
                        f"ACK sip:+15550000002@127.0.0.1:{node_port} SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK{uuid.uuid4().hex[:12]}"
                        f"\r\nFrom: <sip:b@{host}>;tag=b\r\nTo: {msg.headers.get('to')}\r\n"
                        f"Call-ID: {msg.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                    ).encode(),
                    ("127.0.0.1", node_port),
                )
    remotes = {}
    for q, a in answers.items():
        sdp = SessionDescription.parse(a.body)
        audio = sdp.audio()
        assert audio is not None
        remotes[q] = (sdp.connection_for(audio) or "127.0.0.1", audio.port)
    up = len(remotes)
    # media: every 20 ms one packet per call; measure the node's CPU meanwhile
    seq = defaultdict(int)
    await asyncio.sleep(1.5)  # past the greeting's start
    for leg in legs.values():
        leg.drain(keep=False)
    cpu0, t0 = cpu_seconds(node_pid), time.monotonic()
    ticks = int(seconds * 50)
    for i in range(ticks):
        for q, remote in remotes.items():
            p = RtpPacket(
                payload_type=0,
                sequence_number=seq[q] % 65536,
                timestamp=seq[q] * 160,
                ssrc=1,
                payload=PAYLOAD,
            )
            legs[q].sock.sendto(p.serialize(), remote)
            seq[q] += 1
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
    cpu = (cpu_seconds(node_pid) - cpu0) / (time.monotonic() - t0)
    jitter, missed, expected = [], 0, 0
    for q in remotes:
        leg = legs[q]
        leg.drain(keep=True)
        arr = leg.arrivals
        jitter += [abs((b - a) - 0.02) * 1000 for a, b in itertools.pairwise(arr)]
        if leg.seqs:
            span = (leg.seqs[-1] - leg.seqs[0]) % 65536 + 1
            expected += span
            missed += span - len(set(leg.seqs))
    jitter.sort()
    p99 = jitter[int(0.99 * (len(jitter) - 1))] if jitter else float("nan")
    # hang up (retransmitting unanswered BYEs as a UAC does, RFC 3261 Timer E) and collect
    # the node's own loss figures from CallEnded
    byes = {
        a.call_id: (
            f"BYE sip:+15550000002@127.0.0.1:{node_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"From: <sip:b@{host}>;tag=b\r\nTo: {a.headers.get('to')}\r\n"
            f"Call-ID: {a.call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for a in answers.values()
    }
    unanswered, sends, interval = set(byes), 0, 0.5
    while unanswered and sends < 7:
        for call_id in unanswered:
            sip.sendto(byes[call_id], ("127.0.0.1", node_port))
        sends += 1
        until = time.monotonic() + interval
        while unanswered and time.monotonic() < until:
            try:
                data = await asyncio.wait_for(
                    loop.sock_recv(sip, 65535), max(0.001, until - time.monotonic())
                )
            except (BlockingIOError, TimeoutError):
                continue
            msg = parse_message(data)
            if isinstance(msg, Response) and msg.cseq[1] == "BYE" and msg.status >= 200:
                unanswered.discard(msg.call_id)
        interval = min(interval * 2, 4.0)
    lost = node_lost(s, set(remotes), timeout=15)
    for leg in legs.values():
        leg.sock.close()
    sip.close()
    return (
        f"calls {n:>4} up {up:>4}  node CPU {cpu * 100:5.1f}% of a core, "
        f"{cpu * 100 / max(up, 1):.3f}% per call  lost at node {lost:>5}  "
        f"missed from node {missed}/{expected}  send jitter p99 {p99:6.2f} ms  "
        f"BYEs answered {len(byes) - len(unanswered)}/{len(byes)} "
        f"({sends} round{'s' if sends > 1 else ''})"
    )


def node_lost(s: Settings, qids: set[str], timeout: float) -> int | str:
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"b{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    topic = CALL_EVENTS.name(s.topic_prefix)
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    lost, seen = 0, set()
    deadline = time.monotonic() + timeout
    while seen != qids and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        name, r = CODEC.decode(m.value())
        if name == "CallEnded" and r["envelope"]["call_id"] in qids:
            seen.add(r["envelope"]["call_id"])
            lost += (r.get("media") or {}).get("packets_lost", 0)
    c.close()
    return lost if seen == qids else f"{lost} ({len(seen)}/{len(qids)} ended)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", default="50,100,200")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", action="store_true", help="py-spy the node at the last level")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trunkline-media-bench-"))
    bootstrap, paths = start_broker(root)
    node = None
    try:
        s = Settings.from_env(
            {
                "TRUNKLINE_STATE_DIR": str(root / "state"),
                "TRUNKLINE_KAFKA_BOOTSTRAP": bootstrap,
                "TRUNKLINE_TOPIC_PREFIX": "mb.",
            }
        )
        apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
        node_port = free_port()
        (root / "state").mkdir(parents=True, exist_ok=True)
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trunkline.cli",
                "media",
                "--server-id",
                "backend-1",
                "--region",
                "us-east-1",
                "--listen",
                f"127.0.0.1:{node_port}",
                "--capacity",
                "2000",
                "--media-timeout",
                "60",
                "--loglevel",
                "warning",
            ],
            env=child_env(s),
            cwd=ROOT,
            stdout=open(root / "node.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        time.sleep(3)
        print(
            f"# one media node, PCMU, greeting/echo agent, {args.seconds:g} s per level; "
            f"generator on the same 2-core machine",
            flush=True,
        )
        levels = [int(x) for x in args.calls.split(",")]
        for i, n in enumerate(levels):
            spy = None
            if args.profile and i == len(levels) - 1:
                from concurrent.futures import ThreadPoolExecutor

                from bench.proxy import profile

                pool = ThreadPoolExecutor(1)
                spy = pool.submit(profile, {"media node": node.pid}, args.seconds + 2, root)
            print(asyncio.run(run_level(s, node_port, node.pid, n, args.seconds)), flush=True)
            if spy is not None:
                for name, lines in spy.result().items():
                    print(f"## profile at {n} calls, py-spy, own time: {name}")
                    print("\n".join(lines))
            time.sleep(2)
    finally:
        if node is not None:
            node.terminate()
            node.wait(10)
        stop_broker(paths)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")


if __name__ == "__main__":
    main()
