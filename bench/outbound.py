"""Outbound calls at fixed rates through the REST API: `POST /v1/calls` on the HTTP edge
-> OutboundCallRequested to admission -> routing -> the edge's dialer -> the provider's
create-call request (the Twilio SDK against a stand-in) -> 201.

The stand-in answers Twilio's create-call with a 201 and a fresh CallSid: an aiohttp
server in a process of its own, as the provider is (`--prism` makes it forward to
Stoplight Prism, which also validates each request against Twilio's OpenAPI
description); in the load generator's process it shared the client's GIL and
collections, which a provider never does. Requests are sent open-loop on a
fixed schedule over keep-alive connections, each with its own Idempotency-Key; latency
is from a request's scheduled time to its 201. Reported per run: API p50/p99 to 201,
failures (any other answer), and the provider requests per call (the stand-in's count
over the 201s: 1 without failures). A rate passes when no run failed and the median
run's p99 is <= 100 ms (the floor: 100 calls/s). CPU per process (% of a core) per run.

The calls are never ended (the stand-in sends no status callbacks): plan and backend
limits are raised out of the way, and the ring timeout is 120 s, so the dialer's
deadlines (150 s after each call) fall after the runs.

    .venv/bin/python -m bench.outbound [--rates 100,200] [--seconds 10] [--repeat 3]
        [--prism] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._util import machine_speed, speed_line, start_broker, stop_broker, wait_healthy
from bench.proxy import cpu_seconds, percentile
from tests.harness import ROOT, child_env, free_port
from tests.outbound_stand_ins import REPO, Prism, forward_to
from tests.stack import roomy_config, running_stack
from trunkline.core import kafka_local
from trunkline.core.aio import tune_gc

P99_BOUND_MS = 100.0
API_KEY = f"bench-key-{uuid.uuid4().hex}"
ACCOUNT_SID = "AC" + "b" * 32


def stage_buckets(base: str) -> dict[str, dict[float, float]]:
    """The edge's trunkline_dialer_stage_seconds buckets: stage -> {le: count}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "trunkline_dialer_stage_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out.setdefault(sample.labels["stage"], {})[le] = sample.value
    return out


def stage_line(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> str:
    """Median and p99 of each stage during a run, as bucket bounds (<= X ms)."""
    parts = []
    for stage, buckets in sorted(after.items()):
        diff = {le: n - before.get(stage, {}).get(le, 0.0) for le, n in buckets.items()}
        total = diff.get(float("inf"), 0.0)
        if not total:
            continue

        def bound(q: float, diff: dict[float, float] = diff, total: float = total) -> str:
            le = next(le for le in sorted(diff) if diff[le] >= q * total)
            return "inf" if le == float("inf") else f"{le * 1000:g}"

        parts.append(f"{stage} p50 <= {bound(0.5)} ms, p99 <= {bound(0.99)} ms")
    return "; ".join(parts)


@dataclass
class Run:
    rate: int
    attempted: int
    ok: int
    failed: int
    p50_ms: float
    p99_ms: float
    provider_requests: int
    cpu: dict[str, float]
    stages: str = ""

    @property
    def passed(self) -> bool:
        return self.failed == 0 and self.attempted > 0 and self.p99_ms <= P99_BOUND_MS

    def line(self) -> str:
        cpu = "  ".join(f"{k} {v:.0f}" for k, v in self.cpu.items())
        per_call = self.provider_requests / self.ok if self.ok else float("nan")
        return (
            f"outbound {self.rate:>4}/s  attempted {self.attempted:>5}  201 {self.ok:>5}  "
            f"failed {self.failed:>4}  p50 {self.p50_ms:>7.1f} ms  p99 {self.p99_ms:>7.1f} ms  "
            f"provider requests/call {per_call:.2f}  {'OK' if self.passed else '--'}\n"
            f"          cpu (% of a core): {cpu}\n          stages: {self.stages}"
        )


def twilio_stand_in() -> Any:
    async def handler(request: web.Request, recorded: dict[str, Any]) -> web.Response:
        return web.json_response(
            {"sid": f"CA{uuid.uuid4().hex}", "status": "queued", "account_sid": ACCOUNT_SID},
            status=201,
        )

    return handler


def serve_stand_in(upstream: str) -> None:
    """The stand-in's process: answers (or forwards to `upstream`), counts create-calls
    (`GET /_count`), and prints its port once it listens."""

    async def serve() -> None:
        handler = forward_to(upstream) if upstream else twilio_stand_in()
        created = 0

        async def any_request(request: web.Request) -> web.StreamResponse:
            nonlocal created
            if request.path == "/_count":
                return web.json_response({"created": created})
            raw = await request.read()
            if request.method == "POST" and "Calls.json" in request.path:
                created += 1
            return await handler(request, {"raw": raw})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_request)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        tune_gc()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


