"""Replay's billing machine alone: CPU us per call event, without decoding or rows.

bench.replay's "tables" stage runs the billing machine and the ClickHouse rows together;
this one decodes the same generated events once (bench.replay.generate), then, pinned to
one core with the cyclic GC paused as the command pauses it, times
`Rebuilder.run_machines` over them and then the table the machine yields
(`Rebuilder.tables()`, the JSON values made once), best of 5. It prints a digest of what
the machine emitted and of its table, which must not change with the code's speed.

    .venv/bin/python -m bench.replay_billing [--events 200000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import time

import orjson

from bench._util import machine_speed, speed_line
from bench.replay import CONFIG, T0, generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="call events (default 200k)")
    args = p.parse_args()
    from schemas.codec import SingleObjectCodec
    from streams import billing, routing
    from streams.rebuild import LogRecord, Rebuilder, pause_gc, resume_gc, table_digests
    from trunkline.core import native

    speeds = machine_speed()
    print(speed_line(speeds))
    build = native.state(native.ROOT / "streams" / "billing.py")
    print(f"# streams.billing: {billing.__file__} ({build})")
    decode = SingleObjectCodec().decode
    records = [LogRecord("call-events", p, o, T0, *decode(v)) for p, o, v in generate(args.events)]
    n = len(records)
    core = max(range(len(speeds)), key=lambda i: speeds[i])
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[core]})
    machines = table = float("inf")
    for _ in range(5):
        gc.collect()
        was = pause_gc()
        r = Rebuilder(CONFIG, routing.Settings(), lambda t, row: None)
        emits = []
        c0 = time.process_time()
        for rec in records:
            emits.extend(r.run_machines(rec))
        c1 = time.process_time()
        tables = r.tables()
        c2 = time.process_time()
        resume_gc(was)
        machines, table = min(machines, c1 - c0), min(table, c2 - c1)
    h = hashlib.sha256()
    for e in emits:
        h.update(orjson.dumps([e.dest, e.key, e.name, e.record], default=str,
                              option=orjson.OPT_SORT_KEYS))  # fmt: skip
    digest = table_digests(tables)["billing-calls"]
    print(f"# {len(emits):,} CallRated, sha256 {h.hexdigest()[:16]}; billing-calls {digest}")
    print(f"billing machine: CPU {machines / n * 1e6:.2f} us/event, its table "
          f"{table / n * 1e6:.2f} us/event, together {(machines + table) / n * 1e6:.2f} "
          f"({n:,} events, best of 5, one core)")  # fmt: skip


if __name__ == "__main__":
    main()
