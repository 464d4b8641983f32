"""The local stack: `up` (broker, topics, config, the services, media nodes; waiting until
each is healthy), `down` (everything `up` started) and `status` (what runs where).

The broker is managed here only when the operator did not point the stack at one
(TRUNKLINE_KAFKA_BOOTSTRAP): `manage_broker` says which. Every child process gets the
stack's settings in its environment (`Settings.to_env`), so flags given to `up` reach
the services it starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trunkline.core import procs
from trunkline.core.admin import TopicResult
from trunkline.core.settings import Settings
from trunkline.stack import broker, config, topics
from trunkline.stack.base import QUIET, Progress, StackError
from trunkline.stack.services import (
    HEARTBEATS,
    LOCAL_SERVICES,
    MEDIA_PREFIX,
    Service,
    cli_argv,
    live_backends,
    local_media_nodes,
)

#: how many characters of a failed service's log an error quotes
LOG_TAIL = 2000


@dataclass(frozen=True)
class UpOptions:
    config: Path = config.DEFAULT_CONFIG
    heap: str = "512m"  # the local broker's JVM heap
    timeout: float = 120.0  # seconds to wait for each service
    simulate_backends: bool = False  # run the heartbeat stand-in
    manage_broker: bool = True  # start a local broker (no TRUNKLINE_KAFKA_BOOTSTRAP)


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    detail: str


@dataclass(frozen=True)
class UpReport:
    broker: broker.BrokerStarted | None
    topics: list[TopicResult]
    config: config.ConfigApplied
    started: list[Started]
    logs: Path


@dataclass(frozen=True)
class DownReport:
    stopped: dict[str, bool]  # process name -> it was running
    broker: broker.BrokerStopped | None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    log: str
    health: Any  # the probe's answer, "not answering", or None when not running
    address_key: str = "web"
    health_key: str = "health"

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            self.address_key: self.address,
            "log": self.log,
            self.health_key: self.health,
        }


@dataclass(frozen=True)
class StackStatus:
    state_dir: Path
    bootstrap: str
    broker: broker.BrokerStatus
    manage_broker: bool
    services: list[ServiceStatus]
    media_nodes: dict[str, int | None]
    heartbeats_standin: int | None
    clickhouse: str
    topic_prefix: str

    @property
    def ok(self) -> bool:
        """The broker runs, or it is not ours to run."""
        return self.broker.running or not self.manage_broker

    def as_dict(self) -> dict[str, Any]:
        """The JSON document `trunkline status --json` prints."""
        return {
            "state_dir": str(self.state_dir),
            "kafka": {**self.broker.as_dict(), "bootstrap": self.bootstrap},
            **{svc.name.replace("-", "_"): svc.as_dict() for svc in self.services},
            "media_nodes": self.media_nodes,
            "heartbeats_standin": self.heartbeats_standin,
            "clickhouse": self.clickhouse,
            "topic_prefix": self.topic_prefix,
        }


def _exited(s: Settings, name: str) -> StackError:
    log = procs.log_file(s.state_dir, name)
    return StackError(
        f"the {name} exited; log {log}:\n{procs.log_tail(s.state_dir, name, LOG_TAIL)}"
    )


def _start(s: Settings, name: str, args: list[str]) -> int:
    return procs.start(s.state_dir, name, cli_argv(*args), s.to_env())


def wait_ready(s: Settings, svc: Service, timeout: float) -> str:
    last: list[Any] = []  # the last health read, for the timeout's message

    def ready() -> str | None:
        if procs.running_pid(s.state_dir, svc.name) is None:
            raise _exited(s, svc.name)
        health = svc.probe(s)
        last[:] = [health]
        return svc.ready(s, health)

    try:
        return procs.wait_until(
            ready,
            timeout,
            f"the {svc.name} to become healthy at {svc.address(s)}",
            interval=0.3,
            retry_on=(OSError, ValueError, KeyError, TypeError),
        )
    except procs.WaitTimeout as exc:
        waiting = last[0].get("waiting_for") if last and isinstance(last[0], dict) else None
        raise StackError(
            f"{exc}; waiting for: {'; '.join(waiting)}" if waiting else str(exc)
        ) from None


def _wait_live(s: Settings, heartbeaters: dict[str, str], timeout: float) -> None:
    """Until routing holds a fresh heartbeat from each backend (backend id -> the process
    that heartbeats for it: its media node or the stand-in), so the first call after `up`
    finds them live."""
    backend_ids = set(heartbeaters)

    def all_live() -> bool:
        for name in set(heartbeaters.values()):
            if procs.running_pid(s.state_dir, name) is None:
                raise _exited(s, name)
        return backend_ids <= live_backends(s, int(time.time() * 1000))

    try:
        procs.wait_until(
            all_live,
            timeout,
            f"routing to see {', '.join(sorted(backend_ids))} live",
            interval=0.3,
            retry_on=(OSError, ValueError, KeyError, TypeError),
        )
    except procs.WaitTimeout as exc:
        raise StackError(str(exc)) from None


def up(s: Settings, options: UpOptions, progress: Progress = QUIET) -> UpReport:
    """Start what is not running yet and wait until each part is healthy. Idempotent."""
    cfg = config.load(options.config)  # refuse a bad config before starting anything
    s.state_dir.mkdir(parents=True, exist_ok=True)
    started_broker = None
    if options.manage_broker:
        with progress.step("Kafka broker (KRaft, single node)") as step:
            started_broker = broker.start(s, options.heap)
            step.update(f"pid {started_broker.pid}, bootstrap {started_broker.bootstrap}")
    applied_topics = topics.apply(s, progress)
    applied = config.apply(s, options.config, cfg, progress=progress)
    started: list[Started] = []
    for svc in LOCAL_SERVICES:
        with progress.step(svc.title) as step:
            pid = _start(s, svc.name, svc.args(s))
            step.update(f"pid {pid}, waiting for {svc.address(s)}")
            detail = wait_ready(s, svc, options.timeout)
            step.update(f"pid {pid}, {detail}")
            started.append(Started(svc.name, pid, detail))
    backends: dict[str, str] = {}  # backend id -> the process that heartbeats for it
    for node in local_media_nodes(cfg):
        with progress.step(f"media node {node.backend_id} ({node.region_id})") as step:
            pid = _start(s, node.name, node.args())
            detail = f"SIP {node.sip_address}, media WebSockets {node.ws_listen}"
            step.update(f"pid {pid}, {detail}")
            started.append(Started(node.name, pid, detail))
            backends[node.backend_id] = node.name
    if options.simulate_backends:
        with progress.step("simulated backend heartbeats") as step:
            pid = _start(s, HEARTBEATS, ["heartbeats"])
            detail = "routing sees the configured backends as live"
            step.update(f"pid {pid}, {detail}")
            started.append(Started(HEARTBEATS, pid, detail))
            for rec in cfg.section("backends").values():
                backends.setdefault(rec.key, HEARTBEATS)
    if backends:
        with progress.step("routing sees the backends' heartbeats") as step:
            _wait_live(s, backends, options.timeout)
            step.update(", ".join(sorted(backends)))
    return UpReport(started_broker, applied_topics, applied, started, s.state_dir / "logs")


def down(
    s: Settings, wipe: bool = False, manage_broker: bool = True, progress: Progress = QUIET
) -> DownReport:
    """Stop the heartbeat stand-in, the media nodes, the services (in reverse order of
    `up`) and, when it is ours, the broker (`wipe`: and delete its data)."""
    names = [HEARTBEATS, *procs.running_names(s.state_dir, MEDIA_PREFIX)]
    names += [svc.name for svc in reversed(LOCAL_SERVICES)]
    stopped: dict[str, bool] = {}
    for name in names:
        with progress.step(f"stop {name}") as step:
            stopped[name] = procs.stop(s.state_dir, name)
            step.update("stopped" if stopped[name] else "was not running")
    stopped_broker = None
    if manage_broker:
        with progress.step("stop the Kafka broker") as step:
            stopped_broker = broker.stop(s, wipe)
            step.update("stopped" if stopped_broker.was_running else "was not running")
    return DownReport(stopped, stopped_broker)


def _service_status(s: Settings, svc: Service) -> ServiceStatus:
    pid = procs.running_pid(s.state_dir, svc.name)
    health: Any = None
    if pid is not None:
        try:
            health = svc.probe(s)
        except (OSError, ValueError):
            health = "not answering"
    return ServiceStatus(
        svc.name,
        pid is not None,
        pid,
        svc.address(s),
        str(procs.log_file(s.state_dir, svc.name)),
        health,
        svc.address_key,
        svc.health_key,
    )


def status(s: Settings, manage_broker: bool = True) -> StackStatus:
    return StackStatus(
        state_dir=s.state_dir,
        bootstrap=s.kafka_bootstrap,
        broker=broker.status(s),
        manage_broker=manage_broker,
        services=[_service_status(s, svc) for svc in LOCAL_SERVICES],
        media_nodes={
            name: procs.running_pid(s.state_dir, name)
            for name in procs.running_names(s.state_dir, MEDIA_PREFIX)
        },
        heartbeats_standin=procs.running_pid(s.state_dir, HEARTBEATS),
        clickhouse=s.clickhouse_dsn,
        topic_prefix=s.topic_prefix,
    )
