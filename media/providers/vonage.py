"""Vonage Voice API WebSockets (an NCCO `connect` to a `websocket` endpoint). Pure. The
first frame is text JSON (`content-type` audio/l16;rate=16000 plus the NCCO's headers);
then binary frames of 16-bit little-endian PCM, 20 ms each (640 bytes at 16 kHz). Audio
sent back must be binary frames of the same size, paced at 20 ms; `{"action":"clear"}`
drops what Vonage has queued."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from media.providers.twilio import ProtocolError

FRAME_BYTES = 640  # 20 ms of L16 at 16 kHz


@dataclass(frozen=True)
class Open:
    rate: int
    headers: dict[str, str] = field(default_factory=dict)


def parse_first(text: str) -> Open:
    try:
        msg: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    ctype = str(msg.get("content-type", ""))
    if not ctype.startswith("audio/l16"):
        raise ProtocolError(f"content-type {ctype!r}: only audio/l16 is supported")
    rate = 16000
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "rate" and value.isdigit():
            rate = int(value)
    headers = {k: str(v) for k, v in msg.items() if k not in ("event", "content-type")}
    return Open(rate, headers)


def frames(buffer: bytearray, size: int = FRAME_BYTES) -> list[bytes]:
    """Whole frames out of `buffer` (what remains stays for the next message)."""
    out = []
    while len(buffer) >= size:
        out.append(bytes(buffer[:size]))
        del buffer[:size]
    return out


def clear_message() -> str:
    return json.dumps({"action": "clear"})
