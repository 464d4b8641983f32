"""Telnyx media streaming over WebSocket (bidirectional RTP mode), as Telnyx documents
it. Pure. Like Twilio's but snake_case (`stream_id`, `sequence_number`, `media_format`),
and the encoding is the call's (PCMU, or PCMA on many EU/UK legs): read it from `start`.
Frame order is not guaranteed: `MediaReorder` puts frames back in `sequence_number`
order within a small window. The queue id comes in `custom_parameters` or in the
`client_state` the webhook edge's `answer` command set (`client_state_queue_id`)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from media.providers.base import (
    ProtocolError,
    digit,
    integer,
    load_json,
    need,
    obj,
    params,
    payload,
    string,
    text,
)
from media.providers.twilio import Dtmf, Mark, Stop


@dataclass(frozen=True)
class Start:
    stream_id: str
    call_control_id: str
    encoding: str
    sample_rate: int
    custom_parameters: dict[str, str] = field(default_factory=dict)
    client_state: str = ""  # as sent: base64 of what the answer command carried


@dataclass(frozen=True)
class Media:
    sequence_number: int
    track: str
    payload: bytes


@dataclass(frozen=True)
class Connected:
    version: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def parse(data: str | bytes) -> Event:
    """One message from Telnyx; anything but the documented shapes raises ProtocolError
    naming what was wrong."""
    msg = obj(load_json(data), "message")
    kind = string(need(msg, "event", "message"), "event")
    if kind == "connected":
        return Connected(str(msg.get("version", "")))
    if kind == "start":
        s = obj(need(msg, "start", "start"), "start")
        fmt = obj(need(s, "media_format", "start"), "start.media_format")
        return Start(
            text(msg.get("stream_id", ""), "stream_id"),
            text(s.get("call_control_id", ""), "start.call_control_id"),
            text(need(fmt, "encoding", "start.media_format"), "encoding").upper(),
            integer(fmt.get("sample_rate", 8000), "sample_rate"),
            params(s.get("custom_parameters"), "start.custom_parameters"),
            text(s.get("client_state") or "", "start.client_state"),
        )
    if kind == "media":
        m = obj(need(msg, "media", "media"), "media")
        return Media(
            integer(msg.get("sequence_number", 0), "sequence_number"),
            text(m.get("track", "inbound"), "media.track"),
            payload(need(m, "payload", "media"), "media"),
        )
    if kind == "dtmf":
        return Dtmf(digit(need(obj(need(msg, "dtmf", "dtmf"), "dtmf"), "digit", "dtmf"), "digit"))
    if kind == "mark":
        return Mark(text(need(obj(need(msg, "mark", "mark"), "mark"), "name", "mark"), "mark"))
    if kind == "stop":
        stop = obj(msg.get("stop") or {}, "stop")
        return Stop(text(stop.get("call_control_id", ""), "stop.call_control_id"))
    raise ProtocolError(f"unknown event {kind[:40]!r}")


def client_state_queue_id(client_state: str) -> str | None:
    """The queue id a Call Control `answer` put in `client_state` (base64): the decoded
    text itself, or its `callQueueId` (or `queueId`) when it is a JSON object."""
    if not client_state:
        return None
    try:
        decoded = base64.b64decode(client_state, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    decoded = decoded.strip()
    if decoded.startswith("{"):
        try:
            state = json.loads(decoded)
        except json.JSONDecodeError:
            return None
        if not isinstance(state, dict):
            return None
        found = state.get("callQueueId") or state.get("queueId")
        return found if isinstance(found, str) and found else None
    return decoded or None


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
