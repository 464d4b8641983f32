"""Small asyncio pieces shared by the network services (SIP edge, media node)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
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
