"""Twilio Media Streams, bidirectional (`<Connect><Stream>`), as Twilio documents it. Pure.

Twilio -> us, JSON text frames (numbers inside arrive as strings): `connected`,
`start {streamSid, start: {accountSid, callSid, tracks, customParameters, mediaFormat}}`,
`media {sequenceNumber, media: {track, chunk, timestamp, payload}}` (base64 mu-law 8 kHz),
`dtmf {dtmf: {track, digit}}`, `mark {mark: {name}}`, `stop`. Us -> Twilio: `media`
(mu-law 8 kHz only), `mark`, `clear` (drops queued audio; pending marks come back).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(ValueError):
    pass


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


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ProtocolError(f"{where}: missing {key!r}")
    return obj[key]


def _int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"{where}: {value!r} is not a number") from None


def parse(text: str | bytes) -> Event:
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    kind = _get(msg, "event", "message")
    if kind == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    if kind == "start":
        s = _get(msg, "start", "start")
        fmt = _get(s, "mediaFormat", "start")
        return Start(
            stream_sid=str(msg.get("streamSid") or _get(s, "streamSid", "start")),
            account_sid=str(_get(s, "accountSid", "start")),
            call_sid=str(_get(s, "callSid", "start")),
            encoding=str(_get(fmt, "encoding", "start.mediaFormat")),
            sample_rate=_int(_get(fmt, "sampleRate", "start.mediaFormat"), "sampleRate"),
            channels=_int(_get(fmt, "channels", "start.mediaFormat"), "channels"),
            tracks=tuple(s.get("tracks") or ()),
            custom_parameters={
                str(k): str(v) for k, v in (s.get("customParameters") or {}).items()
            },
        )
    if kind == "media":
        m = _get(msg, "media", "media")
        try:
            payload = base64.b64decode(_get(m, "payload", "media"), validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ProtocolError(f"media: payload is not base64: {exc}") from exc
        return Media(
            _int(msg.get("sequenceNumber", 0), "sequenceNumber"),
            str(m.get("track", "inbound")),
            _int(m.get("chunk", 0), "chunk"),
            _int(m.get("timestamp", 0), "timestamp"),
            payload,
        )
    if kind == "dtmf":
        return Dtmf(str(_get(_get(msg, "dtmf", "dtmf"), "digit", "dtmf")))
    if kind == "mark":
        return Mark(str(_get(_get(msg, "mark", "mark"), "name", "mark")))
    if kind == "stop":
        return Stop(str((msg.get("stop") or {}).get("callSid", "")))
    raise ProtocolError(f"unknown event {kind!r}")


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


def parse_outbound(text: str | bytes) -> Media | Mark | Clear:
    """What a server sends back over a Twilio stream: media, mark, clear."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    kind = _get(msg, "event", "message")
    if kind == "media":
        try:
            payload = base64.b64decode(
                _get(_get(msg, "media", "media"), "payload", "media"), validate=True
            )
        except (binascii.Error, TypeError) as exc:
            raise ProtocolError(f"media: payload is not base64: {exc}") from exc
        return Media(0, "outbound", 0, 0, payload)
    if kind == "mark":
        return Mark(str(_get(_get(msg, "mark", "mark"), "name", "mark")))
    if kind == "clear":
        return Clear()
    raise ProtocolError(f"unexpected event {kind!r} from the agent")
