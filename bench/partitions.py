"""What idle partitions cost a worker: aiokafka names every assigned partition in every
fetch request and parses every one in every response (it has no incremental fetch
sessions), so a worker's CPU grows with the decision topics' partition count
(TRUNKLINE_DECISION_PARTITIONS) even when the partitions carry nothing.

For each count: one worker (it holds every partition: admission, routing, heartbeats and
the four table changelogs, plus the config topics and the leader topic), the worker's
CPU while the stack idles, and at a fixed low call rate through SIPp (one business, one
region: the other partitions stay idle), as % of one core and CPU ms per call.

    .venv/bin/python -m bench.partitions [--partitions 2,8,16] [--rate 20] [--seconds 20]
        [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench._util import machine_speed, speed_line, start_broker, stop_broker
from bench.proxy import cpu_seconds, run_sipp
from tests.stack import roomy_config, running_stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--partitions", default="2,8,16")
    ap.add_argument("--rate", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trunkline-partitions-bench-"))
    bootstrap, paths = start_broker(root, args.bootstrap)
    config = roomy_config(1_000_000)
    rows = []
    try:
        print(speed_line(machine_speed()), flush=True)
        for count in [int(p) for p in args.partitions.split(",")]:
            env = {
                "TRUNKLINE_DECISION_PARTITIONS": str(count),
                "TRUNKLINE_REDIRECT_TIMEOUT_MS": "3000",
            }
            with running_stack(
                bootstrap,
                root / f"stack-{count}",
                edges=("edge-a",),
                config=config,
                capacity=1_000_000,
                env=env,
            ) as stack:
                assert stack.worker.proc is not None
                pid = stack.worker.proc.pid
                time.sleep(5)  # let start-up work (recovery, first ticks) pass
                before, t0 = cpu_seconds(pid), time.monotonic()
                time.sleep(args.seconds)
                idle = (cpu_seconds(pid) - before) / (time.monotonic() - t0) * 100
                run = run_sipp(
                    f"{count} part",
                    stack.edges["edge-a"],
                    args.rate,
                    args.seconds,
                    root / f"sipp-{count}",
                    {"worker": pid},
                )
                assert run.cpu is not None
                line = (
                    f"{count:>3} decision partitions ({3 * count + 7} fetched): worker idle "
                    f"{idle:5.1f}% of a core; at {args.rate}/s {run.cpu['worker']:5.1f}% "
                    f"({run.cpu_ms_per_call('worker'):5.2f} ms/call), ok {run.succeeded}, "
                    f"failed {run.failed}, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms"
                )
                rows.append(line)
                print(line, flush=True)
        print(speed_line(machine_speed()), flush=True)
    finally:
        stop_broker(paths)
    print("\n".join(["", "# summary", *rows]))


if __name__ == "__main__":
    main()
