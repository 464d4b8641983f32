"""Small asyncio pieces shared by the network services (SIP edge, media node)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

Address = tuple[str, int]


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Datagrams(asyncio.DatagramProtocol):
    """A UDP endpoint that hands every datagram to `on_datagram(data, (host, port))`."""

    def __init__(self, on_datagram: Callable[[bytes, Address], Any]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

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
