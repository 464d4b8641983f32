"""The shared UDP endpoint asks the kernel for a receive buffer that holds bursts; a
process off the call path can run at idle CPU priority."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from trunkline.core.aio import RECV_BUFFER_BYTES, Datagrams, set_cpu_priority


def test_datagram_endpoint_widens_its_receive_buffer_up_to_rmem_max():
    async def granted() -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(lambda d, a: None), local_addr=("127.0.0.1", 0)
        )
        try:
            sock = transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        finally:
            transport.close()

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    # Linux doubles the requested size for its bookkeeping and caps the request at rmem_max
    assert asyncio.run(granted()) == 2 * min(RECV_BUFFER_BYTES, rmem_max)


def _in_a_thread(fn):
    """Run fn in a throwaway thread (a scheduling policy is per thread) and return its
    result, or raise what it raised."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_idle_priority_is_sched_idle_and_threads_started_after_inherit_it():
    def probe():
        applied = set_cpu_priority("idle")
        inherited = _in_a_thread(lambda: os.sched_getscheduler(0))
        return applied, os.sched_getscheduler(0), inherited

    applied, own, inherited = _in_a_thread(probe)
    assert applied == "SCHED_IDLE"
    assert own == inherited == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread is untouched


def test_normal_priority_changes_nothing_and_unknown_ones_are_refused():
    before = (os.sched_getscheduler(0), os.nice(0))
    assert _in_a_thread(lambda: set_cpu_priority("normal")) == "normal"
    assert (os.sched_getscheduler(0), os.nice(0)) == before
    with pytest.raises(ValueError, match="unknown CPU priority 'low'"):
        set_cpu_priority("low")
