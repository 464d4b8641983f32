"""The local single-node KRaft broker as stack steps (trunkline.core.kafka_local does
the work; this translates its results and errors for the operator's commands)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from trunkline.core import kafka_local
from trunkline.core.admin import BrokerUnavailable
from trunkline.core.settings import Settings
from trunkline.stack.base import StackError


@dataclass(frozen=True)
class BrokerStarted:
    pid: int
    bootstrap: str
    log: Path


@dataclass(frozen=True)
class BrokerStopped:
    was_running: bool
    wiped: Path | None = None


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    port: int | None
    log: str
    data: str

    def as_dict(self) -> dict[str, object]:
        return {
            "running": self.running,
            "pid": self.pid,
            "port": self.port,
            "log": self.log,
            "data": self.data,
        }


def paths(s: Settings) -> kafka_local.BrokerPaths:
    return kafka_local.BrokerPaths(s.state_dir / "kafka")


def fetch(s: Settings) -> Path:
    """Download the broker's jars into the cache (once); return their folder."""
    try:
        return kafka_local.fetch_jars(s.cache_dir)
    except kafka_local.KafkaLocalError as exc:
        raise StackError(str(exc)) from exc


def start(s: Settings, heap: str = "512m") -> BrokerStarted:
    """Start the broker on TRUNKLINE_KAFKA_PORT unless it runs; return once it answers."""
    p = paths(s)
    try:
        pid = kafka_local.start(p, s.cache_dir, s.kafka_port, s.kafka_controller_port, heap=heap)
    except (kafka_local.KafkaLocalError, BrokerUnavailable) as exc:
        raise StackError(str(exc)) from exc
    return BrokerStarted(pid, f"127.0.0.1:{s.kafka_port}", p.log_file)


def stop(s: Settings, wipe: bool = False) -> BrokerStopped:
    p = paths(s)
    was_running = kafka_local.stop(p)
    if wipe:
        shutil.rmtree(p.root, ignore_errors=True)
        return BrokerStopped(was_running, p.root)
    return BrokerStopped(was_running)


def status(s: Settings) -> BrokerStatus:
    st = kafka_local.status(paths(s))
    pid, port = st["pid"], st["port"]
    return BrokerStatus(
        running=bool(st["running"]),
        pid=pid if isinstance(pid, int) else None,
        port=port if isinstance(port, int) else None,
        log=str(st["log"]),
        data=str(st["data"]),
    )
