"""The SIP edge's UDP ingress while one source floods it, without the decision path: an
edge (and a broker, for its offers) only. A second source, a trunk, sends OPTIONS at
--probe-rate a second, one at a time, and times each to its 200 (the edge answers OPTIONS
itself: the same socket, loop, flood check, parse and transaction layer an INVITE goes
through before it is published). First quietly, then while another process (chaos.flood:
pre-built INVITEs that are never ACKed, from 127.0.0.2) sends --flood-rates a second
for --seconds. Per phase: the trunk's round trip p50 / p99 / max, the edge's CPU and CPU
per datagram, its socket's receive queue and the kernel's drops (bench.chaos.FloodWatch).

    .venv/bin/python -m bench.flood [--flood-rates 2000,5000] [--seconds 15] [--repeat 1]
        [--bootstrap host:port]   (default: a private broker)

With --micro N, instead: what one datagram over its source's limit costs the edge, on
one core. A SipEdge in this process (never started: no Kafka traffic) gets N flood
datagrams queued in its UDP socket at once and its loop drains them; the wall time per
datagram, best of --repeat rounds (a socket read, the flood check, the loop's own turns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench._util import machine_speed, pin_one_core, speed_line, start_broker, stop_broker
from bench.chaos import FloodWatch
from edge.sip.uac import UAC, Call
from tests import chaos
from tests.harness import free_port, run_cli
from tests.stack import CONFIG, _start_edge
from trunkline.core.admin import apply_all
from trunkline.core.settings import Settings


def _flood(port: int, seconds: float, rate: int, out: Any) -> None:
    """The flooding source, in its own process: (sent, first send, last send, CPU s)."""
    cpu0 = time.process_time()
    t0 = time.monotonic()
    sent = chaos.flood(port, seconds, rate)
    out.put((sent, t0, time.monotonic(), time.process_time() - cpu0))


def probe(port: int, until: Any, rate: float) -> list[tuple[float, float | None]]:
    """OPTIONS from 127.0.0.1 at `rate` a second until `until()`: (sent at, round trip
    in ms or None when no 200 came within a second), one at a time."""
    uac = UAC("127.0.0.1", port)
    out: list[tuple[float, float | None]] = []
    next_at = time.monotonic()
    try:
        while not until():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0 / rate
            call = Call("ping")
            sent = time.monotonic()
            uac.request("OPTIONS", call)
            rtt = None
            deadline = sent + 1.0
            while (left := deadline - time.monotonic()) > 0:
                r = uac.receive(left)
                if r is not None and r.call_id == call.call_id and r.status >= 200:
                    rtt = (time.monotonic() - sent) * 1000
                    break
            out.append((sent, rtt))
    finally:
        uac.close()
    return out


def summary(probes: list[tuple[float, float | None]]) -> str:
    rtts = sorted(r for _, r in probes if r is not None)
    lost = sum(r is None for _, r in probes)
    if not rtts:
        return f"no answer to {len(probes)} probes"
    return (
        f"trunk OPTIONS -> 200 p50 {chaos.percentile(rtts, 0.5):.1f} ms, p99 "
        f"{chaos.percentile(rtts, 0.99):.1f} ms, max {rtts[-1]:.1f} ms ({len(probes)} probes, "
        f"{lost} unanswered)"
    )


async def drain_cost(n: int, rounds: int) -> list[float]:
    """Seconds per flood datagram the edge's loop spends reading and dropping, per round."""
    from edge.sip.flood import FloodGuard, Limits
    from edge.sip.service import SipEdge
    from edge.sip.transport import Listen
    from trunkline.core import aio

    settings = Settings.from_env({"TRUNKLINE_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    edge = SipEdge(settings, "micro", Listen("127.0.0.1", 0))
    # one request through, then none however long the rounds take: every datagram after
    # the first is dropped, so the count of drops says when the loop is done
    edge.flood = FloodGuard(Limits(rate=1e-6, burst=1.0))
    loop = asyncio.get_running_loop()
    edge.loop = loop
    if hasattr(edge, "on_datagrams"):  # this edge: batches
        udp: Any = await aio.UdpEndpoint.bind("127.0.0.1", 0, edge.on_datagrams)
        port, close = udp.sockname[1], udp.close
    else:  # an edge before 2026-11-30: asyncio's transport, a datagram per turn
        transport, _ = await loop.create_datagram_endpoint(
            lambda: aio.Datagrams(edge.on_datagram), local_addr=("127.0.0.1", 0)
        )
        port, close = transport.get_extra_info("sockname")[1], transport.close
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.2", 0))
    data = (  # the shape of chaos.flood's INVITEs (never parsed: the source is over its limit)
        f"INVITE sip:+15550000002@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:{sender.getsockname()[1]};branch=z9hG4bKf1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.2>;tag=f1\r\n"
        "To: <sip:+15550000002@127.0.0.1>\r\nCall-ID: flood-1@127.0.0.2\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:flood@127.0.0.2>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    out = []
    try:
        for i in range(rounds + 1):  # the first round empties the source's bucket
            target = edge.flood.dropped + n - (1 if i == 0 else 0)
            for _ in range(n):
                sender.sendto(data, ("127.0.0.1", port))
            t0 = time.perf_counter()
            deadline = t0 + 30
            while edge.flood.dropped < target:
                assert time.perf_counter() < deadline, "the edge did not drain the flood"
                await asyncio.sleep(0.001)
            if i:
                out.append((time.perf_counter() - t0) / n)
    finally:
        sender.close()
        close()
        await loop.run_in_executor(None, edge.out.close)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flood-rates", default="2000")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--probe-rate", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--micro", type=int, default=0)
    args = ap.parse_args()
    if args.micro:
        logging.disable(logging.WARNING)  # the unreachable broker's complaints
        pin_one_core()
        print(speed_line(machine_speed()), flush=True)
        costs = asyncio.run(drain_cost(args.micro, max(args.repeat, 3)))
        print(
            f"a flood datagram dropped by the edge: best {min(costs) * 1e6:.1f} us, median "
            f"{sorted(costs)[len(costs) // 2] * 1e6:.1f} us ({args.micro} datagrams a round, "
            f"{len(costs)} rounds)",
            flush=True,
        )
        return
    root = Path(tempfile.mkdtemp(prefix="trunkline-flood-"))
    bootstrap, paths = start_broker(root, args.bootstrap)
    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(root),
            "TRUNKLINE_KAFKA_BOOTSTRAP": bootstrap,
            "TRUNKLINE_TOPIC_PREFIX": f"f{tag}.",
            "TRUNKLINE_APP_ID": f"flood-{tag}",
        }
    )
    edge = None
    print(speed_line(machine_speed()), flush=True)
    try:
        apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id, s.decision_partitions)
        config = json.loads(json.dumps(CONFIG))
        for number in config["numbers"]:  # the trunk is 127.0.0.1; 127.0.0.2 is a stranger
            if number.get("allowedSourceIps") == ["127.0.0.0/8"]:
                number["allowedSourceIps"] = ["127.0.0.1"]
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        done = run_cli(s, "config", "apply", str(root / "config.yaml"))
        assert done.returncode == 0, done.stderr
        sip_port, metrics_port = free_port(), free_port()
        edge = _start_edge(s, "edge-f", sip_port, metrics_port)
        quiet_until = time.monotonic() + 5
        quiet = probe(sip_port, lambda: time.monotonic() > quiet_until, args.probe_rate)
        print(f"quiet: {summary(quiet)}", flush=True)
        spawn = multiprocessing.get_context("spawn")
        for rate in (int(r) for r in args.flood_rates.split(",")):
            for _ in range(args.repeat):
                out = spawn.Queue()
                flooder = spawn.Process(target=_flood, args=(sip_port, args.seconds, rate, out))
                watch = FloodWatch(edge.pid, sip_port, metrics_port).start()
                flooder.start()
                probes = probe(sip_port, lambda f=flooder: not f.is_alive(), args.probe_rate)
                sent, t0, t1, cpu = out.get(timeout=30)
                flooder.join()
                during = [p for p in probes if t0 <= p[0] <= t1]
                print(
                    f"flood {rate}/s: {sent} INVITEs in {t1 - t0:.1f} s; {summary(during)}",
                    flush=True,
                )
                print(f"    {watch.stop(cpu)}", flush=True)
                time.sleep(2)  # the edge's queue empties before the next phase
    finally:
        if edge is not None and edge.poll() is None:
            edge.terminate()
            edge.wait(10)
        stop_broker(paths)
    print(speed_line(machine_speed()), flush=True)


if __name__ == "__main__":
    main()
