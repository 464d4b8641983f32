"""Chaos under a steady SIP load (tests/chaos.py): each scenario runs its own stack (sink,
worker, SIP edge, media node or heartbeat stand-in) on a private broker this script
starts, breaks something while calls flow at --rate per second, lets the stack settle,
and prints per scenario: offered, answered by code, terminal in ClickHouse, held slots
after settling, the legitimate calls' INVITE -> final p99, and lost / leaked / stuck
(the target is 0 / 0 / 0).

Scenarios (--scenarios, comma-separated; default all):
  worker-kills    SIGKILL the worker at random points, --kills times (restarted at once)
  sink-kills      SIGKILL the ClickHouse sink at random points
  billing-kills   SIGKILL the billing worker at random points: every finished call is
                  still rated once (unrated counts those without a billing record)
  webhooks-kills  SIGKILL the lifecycle webhook service at random points: every finished
                  call's call.ended still reaches a local receiver (undelivered)
  edge-kill       SIGKILL the SIP edge (restarted on the same port; INVITEs it held
                  unanswered are reported apart: a real caller retransmits)
  media-kill      SIGKILL the media node while real calls (302, INVITE, RTP) are live on it
  broker-restart  stop and start the broker under load
  broker-outage   the broker away --outage seconds (60)
  flood           one source sends 2000 INVITEs/s (never ACKing) beside the load (--flood-rate;
                  0 sends nothing for the same 20 s: a control run)

    .venv/bin/python -m bench.chaos [--scenarios ...] [--kills 10] [--rate 20]
        [--outage 60] [--seed N]
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import random
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench._util import machine_speed, speed_line
from tests import chaos
from tests.harness import Service, free_port
from tests.load import Load
from tests.receiver import Receiver
from tests.stack import roomy_config, running_stack
from trunkline.core import kafka_local
from trunkline.core.settings import Settings

HOOK_SECRET = "whsec_" + base64.b64encode(b"trunkline-chaos-webhook-secret-32").decode()


def undelivered(receiver: Receiver, call_ids: set[str], timeout: float = 120) -> int:
    """Finished calls whose call.ended webhook the receiver has not accepted, once every
    one arrived or `timeout` passed (retries after the kills take a while)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {
            x.payload["data"]["id"]
            for x in receiver.accepted("hooks")
            if x.payload and x.payload.get("type") == "call.ended"
        }
        missing = len(call_ids - got)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1.0)


class FloodWatch:
    """What the SIP edge did while it was flooded: its process's CPU (/proc/<pid>/stat),
    its counters (/metrics: datagrams received, dropped by flood control; INVITE -> 302
    by histogram bucket) and its UDP socket's receive queue, sampled every 10 ms
    (/proc/net/udp: bytes waiting in the kernel, datagrams the kernel dropped); and the
    CPU of the `others` processes (name -> pid), e.g. the worker the flood's calls reach."""

    def __init__(
        self, pid: int, sip_port: int, metrics_port: int, others: dict[str, int] | None = None
    ) -> None:
        self.pid, self.sip_port, self.metrics_port = pid, sip_port, metrics_port
        self.others = others or {}
        self.queued: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _cpu(self, pid: int = 0) -> float:
        with open(f"/proc/{pid or self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _queue(self) -> tuple[int, int]:
        """(bytes waiting, datagrams dropped) of the edge's UDP socket."""
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].split(":")[1], 16) == self.sip_port:
                    return int(cols[4].split(":")[1], 16), int(cols[-1])
        return 0, 0

    def _metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for m in re.finditer(
            r'^trunkline_sip_messages_total\{outcome="(\w+)"\} (\S+)$', text, re.M
        ):
            out[m[1]] = float(m[2])
        for m in re.finditer(
            r'^trunkline_sip_invite_final_seconds_bucket\{code="302",le="([^"]+)"\} (\S+)$',
            text,
            re.M,
        ):
            out[f"le{m[1]}"] = float(m[2])
        return out

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.queued.append(self._queue()[0])

    def start(self) -> FloodWatch:
        self.t0, self.cpu0, self.m0 = time.monotonic(), self._cpu(), self._metrics()
        self.others0 = {name: self._cpu(pid) for name, pid in self.others.items()}
        self.drops0 = self._queue()[1]
        self._thread.start()
        return self

    def stop(self, flooder_cpu: float) -> str:
        self._stop.set()
        self._thread.join()
        seconds, cpu = time.monotonic() - self.t0, self._cpu() - self.cpu0
        others = "".join(
            f"; the {name} {100 * (self._cpu(pid) - self.others0[name]) / seconds:.0f}% of a core"
            for name, pid in self.others.items()
        )
        m1 = self._metrics()
        got = {k: m1.get(k, 0.0) - self.m0.get(k, 0.0) for k in m1}
        received, flood = int(got.get("received", 0)), int(got.get("flood", 0))
        total = got.get("le+Inf", 0.0)
        p99 = next(
            (
                le
                for le in sorted((k for k in got if k.startswith("le")), key=_le)
                if total and got[le] >= 0.99 * total
            ),
            "le?",
        )
        queued = sorted(self.queued) or [0]
        return (
            f"edge during the flood: {cpu:.2f} s CPU in {seconds:.1f} s "
            f"({100 * cpu / seconds:.0f}% of a core), {received} datagrams received, "
            f"{flood} dropped by flood control, {1e6 * cpu / max(received, 1):.0f} us CPU "
            f"per datagram (all work included); its 302s ({int(total)}, the flood's own "
            f"included) p99 <= {p99[2:]} s; UDP receive queue p50 "
            f"{queued[len(queued) // 2] // 1024} KiB, max {queued[-1] // 1024} KiB, kernel "
            f"drops {self._queue()[1] - self.drops0}; the flooder {flooder_cpu:.2f} s CPU "
            f"({100 * flooder_cpu / seconds:.0f}% of a core){others}"
        )


