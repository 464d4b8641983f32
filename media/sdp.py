"""SDP (RFC 4566) for audio, and RFC 3264 offer/answer for a media node. Pure.

Parses what SIP trunks and softphones send for a voice call: the session and connection
lines, each m= line with its formats, rtpmap/fmtp/ptime, and the direction attributes
that carry hold (RFC 3264 §8.4, plus the RFC 2543 `c=0.0.0.0` form). `negotiate()` answers
an offer with the first codec in the operator's preference order the offer also has,
plus telephone-event (RFC 4733) when offered; nothing in common is a 488.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

STATIC_PAYLOADS = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1)}
#: what this media node can run; the clock rate is the RTP clock (G.722 samples 16 kHz
#: but its RTP clock is 8000, RFC 3551 §4.5.2)
SUPPORTED = {"PCMU": 8000, "PCMA": 8000, "G722": 8000, "OPUS": 48000}
DEFAULT_PREFERENCE = ("OPUS", "G722", "PCMU", "PCMA")
#: encoding names as RFC 7587 and RFC 4733 spell them (RFC 3551's are upper case)
_WIRE_NAMES = {"OPUS": "opus", "TELEPHONE-EVENT": "telephone-event"}


class SdpError(ValueError):
    """Bytes that are not a usable SDP; `status` is the SIP answer (400 or 488)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reverse(self) -> Direction:
        return {
            Direction.SENDONLY: Direction.RECVONLY,
            Direction.RECVONLY: Direction.SENDONLY,
        }.get(self, self)


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str  # upper case: PCMU, PCMA, G722, OPUS, TELEPHONE-EVENT
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    def rtpmap(self) -> str:
        channels = f"/{self.channels}" if self.channels != 1 else ""
        name = _WIRE_NAMES.get(self.name, self.name)
        return f"{self.payload_type} {name}/{self.clock_rate}{channels}"


@dataclass
class MediaSection:
    kind: str
    port: int
    proto: str
    formats: list[int]
    connection: str | None = None
    codecs: dict[int, Codec] = field(default_factory=dict)
    direction: Direction = Direction.SENDRECV
    ptime: int | None = None
    other: list[str] = field(default_factory=list)  # attributes we carry but do not read


@dataclass
class SessionDescription:
    origin: str
    name: str
    connection: str | None
    media: list[MediaSection]
    version: int = 0

    def audio(self) -> MediaSection | None:
        return next((m for m in self.media if m.kind == "audio" and m.port != 0), None)

    def connection_for(self, m: MediaSection) -> str | None:
        return m.connection or self.connection

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        origin = name = ""
        connection: str | None = None
        version = -1
        media: list[MediaSection] = []
        session_direction: Direction | None = None
        for lineno, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
            line = raw.strip()
            if not line:
                continue
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"SDP line {lineno} is not <type>=<value>: {line[:40]!r}")
            kind, value = line[0], line[2:]
            current = media[-1] if media else None
            if kind == "v":
                version = int(value) if value.isdigit() else -1
            elif kind == "o":
                origin = value
            elif kind == "s":
                name = value
            elif kind == "c":
                addr = _connection(value, lineno)
                if current is None:
                    connection = addr
                else:
                    current.connection = addr
            elif kind == "m":
                media.append(_media_line(value, lineno))
            elif kind == "a":
                attr, _, rest = value.partition(":")
                if attr in ("sendrecv", "sendonly", "recvonly", "inactive"):
                    if current is None:
                        session_direction = Direction(attr)
                    else:
                        current.direction = Direction(attr)
                elif current is None:
                    continue
                elif attr == "rtpmap":
                    _rtpmap(current, rest, lineno)
                elif attr == "fmtp":
                    pt_text, _, params = rest.partition(" ")
                    if pt_text.isdigit() and int(pt_text) in current.codecs:
                        c = current.codecs[int(pt_text)]
                        current.codecs[c.payload_type] = Codec(
                            c.payload_type, c.name, c.clock_rate, c.channels, params.strip()
                        )
                elif attr == "ptime" and rest.strip().isdigit():
                    current.ptime = int(rest.strip())
                else:
                    current.other.append(value)
        if version != 0:
            raise SdpError("SDP must start with v=0")
        for m in media:
            for pt in m.formats:
                if pt not in m.codecs and pt in STATIC_PAYLOADS:
                    n, rate, ch = STATIC_PAYLOADS[pt]
                    m.codecs[pt] = Codec(pt, n, rate, ch)
            if session_direction is not None and m.direction is Direction.SENDRECV:
                m.direction = session_direction
        return cls(origin, name, connection, media)

    def __bytes__(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.name or '-'}"]
        if self.connection:
            lines.append(f"c={_c_line(self.connection)}")
        lines.append("t=0 0")
        for m in self.media:
            lines.append(f"m={m.kind} {m.port} {m.proto} {' '.join(map(str, m.formats))}")
            if m.connection:
                lines.append(f"c={_c_line(m.connection)}")
            for pt in m.formats:
                codec = m.codecs.get(pt)
                if codec is None:
                    continue
                lines.append(f"a=rtpmap:{codec.rtpmap()}")
                if codec.fmtp:
                    lines.append(f"a=fmtp:{pt} {codec.fmtp}")
            if m.ptime:
                lines.append(f"a=ptime:{m.ptime}")
            lines.append(f"a={m.direction.value}")
        return ("\r\n".join(lines) + "\r\n").encode()


