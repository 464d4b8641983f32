"""`trunkline replay rebuild`'s speed, without the broker: events per second on one core.

It generates N call events with a realistic mix of lifecycles (per call: 70% answered
SIP calls, offer -> admitted -> routed -> accepted -> answered -> ended; 15% refused by
admission; 10% cancelled before a media node took them; 5% Twilio calls with a ringing
report), Avro-encoded as the topics hold them, spread over call-events' six partitions.
Then, pinned to one core, best of 3 for each stage:

  decoding     the codec over every record (schemas/codec.py)
  tables       the machines re-run (the billing machine over call-events, its table
               made at the end) and the ClickHouse rows projected (streams/rebuild.py,
               streams/projection.py)
  ClickHouse   the rows as Arrow batches of 50,000, inserted 200,000 at a time (one part
               each), into a shadow table in a fresh chDB
               (streams/arrow_blocks.py, streams/shadow.py)
  end to end   all of it in one pass, as the command does after reading a batch

Each stage prints events/s of wall time and the process's CPU time per event (all its
threads: chDB's included), which a busy machine moves less than the wall time.

Floor: 50,000 events/s end to end (aim 100,000). Reading from Kafka is not included
(`bench.sink` measures a consumer).

    .venv/bin/python -m bench.replay [--events 1000000] [--allocator-defaults]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._util import machine_speed, speed_line

T0 = 1_780_000_000_000
FLOOR, AIM = 50_000, 100_000


def generate(n: int) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of `n` call events, each call's events in its partition."""
    import random

    from schemas.codec import SingleObjectCodec
    from tests.samples import sample
    from trunkline.core.kafka import partition_for

    codec = SingleObjectCodec()
    rnd = random.Random(7)
    offsets = [0] * 6
    out: list[tuple[int, int, bytes]] = []
    call = 0
    while len(out) < n:
        call += 1
        call_id = str(uuid.UUID(int=rnd.getrandbits(128)))
        at = T0 + call * 7
        kind = rnd.random()
        if kind < 0.70:
            names = ["CallOffered", "CallAdmitted", "CallRouted", "CallAccepted",
                     "CallAnswered", "CallEnded"]  # fmt: skip
        elif kind < 0.85:
            names = ["CallOffered", "CallRejected"]
        elif kind < 0.95:
            names = ["CallOffered", "CallAdmitted", "CallRouted", "CallEnded"]
        else:
            names = ["CallOffered", "CallAdmitted", "CallRouted", "CallProgress",
                     "CallAnswered", "CallEnded"]  # fmt: skip
        p = partition_for(call_id.encode(), 6)
        for i, name in enumerate(names):
            record: dict[str, Any] = sample(name, call_id, at + i * 300)
            record["envelope"]["event_id"] = f"{call_id}/{i}"
            if name == "CallEnded":
                record["reason"] = "cancelled" if len(names) == 4 else "completed"
                record["talk_ms"] = rnd.randrange(1_000, 600_000)
            if "CallProgress" in names and name == "CallOffered":
                record.update(provider="TWILIO", provider_call_id=f"CA{call}")
            out.append((p, offsets[p], codec.encode(name, record)))
            offsets[p] += 1
    return out[:n]


CONFIG: dict[str, dict[str, Any]] = {
    "businesses": {"123": {"id": "123", "plan_id": "starter"}},
    "plans": {"starter": {"id": "starter", "rate_plan_id": "std", "max_concurrent_calls": 100}},
    "ratePlans": {
        "std@1": {
            "envelope": {"event_id": "config-std-1"}, "id": "std", "version": 1,
            "effective_from": T0 - 86_400_000, "currency": "USD",
            "inbound_per_minute": "0.0085", "outbound_per_minute": "0.0140",
            "connect_fee": "0.0010", "increment_first": 30, "increment_step": 6,
            "minimum_seconds": 0,
        }
    },
}  # fmt: skip


