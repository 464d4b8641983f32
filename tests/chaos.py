"""Chaos scenarios under a steady SIP load, shared by `bench/chaos.py` (every scenario,
long) and the `-m chaos` tests (short kill loops): a process is SIGKILLed at random
points (a random number of decided calls after it is ready again, never after a fixed
sleep), the broker restarts or stays away, or one source floods the edge. Then the
load stops, the stack settles, and the outcome is counted:

- offered: INVITEs sent (by SIP Call-ID); answered: final answers by code;
- in ClickHouse / terminal: offered calls the history holds, and those in a final status;
- held: plan slots (admission-active) and backend slots (routing-held) still held once
  every call ended (the load's calls end by routing's redirect deadline, the media
  callers' by BYE);
- lost: calls that got a final answer but are missing from ClickHouse; leaked: slots
  held after settling; stuck: calls in ClickHouse that never reach a final status.
  The target is 0 / 0 / 0. `unanswered` INVITEs (only when the edge itself is killed:
  a real caller retransmits to the restarted edge) are reported apart.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.load import Load
from tests.stack import Stack

TERMINAL = {"Rejected", "Failed", "Completed", "Cancelled"}
NUMBER = "+15550000002"  # b-main, plan and backend room for everything


@dataclass
class Outcome:
    scenario: str
    offered: int
    answered: Counter[int]
    unanswered: int
    in_clickhouse: int
    terminal: int
    held_plan: int
    held_backend: int
    p99_ms: float
    lost: int
    leaked: int
    stuck: int
    events: list[str] = field(default_factory=list)  # what was done, when
    media_calls: int = 0
    unlogged: int = 0  # 503 "event log unavailable": refused at the door, never published
    unrated: int = -1  # terminal calls without a billing record (-1: billing not checked)
    undelivered: int = -1  # terminal calls without their call.ended webhook (-1: unchecked)
    call_ids: set[str] = field(default_factory=set)  # the load's calls in ClickHouse

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.leaked == 0
            and self.stuck == 0
            and self.unrated <= 0
            and self.undelivered <= 0
        )

    def line(self) -> str:
        codes = " ".join(f"{c}:{n}" for c, n in sorted(self.answered.items()))
        return (
            f"{self.scenario:18} offered {self.offered:5} answered [{codes}] unanswered "
            f"{self.unanswered} | ClickHouse {self.in_clickhouse} terminal {self.terminal} | "
            f"held plan {self.held_plan} backend {self.held_backend} | legit p99 "
            f"{self.p99_ms:7.1f} ms | lost {self.lost} leaked {self.leaked} stuck {self.stuck}"
            + (f" | media calls {self.media_calls}" if self.media_calls else "")
            + (f" | refused unlogged {self.unlogged}" if self.unlogged else "")
            + (f" | unrated {self.unrated}" if self.unrated >= 0 else "")
            + (f" | undelivered {self.undelivered}" if self.undelivered >= 0 else "")
            + ("  OK" if self.ok else "  FAIL")
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_routed(load: Load, more: int, timeout: float = 90) -> None:
    """Until `more` further calls got their 302 (the random point of a kill)."""
    seen = len(load.routed)
    deadline = time.monotonic() + timeout
    while len(load.routed) < seen + more:
        assert time.monotonic() < deadline, f"no progress: {load.finals}"
        time.sleep(0.01)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.1)


# -- the faults ---------------------------------------------------------------------------
def kill_worker(s: Stack, rng: random.Random, load: Load, kills: int, log: list[str]) -> None:
    for i in range(kills):
        wait_routed(load, rng.randint(1, 40))
        s.worker.stop(signal.SIGKILL)
        log.append(f"worker SIGKILL {i + 1} after {len(load.routed)} routed")
        s.worker.start(timeout=120)  # until /health/ says ready


def kill_sink(s: Stack, rng: random.Random, load: Load, kills: int, log: list[str]) -> None:
    kill_service(s.sink, rng, load, kills, log)


def kill_service(service: Any, rng: random.Random, load: Load, kills: int, log: list[str]) -> None:
    """SIGKILL a `tests.harness.Service` (sink, billing worker...) at random points and
    start it again, waiting until it is healthy."""
    for i in range(kills):
        wait_routed(load, rng.randint(1, 40))
        service.stop(signal.SIGKILL)
        log.append(f"{service.command} SIGKILL {i + 1} after {len(load.routed)} routed")
        service.start(timeout=120)


def kill_named(
    s: Stack,
    name: str,
    rng: random.Random,
    load: Load,
    kills: int,
    log: list[str],
    ready: Callable[[float], bool] | None = None,
) -> None:
    """SIGKILL an edge or a media node by name and start it again on the same ports;
    `ready(since)`, when given, must hold before each kill (e.g. the node has live calls
    again: `since` is the wall time, in s, its current process started)."""
    since = 0.0
    for i in range(kills):
        wait_routed(load, rng.randint(5, 40))
        if ready is not None:
            wait_until(lambda t=since: ready(t), 90, f"{name} ready to be killed")
        proc = s.named[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        log.append(f"{name} SIGKILL {i + 1} after {len(load.routed)} routed")
        since = time.time()
        s.restart[name]()


def live_calls_on(s: Stack, backend_id: str) -> Callable[[float], bool]:
    """For `kill_named`: the node's process started at `since` or later announces live
    calls in its heartbeat (as the worker holding it sees it)."""

    def ready(since: float) -> bool:
        for w in s.workers:
            beat = w.get("/state/routing-heartbeats/").get(backend_id) if w.alive else None
            if (
                beat
                and beat.get("started_at", 0) >= since * 1000 - 1000
                and beat["active_calls"] > 0
            ):
                return True
        return False

    return ready


def restart_broker(
    paths: Any, cache: Any, port: int, controller: int, away: float, log: list[str]
) -> None:
    """Stop the (private) broker, keep it away at least `away` s, start it again."""
    from trunkline.core import kafka_local

    stopped = time.monotonic()
    kafka_local.stop(paths)
    log.append(f"broker stopped for {away:g} s")
    time.sleep(max(0.0, away - (time.monotonic() - stopped)))
    kafka_local.start(paths, cache, port, controller)
    log.append(f"broker back after {time.monotonic() - stopped:.1f} s")


def flood(port: int, seconds: float, rate: int = 2000, source: str = "127.0.0.2") -> int:
    """INVITEs from one source that never ACKs, at `rate` per second; returns how many."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(rate // 100):
            cid = f"flood-{sent}@{source}"
            msg = (
                f"INVITE sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {source}:{sock.getsockname()[1]};branch=z9hG4bKf{sent}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:flood@{source}>;tag=f{sent}\r\n"
                f"To: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:flood@{source}>\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            try:
                sock.sendto(msg, ("127.0.0.1", port))
            except OSError:
                pass
            sent += 1
        time.sleep(0.01)
    sock.close()
    return sent


class MediaCallers:
    """Real calls through the edge to the media node (302, INVITE, 200, RTP, BYE), a few
    at a time, so a media node holds live calls when it is killed."""

    def __init__(self, host: str, port: int, parallel: int = 4, seconds: float = 3.0) -> None:
        from media.caller import place_call

        self._place = place_call
        self.host, self.port, self.seconds = host, port, seconds
        self.results: list[Any] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(parallel)]

    def start(self) -> MediaCallers:
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(self._place(self.host, self.port, NUMBER, seconds=self.seconds))
            except Exception as exc:  # a killed node: the call fails, the caller goes on
                self.results.append(exc)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


