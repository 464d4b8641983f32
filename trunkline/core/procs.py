"""Background processes of the local stack: start with a pid file and a log, stop by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def running_pid(state_dir: Path, name: str) -> int | None:
    try:
        pid = int(pid_file(state_dir, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return None
    except ChildProcessError:
        pass
    return pid


def start(state_dir: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    pid = running_pid(state_dir, name)
    if pid is not None:
        return pid
    pid_path = pid_file(state_dir, name)
    log_path = log_file(state_dir, name)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    pid_path.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(state_dir: Path, name: str, timeout: float = 30.0) -> bool:
    pid = running_pid(state_dir, name)
    if pid is None:
        pid_file(state_dir, name).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(state_dir, name) is not None:
        time.sleep(0.1)
    if running_pid(state_dir, name) is not None:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    pid_file(state_dir, name).unlink(missing_ok=True)
    return True
