"""SIP over a byte stream (TCP/TLS): cut messages out by Content-Length (RFC 3261 §18.3).

h11-style: ``receive_data(bytes)`` then ``next_message()`` until it returns None (need
more data). Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped. A framing
error is fatal for the connection: the stream cannot be resynchronised.
"""

from __future__ import annotations

import re

from edge.sip.errors import ParseError
from edge.sip.message import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.I | re.M)


class StreamFramer:
    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message
        self.pongs_due = 0  # CRLFCRLF pings seen: each wants a CRLF pong

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> bytes | None:
        """One whole message (head and body), or None until more bytes arrive."""
        buf = self._buf
        while buf[:2] == b"\r\n":
            if buf[:4] == b"\r\n\r\n":
                self.pongs_due += 1
                del buf[:4]
            elif len(buf) >= 4 or bytes(buf[2:3]) not in (b"", b"\r"):
                del buf[:2]
            else:
                return None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise ParseError(f"no end of headers within {MAX_HEADER_BYTES} bytes")
            return None
        head = bytes(buf[:end])
        m = _CONTENT_LENGTH.search(head)
        if m is None:
            raise ParseError("missing Content-Length on a stream transport")
        raw = m.group(1)
        if not raw.isdigit():
            raise ParseError(f"Content-Length {raw.decode(errors='replace')!r} is not a number")
        total = end + 4 + int(raw)
        if total > self._max:
            raise ParseError(f"message of {total} bytes exceeds {self._max}")
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message
