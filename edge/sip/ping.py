"""SIP OPTIONS ping over UDP: is an edge (or any SIP peer) answering? Used by the CLI."""

from __future__ import annotations

import socket
import uuid

from edge.sip.errors import ParseError
from edge.sip.message import Response, parse_message


def options_ping(host: str, port: int, timeout: float = 1.0) -> int | None:
    """Send OPTIONS; return the response status, or None when nothing answered."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1" if host.startswith("127.") else "0.0.0.0", 0))
        lhost, lport = sock.getsockname()
        call_id = uuid.uuid4().hex
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ping@{lhost}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            while True:
                data, _ = sock.recvfrom(65535)
                try:
                    msg = parse_message(data)
                except ParseError:
                    continue
                if isinstance(msg, Response) and msg.call_id == call_id:
                    return msg.status
        except OSError:
            return None