# -- settling and counting ---------------------------------------------------------------
def held(s: Stack) -> tuple[int, int]:
    """(plan slots, backend slots) the live workers hold."""
    plan = backend = 0
    for w in s.workers:
        if not w.alive:
            continue
        plan += sum(len(c) for c in w.get("/state/admission-active/").values())
        backend += sum(w.get("/state/routing-held/").values())
    return plan, backend


def settle_and_count(
    s: Stack,
    scenario: str,
    loads: list[Load],
    events: list[str],
    settle_s: float = 90,
    media: MediaCallers | None = None,
    billing: bool = False,
) -> Outcome:
    """Every call should end (routing's redirect deadline, BYE) and be terminal in
    ClickHouse with nothing held; wait for that up to `settle_s`, then count."""
    offered = [c for x in loads for c in x.offered]
    answered: dict[str, int] = {}
    unlogged: set[str] = set()
    for x in loads:
        answered.update(x.answered)
        unlogged |= x.unlogged
    logged = set(answered) - unlogged  # every call the edge published must be in history
    offered_set = set(offered)
    # the media callers' calls, by queue id (each got a 302 and went to the media node)
    media_ids = {
        r.queue_id for r in (media.results if media else []) if getattr(r, "queue_id", None)
    }
    deadline = time.monotonic() + settle_s
    rows: dict[str, str] = {}
    plan = backend = -1
    while True:
        calls = s.sink.get("/calls/?limit=10000")
        rows = {
            c["provider_call_id"]: c["status"]
            for c in calls
            if c.get("provider_call_id") in offered_set
        }
        media_rows = {c["id"]: c["status"] for c in calls if c["id"] in media_ids}
        ids = {c["id"] for c in calls if c.get("provider_call_id") in offered_set}
        unrated = -1
        if billing:  # every finished call is rated once (the billing worker)
            rated = {r["call_id"] for r in s.sink.get("/billing/?limit=10000")}
            unrated = len((ids | set(media_rows)) - rated)
        try:
            plan, backend = held(s)
        except OSError:
            plan = backend = -1
        done = (
            logged <= set(rows)
            and media_ids <= set(media_rows)
            and all(st in TERMINAL for st in [*rows.values(), *media_rows.values()])
            and plan == 0
            and backend == 0
            and unrated <= 0
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    codes = Counter(answered.values())
    latencies = [ms for x in loads for ms in x.latencies_ms]
    return Outcome(
        scenario=scenario,
        offered=len(offered),
        answered=codes,
        unanswered=len(offered_set - set(answered)),
        in_clickhouse=len(rows),
        terminal=sum(st in TERMINAL for st in rows.values()),
        held_plan=plan,
        held_backend=backend,
        p99_ms=percentile(latencies, 0.99),
        lost=len(logged - set(rows)) + len(media_ids - set(media_rows)),
        leaked=max(plan, 0) + max(backend, 0),
        stuck=sum(st not in TERMINAL for st in [*rows.values(), *media_rows.values()]),
        events=events,
        media_calls=len(media_ids),
        unlogged=len(unlogged),
        unrated=unrated,
        call_ids=ids | set(media_rows),
    )


def with_load(
    s: Stack,
    scenario: str,
    fault: Callable[[Load, list[str]], None],
    rate: float = 20,
    settle_s: float = 90,
    media_callers: int = 0,
    billing: bool = False,
) -> Outcome:
    """Start the load (and media callers), run `fault`, let some more calls through,
    stop, settle, count."""
    load = Load(s.uac(), NUMBER, rate=rate).start()
    media = (
        MediaCallers("127.0.0.1", s.edges["edge-a"], media_callers).start()
        if media_callers
        else None
    )
    events: list[str] = []
    try:
        wait_routed(load, 10)
        fault(load, events)
        wait_routed(load, 20, timeout=150)  # deciding again after the last fault
    finally:
        load.stop()
        if media:
            media.stop()
    return settle_and_count(s, scenario, [load], events, settle_s, media, billing)
