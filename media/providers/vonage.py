"""Vonage Voice API WebSockets (an NCCO `connect` to a `websocket` endpoint). Pure. The
first frame is text JSON (`content-type` audio/l16;rate=16000 plus the NCCO's headers);
then binary frames of 16-bit little-endian PCM, 20 ms each (640 bytes at 16 kHz). Audio
sent back must be binary frames of the same size, paced at 20 ms; `{"action":"clear"}`
drops what Vonage has queued. During the call Vonage may send text events: DTMF arrives as
`{"event": "websocket:dtmf", "digit": "5", "duration": 260}`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from media.providers.base import (
    ProtocolError,
    digit,
    kind_of,
    load_json,
    need,
    obj,
    string,
    text,
)
from media.providers.twilio import Dtmf

FRAME_BYTES = 640  # 20 ms of L16 at 16 kHz


@dataclass(frozen=True)
class Open:
    rate: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """A text event we do not act on (Vonage may add more)."""

    event: str


#: the NCCO headers that name the queue entry: they must be strings when present
QUEUE_ID_HEADERS = ("callQueueId", "queueId")


def parse_first(data: str | bytes) -> Open:
    """The first text frame: `content-type` audio/l16 (8 or 16 kHz) and the NCCO's headers.
    Header values that are strings, numbers or booleans are kept as text; the queue id
    headers must be strings."""
    msg = obj(load_json(data), "first message")
    ctype = text(msg.get("content-type", ""), "content-type")
    if not ctype.startswith("audio/l16"):
        raise ProtocolError(f"content-type {ctype[:40]!r}: only audio/l16 is supported")
    rate = 16000
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "rate" and value.isdigit():
            rate = int(value)
    for name in QUEUE_ID_HEADERS:
        if name in msg and not isinstance(msg[name], str):
            raise ProtocolError(f"header {name} is {kind_of(msg[name])}, not a string")
    headers = {
        k: (("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in msg.items()
        if k not in ("event", "content-type") and isinstance(v, (str, int, float, bool))
    }
    return Open(rate, headers)


def parse_event(data: str | bytes) -> Dtmf | Notice:
    """A text frame during the call: `websocket:dtmf` (the digit at the top level), or an
    event we note and ignore."""
    msg = obj(load_json(data), "message")
    kind = string(need(msg, "event", "message"), "event")
    if kind == "websocket:dtmf":
        return Dtmf(digit(need(msg, "digit", "websocket:dtmf"), "digit"))
    return Notice(kind[:40])


def frames(buffer: bytearray, size: int = FRAME_BYTES) -> list[bytes]:
    """Whole frames out of `buffer` (what remains stays for the next message)."""
    out = []
    while len(buffer) >= size:
        out.append(bytes(buffer[:size]))
        del buffer[:size]
    return out


def clear_message() -> str:
    return json.dumps({"action": "clear"})
