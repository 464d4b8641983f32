"""Telnyx media streaming over WebSocket (bidirectional RTP mode), as Telnyx documents
it. Pure. Like Twilio's but snake_case (`stream_id`, `sequence_number`, `media_format`),
and the encoding is the call's (PCMU, or PCMA on many EU/UK legs): read it from `start`.
Frame order is not guaranteed: `MediaReorder` puts frames back in `sequence_number`
order within a small window."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from media.providers.twilio import Dtmf, Mark, ProtocolError, Stop


@dataclass(frozen=True)
class Start:
    stream_id: str
    call_control_id: str
    encoding: str
    sample_rate: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    sequence_number: int
    track: str
    payload: bytes


@dataclass(frozen=True)
class Connected:
    version: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def parse(text: str | bytes) -> Event:
    try:
        msg: dict[str, Any] = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    kind = msg.get("event")
    try:
        if kind == "connected":
            return Connected(str(msg.get("version", "")))
        if kind == "start":
            s, fmt = msg["start"], msg["start"]["media_format"]
            return Start(
                str(msg.get("stream_id", "")),
                str(s.get("call_control_id", "")),
                str(fmt["encoding"]).upper(),
                int(fmt.get("sample_rate", 8000)),
                {str(k): str(v) for k, v in (s.get("custom_parameters") or {}).items()},
            )
        if kind == "media":
            m = msg["media"]
            return Media(
                int(msg.get("sequence_number", 0)),
                str(m.get("track", "inbound")),
                base64.b64decode(m["payload"], validate=True),
            )
        if kind == "dtmf":
            return Dtmf(str(msg["dtmf"]["digit"]))
        if kind == "mark":
            return Mark(str(msg["mark"]["name"]))
        if kind == "stop":
            return Stop(str((msg.get("stop") or {}).get("call_control_id", "")))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolError(f"{kind}: malformed frame: {exc!r}") from exc
    raise ProtocolError(f"unknown event {kind!r}")


def media_message(payload: bytes) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})


class MediaReorder:
    """Hands media out in sequence order, holding at most `window` frames for a gap."""

    def __init__(self, window: int = 3) -> None:
        self.window = window
        self.next: int | None = None
        self.held: dict[int, Media] = {}
        self.lost = 0

    def push(self, m: Media) -> list[Media]:
        if self.next is not None and m.sequence_number < self.next:
            return []  # late: already played past it
        self.held[m.sequence_number] = m
        if self.next is None:
            if len(self.held) <= self.window:
                return []  # the first frames may be out of order too
            self.next = min(self.held)
        out = []
        while self.held:
            if self.next in self.held:
                out.append(self.held.pop(self.next))
                self.next += 1
            elif len(self.held) > self.window:
                self.lost += 1
                self.next += 1
            else:
                break
        return out

    def flush(self) -> list[Media]:
        """What is still held, in order (the stream ended)."""
        out = [self.held[s] for s in sorted(self.held)]
        self.held.clear()
        return out
