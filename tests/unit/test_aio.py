"""The shared UDP endpoint asks the kernel for a receive buffer that holds bursts."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from trunkline.aio import RECV_BUFFER_BYTES, Datagrams


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