def best(fn: Any, rounds: int = 3) -> tuple[float, float]:
    """The least wall and the least CPU seconds (time.process_time) of `rounds` runs, the
    cyclic GC paused as the command pauses it (streams.rebuild.pause_gc)."""
    from streams.rebuild import pause_gc, resume_gc

    wall, cpu = [], []
    for _ in range(rounds):
        gc.collect()
        gc_was = pause_gc()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        resume_gc(gc_was)
    return min(wall), min(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="call events (default 1M)")
    p.add_argument(
        "--allocator-defaults",
        action="store_true",
        help="leave chDB's, pyarrow's and glibc's allocators as they start (the command\n"
        "keeps freed pages for reuse: trunkline/core/memory.py)",
    )
    args = p.parse_args()
    from trunkline.core.memory import keep_freed_memory

    if not args.allocator_defaults:
        keep_freed_memory(None)  # as `trunkline replay rebuild` loads chDB and pyarrow
    from schemas.codec import SingleObjectCodec
    from streams import routing
    from streams.clickhouse import ClickHouseStore
    from streams.rebuild import Rebuilder
    from trunkline.stack.replay import LocalShadow, _Blocks

    speeds = machine_speed()
    print(speed_line(speeds))
    t0 = time.perf_counter()
    values = generate(args.events)
    print(f"# generated {len(values):,} events in {time.perf_counter() - t0:.1f} s")
    # one core: the one that was least busy (the machine is shared); chDB's threads
    # inherit the affinity, so its inserts run on the same core
    core = max(range(len(speeds)), key=lambda i: speeds[i])
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[core]})
    print(f"# pinned to core {core}")
    codec = SingleObjectCodec()
    decode = codec.decode
    n = len(values)

    decoded: list[tuple[int, int, str, dict[str, Any]]] = []

    def decoding() -> None:
        decoded.clear()
        decoded.extend((p, o, *decode(v)) for p, o, v in values)

    def tables(rows: Any = None) -> Rebuilder:
        sink = rows if rows is not None else (lambda table, row: None)
        r = Rebuilder(CONFIG, routing.Settings(), sink)
        feed = r.feed
        for p, o, name, record in decoded:
            feed("call-events", p, o, T0, name, record, True, True)
        r.tables()
        return r

    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        store = ClickHouseStore(f"chdb://{tmp}/chdb")
        store.ensure_schema()
        target = LocalShadow(store)
        collected: list[tuple[str, Any]] = []
        decoding()
        tables(lambda table, row: collected.append((table, row)))

        def clickhouse() -> None:
            target.create(("call_events_log",))
            blocks = _Blocks(target)
            for table, row in collected:
                blocks.add(table, row)
            blocks.flush()

        def end_to_end() -> None:
            target.create(("call_events_log",))
            blocks = _Blocks(target)
            r = Rebuilder(CONFIG, routing.Settings(), blocks.add)
            feed = r.feed
            for p, o, v in values:
                name, record = decode(v)
                feed("call-events", p, o, T0, name, record, True, True)
            blocks.flush()
            r.tables()

        s_decode = best(decoding)
        s_tables = best(tables)
        s_ch = best(clickhouse)
        stored = store.query("SELECT count() AS n FROM trunkline.call_events_log__shadow")[0]["n"]
        assert stored == n, f"{stored} rows stored of {n}"
        # the earlier stages' records and rows, freed: the command holds neither
        decoded.clear()
        collected.clear()
        s_all = best(end_to_end)
        rows = store.query("SELECT count() AS n FROM trunkline.call_events_log__shadow")[0]["n"]
        assert rows == n, f"{rows} rows stored of {n}"
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for what, (secs, cpu) in (("decoding", s_decode), ("tables (billing machine + rows)", s_tables),
                              ("ClickHouse (Arrow blocks into chDB)", s_ch)):  # fmt: skip
        print(f"{what}: {n / secs:,.0f} events/s, CPU {cpu / n * 1e6:.2f} us/event")
    rate = n / s_all[0]
    verdict = "pass" if rate >= FLOOR else "FAIL"
    print(f"end to end: {rate:,.0f} events/s on one core, CPU {s_all[1] / n * 1e6:.2f} us/event "
          f"({n:,} events; floor {FLOOR:,}, aim {AIM:,}): {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
