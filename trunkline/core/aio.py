"""Small asyncio pieces shared by the network services (SIP edge, media node)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

Address = tuple[str, int]


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Freeze what start-up allocated and run the cyclic GC's young collections less often.

    A service's long-lived objects (config, tables, sockets, imported modules) were walked
    by every full collection, which found nothing to free among them (docs/benchmarks.md,
    2026-11-26 08:19). Frozen objects are never walked; a larger first threshold trades
    a few hundred young collections a second for a few larger ones.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, 50, 1000)


def set_cpu_priority(priority: str) -> str:
    """Run the calling thread, and every thread it starts afterwards, at `priority`:
    "idle" is Linux's SCHED_IDLE (the CPU only when nothing else wants it; a woken
    normal thread preempts it at once), or the lowest nice value where SCHED_IDLE does not
    exist; "normal" changes nothing. Returns what was applied.

    For processes off the call path that work in bursts, such as the ClickHouse sink's
    inserts and chDB's merges: the sink is the one process that may wait. Measured alone
    the gain was within the machine's noise (docs/benchmarks.md, 2026-11-26 14:07).
    """
    if priority == "normal":
        return "normal"
    if priority != "idle":
        raise ValueError(f"unknown CPU priority {priority!r}")
    sched_idle = getattr(os, "SCHED_IDLE", None)
    if sched_idle is not None:
        try:
            os.sched_setscheduler(0, sched_idle, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError as exc:
            logging.getLogger("trunkline").warning("SCHED_IDLE refused (%s): using nice", exc)
    os.nice(19 - os.nice(0))
    return "nice 19"


#: SIP listeners take bursts (hundreds of BYEs when a trunk drops, INVITE storms): the
#: Linux default receive buffer (~208 KiB, about 200 small datagrams once the kernel's
#: per-packet overhead is counted) overflowed at 200 simultaneous BYEs and dropped some.
#: The kernel caps the value at net.core.rmem_max.
RECV_BUFFER_BYTES = 4 << 20


def widen_receive_buffer(transport: asyncio.BaseTransport, size: int = RECV_BUFFER_BYTES) -> int:
    """Ask for a `size` receive buffer on the transport's socket; return what was granted."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    return _widen(sock, size)


def _widen(sock: socket.socket, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0


class Datagrams(asyncio.DatagramProtocol):
    """A UDP endpoint that hands every datagram to `on_datagram(data, (host, port))`."""

    def __init__(self, on_datagram: Callable[[bytes, Address], Any]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        widen_receive_buffer(transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


#: datagrams one readiness callback of a `UdpEndpoint` reads at most, so a flooded socket
#: cannot keep the loop from its other callbacks (decisions to answer, timers)
UDP_BATCH = 256


class UdpEndpoint:
    """A UDP socket read in batches: one readiness callback drains the socket (`recvfrom`
    until it would block, at most `batch` datagrams) and hands the whole batch to
    `on_batch([(data, addr), ...])`, `addr` as the socket gives it.

    asyncio's datagram transport reads one datagram per loop iteration, so each one
    costs a turn of the loop (a selector call, the ready callbacks, the timers) before the
    next is read: under a flood the datagrams behind it, a trunk's INVITEs among them,
    waited in the kernel's queue. Here a turn reads every datagram the socket holds, and
    the receiver can judge each by its source before doing anything else with it.

    `sendto` writes at once; when the kernel's send buffer is full, datagrams queue (in
    order, at most `max_queued`, the oldest dropped beyond that) until it drains."""

    def __init__(
        self,
        sock: socket.socket,
        on_batch: Callable[[list[tuple[bytes, Any]]], Any],
        batch: int = UDP_BATCH,
        max_queued: int = 10_000,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.on_batch = on_batch
        self.batch = batch
        self.max_queued = max_queued
        self.send_dropped = 0
        self._queued: deque[tuple[bytes, Any]] = deque()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        on_batch: Callable[[list[tuple[bytes, Any]]], Any],
        recv_buffer: int = RECV_BUFFER_BYTES,
        batch: int = UDP_BATCH,
    ) -> UdpEndpoint:
        """A socket bound to (host, port) with a `recv_buffer` receive buffer."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(addr)
            _widen(sock, recv_buffer)
        except OSError:
            sock.close()
            raise
        return cls(sock, on_batch, batch)

    @property
    def queued(self) -> int:
        """Datagrams waiting for the kernel's send buffer."""
        return len(self._queued)

    @property
    def sockname(self) -> Any:
        return self.sock.getsockname()

    def _read_ready(self) -> None:
        batch: list[tuple[bytes, Any]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(self.batch):
            try:
                batch.append(recvfrom(65535))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error reported on the socket: the next one may be fine
                continue
        if batch:
            self.on_batch(batch)

    def sendto(self, data: bytes, addr: Any) -> None:
        if self._closed:
            return
        if not self._queued:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self.sock.fileno(), self._write_ready)
            except OSError:  # unreachable, too large...: UDP gives no promise, SIP retransmits
                return
        if len(self._queued) >= self.max_queued:
            self._queued.popleft()
            self.send_dropped += 1
        self._queued.append((data, addr))

    def _write_ready(self) -> None:
        while self._queued:
            data, addr = self._queued[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass
            self._queued.popleft()
        self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        if self._queued:
            self._loop.remove_writer(self.sock.fileno())
            self._queued.clear()
        self.sock.close()


async def serve_until_signalled(
    service: Service, on_stop: Callable[[], Awaitable[None] | None] | None = None
) -> None:
    """Start `service`, run until SIGINT or SIGTERM, stop it."""
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if on_stop is not None:
        result = on_stop()
        if result is not None:
            await result
    await service.stop()


async def run_deadlines(
    next_deadline: Callable[[], float | None],
    expire: Callable[[float], None],
    wake: asyncio.Event,
    idle_s: float = 1.0,
) -> None:
    """Call `expire(now)` at each deadline a sans-IO machine names (wall-clock seconds),
    at least every `idle_s`, and early when `wake` is set (a new, nearer deadline)."""
    while True:
        deadline = next_deadline()
        delay = deadline - time.time() if deadline is not None else idle_s
        wake.clear()
        if delay > 0:
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(delay, idle_s))
            except TimeoutError:
                pass
        expire(time.time())