def by_phase(timeline: list[tuple[float, float]], start: float, end: float) -> str:
    """The legitimate calls' INVITE -> final p50 / p99 before, during (by second) and
    after the flood, and the slowest with when they were sent."""

    def stats(ms: list[float]) -> str:
        if not ms:
            return "-"
        return f"{chaos.percentile(ms, 0.5):.0f}/{chaos.percentile(ms, 0.99):.0f} ms ({len(ms)})"

    before = [ms for t, ms in timeline if t < start]
    during = [(t, ms) for t, ms in timeline if start <= t <= end]
    after = [ms for t, ms in timeline if t > end]
    seconds = int(end - start) + 1
    per_second = " ".join(
        f"{max([ms for t, ms in during if int(t - start) == i], default=0):.0f}"
        for i in range(seconds)
    )
    slowest = sorted(timeline, key=lambda x: -x[1])[:5]
    return (
        f"legit p50/p99 before the flood {stats(before)}, during "
        f"{stats([ms for _, ms in during])}, after {stats(after)}; the slowest per second of "
        f"the flood (ms): {per_second}; the 5 slowest: "
        + ", ".join(f"{ms:.0f} ms sent at flood {t - start:+.1f} s" for t, ms in slowest)
    )


def _le(key: str) -> float:
    return float(key[2:])


