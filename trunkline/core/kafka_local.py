"""A real single-node Apache Kafka broker (KRaft) from Maven Central jars, no Docker.

`fetch_jars` resolves `kafka_2.13` and an slf4j binding with Maven into a cache folder
(once); `start` formats storage on first use, launches `kafka.Kafka` with a small heap,
records its pid and waits until it answers; `stop` ends it by pid.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trunkline.core.admin import BrokerUnavailable, wait_for_broker

HERE = Path(__file__).resolve().parent / "kafka_broker"
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"


class KafkaLocalError(RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports"


def libs_dir(cache_dir: Path) -> Path:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return cache_dir / f"kafka-jars-{digest}"


def fetch_jars(cache_dir: Path) -> Path:
    """Download the broker's runtime jars once; return the folder holding them."""
    libs = libs_dir(cache_dir)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError("Maven (mvn) is not installed: apt-get install maven")
    tmp = libs.with_name(libs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise KafkaLocalError(
            f"fetching Kafka jars with Maven failed:\n{proc.stdout}\n{proc.stderr}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaLocalError("java is not installed (Java 17+ needed for Kafka 4.x)")
    return java


def cluster_id(draw: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own `Uuid.randomUuid()`, an id that starts with '-' is drawn again: the
    storage tool's argument parser reads such a value as an option (about 1 id in 64)."""
    while True:
        value = base64.urlsafe_b64encode(draw()).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


def write_properties(paths: BrokerPaths, port: int, controller_port: int) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={paths.data}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Topics are created by `trunkline topics apply` with their own layout; Faust
                # creates its changelog and leader topics through the admin API.
                "auto.create.topics.enable=false",
                "log.segment.bytes=67108864",
                "log.cleaner.dedupe.buffer.size=16777216",
                "",
            ]
        )
    )
    paths.ports_file.write_text(f"{port} {controller_port}\n")


def read_pid(paths: BrokerPaths) -> int | None:
    """The broker's pid when it runs: the recorded process exists, is not a zombie (a
    SIGKILLed child its parent has not reaped yet still answers kill(pid, 0)), and is the
    broker of these `paths` (a pid reused by another program is not ours)."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return None  # it exited while we looked
        if state in ("Z", "X"):
            _reap(pid)
            return None
        if str(paths.properties).encode() not in cmdline:
            return None
    return pid


def start(
    paths: BrokerPaths,
    cache_dir: Path,
    port: int,
    controller_port: int,
    heap: str = "512m",
    timeout: float = 90.0,
) -> int:
    """Start the broker unless it already runs; return its pid once it answers."""
    extra = jvm_options(os.environ)  # a bad value fails before anything is written
    pid = read_pid(paths)
    if pid is not None:
        wait_for_broker(f"127.0.0.1:{_recorded_port(paths, port)}", timeout)
        return pid
    libs = fetch_jars(cache_dir)
    if paths.data.joinpath("meta.properties").exists() and paths.ports_file.exists():
        recorded = _recorded_port(paths, port)
        if recorded != port:
            raise KafkaLocalError(
                f"{paths.root} holds a broker formatted for port {recorded}; "
                f"use --port {recorded} or `trunkline kafka down --wipe`"
            )
    write_properties(paths, port, controller_port)
    classpath = f"{libs}/*"
    if not paths.data.joinpath("meta.properties").exists():
        fmt = subprocess.run(
            [
                _java(),
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={LOG4J}",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id()}",
                "-c",
                str(paths.properties),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise KafkaLocalError(f"formatting KRaft storage failed:\n{fmt.stdout}\n{fmt.stderr}")
    log = open(paths.log_file, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        broker_command(_java(), heap, classpath, paths.properties, extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    paths.pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_for_broker(f"127.0.0.1:{port}", timeout, alive=lambda: proc.poll() is None)
    except BrokerUnavailable as exc:
        stop(paths)
        tail = paths.log_file.read_text(errors="replace")[-3000:]
        raise KafkaLocalError(f"{exc}; broker log tail:\n{tail}") from exc
    return proc.pid


JVM_OPTS_ENV = "TRUNKLINE_KAFKA_JVM_OPTS"


def jvm_options(env: Mapping[str, str]) -> list[str]:
    """Extra JVM options for the local broker from TRUNKLINE_KAFKA_JVM_OPTS (shell-quoted),
    e.g. GC logging or a JMX port; a quoting mistake is an error that names the variable."""
    raw = env.get(JVM_OPTS_ENV, "")
    try:
        opts = shlex.split(raw)
    except ValueError as exc:
        raise KafkaLocalError(f"{JVM_OPTS_ENV}={raw!r}: {exc}") from exc
    for opt in opts:
        if not opt.startswith("-"):
            raise KafkaLocalError(
                f"{JVM_OPTS_ENV}: {opt!r} is not a JVM option (options start with '-')"
            )
    return opts


def broker_command(
    java: str, heap: str, classpath: str, properties: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The broker's command line: a fixed heap, G1 with a 20 ms pause goal, then `extra`
    (which may override the defaults: the JVM takes the last of repeated options)."""
    return [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J}",
        *extra,
        "-cp",
        classpath,
        "kafka.Kafka",
        str(properties),
    ]


def _recorded_port(paths: BrokerPaths, default: int) -> int:
    try:
        return int(paths.ports_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return default


def stop(paths: BrokerPaths, timeout: float = 30.0) -> bool:
    """Stop the broker by its pid: SIGTERM, then SIGKILL after `timeout`. True if it ran."""
    pid = read_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    paths.pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(paths: BrokerPaths) -> dict[str, object]:
    pid = read_pid(paths)
    return {
        "running": pid is not None,
        "pid": pid,
        "port": _recorded_port(paths, 0) or None,
        "log": str(paths.log_file),
        "data": str(paths.data),
    }
