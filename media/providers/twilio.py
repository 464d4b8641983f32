"""Twilio Media Streams, bidirectional (`<Connect><Stream>`), as Twilio documents it. Pure.

Twilio -> us, JSON text frames (numbers inside arrive as strings): `connected`,
`start {streamSid, start: {accountSid, callSid, tracks, customParameters, mediaFormat}}`,
`media {sequenceNumber, media: {track, chunk, timestamp, payload}}` (base64 mu-law 8 kHz),
`dtmf {dtmf: {track, digit}}`, `mark {mark: {name}}`, `stop`. Us -> Twilio: `media`
(mu-law 8 kHz only), `mark`, `clear` (drops queued audio; pending marks come back).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from media.providers.base import (
    ProtocolError,
    digit,
    integer,
    kind_of,
    load_json,
    need,
    obj,
    params,
    payload,
    string,
    text,
)


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    account_sid: str
    call_sid: str
    encoding: str
    sample_rate: int
    channels: int
    tracks: tuple[str, ...] = ()
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    sequence_number: int
    track: str
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    call_sid: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def parse(data: str | bytes) -> Event:
    """One message from Twilio. Anything but the documented shapes raises ProtocolError
    with what was wrong (an array or a scalar where an object belongs, a missing field,
    `customParameters` that is not an object of strings...)."""
    msg = obj(load_json(data), "message")
    kind = string(need(msg, "event", "message"), "event")
    if kind == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    if kind == "start":
        s = obj(need(msg, "start", "start"), "start")
        fmt = obj(need(s, "mediaFormat", "start"), "start.mediaFormat")
        tracks = s.get("tracks") or []
        if not isinstance(tracks, list):
            raise ProtocolError(f"start.tracks is {kind_of(tracks)}, not an array")
        return Start(
            stream_sid=text(msg.get("streamSid") or need(s, "streamSid", "start"), "streamSid"),
            account_sid=text(need(s, "accountSid", "start"), "start.accountSid"),
            call_sid=text(need(s, "callSid", "start"), "start.callSid"),
            encoding=text(need(fmt, "encoding", "start.mediaFormat"), "encoding"),
            sample_rate=integer(need(fmt, "sampleRate", "start.mediaFormat"), "sampleRate"),
            channels=integer(need(fmt, "channels", "start.mediaFormat"), "channels"),
            tracks=tuple(text(t, "start.tracks[]") for t in tracks),
            custom_parameters=params(s.get("customParameters"), "start.customParameters"),
        )
    if kind == "media":
        m = obj(need(msg, "media", "media"), "media")
        return Media(
            integer(msg.get("sequenceNumber", 0), "sequenceNumber"),
            text(m.get("track", "inbound"), "media.track"),
            integer(m.get("chunk", 0), "chunk"),
            integer(m.get("timestamp", 0), "timestamp"),
            payload(need(m, "payload", "media"), "media"),
        )
    if kind == "dtmf":
        return Dtmf(digit(need(obj(need(msg, "dtmf", "dtmf"), "dtmf"), "digit", "dtmf"), "digit"))
    if kind == "mark":
        return Mark(text(need(obj(need(msg, "mark", "mark"), "mark"), "name", "mark"), "mark"))
    if kind == "stop":
        stop = obj(msg.get("stop") or {}, "stop")
        return Stop(text(stop.get("callSid", ""), "stop.callSid"))
    raise ProtocolError(f"unknown event {kind[:40]!r}")


def media_message(stream_sid: str, mulaw: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": base64.b64encode(mulaw).decode()},
        }
    )


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


# -- the other direction: what Twilio sends, for bridging a call to an external agent that
#    speaks this protocol (media/agents/websocket.py plays Twilio's part) ------------------
def connected_message() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(stream_sid: str, call_sid: str, params: dict[str, str]) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "accountSid": "trunkline",
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def inbound_media_message(
    stream_sid: str, seq: int, chunk: int, timestamp_ms: int, mulaw: bytes
) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(mulaw).decode(),
            },
        }
    )


def dtmf_message(stream_sid: str, seq: int, digit: str) -> str:
    return json.dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def stop_message(stream_sid: str, seq: int, call_sid: str) -> str:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "stop": {"accountSid": "trunkline", "callSid": call_sid},
        }
    )


@dataclass(frozen=True)
class Clear:
    pass


def parse_outbound(data: str | bytes) -> Media | Mark | Clear:
    """What a server sends back over a Twilio stream: media, mark, clear."""
    msg = obj(load_json(data), "message")
    kind = string(need(msg, "event", "message"), "event")
    if kind == "media":
        m = obj(need(msg, "media", "media"), "media")
        return Media(0, "outbound", 0, 0, payload(need(m, "payload", "media"), "media"))
    if kind == "mark":
        return Mark(text(need(obj(need(msg, "mark", "mark"), "mark"), "name", "mark"), "mark"))
    if kind == "clear":
        return Clear()
    raise ProtocolError(f"unexpected event {kind[:40]!r} from the agent")
