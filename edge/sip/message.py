"""RFC 3261 messages: parse bytes into a Request or Response, serialize back. No I/O.

Covers what a redirect server and a UAS meet on the wire: request and status lines, header
folding, compact header names (§7.3.3), comma-separated and repeated headers, header and
URI parameters, URI headers (``?X-Business-Id=123``), bodies framed by Content-Length, and
limits on sizes. Errors are :class:`ParseError` with a precise message; when enough of a
request was read to address a response, ``partial`` holds it so a 400 can be sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote, unquote


class SipError(Exception):
    """The SIP layer's error family; each error carries the status to answer with."""

    status_hint: int = 400

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class ParseError(SipError):
    """Bytes that are not a valid SIP message.

    ``partial`` is the request as far as it could be read, when enough of it (Via, From,
    To, Call-ID, CSeq) was readable to address a 400 response; otherwise None and the
    message is dropped.
    """

    def __init__(
        self, message: str, partial: Request | None = None, status_hint: int = 400
    ) -> None:
        super().__init__(message, status_hint)
        self.partial = partial


class TransactionError(SipError):
    """An event a transaction's state does not accept (see the transition tables)."""

    status_hint = 500


SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
MAX_MESSAGE_BYTES = 65_535
MAX_HEADER_BYTES = 16_384  # the whole header section
MAX_HEADERS = 128

