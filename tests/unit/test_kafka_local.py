"""The local broker's command line and the extra JVM options an operator may pass."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from trunkline.core.kafka_local import (
    JVM_OPTS_ENV,
    BrokerPaths,
    KafkaLocalError,
    broker_command,
    cluster_id,
    jvm_options,
    read_pid,
)


def test_no_variable_means_no_extra_options() -> None:
    assert jvm_options({}) == []
    assert jvm_options({JVM_OPTS_ENV: "   "}) == []


def test_options_are_split_like_a_shell() -> None:
    env = {JVM_OPTS_ENV: "-Xlog:gc:file=/tmp/gc.log:time '-Dname=a b' -Xmn256m"}
    assert jvm_options(env) == ["-Xlog:gc:file=/tmp/gc.log:time", "-Dname=a b", "-Xmn256m"]


def test_bad_quoting_names_the_variable() -> None:
    with pytest.raises(KafkaLocalError, match=JVM_OPTS_ENV + ".*quotation"):
        jvm_options({JVM_OPTS_ENV: "-Dx='unterminated"})


def test_a_word_that_is_not_an_option_is_refused() -> None:
    with pytest.raises(KafkaLocalError, match="'Xmx1g' is not a JVM option"):
        jvm_options({JVM_OPTS_ENV: "-Xms1g Xmx1g"})


def test_extra_options_come_after_the_defaults_and_before_the_main_class() -> None:
    cmd = broker_command("java", "512m", "/jars/*", Path("/s/server.properties"), ["-Xmx1g"])
    assert cmd[0] == "java"
    assert cmd.index("-Xmx512m") < cmd.index("-Xmx1g")  # the JVM keeps the last one
    assert cmd.index("-Xmx1g") < cmd.index("-cp") < cmd.index("kafka.Kafka")
    assert cmd[-2:] == ["kafka.Kafka", "/s/server.properties"]
    assert cmd[cmd.index("-cp") + 1] == "/jars/*"


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    # 0xF8 encodes to '-' first in URL-safe base64: the storage tool would read it as an
    # option (about one id in 64); such a draw is replaced, as Kafka's Uuid.randomUuid does
    draws = iter([b"\xf8" + bytes(15), bytes(range(16))])
    value = cluster_id(lambda: next(draws))
    assert value == "AAECAwQFBgcICQoLDA0ODw"
    assert len(value) == 22


def _child(paths: BrokerPaths) -> subprocess.Popen[bytes]:
    """A stand-in broker process whose command line names the broker's properties file."""
    paths.root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["sh", "-c", "sleep 60", str(paths.properties)])
    paths.pid_file.write_text(f"{proc.pid}\n")
    # until the child has exec'd, /proc/<pid>/cmdline is still ours (a forked python)
    deadline = time.monotonic() + 10
    while b"sleep 60" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the child did not exec"
        time.sleep(0.01)
    return proc


def test_a_running_broker_process_is_found_by_its_pid(tmp_path: Path) -> None:
    paths = BrokerPaths(tmp_path / "kafka")
    proc = _child(paths)
    try:
        assert read_pid(paths) == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_broker_that_is_still_a_zombie_is_not_running(tmp_path: Path) -> None:
    paths = BrokerPaths(tmp_path / "kafka")
    proc = _child(paths)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not become a zombie"
        time.sleep(0.01)
    assert read_pid(paths) is None  # and it was reaped
    assert not Path(f"/proc/{proc.pid}").exists()


def test_a_recorded_pid_now_used_by_another_program_is_not_the_broker(tmp_path: Path) -> None:
    paths = BrokerPaths(tmp_path / "kafka")
    paths.root.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    paths.pid_file.write_text(f"{other.pid}\n")
    try:
        assert read_pid(paths) is None
    finally:
        other.kill()
        other.wait()
