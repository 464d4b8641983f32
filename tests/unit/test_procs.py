"""trunkline.core.procs: wait_until on a hand-held clock, and a real child started and
stopped by its pid file."""

import sys

import pytest

from trunkline.core import procs
from trunkline.core.procs import WaitTimeout, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_answer():
    clock = Clock()
    answers = iter([None, False, "ready"])
    got = wait_until(lambda: next(answers), 10, "x", interval=1, clock=clock, sleep=clock.sleep)
    assert got == "ready"
    assert clock.sleeps == [1, 1]


def test_times_out_naming_what_it_waited_for():
    clock = Clock()
    calls = []
    with pytest.raises(WaitTimeout, match=r"the sink to answer: not within 2.5s$"):
        wait_until(
            lambda: calls.append(clock.now),
            2.5,
            "the sink to answer",
            interval=1,
            clock=clock,
            sleep=clock.sleep,
        )
    # asked at the start, every interval, and once more exactly at the deadline
    assert calls == [100.0, 101.0, 102.0, 102.5]


def test_retryable_errors_count_as_not_yet_and_the_last_is_quoted():
    clock = Clock()
    answers = iter([ConnectionRefusedError("refused"), None, TimeoutError("slow")])

    def check():
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(WaitTimeout, match=r"\(last error: slow\)"):
        wait_until(check, 3, "x", interval=1, retry_on=(OSError,), clock=clock, sleep=clock.sleep)


def test_other_errors_propagate_at_once():
    clock = Clock()

    def check():
        raise KeyError("health")

    with pytest.raises(KeyError):
        wait_until(check, 60, "x", retry_on=(OSError,), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_a_started_child_is_found_by_name_and_stopped(tmp_path):
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    pid = procs.start(tmp_path, "sleeper", argv)
    assert procs.start(tmp_path, "sleeper", argv) == pid  # already running: not started twice
    assert procs.running_pid(tmp_path, "sleeper") == pid
    assert procs.running_names(tmp_path, "sle") == ["sleeper"]
    wait_until(lambda: "up" in procs.log_tail(tmp_path, "sleeper"), 10, "the child's output")
    assert procs.stop(tmp_path, "sleeper", timeout=10) is True
    assert procs.running_pid(tmp_path, "sleeper") is None
    assert not procs.pid_file(tmp_path, "sleeper").exists()
    assert procs.stop(tmp_path, "sleeper") is False


def test_a_child_that_ignores_sigterm_is_killed(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    procs.start(tmp_path, "stubborn", [sys.executable, "-c", code])
    wait_until(lambda: "up" in procs.log_tail(tmp_path, "stubborn"), 10, "the child's output")
    assert procs.stop(tmp_path, "stubborn", timeout=0.5) is True
    assert procs.running_pid(tmp_path, "stubborn") is None
