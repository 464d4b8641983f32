"""SIPp drives INVITEs at fixed rates through the whole proxy path (SIP edge, broker,
Faust worker: admission and routing, back to the edge), and through a Kamailio redirect
server doing the same job (source ACL, number lookup, dispatcher, 302) for comparison.

For each rate: calls attempted, succeeded, failed, retransmissions, and INVITE -> final
response p50/p99 (SIPp's response-time trace). Each rate runs --repeat times (3): the
machine is shared, and single runs at the same rate measured p99 from 32 to 120 ms. A
rate passes when no run failed a call and the median run's p99 is <= 50 ms. The verdict
is the highest rate that passed with every lower rate passing too, and our rate as a
ratio of Kamailio's (judged the same way). Before the first rate and after each one it
prints the machine's speed (plain Python loop iterations per second on every core at once,
the idle stack still running): on this shared machine a core's figure dropped by up to
45% between hours (about 42 million when quiet), and the verdict moves with it.

    .venv/bin/python -m bench.proxy [--rates 100,200,300,500,750,1000] [--seconds 10]
        [--repeat 3] [--kamailio-rates 500,1000,2000,4000] [--profile]
        [--bootstrap HOST:PORT] [--workers N]

`--workers N` (N > 1) measures the same rates with one worker and then with N workers
sharing the decision path (TRUNKLINE_DECISION_PARTITIONS = 2N for both, and calls spread
over one business and one region per partition, so every worker has work whatever it is
assigned), and prints throughput and worker CPU per call side by side.

Needs sipp and kamailio (scripts/setup --bench installs both).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench._util import machine_speed, speed_line, start_broker, stop_broker
from tests.harness import free_port
from tests.stack import roomy_config, running_stack, spread_config
from trunkline.core import kafka_local

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "e2e" / "scenarios" / "invite_302.xml"
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "redirect.cfg"
NUMBER = "+15550000002"
P99_BOUND_MS = 50.0


@dataclass
class Run:
    target: str
    rate: int
    attempted: int
    succeeded: int
    failed: int
    retransmissions: int
    achieved_cps: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float] | None = None  # % of one core per process during the run
    wall_s: float = 0.0

    def cpu_ms_per_call(self, prefix: str) -> float:
        """CPU milliseconds per succeeded call of the processes named `prefix`*."""
        if not self.cpu or not self.succeeded:
            return float("nan")
        busy = sum(v for k, v in self.cpu.items() if k.startswith(prefix)) / 100 * self.wall_s
        return busy / self.succeeded * 1000

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.attempted > 0 and self.p99_ms <= P99_BOUND_MS

    def line(self) -> str:
        return (
            f"{self.target:9} {self.rate:>6}/s  attempted {self.attempted:>6}  ok "
            f"{self.succeeded:>6}  failed {self.failed:>5}  retrans {self.retransmissions:>5}"
            f"  achieved {self.achieved_cps:>7.1f}/s  p50 {self.p50_ms:>7.1f} ms  "
            f"p99 {self.p99_ms:>7.1f} ms  {'OK' if self.ok else '--'}"
            + (
                "\n          cpu (% of a core): "
                + "  ".join(f"{k} {v:.0f}" for k, v in self.cpu.items())
                if self.cpu
                else ""
            )
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def run_sipp(
    target: str,
    port: int,
    rate: int,
    seconds: float,
    workdir: Path,
    watch: dict[str, int] | None = None,
    numbers: list[str] | None = None,
) -> Run:
    """SIPp at `rate` for `seconds`; `numbers` (several): dialled in turn, one per call."""
    workdir.mkdir(parents=True, exist_ok=True)
    calls = max(1, int(rate * seconds))
    scenario, extra = SCENARIO, []
    if numbers and len(numbers) > 1:
        (workdir / "numbers.csv").write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
        scenario = workdir / "invite_302_numbers.xml"
        scenario.write_text(SCENARIO.read_text().replace("[service]", "[field0]"))
        extra = ["-inf", str(workdir / "numbers.csv")]
    watch = dict(watch or {})
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(scenario),
            *extra,
            "-s",
            (numbers or [NUMBER])[0],
            f"127.0.0.1:{port}",
            "-i",
            "127.0.0.1",
            "-r",
            str(rate),
            "-m",
            str(calls),
            "-l",
            str(max(100, rate * 10)),
            "-timeout",
            f"{int(seconds * 3 + 30)}s",
            "-recv_timeout",
            "8000",
            "-nostdin",
            "-trace_stat",
            "-stf",
            "stat.csv",
            "-fd",
            "3600",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-trace_err",
            "-error_file",
            "err.txt",
            "-max_socket",
            "4096",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watch["sipp"] = proc.pid
    before["sipp"] = 0.0
    sipp_cpu = 0.0
    while proc.poll() is None and time.monotonic() - t0 < seconds * 3 + 120:
        sipp_cpu = cpu_seconds(proc.pid) or sipp_cpu
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    wall = time.monotonic() - t0
    after = {name: cpu_seconds(pid) for name, pid in watch.items()}
    after["sipp"] = sipp_cpu
    cpu = {n: (after[n] - before[n]) / wall * 100 for n in watch}
    stat = _last_stat(workdir / "stat.csv")
    rtts = _rtts(workdir)
    succeeded = int(stat.get("SuccessfulCall(C)", 0))
    failed = int(stat.get("FailedCall(C)", 0))
    return Run(
        target=target,
        rate=rate,
        attempted=int(stat.get("TotalCallCreated", calls)),
        succeeded=succeeded,
        failed=failed,
        retransmissions=int(stat.get("Retransmissions(C)", 0)),
        achieved_cps=succeeded / max(wall, 1e-9),
        p50_ms=percentile(rtts, 0.50),
        p99_ms=percentile(rtts, 0.99),
        cpu=cpu,
        wall_s=wall,
    )


def _last_stat(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _rtts(workdir: Path) -> list[float]:
    out: list[float] = []
    for f in workdir.glob("*_rtt.csv"):
        for row in csv.reader(f.read_text().splitlines()[1:], delimiter=";"):
            if len(row) >= 2:
                try:
                    out.append(float(row[1]))
                except ValueError:
                    pass
    return out


def start_kamailio(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    dispatcher = workdir / "dispatcher.list"
    dispatcher.write_text("1 sip:127.0.0.1:5070\n1 sip:127.0.0.1:5072\n")
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(
        KAMAILIO_CFG.read_text()
        .replace("LISTEN", f"udp:127.0.0.1:{port}")
        .replace("DISPATCHER_LIST", str(dispatcher))
    )
    check = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"kamailio refused its config:\n{check.stderr[-3000:]}")
    proc = subprocess.Popen(
        [
            "kamailio",
            "-DD",
            "-E",
            "-f",
            str(cfg),
            "-m",
            "64",
            "-M",
            "8",
            "-P",
            str(workdir / "k.pid"),
        ],
        stdout=open(workdir / "kamailio.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.5)
    if proc.poll() is not None:
        raise SystemExit(f"kamailio exited:\n{(workdir / 'kamailio.log').read_text()[-3000:]}")
    return proc


def profile(pids: dict[str, int], seconds: float, workdir: Path) -> dict[str, list[str]]:
    """py-spy samples of each process while the load runs: top functions by own time."""
    procs = {}
    for name, pid in pids.items():
        out = workdir / f"{name}.spy"
        procs[name] = (
            out,
            subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-d",
                    str(int(seconds)),
                    "-r",
                    "100",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "-p",
                    str(pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        )
    report: dict[str, list[str]] = {}
    for name, (out, proc) in procs.items():
        proc.wait()
        leaf: Counter[str] = Counter()
        total = 0
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                if not n.isdigit():
                    continue
                total += int(n)
                frames = stack.split(";")
                mine = [
                    f
                    for f in frames
                    if any(m in f for m in ("edge/", "streams/", "schemas/", "trunkline/"))
                ]
                leaf[
                    frames[-1].split(" (")[0] + (f"  <- {mine[-1].split(' (')[0]}" if mine else "")
                ] += int(n)
        report[name] = [f"{n / max(total, 1) * 100:5.1f}%  {k}" for k, n in leaf.most_common(12)]
    return report


def runs_at(results: list[Run], target: str, rate: int) -> list[Run]:
    return [r for r in results if r.target == target and r.rate == rate]


def median_run(results: list[Run], target: str, rate: int) -> Run | None:
    """The run with the median p99 (the lower middle one for an even count)."""
    runs = sorted(runs_at(results, target, rate), key=lambda r: r.p99_ms)
    return runs[(len(runs) - 1) // 2] if runs else None


def rate_ok(results: list[Run], target: str, rate: int) -> bool:
    runs = runs_at(results, target, rate)
    med = median_run(results, target, rate)
    return (
        bool(runs)
        and all(r.failed == 0 and r.attempted > 0 for r in runs)
        and (med is not None and med.p99_ms <= P99_BOUND_MS)
    )


def verdict(results: list[Run], target: str, rate: int) -> str:
    runs = runs_at(results, target, rate)
    med = median_run(results, target, rate)
    assert med is not None
    p99s = ", ".join(f"{r.p99_ms:.0f}" for r in runs)
    return (
        f"  {target} {rate}/s: {len(runs)} runs, failed {sum(r.failed for r in runs)}, "
        f"p99 per run [{p99s}] ms, median {med.p99_ms:.0f} ms: "
        f"{'PASS' if rate_ok(results, target, rate) else 'fail'}"
    )


def best_rate(results: list[Run], target: str) -> int:
    """The highest rate that passed with every lower tested rate passing too (a rate
    that passes above one that failed is not a rate the path sustains)."""
    best = 0
    for rate in sorted({r.rate for r in results if r.target == target}):
        if not rate_ok(results, target, rate):
            break
        best = rate
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="100,200,300,500,750,1000")
    ap.add_argument("--kamailio-rates", default="500,1000,2000,3000,4000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds at 150/s first")
    ap.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    ap.add_argument("--no-kamailio", action="store_true")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per rate; a rate passes when no run failed a call and the median\n"
        "run's p99 is within the bound (this machine is shared: one run is noisy)",
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the edge and the worker")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="N > 1: measure one worker, then N workers, on 2N decision partitions",
    )
    args = ap.parse_args()
    for tool in ("sipp",) + (() if args.no_kamailio else ("kamailio",)):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: scripts/setup --bench installs it")
    rates = [int(r) for r in args.rates.split(",")]
    root = Path(tempfile.mkdtemp(prefix="trunkline-proxy-bench-"))
    bootstrap, paths = start_broker(root, args.bootstrap)
    results: list[Run] = []

    def measure(target: str, workers: int) -> None:
        """The rates through a stack of `workers` workers; runs go to `results`."""
        env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "3000"}
        numbers = [NUMBER]
        beats: tuple[tuple[str, str], ...] = (("backend-1", "us-east-1"),)
        if args.workers > 1:  # both stacks alike: only the number of workers differs
            partitions = 2 * args.workers
            config, numbers = spread_config(partitions)
            env["TRUNKLINE_DECISION_PARTITIONS"] = str(partitions)
            beats = tuple((b["id"], b["regionId"]) for b in config["backends"])
        else:
            config = roomy_config(1_000_000)
        with running_stack(
            bootstrap,
            root / f"stack-{workers}",
            edges=("edge-a",),
            config=config,
            capacity=1_000_000,
            env=env,
            workers=workers,
            heartbeat_backends=beats,
        ) as stack:
            port = stack.edges["edge-a"]
            assert stack.sink.proc is not None
            watch = {"edge": stack.procs[0].pid, "sink": stack.sink.proc.pid}
            for i, w in enumerate(stack.workers):
                assert w.proc is not None
                watch[f"worker{i + 1}" if workers > 1 else "worker"] = w.proc.pid
            broker_pid = kafka_local.read_pid(paths) if paths is not None else None
            if broker_pid:
                watch["broker"] = broker_pid
            # a fresh broker spends its first minute compiling (JIT): warm it up at a
            # moderate rate first, or the first rates measure the JVM, not the path
            run_sipp("warmup", port, 150, args.warmup, root / f"warmup-{workers}", None, numbers)
            print(speed_line(machine_speed()), flush=True)
            print(
                f"# {target}: SIP edge -> Kafka -> Faust admission -> routing -> edge; "
                f"{args.seconds:g} s per rate, p99 bound {P99_BOUND_MS:g} ms",
                flush=True,
            )
            for rate in rates:
                for i in range(args.repeat):
                    run = run_sipp(
                        target,
                        port,
                        rate,
                        args.seconds,
                        root / f"t{workers}-{rate}-{i}",
                        watch,
                        numbers,
                    )
                    results.append(run)
                    print(run.line(), flush=True)
                    time.sleep(4)  # let redirect reservations expire between runs
                print(verdict(results, target, rate), flush=True)
                print(speed_line(machine_speed()), flush=True)
            if args.profile:
                # an extra run, not counted: py-spy's sampling slows what it watches
                rate = rates[len(rates) // 2]
                pids = {k: v for k, v in watch.items() if k != "broker"}
                with ThreadPoolExecutor(1) as pool:
                    spied = pool.submit(profile, pids, args.seconds * 0.8, root)
                    run = run_sipp(
                        "profiled", port, rate, args.seconds, root / "prof", watch, numbers
                    )
                    for name, lines in spied.result().items():
                        print(f"## profile at {rate}/s (extra run, not counted), own time: {name}")
                        print("\n".join(lines))
                print(run.line(), flush=True)

    try:
        if args.workers > 1:
            for workers in (1, args.workers):
                measure(f"{workers}-worker" + ("s" if workers > 1 else ""), workers)
            print(f"\n# one worker vs {args.workers} (median runs; CPU per succeeded call)")
            for rate in rates:
                for target in ("1-worker", f"{args.workers}-workers"):
                    med = median_run(results, target, rate)
                    if med:
                        print(
                            f"  {target:10} {rate:>5}/s: achieved {med.achieved_cps:7.1f}/s, "
                            f"failed {med.failed}, p99 {med.p99_ms:6.1f} ms, worker CPU "
                            f"{med.cpu_ms_per_call('worker'):5.2f} ms/call, edge "
                            f"{med.cpu_ms_per_call('edge'):5.2f} ms/call, broker "
                            f"{med.cpu_ms_per_call('broker'):5.2f} ms/call"
                        )
        else:
            measure("trunkline", 1)
        if not args.no_kamailio:
            kport = free_port()
            k = start_kamailio(root / "kamailio", kport)
            try:
                print(
                    "# kamailio 5.6 stateless redirect: ACL, htable number lookup, dispatcher, 302",
                    flush=True,
                )
                for rate in sorted(set(rates + [int(r) for r in args.kamailio_rates.split(",")])):
                    for i in range(args.repeat):
                        run = run_sipp("kamailio", kport, rate, args.seconds, root / f"k{rate}-{i}")
                        results.append(run)
                        print(run.line(), flush=True)
                    print(verdict(results, "kamailio", rate), flush=True)
            finally:
                k.terminate()
                k.wait(10)
    finally:
        stop_broker(paths)
    ours = "1-worker" if args.workers > 1 else "trunkline"
    best = best_rate(results, ours)
    print(
        f"\ntrunkline: highest rate with 0 failures and median p99 <= {P99_BOUND_MS:g} ms, "
        f"every lower rate passing too ({args.repeat} runs per rate): "
        f"{best or 'none'}/s"
    )
    if not args.no_kamailio:
        kbest = best_rate(results, "kamailio")
        ktop = max(r.rate for r in results if r.target == "kamailio")
        print(
            f"kamailio:  highest rate with 0 failures and median p99 <= {P99_BOUND_MS:g} ms: "
            f"{kbest or 'none'}/s (highest tested {ktop}/s)"
        )
        if kbest:
            print(f"ratio trunkline/kamailio at the same p99 bound: {best / kbest:.3f}")
        for rate in rates:
            a, b = median_run(results, ours, rate), median_run(results, "kamailio", rate)
            if a and b:
                print(
                    f"  at {rate}/s (median runs): p99 {a.p99_ms:.1f} ms vs {b.p99_ms:.1f} ms, "
                    f"p50 {a.p50_ms:.1f} vs {b.p50_ms:.2f} ms"
                )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
