"""Produce -> worker -> ClickHouse (chDB) throughput over N CallOffered events.

Two figures:
  backlog:  N events already in the topic, then the worker starts; time from the worker's
            sink starting until all N are queryable in ClickHouse (the sink's own speed).
  live:     the worker runs while N events are produced; time from the first produce
            until all N are queryable (producer, broker and sink together).

    .venv/bin/python -m bench.sink [--n 100000] [--bootstrap HOST:PORT]

Without --bootstrap (or TRUNKLINE_KAFKA_BOOTSTRAP) it starts a broker of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench._util import start_broker, stop_broker
from schemas import SingleObjectCodec
from tests.harness import Service, Sink, free_port
from tests.samples import sample
from trunkline.core.admin import apply_all
from trunkline.core.kafka import make_producer
from trunkline.core.settings import Settings
from trunkline.core.topics import CALL_EVENTS


def produce(s: Settings, n: int, tag: str) -> float:
    codec = SingleObjectCodec()
    producer = make_producer(s.kafka_bootstrap, **{"linger.ms": 20, "batch.size": 1_000_000})
    topic = CALL_EVENTS.name(s.topic_prefix)
    template = sample("CallOffered")
    t0 = time.perf_counter()
    for i in range(n):
        call_id = f"{tag}-{i}"
        template["envelope"] = {
            "event_id": str(uuid.uuid4()),
            "call_id": call_id,
            "occurred_at": int(time.time() * 1000),
            "producer_id": "bench",
        }
        value = codec.encode("CallOffered", template)
        while True:
            try:
                producer.produce(topic, key=call_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - t0


def settings_for(bootstrap: str, state: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(state),
            "TRUNKLINE_KAFKA_BOOTSTRAP": bootstrap,
            "TRUNKLINE_TOPIC_PREFIX": f"bench{tag}.",
            "TRUNKLINE_APP_ID": f"bench-{tag}",
            "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
        }
    )


def wait_count(w: Service, n: int, timeout: float = 600) -> float:
    """Poll the sink's counter (cheap), then confirm the count with one ClickHouse query."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if w.get("/health/")["sink"]["inserted"] >= n:
            done = time.perf_counter()
            counted = w.get("/events/counts/").get("CallOffered", 0)
            if counted != n:
                raise SystemExit(f"sink says {n} inserted but ClickHouse counts {counted}")
            return done
        time.sleep(0.02)
    raise SystemExit(f"not all {n} events arrived within {timeout}s")


def run(bootstrap: str, n: int, root: Path) -> None:
    # backlog
    s = settings_for(bootstrap, root / "backlog")
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    p_secs = produce(s, n, "b")
    w = Sink(s)
    w.start()
    t0 = time.perf_counter()  # the sink is alive: it starts consuming now
    t1 = wait_count(w, n)
    stats = w.get("/health/")["sink"]
    w.stop()
    batch = stats["inserted"] / max(stats["batches"], 1)
    busy = stats["last_commit_at"] - stats["first_message_at"]
    print(f"producer alone: {n} events in {p_secs:.2f}s = {n / p_secs:,.0f} events/s")
    print(
        f"backlog, sink only (first record consumed -> last batch committed): {n} events in "
        f"{busy:.2f}s = {n / busy:,.0f} events/s ({stats['batches']} inserts, "
        f"mean batch {batch:,.0f} rows, batch size 10,000)"
    )
    print(
        f"backlog, wall (incl. the sink's consumer-group join): {t1 - t0:.2f}s = "
        f"{n / (t1 - t0):,.0f} events/s"
    )
    # live
    s = settings_for(bootstrap, root / "live")
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    w = Sink(s)
    w.start()
    t0 = time.perf_counter()
    produce(s, n, "l")
    t1 = wait_count(w, n)
    stats = w.get("/health/")["sink"]
    w.stop()
    batch = stats["inserted"] / max(stats["batches"], 1)
    print(
        f"live: {n} events produced and in ClickHouse in {t1 - t0:.2f}s = "
        f"{n / (t1 - t0):,.0f} events/s ({stats['batches']} inserts, mean batch {batch:,.0f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--bootstrap", default=os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trunkline-bench-"))
    try:
        if args.bootstrap:
            run(args.bootstrap, args.n, root)
            return
        bootstrap, paths = start_broker(root)
        try:
            run(bootstrap, args.n, root)
        finally:
            stop_broker(paths)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
