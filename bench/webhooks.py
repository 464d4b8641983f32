"""Lifecycle webhook deliveries per second, and ratings per second.

Two figures:
  ratings:     the billing machine (streams/billing.py) on one core: calls per second
               through offer, admission, answer and end (the end is the rating), best of 3.
               Floor: 20,000 ratings/s.
  deliveries:  `trunkline webhooks` (its own process) delivering call.ended for N calls to
               a local receiver (another process) that answers 200 after 1 ms; time from
               the receiver's first request to its N-th. The events are in call-events
               before the service starts (a backlog), so the figure is the service's own
               speed: consume, state records, sign, POST, outcome records. Beside it, the
               CPU seconds the service process (and the receiver) used per 1,000
               deliveries, from its readiness to the N-th delivery: less sensitive to the
               other load on a shared machine than the rate.
               Floor: 2,000 deliveries/s.
  receiver:    (--receiver-alone) the same receiver driven by a plain aiohttp client with
               64 requests in flight: the rate it can take alone, so the receiver is
               known not to be what limits the deliveries figure.

    .venv/bin/python -m bench.webhooks [--n 20000] [--calls 100000] [--bootstrap HOST:PORT]
        [--skip-ratings] [--receiver-alone] [--profile]

Without --bootstrap (or TRUNKLINE_KAFKA_BOOTSTRAP) it starts a broker of its own.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench._util import (
    best_rate,
    machine_speed,
    pin_one_core,
    speed_line,
    start_broker,
    stop_broker,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789ab").decode()
T0 = 1_767_225_600_000


# -- ratings ------------------------------------------------------------------------------
def ratings_per_second(calls: int) -> float:
    from streams import billing

    config = billing.RatingConfig(
        {
            "businesses": {"123": {"id": "123", "plan_id": "starter"}},
            "plans": {"starter": {"id": "starter", "rate_plan_id": "std"}},
            "ratePlans": {
                f"std@{v}": {
                    "envelope": {"event_id": f"config-std-{v}"},  # as config records carry
                    "id": "std", "version": v, "effective_from": T0 + (v - 1) * 86_400_000,
                    "currency": "USD", "inbound_per_minute": "0.0085",
                    "outbound_per_minute": "0.0140", "connect_fee": "0.0010",
                    "increment_first": 30, "increment_step": 6, "minimum_seconds": 0,
                }
                for v in (1, 2, 3)
            },
        }
    )  # fmt: skip

    def env(call_id: str, what: str, at: int) -> dict:
        return {"event_id": f"{call_id}/{what}", "call_id": call_id, "occurred_at": at,
                "producer_id": "bench"}  # fmt: skip

    events = []
    for i in range(calls):
        c, at = f"q{i}", T0 + i * 1000
        events.append((
            ("CallOffered", {"envelope": env(c, "o", at), "business_id": "123",
                             "direction": "INBOUND", "provider": "SIP", "provider_call_id": c}),
            ("CallAdmitted", {"envelope": env(c, "a", at + 5), "business_id": "123",
                              "plan_id": "starter"}),
            ("CallAnswered", {"envelope": env(c, "n", at + 900)}),
            ("CallEnded", {"envelope": env(c, "e", at + 60_900), "reason": "completed",
                           "business_id": "123", "talk_ms": 1000 * (i % 600)}),
        ))  # fmt: skip

    def run(n: int) -> None:
        for call in events[:n]:
            state = None
            for name, record in call:
                state = billing.handle(name, record, state, config).call

    pin_one_core()
    return best_rate(calls, run)


# -- deliveries -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """CPU seconds so far of each thread of a process, summed by thread name."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        out[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def _receiver(port: int, ready: multiprocessing.synchronize.Event, stats: dict) -> None:
    import asyncio

    from aiohttp import web

    count = {"n": 0, "first": 0.0, "last": 0.0, "connections": 0}
    peers: set[object] = set()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if request.transport is not None:
            peer = request.transport.get_extra_info("peername")
            if peer not in peers:
                peers.add(peer)
                count["connections"] = len(peers)
        await asyncio.sleep(0.001)  # the subscriber's 1 ms
        now = time.monotonic()
        if count["n"] == 0:
            count["first"] = now
        count["n"] += 1
        count["last"] = now
        return web.Response(status=200)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({**count, "pid": os.getpid()})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hooks", handle)
        app.router.add_get("/count", status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class Deliveries:
    rate: float  # deliveries/s, the receiver's first request to its N-th
    total_s: float  # from the service's start
    service_cpu_per_1000: float  # CPU seconds of the service, readiness to the N-th
    service_sys_per_1000: float  # of which in the kernel (sockets, polling)
    receiver_cpu_per_1000: float
    connections: int  # TCP connections the receiver saw (keep-alive: about the in-flight limit)
    profile: list[str]


def _get_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict = json.load(r)
    return data


def deliveries_per_second(bootstrap: str, n: int, state: Path, profile: bool = False) -> Deliveries:
    import yaml

    from schemas import SingleObjectCodec
    from tests.harness import Service, free_port, run_cli
    from trunkline.core.admin import apply_all
    from trunkline.core.kafka import make_producer
    from trunkline.core.settings import Settings
    from trunkline.core.topics import CALL_EVENTS

    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(state),
            "TRUNKLINE_KAFKA_BOOTSTRAP": bootstrap,
            "TRUNKLINE_TOPIC_PREFIX": f"bw{tag}.",
            "TRUNKLINE_APP_ID": f"bench-webhooks-{tag}",
            "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
        }
    )
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    port = free_port()
    ready = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receiver, args=(port, ready, {}), daemon=True)
    receiver.start()
    ready.wait(30)
    config = {
        "plans": [{"id": "p", "maxConcurrentCalls": 10}],
        "businesses": [{"id": "b", "name": "B", "plan": "p"}],
        "webhookSubscriptions": [
            {
                "id": "bench",
                "url": f"http://127.0.0.1:{port}/hooks",
                "events": ["call.ended"],
                "secret": {"env": "BENCH_SECRET"},
                "allowPrivateTargets": True,
            }
        ],
    }
    state.mkdir(parents=True, exist_ok=True)
    (state / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli(s, "config", "apply", str(state / "config.yaml"))
    assert done.returncode == 0, done.stderr
    codec = SingleObjectCodec()
    producer = make_producer(s.kafka_bootstrap, **{"linger.ms": 20})
    topic = CALL_EVENTS.name(s.topic_prefix)
    now = int(time.time() * 1000)
    for i in range(n):
        call_id = f"{tag}-{i}"
        record = {
            "envelope": {"event_id": f"{call_id}-end", "call_id": call_id,
                         "occurred_at": now + i, "producer_id": "bench"},
            "reason": "completed", "business_id": "b", "talk_ms": 30_000,
        }  # fmt: skip
        while True:
            try:
                producer.produce(
                    topic, key=call_id.encode(), value=codec.encode("CallEnded", record)
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    service = Service(s, "webhooks", env={"BENCH_SECRET": SECRET})
    started = time.monotonic()
    service.start()
    assert service.proc is not None
    receiver_pid = int(_get_json(f"http://127.0.0.1:{port}/count")["pid"])
    cpu0 = cpu_seconds(service.proc.pid), cpu_seconds(receiver_pid)
    threads0 = thread_cpu_seconds(service.proc.pid)
    spy = None
    if profile:
        spy_out = Path(tempfile.gettempdir()) / "bench-webhooks.spy"  # kept: raw samples
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "200", "-f", "raw",
             "--gil", "--nonblocking", "-o", str(spy_out), "-p", str(service.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + max(120, n / 200)
        count = {"n": 0}
        while time.monotonic() < deadline:
            count = _get_json(f"http://127.0.0.1:{port}/count")
            if count["n"] >= n:
                break
            time.sleep(0.1)
        cpu1 = cpu_seconds(service.proc.pid), cpu_seconds(receiver_pid)
        threads = thread_cpu_seconds(service.proc.pid)
        threads.subtract(threads0)
        if count["n"] < n:
            raise SystemExit(f"only {count['n']} of {n} deliveries in time")
        report: list[str] = []
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            spy.wait(60)
            report = ["## the service's threads, CPU seconds per 1,000 deliveries"]
            report += [f"{t * 1000 / n:7.3f}  {name}" for name, t in threads.most_common(4)]
            report += spy_report(spy_out)
        rate = (n - 1) / (count["last"] - count["first"])
        return Deliveries(
            rate,
            time.monotonic() - started,
            (sum(cpu1[0]) - sum(cpu0[0])) * 1000 / n,
            (cpu1[0][1] - cpu0[0][1]) * 1000 / n,
            (sum(cpu1[1]) - sum(cpu0[1])) * 1000 / n,
            int(count["connections"]),
            report,
        )
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        service.stop()
        receiver.terminate()
        receiver.join(10)


def _frame(f: str) -> str:
    """py-spy's `function (path/file.py:line)` as `function file.py` (lines merged)."""
    name, _, where = f.partition(" (")
    return f"{name} {where.rpartition('/')[2].partition(':')[0]}"


def spy_report(out: Path, top: int = 25) -> list[str]:
    """py-spy's raw samples: the functions with the most own time, and the project's
    functions with the most time inside them (cumulative)."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    if not out.exists():
        return ["(py-spy wrote nothing)"]
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            inside[f] += k
    lines = [f"## own time ({total} samples holding the GIL, raw in {out})"]
    lines += [f"{c / max(total, 1) * 100:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("## inclusive time")
    lines += [f"{c / max(total, 1) * 100:5.1f}%  {f}" for f, c in inside.most_common(top * 2)]
    return lines


def receiver_alone(n: int, inflight: int = 64) -> float:
    """The receiver's own rate: a plain aiohttp client (this process) keeps `inflight`
    requests going over keep-alive connections; the receiver's first to N-th request."""
    import asyncio

    import aiohttp

    from tests.harness import free_port

    port = free_port()
    ready = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receiver, args=(port, ready, {}), daemon=True)
    receiver.start()
    ready.wait(30)
    body = b'{"type":"call.ended","timestamp":"2026-11-30T10:00:00.000Z","data":{}}' * 4

    async def drive() -> None:
        left = n
        connector = aiohttp.TCPConnector(limit=inflight)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    async with session.post(f"http://127.0.0.1:{port}/hooks", data=body) as r:
                        await r.read()

            await asyncio.gather(*(one() for _ in range(inflight)))

    try:
        asyncio.run(drive())
        count = _get_json(f"http://127.0.0.1:{port}/count")
        return (count["n"] - 1) / (count["last"] - count["first"])
    finally:
        receiver.terminate()
        receiver.join(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="deliveries")
    p.add_argument("--calls", type=int, default=100_000, help="calls rated")
    p.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    p.add_argument("--skip-ratings", action="store_true", help="deliveries only")
    p.add_argument("--receiver-alone", action="store_true", help="the receiver's own rate too")
    p.add_argument("--profile", action="store_true", help="py-spy the service (slows it)")
    args = p.parse_args()
    print(speed_line(machine_speed()))
    if not args.skip_ratings:
        rate = ratings_per_second(args.calls)
        print(f"ratings: {rate:,.0f} calls/s on one core (floor 20,000): "
              f"{'pass' if rate >= 20_000 else 'FAIL'}")  # fmt: skip
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if args.receiver_alone:
        alone = receiver_alone(args.n)
        print(f"receiver alone: {alone:,.0f} requests/s answered after 1 ms "
              f"(64 in flight, {args.n} requests)")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    broker = None
    try:
        bootstrap, broker = start_broker(tmp, args.bootstrap)
        d = deliveries_per_second(bootstrap, args.n, tmp / "state", args.profile)
        print(f"deliveries: {d.rate:,.0f}/s to a receiver answering after 1 ms ({args.n} "
              f"deliveries, {d.total_s:.1f} s from start; floor 2,000): "
              f"{'pass' if d.rate >= 2_000 else 'FAIL'}; CPU per 1,000 deliveries: "
              f"service {d.service_cpu_per_1000:.3f} s ({d.service_sys_per_1000:.3f} s system), "
              f"receiver "
              f"{d.receiver_cpu_per_1000:.3f} s; {d.connections} connections")  # fmt: skip
        for line in d.profile:
            print(line)
    finally:
        stop_broker(broker)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
