"""SIP transport helpers shared by the SIP users (the proxy edge and the media node):
listen addresses, SIP over a TCP/TLS stream, and the RFC 3261 §18 rules that say where a
response goes. The sockets themselves stay in each service; this is what they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from edge.sip.errors import ParseError
from edge.sip.framing import StreamFramer
from edge.sip.message import Request
from edge.sip.transaction import Address

log = logging.getLogger("trunkline.sip.transport")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not host:port")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


#: a TCP/TLS connection that carries nothing (not even a keep-alive) this long is closed;
#: Kamailio's tcp_connection_lifetime default is 120 s as well
TCP_IDLE_TIMEOUT_S = 120.0


class SipStream(asyncio.Protocol):
    """SIP over one TCP/TLS connection: frames messages by Content-Length, answers
    keep-alive pings, and hands each message to `on_message(data, peer, transport)`.

    A framing error closes the connection (the stream cannot be resynchronised); a
    message that fails in `on_message` costs only itself (the stream stays framed, so the
    messages behind it are still read). A connection idle for `idle_timeout` seconds is
    closed."""

    def __init__(
        self,
        name: str,
        on_message: Callable[[bytes, Address, asyncio.Transport], Any],
        on_error: Callable[[], Any] | None = None,
        idle_timeout: float = TCP_IDLE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.on_message = on_message
        self.on_error = on_error
        self.idle_timeout = idle_timeout
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self._last_rx = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        self._idle = loop.call_later(self.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()

    def _check_idle(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_rx
        if quiet >= self.idle_timeout:
            log.info("%s %s: closing after %.0f s idle", self.name, self.peer, quiet)
            self.transport.close()
            return
        self._idle = loop.call_later(self.idle_timeout - quiet, self._check_idle)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._last_rx = asyncio.get_running_loop().time()
        self.framer.receive_data(data)
        while True:
            try:
                message = self.framer.next_message()
            except ParseError as exc:
                log.warning("%s %s: closing, cannot frame: %s", self.name, self.peer, exc)
                if self.on_error is not None:
                    self.on_error()
                self.transport.close()
                return
            if self.framer.pongs_due:
                self.transport.write(b"\r\n" * self.framer.pongs_due)  # RFC 5626 pong
                self.framer.pongs_due = 0
            if message is None:
                return
            try:
                self.on_message(message, self.peer, self.transport)
            except Exception:  # one bad message must not take the connection down
                log.exception("%s %s: a message failed; the connection stays", self.name, self.peer)


def annotate_via(request: Request, source: Address) -> None:
    """RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via."""
    values = request.headers.get_all("via")
    if not values:
        return
    via = request.top_via
    changed = False
    if via.host != source[0]:
        via.params["received"] = source[0]
        changed = True
    if "rport" in via.params and not via.params["rport"]:
        via.params["rport"] = str(source[1])
        changed = True
    if changed:
        request.headers.remove("via")
        for v in [str(via), *values[1:]]:
            request.headers.add("Via", v)


def response_addr(request: Request, source: Address) -> Address:
    """Where a UDP response goes: the source with rport, else received + sent-by port."""
    try:
        via = request.top_via
    except ParseError:
        return source
    if "rport" in via.params:
        return source
    return (source[0], via.port or 5060)