class StandIn:
    """`serve_stand_in` in a child process."""

    def __init__(self, upstream: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.outbound", "--serve-stand-in", upstream],
            stdout=subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"the stand-in did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line)}"

    def created(self) -> int:
        with urllib.request.urlopen(f"{self.url}/_count", timeout=5) as resp:
            return int(json.load(resp)["created"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def fire(url: str, rate: int, seconds: float) -> tuple[list[float], int]:
    n = int(rate * seconds)
    latencies: list[float] = []
    failed = 0
    body = {"to": "+4915112345678", "fromNumberId": "n-tw", "timeout": 120}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=400), timeout=aiohttp.ClientTimeout(total=30)
    ) as http:

        async def one(due: float) -> None:
            nonlocal failed
            try:
                async with http.post(
                    url, json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
                ) as resp:
                    await resp.read()
                    if resp.status == 201:
                        latencies.append((time.perf_counter() - due) * 1000)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            failed += 1

        start = time.perf_counter() + 0.2
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return latencies, failed


def run_rate(url: str, rate: int, seconds: float, watch: dict[str, int], stand_in: StandIn) -> Run:
    base = url.rsplit("/v1/", 1)[0]
    buckets = stage_buckets(base)
    before = {k: cpu_seconds(p) for k, p in watch.items()}
    sent_before = stand_in.created()
    t0 = time.monotonic()
    # the client collects as the services do: a full collection of this process (the
    # stack's handles, every imported SDK) stalled its own sends and reads, and the
    # stall counted as the service's latency
    tune_gc()
    latencies, failed = asyncio.run(fire(url, rate, seconds))
    wall = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p) - before[k]) / wall * 100 for k, p in watch.items()}
    return Run(
        rate,
        len(latencies) + failed,
        len(latencies),
        failed,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        stand_in.created() - sent_before,
        cpu,
        stage_line(buckets, stage_buckets(base)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="100,200")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds at 50/s first")
    ap.add_argument("--prism", action="store_true", help="Prism (Twilio's spec) as the stand-in")
    ap.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    ap.add_argument("--serve-stand-in", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_stand_in is not None:
        serve_stand_in(args.serve_stand_in)
        return
    rates = [int(r) for r in args.rates.split(",")]
    root = Path(tempfile.mkdtemp(prefix="trunkline-outbound-bench-"))
    prism = Prism(root) if args.prism else None
    stand_in = StandIn(prism.url if prism else "")
    bootstrap, paths = start_broker(root, args.bootstrap)
    results: list[Run] = []
    try:
        config = roomy_config(1_000_000)
        config["providers"] = [
            {"id": "twilio-bench", "kind": "Twilio", "accountSid": ACCOUNT_SID,
             "authToken": {"env": "BENCH_TWILIO_TOKEN"}, "apiBaseUrl": stand_in.url}
        ]  # fmt: skip
        config["apiKeys"] = [
            {"id": "k-bench", "businessId": "b-main",
             "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}
        ]  # fmt: skip
        with running_stack(
            bootstrap, root / "stack", edges=(), config=config, capacity=1_000_000
        ) as stack:
            hport = free_port()
            base = f"http://127.0.0.1:{hport}"
            log = open(root / "http-edge.log", "wb")  # noqa: SIM115
            edge = subprocess.Popen(
                [sys.executable, "-m", "trunkline.cli", "webhook-edge", "--listen",
                 f"127.0.0.1:{hport}", "--loglevel", "warning"],
                env={**child_env(stack.settings), "BENCH_TWILIO_TOKEN": "bench-token",
                     "TRUNKLINE_PUBLIC_URL": base},
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            try:
                wait_healthy(edge, f"{base}/health", root / "http-edge.log")
                url = f"{base}/v1/calls"
                assert stack.worker.proc is not None and stack.sink.proc is not None
                watch = {
                    "http-edge": edge.pid,
                    "worker": stack.worker.proc.pid,
                    "sink": stack.sink.proc.pid,
                    "load": os.getpid(),
                    "stand-in": stand_in.proc.pid,
                }
                if prism is not None:
                    watch["prism"] = prism.proc.pid
                broker_pid = kafka_local.read_pid(paths) if paths is not None else None
                if broker_pid:
                    watch["broker"] = broker_pid
                warm = run_rate(url, 50, args.warmup, watch, stand_in)
                print(f"# warmup: {warm.line()}", flush=True)
                print(
                    f"# trunkline: POST /v1/calls -> edge -> Kafka -> admission -> routing -> "
                    f"edge's dialer -> {'Prism' if prism else 'Twilio stand-in'} -> 201; "
                    f"{args.seconds:g} s per rate, p99 bound {P99_BOUND_MS:g} ms",
                    flush=True,
                )
                for rate in rates:
                    print(speed_line(machine_speed()), flush=True)
                    for _ in range(args.repeat):
                        run = run_rate(url, rate, args.seconds, watch, stand_in)
                        results.append(run)
                        print(run.line(), flush=True)
                        time.sleep(2)
                    runs = sorted((r for r in results if r.rate == rate), key=lambda r: r.p99_ms)
                    median = runs[len(runs) // 2]
                    ok = all(r.failed == 0 for r in runs) and median.p99_ms <= P99_BOUND_MS
                    print(
                        f"  {rate}/s: median p99 {median.p99_ms:.1f} ms, p50 "
                        f"{median.p50_ms:.1f} ms, failures {sum(r.failed for r in runs)}: "
                        f"{'PASS' if ok else 'FAIL'}",
                        flush=True,
                    )
            finally:
                edge.terminate()
                edge.wait(10)
    finally:
        stop_broker(paths)
        stand_in.stop()
        if prism is not None:
            prism.stop()
    best = 0
    for rate in rates:
        runs = sorted(r.p99_ms for r in results if r.rate == rate)
        if not runs or any(r.failed for r in results if r.rate == rate):
            break
        if runs[args.repeat // 2] > P99_BOUND_MS:
            break
        best = rate
    print(
        f"\noutbound API: highest rate with 0 failures and median p99 <= {P99_BOUND_MS:g} ms, "
        f"every lower rate passing too ({args.repeat} runs per rate): {best or 'none'}/s"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
