"""Integration fixtures: a real Kafka broker and separately started worker processes.

The broker comes from, in order: `--compose` (pytest-docker brings compose.yaml up), the
TRUNKLINE_KAFKA_BOOTSTRAP variable (.ci/run starts one and sets it), or a broker this
session starts itself from the Maven jars on free ports. Each test gets its own topic
prefix, Faust app id, state folder and web port, so tests never see each other's data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trunkline.core import kafka_local
from trunkline.core.admin import apply_all, wait_for_broker
from trunkline.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def poll(check: Any, timeout: float, what: str) -> Any:
    """`check()` until it gives something true (returned), for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


# Ports handed to child processes come from below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default): a port the kernel
# picked for `bind(0)` and that was closed again can be taken by any outgoing connection
# (a Kafka client's, say) before the child binds it ("address already in use"). Below the
# range only an explicit bind takes a port. Each pytest process starts at its own place
# (its pid), never hands a port out twice, and skips ports bound by anyone else.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_ports_given: set[int] = set()
_next_port = [_PORT_LOW + os.getpid() * 97 % (_PORT_HIGH - _PORT_LOW)]


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A TCP and UDP port on 127.0.0.1 that nothing holds, for a child process to bind."""
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port[0]
        _next_port[0] = port + 1 if port + 1 < _PORT_HIGH else _PORT_LOW
        if port not in _ports_given and _bindable(port):
            _ports_given.add(port)
            return port
    raise RuntimeError(f"no free port left in {_PORT_LOW}-{_PORT_HIGH}")


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "compose.yaml")


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.config.getoption("--compose"):
        services = request.getfixturevalue("docker_services")
        bootstrap = "127.0.0.1:19092"

        def ready() -> bool:
            try:
                wait_for_broker(bootstrap, timeout=2)
                return True
            except Exception:
                return False

        services.wait_until_responsive(timeout=120, pause=1, check=ready)
        yield bootstrap
        return
    env = os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP")
    if env:
        wait_for_broker(env, timeout=60)
        yield env
        return
    paths = kafka_local.BrokerPaths(tmp_path_factory.mktemp("kafka"))
    port, controller = free_port(), free_port()
    cache = Path(os.environ.get("TRUNKLINE_CACHE_DIR") or Path.home() / ".cache" / "trunkline")
    kafka_local.start(paths, cache, port, controller)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        kafka_local.stop(paths)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    tag = uuid.uuid4().hex[:8]
    env = {
        "TRUNKLINE_STATE_DIR": str(tmp_path / "state"),
        "TRUNKLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": f"t{tag}.",
        "TRUNKLINE_APP_ID": f"trunkline-test-{tag}",
        "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
        "TRUNKLINE_SINK_WEB_PORT": str(free_port()),
        "TRUNKLINE_BILLING_WEB_PORT": str(free_port()),
        "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
    }
    if request.config.getoption("--compose"):
        env["TRUNKLINE_CLICKHOUSE_DSN"] = "http://trunkline:trunkline@localhost:8123/default"
    s = Settings.from_env(env)
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    return s


def child_env(s: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TRUNKLINE_STATE_DIR": str(s.state_dir),
        "TRUNKLINE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": s.topic_prefix,
        "TRUNKLINE_APP_ID": s.app_id,
        "TRUNKLINE_WORKER_WEB_PORT": str(s.worker_web_port),
        "TRUNKLINE_CLICKHOUSE_DSN": s.clickhouse_dsn,
        "TRUNKLINE_REDIRECT_TIMEOUT_MS": str(s.redirect_timeout_ms),
        "TRUNKLINE_HEARTBEAT_TIMEOUT_MS": str(s.heartbeat_timeout_ms),
        "TRUNKLINE_DECISION_TIMEOUT_MS": str(int(s.decision_timeout_s * 1000)),
        "TRUNKLINE_STATE_RETENTION_MS": str(s.state_retention_ms),
        "TRUNKLINE_SINK_WEB_PORT": str(s.sink_web_port),
        "TRUNKLINE_DECISION_PARTITIONS": str(s.decision_partitions),
        "TRUNKLINE_LOG_FORMAT": s.log_format,
        "TRUNKLINE_LOG_LEVEL": s.log_level,
        "TRUNKLINE_BILLING_WEB_PORT": str(s.billing_web_port),
        "TRUNKLINE_BILLING_RETENTION_MS": str(s.billing_retention_ms),
        "TRUNKLINE_WEBHOOKS_WEB_PORT": str(s.webhooks_web_port),
        "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE": s.webhook_retry_schedule,
        "TRUNKLINE_WEBHOOK_TIMEOUT_MS": str(s.webhook_timeout_ms),
        "TRUNKLINE_WEBHOOK_CONCURRENCY": str(s.webhook_concurrency),
        "TRUNKLINE_SINK_FLUSH_MS": str(s.sink_flush_ms),
    }


def run_cli(s: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trunkline.cli", *args],
        env=child_env(s),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@dataclass
class Service:
    """A trunkline process started separately (`trunkline worker`, `sink`,
    `billing-worker` or `webhooks`); `env` adds to its environment (secrets)."""

    settings: Settings
    command: str = "worker"
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return {
            "worker": self.settings.worker_url,
            "billing-worker": self.settings.billing_url,
            "webhooks": self.settings.webhooks_url,
        }.get(self.command, self.settings.sink_url)

    def ready(self, health: dict[str, Any]) -> bool:
        # the workers' /health/ is 200 only once the group is joined, tables recovered
        if self.command in ("worker", "billing-worker", "webhooks"):
            return bool(health.get("ready"))
        return bool(health["sink"]["alive"])

    def start(self, timeout: float = 90, wait: bool = True) -> None:
        self.log = self.settings.state_dir / f"{self.command}-{int(time.time() * 1000)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trunkline.cli", self.command],
                env={**child_env(self.settings), **(self.env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if wait:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.stop()  # not left running after the test that started it has failed
                raise

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.command} exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                health = self.get("/health/")
                if self.ready(health):
                    return health
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.command} not healthy in {timeout}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""

    def get(self, path: str) -> Any:
        url = f"{self.url}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def health(self) -> tuple[int, Any]:
        """(HTTP status, body) of /health/ (the worker's is 503 until it is ready)."""
        try:
            return 200, self.get("/health/")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.load(exc)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self, path: str, until: Any, timeout: float = 30) -> Any:
        """GET `path` until `until(body)` holds; return the body."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            try:
                body = self.get(path)
                if until(body):
                    return body
            except urllib.error.HTTPError as exc:
                body = exc.code
            time.sleep(0.2)
        raise AssertionError(f"{path} never satisfied the condition; last: {body}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def Worker(settings: Settings) -> Service:
    return Service(settings, "worker")


def Sink(settings: Settings) -> Service:
    return Service(settings, "sink")


@pytest.fixture
def worker(settings: Settings) -> Iterator[Service]:
    w = Worker(settings)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def sink(settings: Settings) -> Iterator[Service]:
    s = Sink(settings)
    try:
        yield s
    finally:
        s.stop()