SCENARIOS = (
    "worker-kills",
    "sink-kills",
    "billing-kills",
    "webhooks-kills",
    "edge-kill",
    "media-kill",
    "broker-restart",
    "broker-outage",
    "flood",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--kills", type=int, default=10, help="worker kills (others: a third)")
    ap.add_argument("--rate", type=float, default=20.0, help="legitimate calls per second")
    ap.add_argument("--outage", type=float, default=60.0, help="broker-outage seconds")
    ap.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    ap.add_argument(
        "--flood-rate", type=int, default=2000, help="flood INVITEs/s (0: a control run)"
    )
    args = ap.parse_args()
    wanted = args.scenarios.split(",")
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="trunkline-chaos-"))
    paths = kafka_local.BrokerPaths(root / "kafka")
    cache = Settings.from_env().cache_dir
    port, controller = free_port(), free_port()
    kafka_local.start(paths, cache, port, controller)
    bootstrap = f"127.0.0.1:{port}"
    config = roomy_config(100_000)
    for number in config["numbers"]:  # the flood's source (127.0.0.2) must not be trusted
        if number.get("allowedSourceIps") == ["127.0.0.0/8"]:
            number["allowedSourceIps"] = ["127.0.0.1"]
    env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "2000"}
    few = max(1, args.kills // 3)
    outcomes: list[chaos.Outcome] = []
    print(speed_line(machine_speed()), flush=True)
    print(f"# seed {args.seed}, {args.rate:g} legitimate calls/s", flush=True)
    try:
        for name in wanted:
            media = name == "media-kill"
            hooks = name == "webhooks-kills"
            receiver = Receiver(HOOK_SECRET, free_port()).start() if hooks else None
            scenario_config = copy.deepcopy(config)
            if receiver is not None:
                scenario_config["webhookSubscriptions"] = [
                    {
                        "id": "chaos",
                        "url": receiver.url("hooks"),
                        "events": ["call.ended"],
                        "businessId": "b-main",
                        "secret": {"env": "TL_CHAOS_HOOK_SECRET"},
                        "allowPrivateTargets": True,
                    }
                ]
            with running_stack(
                bootstrap,
                root / name,
                edges=("edge-a",),
                env={
                    **env,
                    "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
                    "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE": "100ms,200ms,500ms,1s",
                },
                config=scenario_config,
                capacity=100_000,
                media=media,
                media_args=("--capacity", "100000") if media else (),
            ) as s:
                flood_window: list[float] = []  # the flood's start and end
                billing = Service(s.settings, "billing-worker")
                if name == "billing-kills":
                    billing.start(timeout=120)
                if hooks:  # the webhook service instead: the same kill loop
                    billing = Service(
                        s.settings, "webhooks", env={"TL_CHAOS_HOOK_SECRET": HOOK_SECRET}
                    )
                    billing.start(timeout=120)

                def fault(
                    load: Load,
                    log: list[str],
                    name: str = name,
                    billing: Service = billing,
                    flood_window: list[float] = flood_window,
                ) -> None:
                    if name == "worker-kills":
                        chaos.kill_worker(s, rng, load, args.kills, log)
                    elif name == "sink-kills":
                        chaos.kill_sink(s, rng, load, few, log)
                    elif name in ("billing-kills", "webhooks-kills"):
                        chaos.kill_service(billing, rng, load, few, log)
                    elif name == "edge-kill":
                        chaos.kill_named(s, "edge-a", rng, load, few, log)
                    elif name == "media-kill":
                        chaos.kill_named(
                            s,
                            "backend-1",
                            rng,
                            load,
                            few,
                            log,
                            ready=chaos.live_calls_on(s, "backend-1"),
                        )
                    elif name == "broker-restart":
                        chaos.wait_routed(load, rng.randint(1, 40))
                        chaos.restart_broker(paths, cache, port, controller, 0, log)
                    elif name == "broker-outage":
                        chaos.wait_routed(load, rng.randint(1, 40))
                        chaos.restart_broker(paths, cache, port, controller, args.outage, log)
                    elif name == "flood":
                        sent: list[tuple[int, float]] = []

                        def flood() -> None:
                            cpu0 = time.thread_time()
                            n = chaos.flood(s.edges["edge-a"], 20, args.flood_rate)
                            sent.append((n, time.thread_time() - cpu0))

                        watch = FloodWatch(
                            s.named["edge-a"].pid,
                            s.edges["edge-a"],
                            s.edge_metrics["edge-a"],
                            {"worker": s.worker.proc.pid, "sink": s.sink.proc.pid},
                        ).start()
                        t = threading.Thread(target=flood)
                        flood_window.append(time.monotonic())
                        t.start()
                        t.join()
                        flood_window.append(time.monotonic())
                        log.append(
                            f"flood: {sent[0][0]} INVITEs in "
                            f"{flood_window[1] - flood_window[0]:.1f} s from 127.0.0.2"
                        )
                        log.append(watch.stop(sent[0][1]))

                started = time.monotonic()
                try:
                    outcome = chaos.with_load(
                        s,
                        name,
                        fault,
                        rate=args.rate,
                        settle_s=150,
                        media_callers=4 if media else 0,
                        billing=name == "billing-kills",
                    )
                    if receiver is not None:
                        outcome.undelivered = undelivered(receiver, outcome.call_ids)
                finally:
                    billing.stop()
                    if receiver is not None:
                        receiver.stop()
                outcomes.append(outcome)
                if flood_window:
                    outcome.events.append(by_phase(outcome.timeline, *flood_window))
                print(outcome.line(), flush=True)
                print(
                    f"    {time.monotonic() - started:.0f} s; " + "; ".join(outcome.events),
                    flush=True,
                )
    finally:
        kafka_local.stop(paths)
    print(speed_line(machine_speed()), flush=True)
    print("\n# summary (lost / leaked / stuck; target 0 / 0 / 0)")
    for o in outcomes:
        print(o.line())


if __name__ == "__main__":
    main()