#: compact form -> full lowercase name (RFC 3261 §7.3.3 and later RFCs)
COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "r": "refer-to", "u": "allow-events",
    "x": "session-expires", "b": "referred-by", "y": "identity",
}  # fmt: skip
#: lowercase -> canonical spelling used when we write headers
CANONICAL = {
    "via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
    "contact": "Contact", "content-length": "Content-Length", "content-type": "Content-Type",
    "max-forwards": "Max-Forwards", "www-authenticate": "WWW-Authenticate",
    "retry-after": "Retry-After", "user-agent": "User-Agent", "record-route": "Record-Route",
}  # fmt: skip
#: headers whose values may be lists joined by commas (RFC 3261 §7.3.1); others never split
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "content-encoding", "in-reply-to", "warning", "allow-events", "path",
})  # fmt: skip
REQUIRED = ("via", "from", "to", "call-id", "cseq")

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_REQUEST_LINE = re.compile(rf"^({_TOKEN}) (\S+) (SIP/\d+\.\d+)$")
_STATUS_LINE = re.compile(r"^(SIP/\d+\.\d+) (\d{3}) ?(.*)$")
#: a header line as most messages have it: no leading whitespace, no LF inside
_HEADER_PLAIN = re.compile(rf"({_TOKEN})[ \t]*:([^\n]*)\Z")
# The common SIP URI (lowercase scheme, plain user and host, no '%', quotes or IPv6) in
# one match; anything else takes the general parser. The two agree wherever this matches
# (tests/unit/test_sip_message.py checks it on vectors and random URIs).
_SIP_URI_FAST = re.compile(
    r"(sips?):(?:([A-Za-z0-9+\-_.!~*'()&=$,/]+)@)?([A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?"
    r"((?:;[^?@\s\"%]*)?)(?:\?([^\s\"%]*))?\Z"
)
#: the common Via (upper-case transport, plain host) in one match, else the general path
_VIA_FAST = re.compile(r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?((?:;[^\"]*)?)\Z")
_VIA = re.compile(rf"^\s*SIP\s*/\s*2\.0\s*/\s*({_TOKEN})\s+(\S.*)$", re.I | re.S)
#: a header line: name (surrounding whitespace as str.strip() sees it), colon, value
_HEADER_LINE = re.compile(rf"\s*({_TOKEN})\s*:(.*)", re.S)
_HOST = re.compile(r"[A-Za-z0-9._:%-]+\Z")
# characters quote() would leave alone with each `safe` set below: when a whole string is
# made of them, quoting is skipped (a regex match is ~10x cheaper than urllib's quote)
_USER_SAFE = "+-_.!~*'()&=$,;?/"
_PASSWORD_SAFE = "-_.!~*'()&=+$,"  # RFC 3261 password: unreserved, escaped, &=+$,
_HNAME_SAFE = "-_.!~*()"
_HVALUE_SAFE = "-_.!~*()+"


def _plain(safe: str) -> re.Pattern[str]:
    return re.compile("[A-Za-z0-9" + re.escape(safe) + r"]*\Z")


_USER_PLAIN, _PASSWORD_PLAIN, _HNAME_PLAIN, _HVALUE_PLAIN = map(
    _plain, (_USER_SAFE, _PASSWORD_SAFE, _HNAME_SAFE, _HVALUE_SAFE)
)


def canonical_name(name: str) -> str:
    return _CANONICAL_SEEN.get(name) or _canonical_name(name)


@lru_cache(maxsize=1024)
def _canonical_name(name: str) -> str:
    low = name.strip().lower()
    low = COMPACT.get(low, low)
    return CANONICAL.get(low) or "-".join(p[:1].upper() + p[1:] for p in low.split("-"))


#: canonical_name of the names seen most (a dict lookup is cheaper than lru_cache's call)
_CANONICAL_SEEN = {
    n: _canonical_name(n)
    for full in (*CANONICAL.values(), "Allow", "Supported", "Route", "Require", "Accept",
                 "Subject", "Event", "Expires", "Date", "Organization", "Priority", "Server")
    for n in (full, full.lower())
} | {short: _canonical_name(short) for short in COMPACT}  # fmt: skip
_REQUIRED_KEYS = tuple(canonical_name(h) for h in REQUIRED)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...> brackets."""
    if "," not in value:
        return [value.strip()] if value.strip() else []
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    out: list[str] = []
    depth, quoted, start, i = 0, False, 0, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=b;c`` -> {"a": "b", "c": None} (names lowercased, quotes kept)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for part in _split_unquoted(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _split_unquoted(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    out, quoted, start = [], False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# -- URIs ------------------------------------------------------------------------------
@dataclass
class SipURI:
    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipURI:
        m = _SIP_URI_FAST.match(text)
        if m is not None:
            scheme, user, host, port_text, params, hdrs = m.groups()
            port = int(port_text) if port_text else None
            pairs = [pair.partition("=") for pair in hdrs.split("&")] if hdrs else []
            if all(name for name, _, _ in pairs) and (port is None or 0 < port < 65536):
                headers = {name: value for name, _, value in pairs}
                return cls(scheme, user, None, host.lower(), port, parse_params(params), headers)
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> SipURI:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise ParseError(f"unsupported URI {text!r}: expected sip:, sips: or tel:")
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls(scheme="tel", user=number.strip(), params=parse_params(params))
        rest, _, hdrs = rest.partition("?")
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            hostpart, userinfo = rest, ""
        hostport, _, params = hostpart.partition(";")
        user: str | None = None
        password: str | None = None
        if at:
            user, _, pw = userinfo.partition(":")
            user = unquote(user) if "%" in user else user
            password = (unquote(pw) if "%" in pw else pw) or None
            if not user:
                raise ParseError(f"URI {text!r} has an empty user part")
        host, port = _host_port(hostport, text)
        headers: dict[str, str] = {}
        for pair in hdrs.split("&") if hdrs else []:
            name, _, value = pair.partition("=")
            if not name:
                raise ParseError(f"URI {text!r} has an empty header name")
            headers[unquote(name)] = unquote(value)
        return cls(scheme, user, password, host, port, parse_params(params), headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = _quote(self.user, _USER_PLAIN, _USER_SAFE)
            if self.password:
                userinfo += ":" + _quote(self.password, _PASSWORD_PLAIN, _PASSWORD_SAFE)
            userinfo += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        text = f"{self.scheme}:{userinfo}{host}{port}{format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(
                f"{_quote(k, _HNAME_PLAIN, _HNAME_SAFE)}={_quote(v, _HVALUE_PLAIN, _HVALUE_SAFE)}"
                for k, v in self.headers.items()
            )
        return text


def _quote(text: str, plain: re.Pattern[str], safe: str) -> str:
    return text if plain.match(text) else quote(text, safe=safe)


def _host_port(text: str, whole: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"URI {whole!r}: unterminated IPv6 reference")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ParseError(f"URI {whole!r}: junk after IPv6 reference")
    else:
        host, _, port_text = text.partition(":")
    if not _HOST.match(host):
        raise ParseError(f"URI {whole!r} has no valid host")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ParseError(f"URI {whole!r} has an invalid port {port_text!r}")
        port = int(port_text)
    return host.lower(), port


def _quoted_string(text: str) -> tuple[str, int]:
    """The quoted-string at the start of `text` (RFC 3261 §25.1: backslash escapes one
    character): its unescaped content and the index just past the closing quote."""
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ParseError(f"unterminated quoted display name in {text!r}")


@dataclass
class NameAddr:
    """``"Alice" <sip:alice@atlanta.example.com>;tag=1928301774`` (From, To, Contact)."""

    uri: SipURI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False  # Contact: *

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text == "*":
            return cls(SipURI(), wildcard=True)
        display: str | None = None
        start = 0
        if text.startswith('"'):  # quoted-string display name: may hold '<' and '"'
            display, start = _quoted_string(text)
        lt = text.find("<", start)
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError(f"unterminated <...> in {text!r}")
            if display is None:
                display = text[:lt].strip() or None
            elif text[start:lt].strip():
                raise ParseError(f"junk between the display name and <...> in {text!r}")
            uri = SipURI.parse(text[lt + 1 : gt])
            params = parse_params(text[gt + 1 :])
            return cls(uri, display or None, params)
        if start or any(c in text for c in '<>"'):
            raise ParseError(f"{text!r}: a display name or '<', '>', '\"' needs <...>")
        # addr-spec without brackets: parameters belong to the header, not the URI
        uri_text, _, param_text = text.partition(";")
        return cls(SipURI.parse(uri_text), None, parse_params(param_text))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA_FAST.match(text)
        if m is not None:
            transport, host, port_text, params = m.groups()
            port = int(port_text) if port_text else None
            if port is None or 0 < port < 65536:
                return cls(transport, host.lower(), port, parse_params(params))
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        m = _VIA.match(text)
        if not m:
            raise ParseError(f"Via {text!r}: expected SIP/2.0/<transport> sent-by")
        transport, rest = m.groups()
        sent_by, _, params = rest.strip().partition(";")
        host, port = _host_port(sent_by, text)
        return cls(transport.upper(), host, port, parse_params(params))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"


# -- headers ---------------------------------------------------------------------------
class Headers:
    """Ordered (name, value) pairs; lookups by canonical name; list headers split."""

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._index.get(canonical_name(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value, with comma-joined list headers split into elements."""
        key = canonical_name(name)
        values = self._index.get(key, [])
        if key.lower() in LIST_HEADERS:
            return [e for v in values for e in split_list(v)]
        return list(values)

    def add(self, name: str, value: str) -> None:
        key = canonical_name(name)
        self._items.append((key, value))
        self._index.setdefault(key, []).append(value)

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        if self._index.pop(key, None) is not None:
            self._items = [(n, v) for n, v in self._items if n != key]

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        h._index = {k: list(v) for k, v in self._index.items()}
        return h


# -- messages --------------------------------------------------------------------------
@dataclass
class Message:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        raw = self.headers.get("cseq") or ""
        number, _, method = raw.strip().partition(" ")
        if not number.isdigit() or not method.strip():
            raise ParseError(f"CSeq {raw!r}: expected '<number> <METHOD>'")
        return int(number), method.strip().upper()

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        values = self.headers.get_all("via")
        if not values:
            raise ParseError("missing Via header")
        return Via.parse(values[0])

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("from") or "")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.headers.get("to") or "")

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class Request(Message):
    method: str = ""
    uri: SipURI = field(default_factory=SipURI)
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {self.version}")


@dataclass
class Response(Message):
    status: int = 200
    reason: str = "OK"
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialize(f"{self.version} {self.status} {self.reason}")


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """Split at the first blank line: (head, rest), or None when it has not arrived."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i], data[i + len(sep) :]
    return None


def _unfold(head: str) -> list[str]:
    if "\n " not in head and "\n\t" not in head:
        if head.count("\n") == head.count("\r\n"):
            return head.split("\r\n")
        return re.split(r"\r?\n", head)
    lines: list[str] = []
    for line in re.split(r"\r?\n", head):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def parse_head(head: bytes) -> tuple[str, Headers]:
    """Start line and headers of a message head (no body)."""
    if len(head) > MAX_HEADER_BYTES:
        raise ParseError(f"header section of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"header section is not UTF-8 at byte {exc.start}") from exc
    text = text.lstrip("\r\n")
    return _head_fast(text) or _head_by_line(text)


def _head_fast(text: str) -> tuple[str, Headers] | None:
    """The common head (CRLF lines, no folding, every line a plain `Name: value`) in one
    pass; None sends it to the line-by-line parser, which also words the errors."""
    lines = text.split("\r\n")
    start = lines[0]
    if len(lines) > MAX_HEADERS + 1 or not start or "\n" in start:
        return None
    headers = Headers()
    items, index = headers._items, headers._index
    for i in range(1, len(lines)):  # Headers.add and canonical_name, inlined
        line = lines[i]
        name, colon, value = line.partition(":")
        key = _CANONICAL_SEEN.get(name)  # a known name is a token: no regex needed
        if key is None or not colon or "\n" in value:
            m = _HEADER_PLAIN.match(line)
            if m is None:  # folded, a bare LF, odd whitespace or malformed
                return None
            key, value = canonical_name(m[1]), m[2]
        value = value.strip()
        items.append((key, value))
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    return start, headers


def _head_by_line(text: str) -> tuple[str, Headers]:
    lines = _unfold(text)
    if not lines or not lines[0]:
        raise ParseError("empty message")
    start, header_lines = lines[0], lines[1:]
    if len(header_lines) > MAX_HEADERS:
        raise ParseError(f"{len(header_lines)} headers exceed the limit of {MAX_HEADERS}")
    headers = Headers()
    for line in header_lines:
        m = _HEADER_LINE.match(line)
        if m is None:
            raise ParseError(f"malformed header line {line[:80]!r}")
        headers.add(m[1], m[2].strip())
    return start, headers


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one whole message (a UDP datagram, or one framed out of a TCP stream).

    Over UDP a missing Content-Length means "the rest of the datagram" and extra bytes
    beyond it are ignored (RFC 3261 §18.3); over a stream Content-Length is mandatory and
    the framer already cut the message to it.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise ParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    parts = split_head(data)
    if parts is None:
        raise ParseError("no blank line after the headers")
    head, rest = parts
    start, headers = parse_head(head)
    body = _frame_body(headers, rest, stream)
    if m := _STATUS_LINE.match(start):
        version, code, reason = m.groups()
        return Response(headers, body, status=int(code), reason=reason, version=version)
    m = _REQUEST_LINE.match(start)
    if not m:
        raise ParseError(f"malformed start line {start[:80]!r}")
    method, uri_text, version = m.groups()
    request = Request(headers, body, method=method.upper(), version=version)
    index = headers._index
    missing = [k for k in _REQUIRED_KEYS if not index.get(k, ("",))[0]]
    partial = None if missing else request
    if version != SIP_VERSION:
        raise ParseError(f"unsupported version {version}", partial, status_hint=505)
    try:
        request.uri = SipURI.parse(uri_text)
    except ParseError as exc:
        raise ParseError(f"Request-URI: {exc}", partial) from exc
    if missing:
        raise ParseError(f"missing {missing[0]} header", partial)
    try:
        _, cseq_method = request.cseq
        request.top_via  # noqa: B018 - validates the Via
        request.from_  # noqa: B018
        request.to  # noqa: B018
    except ParseError as exc:
        raise ParseError(str(exc), partial) from exc
    if cseq_method != request.method:
        raise ParseError(
            f"CSeq method {cseq_method} does not match request method {request.method}", partial
        )
    return request


def _frame_body(headers: Headers, rest: bytes, stream: bool) -> bytes:
    raw = headers.get("content-length")
    if raw is None:
        if stream:
            raise ParseError("missing Content-Length on a stream transport")
        return rest
    if not raw.isdigit():
        raise ParseError(f"Content-Length {raw!r} is not a number")
    length = int(raw)
    if length > len(rest):
        raise ParseError(f"Content-Length {length} but only {len(rest)} body bytes")
    return rest[:length]


def make_response(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` (§8.2.6): Via, From, To (+tag), Call-ID, CSeq copied."""
    h = Headers()
    for via in request.headers.get_all("via"):
        h.add("Via", via)
    h.add("From", request.headers.get("from") or "")
    to = request.headers.get("to") or ""
    if to_tag and status > 100:
        try:
            tagged = NameAddr.parse(to).tag is not None
        except ParseError:  # a To we cannot read still gets its answer (a 400 about it)
            tagged = ";tag=" in to.lower()
        if not tagged:
            to = f"{to};tag={to_tag}"
    h.add("To", to)
    h.add("Call-ID", request.call_id)
    h.add("CSeq", request.headers.get("cseq") or "")
    for name, value in headers:
        h.add(name, value)
    return Response(h, body, status=status, reason=reason)
