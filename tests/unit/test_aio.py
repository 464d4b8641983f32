"""The shared UDP endpoint asks the kernel for a receive buffer that holds bursts; the SIP
edge's endpoint drains its socket in bounded batches; a process off the call path can run
at idle CPU priority."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from trunkline.core.aio import RECV_BUFFER_BYTES, Datagrams, UdpEndpoint, set_cpu_priority


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


async def _until(check, what: str, timeout: float = 5.0) -> None:
    """Let the loop run until `check()` holds (a deadline, no fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.001)


def test_udp_endpoint_drains_the_socket_in_bounded_batches_between_other_callbacks():
    """Every datagram waiting is read in one readiness callback, at most `batch` of them,
    in order; a callback scheduled meanwhile runs between two batches."""

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sent = [f"datagram {i}".encode() for i in range(250)]
        for data in sent:  # all queued in the kernel before the loop reads any
            sender.send(data)
        events: list[object] = []
        got: list[bytes] = []

        def on_batch(batch):
            if not events:
                loop.call_soon(events.append, "other callback")
            events.append(len(batch))
            got.extend(data for data, _ in batch)

        endpoint = UdpEndpoint(receiver, on_batch, batch=100)
        try:
            await _until(lambda: len(got) == len(sent), "every datagram read")
        finally:
            endpoint.close()
            sender.close()
        assert got == sent
        return events

    assert asyncio.run(run()) == [100, "other callback", 100, 50]


def test_udp_endpoint_queues_what_the_kernel_cannot_take_and_sends_it_in_order(tmp_path):
    """A full send buffer (here a Unix datagram peer's queue, which refuses with EAGAIN
    once full) queues datagrams in order; they go once the socket is writable."""

    async def run() -> tuple[int, list[bytes], list[bytes]]:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.bind(str(tmp_path / "peer"))
        peer.setblocking(False)
        endpoint = UdpEndpoint(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), lambda b: None)
        sent = [f"response {i}".encode() for i in range(2000)]
        for data in sent:
            endpoint.sendto(data, str(tmp_path / "peer"))
        waiting = endpoint.queued
        got: list[bytes] = []

        def drain() -> bool:
            while True:
                try:
                    got.append(peer.recv(100))
                except BlockingIOError:
                    return len(got) == len(sent)

        try:
            await _until(drain, "every queued datagram sent")
        finally:
            endpoint.close()
            peer.close()
        return waiting, got, sent

    waiting, got, sent = asyncio.run(run())
    assert waiting > 0  # the peer's queue filled, so some had to wait
    assert got == sent
