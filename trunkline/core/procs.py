"""Background processes of the local stack (start with a pid file and a log, stop by pid)
and `wait_until`, the one poll-until-a-condition helper the CLI and the stack use.

`wait_until` is small and ours rather than tenacity's retry decorators: every caller here
polls a condition with a deadline and wants a message naming what it waited for (and the
last error seen), not a retry policy; the clock and sleep are arguments, so tests run it on
a hand-held clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; the message names what was awaited."""


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `check` until it returns something other than None or False, and return that.

    An exception of a `retry_on` type counts as "not yet" (the last one is quoted in the
    timeout message); any other exception propagates at once. `check` runs at least once,
    and once more at the deadline. Raises WaitTimeout("<what> ... within <timeout>s").
    """
    deadline = clock() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
        except retry_on as exc:
            last, result = exc, None
        if result is not None and result is not False:
            return result
        remaining = deadline - clock()
        if remaining <= 0:
            detail = f" (last error: {last})" if last is not None else ""
            raise WaitTimeout(f"{what}: not within {timeout:g}s{detail}")
        sleep(min(interval, remaining))


def pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def log_tail(state_dir: Path, name: str, chars: int = 2000) -> str:
    log = log_file(state_dir, name)
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


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


def running_names(state_dir: Path, prefix: str) -> list[str]:
    """Names of the processes with a pid file starting with `prefix` (e.g. "media-")."""
    run_dir = state_dir / "run"
    if not run_dir.exists():
        return []
    return sorted(p.stem for p in run_dir.glob(f"{prefix}*.pid"))


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
    """SIGTERM, then SIGKILL after `timeout`. True if the process was running."""
    pid = running_pid(state_dir, name)
    if pid is None:
        pid_file(state_dir, name).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(
            lambda: running_pid(state_dir, name) is None,
            timeout,
            f"{name} (pid {pid}) to exit",
            interval=0.1,
        )
    except WaitTimeout:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: running_pid(state_dir, name) is None, 5.0, f"{name} to die")
    pid_file(state_dir, name).unlink(missing_ok=True)
    return True
