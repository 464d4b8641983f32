"""SIP over a stream (edge/sip/transport.py) on a loopback socket: idle connections are
closed, and a message whose handling fails costs only itself."""

from __future__ import annotations

import asyncio

from edge.sip.transport import SipStream

OPTIONS = (
    b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK{n}\r\n"
    b"From: <sip:a@h>;tag=1\r\nTo: <sip:h>\r\nCall-ID: c{n}\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _options(n: int) -> bytes:
    return OPTIONS.replace(b"{n}", str(n).encode())


async def _serve(handler, idle: float):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SipStream("TCP", handler, idle_timeout=idle), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


def test_an_idle_connection_is_closed_and_a_talking_one_is_not():
    async def run() -> tuple[bytes, float]:
        server, port = await _serve(lambda data, peer, conn: None, idle=0.3)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        for _ in range(4):  # keep-alives (RFC 5626 CRLF pings) keep it open past 0.3 s
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.readexactly(2), 1) == b"\r\n"
            await asyncio.sleep(0.15)
        rest = await asyncio.wait_for(reader.read(), 2)  # then silence: EOF
        writer.close()
        server.close()
        return rest, loop.time() - started

    rest, lasted = asyncio.run(run())
    assert rest == b""
    assert lasted >= 0.6  # it outlived two idle timeouts while it talked


def test_a_message_whose_handler_fails_does_not_close_the_connection():
    seen: list[bytes] = []

    def handler(data: bytes, peer, conn) -> None:
        seen.append(data)
        if len(seen) == 1:
            raise ValueError("boom")
        conn.write(b"ok")

    async def run() -> bytes:
        server, port = await _serve(handler, idle=5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_options(1) + _options(2))
        answer = await asyncio.wait_for(reader.readexactly(2), 2)
        writer.close()
        server.close()
        return answer

    assert asyncio.run(run()) == b"ok"
    assert len(seen) == 2
