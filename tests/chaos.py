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

import json
import random
import re
import signal
import socket
import threading
import time
import urllib.request
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
    #: when the settle timed out: what the workers and ClickHouse held (`diagnose`)
    diagnosis: list[str] = field(default_factory=list)
    #: the legitimate calls' (INVITE sent, time.monotonic(); INVITE -> final ms)
    timeline: list[tuple[float, float]] = field(default_factory=list)

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
def _worker(w: Any) -> str:
    """A worker process as the diagnosis names it: its pid and log file."""
    pid = w.proc.pid if w.proc is not None else "-"
    return f"pid {pid} ({w.log.name if w.log else '-'})"


def kill_worker(s: Stack, rng: random.Random, load: Load, kills: int, log: list[str]) -> None:
    log.append(f"{_now()} worker {_worker(s.worker)} deciding")
    for i in range(kills):
        wait_routed(load, rng.randint(1, 40))
        killed = _worker(s.worker)
        s.worker.stop(signal.SIGKILL)
        log.append(f"{_now()} worker {killed} SIGKILL {i + 1} after {len(load.routed)} routed")
        s.worker.start(timeout=120)  # until /health/ says ready
        log.append(f"{_now()} worker {_worker(s.worker)} ready")


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
    """INVITEs from one source that never ACKs, at `rate` per second; returns how many.

    Every datagram is built before the clock starts (each a new transaction: its own
    Call-ID, branch and tag), so sending costs a `sendto` each, and the sends keep to a
    schedule (`rate` x elapsed, in bursts of 1% of a second): a sleep that overshoots is
    made up by the next burst instead of lowering the rate."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    via = f"{source}:{sock.getsockname()[1]}"
    datagrams = [
        (
            f"INVITE sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via};branch=z9hG4bKf{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:flood@{source}>;tag=f{i}\r\n"
            f"To: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: flood-{i}@{source}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:flood@{source}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for i in range(int(rate * seconds))
    ]
    target = ("127.0.0.1", port)
    sent, t0 = 0, time.monotonic()
    if not datagrams:  # rate 0: the same time, nothing sent
        time.sleep(seconds)
    while sent < len(datagrams):
        due = min(len(datagrams), int((time.monotonic() - t0) * rate) + rate // 100)
        for data in datagrams[sent:due]:
            try:
                sock.sendto(data, target)
            except OSError:
                pass
        sent = max(sent, due)
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
def _now() -> str:
    """Wall-clock time as the workers' logs and ClickHouse's event times show it (UTC)."""
    t = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


#: worker log lines that say what a process recovered, owned and could not do
WORKER_LOG_MARKS = (
    "newly assigned",
    "index rebuilt",
    "ticks recovered",
    "Recovery complete",
    "Restarting Recovery",
    "waiting for the broker",
    "no RoutingTick",
    "Discarded commit",
    "ERROR",
    "Traceback",
)


_CALL_ID = re.compile(r"[0-9A-Za-z-]+")


def _sql(s: Stack, query: str) -> Any:
    """One read-only query through the sink's /sql/ (columns, rows)."""
    request = urllib.request.Request(
        f"{s.sink.url}/sql/",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def diagnose(s: Stack, rows: dict[str, str], sample: int = 8) -> list[str]:
    """What a failed settle leaves to explain it (the stack still running): per live
    worker, routing's state of every call holding a plan slot, tallied, and the history
    of a few of them with their partitions; the calls ClickHouse holds in a non-final
    status, by status; and each worker process's recovery and assignment log lines."""
    from trunkline.core.kafka import partition_for

    out: list[str] = []
    n = s.settings.decision_partitions
    held: dict[str, str] = {}
    for w in s.workers:
        if not w.alive:
            continue
        try:
            active = w.get("/state/admission-active/")
            states = w.get("/state/admitted-routing/")
            out.append(
                f"worker {_worker(w)}: plan slots {sum(len(c) for c in active.values())} "
                f"by routing state {dict(Counter(states.values()))}; routing-open "
                f"{ {r: len(c) for r, c in w.get('/state/routing-open/').items()} }; "
                f"ticks {w.get('/state/routing-ticks/')}"
            )
            held.update(states)
        except OSError as exc:
            out.append(f"worker {_worker(w)}: state unavailable ({exc})")
    stuck = {c: st for c, st in rows.items() if st not in TERMINAL}
    out.append(f"non-final in ClickHouse: {dict(Counter(stuck.values()))}")
    calls = s.sink.get("/calls/?limit=10000")
    stuck_ids = [c["id"] for c in calls if c.get("provider_call_id") in stuck]
    sampled = list(dict.fromkeys([*sorted(held)[:sample], *stuck_ids[:sample]]))
    history: dict[str, list[str]] = {c: [] for c in sampled}
    if sampled:  # each event with when it reached Kafka and where (the timeline says who)
        listed = ", ".join(f"'{c}'" for c in sampled if _CALL_ID.fullmatch(c))
        try:
            got = _sql(
                s,
                "SELECT call_id, event_type, producer_id, published_at, kafka_partition, "
                f"kafka_offset FROM call_events WHERE call_id IN ({listed}) "
                "ORDER BY call_id, published_at, kafka_offset",
            )
            for call_id, kind, producer, published, part, offset in got["rows"]:
                history[call_id].append(f"{kind}({producer})@{published} p{part}/{offset}")
        except (OSError, ValueError, KeyError) as exc:
            out.append(f"call events unavailable: {exc}")
    for call_id in sampled:
        try:
            entry = s.sink.get(f"/calls/{call_id}/")
        except OSError:
            entry = {}
        business, region = entry.get("businessId") or "", entry.get("regionId") or ""
        out.append(
            f"call {call_id}: status {entry.get('status')}, routing {held.get(call_id, '-')}, "
            f"admission partition {partition_for(business.encode(), n) if business else '?'}, "
            f"routing partition {partition_for(region.encode(), n) if region else '?'}: "
            f"{', '.join(history[call_id]) or 'not in ClickHouse'}"
        )
    for log_file in sorted(s.settings.state_dir.glob("worker-*.log")):
        lines = log_file.read_text(errors="replace").splitlines()
        marked = [x[:300] for x in lines if any(m in x for m in WORKER_LOG_MARKS)]
        out.append(f"{log_file.name}: {len(lines)} lines, last {lines[-1][:40] if lines else ''}")
        out += [f"  {x}" for x in marked[-20:]]
    return out


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
    diagnosis = [] if done else diagnose(s, rows)
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
        diagnosis=diagnosis,
        timeline=sorted(t for x in loads for t in x.timeline),
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
