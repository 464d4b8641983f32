"""A minimal SIP user agent client: INVITE/ACK/CANCEL/OPTIONS over UDP, TCP or TLS, for
`trunkline call` and the tests (the e2e tests use SIPp, which we did not write),
built on our own message module."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field

from edge.sip.framing import StreamFramer
from edge.sip.message import Response, parse_message


@dataclass
class Call:
    number: str
    branch: str = field(default_factory=lambda: "z9hG4bK" + uuid.uuid4().hex[:16])
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex + "@trunkline-uac")
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    uri_headers: str = ""
    scheme: str = "sip"  # "sips" asks for TLS all the way (RFC 3261 §19.1)
    responses: list[Response] = field(default_factory=list)

    @property
    def final(self) -> Response | None:
        """The INVITE's final response (a CANCEL's 200 shares the Call-ID, not the CSeq)."""
        finals = [r for r in self.responses if r.status >= 200 and r.cseq[1] == "INVITE"]
        return finals[0] if finals else None


class UAC:
    def __init__(
        self,
        host: str,
        port: int,
        transport: str = "UDP",
        bind: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """`transport` UDP, TCP or TLS; TLS takes the client context `tls` (the default
        context, verifying against the system's CAs, when None) and checks the
        server's certificate for `server_hostname` (default: `host`)."""
        self.remote = (host, port)
        self.transport = transport
        if transport == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((bind, 0))
        else:
            raw = socket.create_connection(self.remote, timeout=10)
            if transport == "TLS":
                context = tls or ssl.create_default_context()
                try:
                    raw = context.wrap_socket(raw, server_hostname=server_hostname or host)
                except BaseException:
                    raw.close()
                    raise
            self.sock = raw
            self.framer = StreamFramer()
        self.local = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def _send(self, data: bytes) -> None:
        if self.transport == "UDP":
            self.sock.sendto(data, self.remote)
        else:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        call: Call,
        cseq_method: str | None = None,
        branch: str | None = None,
        to_tag: str = "",
        body: bytes = b"",
    ) -> bytes:
        data = self.build(method, call, cseq_method, branch, to_tag, body)
        self._send(data)
        return data

    def build(
        self,
        method: str,
        call: Call,
        cseq_method: str | None = None,
        branch: str | None = None,
        to_tag: str = "",
        body: bytes = b"",
    ) -> bytes:
        h, p = self.local
        sc = call.scheme
        uri = f"{sc}:{call.number}@{self.remote[0]}:{self.remote[1]}" + (
            f"?{call.uri_headers}" if call.uri_headers else ""
        )
        to = f"<{sc}:{call.number}@{self.remote[0]}>" + (f";tag={to_tag}" if to_tag else "")
        data = (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} {h}:{p};branch={branch or call.branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{sc}:+15550009999@{h}>;tag={call.tag}\r\nTo: {to}\r\n"
            f"Call-ID: {call.call_id}\r\nCSeq: 1 {cseq_method or method}\r\n"
            f"Contact: <{sc}:test@{h}:{p}>\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return data

    def send_raw(self, data: bytes) -> None:
        self._send(data)

    def receive(self, timeout: float) -> Response | None:
        self.sock.settimeout(timeout)
        try:
            if self.transport == "UDP":
                data, _ = self.sock.recvfrom(65535)
                msg = parse_message(data)
            else:
                while (data := self.framer.next_message()) is None:
                    chunk = self.sock.recv(65535)
                    if not chunk:
                        return None
                    self.framer.receive_data(chunk)
                msg = parse_message(data, stream=True)
        except TimeoutError:
            return None
        assert isinstance(msg, Response)
        return msg

    def collect(self, calls: list[Call], timeout: float = 15.0) -> None:
        """Receive until every call has a final response (or the timeout)."""
        by_id = {c.call_id: c for c in calls}
        deadline = time.monotonic() + timeout
        while any(c.final is None for c in calls) and time.monotonic() < deadline:
            r = self.receive(max(0.05, deadline - time.monotonic()))
            if r is not None and r.call_id in by_id:
                by_id[r.call_id].responses.append(r)

    def invite(self, call: Call, timeout: float = 15.0, ack: bool = True) -> Response | None:
        self.request("INVITE", call)
        self.collect([call], timeout)
        if ack and call.final is not None:
            self.ack(call)
        return call.final

    def ack(self, call: Call) -> None:
        assert call.final is not None
        self.request("ACK", call, to_tag=call.final.to.tag or "")
