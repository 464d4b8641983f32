"""Signed Twilio voice webhooks at fixed rates through the whole decision path: the
webhook edge (signature, CallOffered), the broker, the Faust worker (admission, routing)
and back to the edge, which answers TwiML `<Connect><Stream>`.

Requests are signed beforehand with Twilio's own `RequestValidator` (one new CallSid
each) and sent open-loop on a fixed schedule over keep-alive connections; the latency is
from a request's scheduled time to its answer, so a stalled edge cannot hide its queue.
A request fails when the answer is not 200 with a `<Stream>` (a `<Reject>` on a decision
timeout counts as a failure). Each rate runs --repeat times (the machine is shared); a
rate passes when no run failed a request and the median run's p99 is <= 100 ms. CPU per
process (% of one core) is printed per run, with the machine's speed before each rate.

    .venv/bin/python -m bench.webhook [--rates 100,200,300] [--seconds 10] [--repeat 3]
        [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

from bench._util import machine_speed, speed_line, start_broker, stop_broker, wait_healthy
from bench.proxy import cpu_seconds, percentile
from tests.harness import ROOT, child_env, free_port
from tests.stack import roomy_config, running_stack
from trunkline.core import kafka_local
from trunkline.core.aio import tune_gc

P99_BOUND_MS = 100.0
TOKEN = "bench-twilio-auth-token"
ACCOUNT_SID = "AC" + "b" * 32
NUMBER = "+15550000004"  # n-tw in tests.stack.CONFIG (business b-main)


@dataclass
class Run:
    rate: int
    attempted: int
    ok: int
    failed: int
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.failed == 0 and self.attempted > 0 and self.p99_ms <= P99_BOUND_MS

    def line(self) -> str:
        cpu = "  ".join(f"{k} {v:.0f}" for k, v in self.cpu.items())
        return (
            f"webhook {self.rate:>5}/s  attempted {self.attempted:>6}  ok {self.ok:>6}  "
            f"failed {self.failed:>5}  p50 {self.p50_ms:>7.1f} ms  p99 {self.p99_ms:>7.1f} ms  "
            f"{'OK' if self.passed else '--'}\n          cpu (% of a core): {cpu}"
        )


def signed_requests(url: str, n: int) -> list[tuple[bytes, str]]:
    validator = RequestValidator(TOKEN)
    out = []
    for _ in range(n):
        params = {
            "CallSid": f"CA{uuid.uuid4().hex}",
            "AccountSid": ACCOUNT_SID,
            "From": "+15550001111",
            "To": NUMBER,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        out.append((urlencode(params).encode(), validator.compute_signature(url, params)))
    return out


async def fire(url: str, rate: int, seconds: float) -> tuple[list[float], int]:
    """Open-loop: request i is due at start + i / rate. Returns latencies (ms) of good
    answers and the number of failures."""
    n = int(rate * seconds)
    prepared = signed_requests(url, n)
    latencies: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=400)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=20)
    ) as http:

        async def one(due: float, body: bytes, signature: str) -> None:
            nonlocal failed
            try:
                async with http.post(
                    url,
                    data=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "X-Twilio-Signature": signature,
                    },
                ) as resp:
                    text = await resp.read()
                    if resp.status == 200 and b"<Stream" in text:
                        latencies.append((time.perf_counter() - due) * 1000)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            failed += 1

        start = time.perf_counter() + 0.2
        tasks = []
        for i, (body, signature) in enumerate(prepared):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, body, signature)))
        await asyncio.gather(*tasks)
    return latencies, failed


def run_rate(url: str, rate: int, seconds: float, watch: dict[str, int]) -> Run:
    before = {k: cpu_seconds(p) for k, p in watch.items()}
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
        cpu,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="100,200,300")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds at 100/s first")
    ap.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    root = Path(tempfile.mkdtemp(prefix="trunkline-webhook-bench-"))
    bootstrap, paths = start_broker(root, args.bootstrap)
    results: list[Run] = []
    try:
        config = roomy_config(1_000_000)
        config["providers"] = [
            {
                "id": "twilio-bench",
                "kind": "Twilio",
                "accountSid": ACCOUNT_SID,
                "authToken": {"env": "BENCH_TWILIO_TOKEN"},
            }
        ]
        with running_stack(
            bootstrap,
            root / "stack",
            edges=(),
            config=config,
            capacity=1_000_000,
            env={"TRUNKLINE_REDIRECT_TIMEOUT_MS": "3000"},
        ) as stack:
            hport = free_port()
            base = f"http://127.0.0.1:{hport}"
            log = open(root / "webhook-edge.log", "wb")  # noqa: SIM115
            edge = subprocess.Popen(
                [sys.executable, "-m", "trunkline.cli", "webhook-edge", "--listen",
                 f"127.0.0.1:{hport}", "--loglevel", "warning"],
                env={**child_env(stack.settings), "BENCH_TWILIO_TOKEN": TOKEN,
                     "TRUNKLINE_PUBLIC_URL": base},
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            try:
                wait_healthy(edge, f"{base}/health", root / "webhook-edge.log")
                url = f"{base}/webhooks/twilio/voice"
                assert stack.worker.proc is not None and stack.sink.proc is not None
                watch = {
                    "webhook-edge": edge.pid,
                    "worker": stack.worker.proc.pid,
                    "sink": stack.sink.proc.pid,
                    "load": os.getpid(),
                }
                broker_pid = kafka_local.read_pid(paths) if paths is not None else None
                if broker_pid:
                    watch["broker"] = broker_pid
                warm = run_rate(url, 100, args.warmup, watch)
                print(f"# warmup: {warm.line()}", flush=True)
                print(
                    f"# trunkline: Twilio voice webhook -> edge -> Kafka -> admission -> "
                    f"routing -> edge -> TwiML; {args.seconds:g} s per rate, "
                    f"p99 bound {P99_BOUND_MS:g} ms",
                    flush=True,
                )
                for rate in rates:
                    print(speed_line(machine_speed()), flush=True)
                    for _ in range(args.repeat):
                        run = run_rate(url, rate, args.seconds, watch)
                        results.append(run)
                        print(run.line(), flush=True)
                        time.sleep(4)  # let the redirect reservations expire
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
    passing = [
        rate
        for rate in rates
        if all(r.failed == 0 for r in results if r.rate == rate)
        and sorted(r.p99_ms for r in results if r.rate == rate)[args.repeat // 2] <= P99_BOUND_MS
    ]
    best = 0
    for rate in rates:
        if rate not in passing:
            break
        best = rate
    print(
        f"\nwebhook edge: highest rate with 0 failures and median p99 <= {P99_BOUND_MS:g} ms, "
        f"every lower rate passing too ({args.repeat} runs per rate): {best or 'none'}/s"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