def _connection(value: str, lineno: int) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"SDP line {lineno}: c= must be 'IN IP4|IP6 <address>'")
    return parts[2].split("/")[0]


def _c_line(addr: str) -> str:
    family = "IP6" if ":" in addr else "IP4"
    return f"IN {family} {addr}"


def _media_line(value: str, lineno: int) -> MediaSection:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"SDP line {lineno}: m= needs media, port, proto and formats")
    port_text = parts[1].split("/")[0]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"SDP line {lineno}: bad port {parts[1]!r}")
    formats = []
    for f in parts[3:]:
        if not f.isdigit() or int(f) > 127:
            if parts[2].startswith("RTP/"):
                raise SdpError(f"SDP line {lineno}: bad RTP payload type {f!r}")
            continue
        formats.append(int(f))
    return MediaSection(parts[0], int(port_text), parts[2], formats)


def _rtpmap(m: MediaSection, rest: str, lineno: int) -> None:
    pt_text, _, encoding = rest.strip().partition(" ")
    pieces = encoding.split("/")
    if not pt_text.isdigit() or len(pieces) < 2 or not pieces[1].isdigit():
        raise SdpError(f"SDP line {lineno}: bad rtpmap {rest!r}")
    channels = int(pieces[2]) if len(pieces) > 2 and pieces[2].isdigit() else 1
    pt = int(pt_text)
    m.codecs[pt] = Codec(pt, pieces[0].upper(), int(pieces[1]), channels)


@dataclass(frozen=True)
class Answer:
    sdp: SessionDescription
    codec: Codec  # the audio codec both sides use
    dtmf: Codec | None  # telephone-event, when the offer had it
    remote: tuple[str, int]  # where to send RTP
    direction: Direction  # our direction (recvonly while the caller holds)

    @property
    def on_hold(self) -> bool:
        return self.direction in (Direction.RECVONLY, Direction.INACTIVE)


def negotiate(
    offer: SessionDescription,
    local_ip: str,
    local_port: int,
    preference: tuple[str, ...] = DEFAULT_PREFERENCE,
    session_id: int = 0,
    version: int = 0,
) -> Answer:
    """The answer to `offer`: its audio stream, our preferred common codec, DTMF if any."""
    audio = offer.audio()
    if audio is None:
        raise SdpError("the offer has no active audio stream", 488)
    if not audio.proto.startswith("RTP/AVP"):
        raise SdpError(f"unsupported transport {audio.proto} (RTP/AVP only)", 488)
    chosen: Codec | None = None
    for name in preference:
        name = name.upper()
        for pt in audio.formats:
            c = audio.codecs.get(pt)
            if c is not None and c.name == name and SUPPORTED.get(name) == c.clock_rate:
                chosen = c
                break
        if chosen is not None:
            break
    if chosen is None:
        offered = ", ".join(audio.codecs[pt].name for pt in audio.formats if pt in audio.codecs)
        raise SdpError(
            f"no common codec: offered {offered or 'nothing known'}, "
            f"we run {', '.join(preference)}",
            488,
        )
    dtmf = next(
        (
            audio.codecs[pt]
            for pt in audio.formats
            if pt in audio.codecs
            and audio.codecs[pt].name == "TELEPHONE-EVENT"
            and audio.codecs[pt].clock_rate == 8000
        ),
        None,
    )
    remote_ip = offer.connection_for(audio) or ""
    held = remote_ip in ("0.0.0.0", "::") or audio.direction in (
        Direction.SENDONLY,
        Direction.INACTIVE,
    )
    if audio.direction is Direction.INACTIVE:
        direction = Direction.INACTIVE
    elif held:
        direction = Direction.RECVONLY
    else:
        direction = audio.direction.reverse()
    try:
        ipaddress.ip_address(remote_ip)
    except ValueError:
        raise SdpError(f"offer connection address {remote_ip!r} is not an IP address") from None
    formats = [chosen.payload_type] + ([dtmf.payload_type] if dtmf else [])
    section = MediaSection(
        "audio",
        local_port,
        audio.proto,
        formats,
        None,
        {c.payload_type: c for c in (chosen, dtmf) if c is not None},
        direction,
        ptime=20,
    )
    sdp = SessionDescription(
        origin=f"trunkline {session_id} {version} IN {'IP6' if ':' in local_ip else 'IP4'} "
        f"{local_ip}",
        name="trunkline",
        connection=local_ip,
        media=[section],
    )
    return Answer(sdp, chosen, dtmf, (remote_ip, audio.port), direction)
