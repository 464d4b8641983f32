"""SIP parser and serializer against vector files (tests/vectors/sip), RFC 4475-style."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sip import message
from edge.sip.errors import ParseError
from edge.sip.message import (
    NameAddr,
    Request,
    Response,
    SipURI,
    Via,
    make_response,
    parse_message,
    split_list,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sip"


def load(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def test_wsinv_tortuous_invite():
    msg = parse_message(load("valid/wsinv.sip"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert (msg.uri.user, msg.uri.host, msg.uri.params) == (
        "vivekg",
        "chair-dnrc.example.com",
        {"unknownparam": None},
    )
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.headers.get("max-forwards") == "0068"
    assert msg.cseq == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contacts = [NameAddr.parse(c) for c in msg.headers.get_all("contact")]
    assert len(contacts) == 1
    assert contacts[0].uri.user == "jdrosen"
    assert contacts[0].params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.body.startswith(b"v=0\r\n") and len(msg.body) == int(
        msg.headers.get("content-length")
    )


def test_escaped_uris():
    msg = parse_message(load("valid/esc01.sip"))
    assert msg.uri.user == "sips:user@example.com"
    assert msg.to.uri.user == "user"
    assert msg.from_.uri.user == "I have spaces"
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact i:
    assert msg.headers.get("content-type") == "application/sdp"  # compact c:


def test_uri_headers_carry_business_and_phone():
    msg = parse_message(load("valid/trunk_invite.sip"))
    assert msg.uri.user == "+15551234567"
    assert msg.uri.port == 5060
    assert msg.uri.params == {"user": "phone"}
    assert msg.uri.headers == {"X-Business-Id": "123", "X-Phone-Id": "abc"}
    assert msg.top_via.params["rport"] is None


def test_udp_without_content_length_takes_the_rest():
    msg = parse_message(load("valid/no_content_length.sip"))
    assert msg.method == "OPTIONS" and msg.body == b""
    with pytest.raises(ParseError, match="missing Content-Length on a stream"):
        parse_message(load("valid/no_content_length.sip"), stream=True)


def test_responses():
    unreason = parse_message(load("valid/unreason.sip"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но сто")
    noreason = parse_message(load("valid/noreason.sip"))
    assert (noreason.status, noreason.reason) == (100, "")


@pytest.mark.parametrize(
    ("name", "message", "answerable", "status"),
    [
        ("badvers.sip", "unsupported version SIP/7.0", True, 505),
        ("mismatch01.sip", "CSeq method INVITE does not match request method OPTIONS", True, 400),
        ("insuf.sip", "missing From header", False, 400),
        ("clerr.sip", "Content-Length 9999 but only 5 body bytes", False, 400),
        ("ncl.sip", "Content-Length '-999' is not a number", False, 400),
        ("ltgtruri.sip", "Request-URI: unsupported URI '<sip:user@example.com>'", True, 400),
        ("lwsruri.sip", "malformed start line", False, 400),
        ("badhdr.sip", "malformed header line 'This line has no colon'", False, 400),
        ("badvia.sip", "Via 'HTTP/1.1 192.0.2.1:5060;branch=z9hG4bKbadvia'", True, 400),
        ("scheme.sip", "Request-URI: unsupported URI 'http://example.com/'", True, 400),
        ("garbage.sip", "malformed", False, 400),
        ("nohead.sip", "no blank line after the headers", False, 400),
    ],
)
def test_invalid_vectors(name, message, answerable, status):
    with pytest.raises(ParseError) as info:
        parse_message(load(f"invalid/{name}"))
    assert message in str(info.value)
    assert (info.value.partial is not None) is answerable
    assert info.value.status_hint == status


def test_round_trip_is_stable():
    for path in sorted((VECTORS / "valid").glob("*.sip")):
        first = parse_message(path.read_bytes())
        again = parse_message(bytes(first))
        assert bytes(again) == bytes(first), path.name
        assert type(again) is type(first)
        assert again.headers.get_all("via") == first.headers.get_all("via")


def test_make_response_copies_and_tags():
    req = parse_message(load("valid/trunk_invite.sip"))
    resp = make_response(
        req, 302, "Moved Temporarily", to_tag="abc", headers=[("Contact", "<sip:x@127.0.0.1:5070>")]
    )
    wire = bytes(resp)
    parsed = parse_message(wire)
    assert isinstance(parsed, Response) and parsed.status == 302
    assert parsed.headers.get_all("via") == req.headers.get_all("via")
    assert parsed.to.tag == "abc" and parsed.from_.tag == "1928301774"
    assert parsed.cseq == (314159, "INVITE")
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")
    trying = make_response(req, 100, "Trying", to_tag="abc")
    assert parse_message(bytes(trying)).to.tag is None  # no tag on 100 (§8.2.6.2)


def test_uri_round_trip_with_headers():
    uri = SipURI(user="+15551234567", host="10.0.0.5", port=5070, headers={"X-CallQueue-Id": "q-1"})
    assert str(uri) == "sip:+15551234567@10.0.0.5:5070?X-CallQueue-Id=q-1"
    assert SipURI.parse(str(uri)) == uri
    v6 = SipURI.parse("sip:alice@[2001:db8::10]:5060;transport=tcp")
    assert (v6.host, v6.port, v6.params) == ("2001:db8::10", 5060, {"transport": "tcp"})
    assert str(v6) == "sip:alice@[2001:db8::10]:5060;transport=tcp"


def test_split_list_respects_quotes_and_brackets():
    assert split_list('"a, b" <sip:x@y>;p=1, <sip:z@w?h=1,2>') == [
        '"a, b" <sip:x@y>;p=1',
        "<sip:z@w?h=1,2>",
    ]


def test_via_with_ipv6_and_params():
    via = Via.parse("SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK1;received=192.0.2.1")
    assert (via.transport, via.host, via.port, via.branch) == (
        "TCP",
        "2001:db8::9",
        5061,
        "z9hG4bK1",
    )
    assert str(via) == "SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK1;received=192.0.2.1"


@pytest.mark.parametrize(
    ("limit", "data"),
    [
        ("exceeds 65535", b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n"),
        (
            "headers exceed the limit of 128",
            b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: 1\r\n" * 200 + b"\r\n",
        ),
    ],
)
def test_limits(limit, data):
    with pytest.raises(ParseError, match=limit):
        parse_message(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_our_error(data):
    try:
        msg = parse_message(data)
    except ParseError:
        return
    _assert_round_trip(msg)


_LINES = st.sampled_from(
    [
        b"INVITE sip:+1555@h SIP/2.0",
        b"SIP/2.0 200 OK",
        b"Via: SIP/2.0/UDP h;branch=z9hG4bKx",
        b"v: SIP/2.0/TCP [::1]:5;rport",
        b"From: <sip:a@b>;tag=1",
        b"To: sip:c@d",
        b"i: x@y",
        b"CSeq: 1 INVITE",
        b"l: 3",
        b"Content-Length: 99",
        b"Contact: *",
        b" folded",
        b"",
        b'm: "q\\"" <sip:x@[::1]>;q=0.1',
        b"X: ;;,,",
        b"\xff\xfe",
        b"Max-Forwards: 0",
        b'To: "a<b\\"c" <sip:u:p%3E\t@h>;tag=2',
        b"f: tel:>",
        b"Contact: <tel:+1 ;x=1>, sips:a:%22@[::1]",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINES, max_size=12), st.binary(max_size=20))
def test_random_sip_like_messages_parse_or_raise_our_error(lines, tail):
    data = b"\r\n".join(lines) + b"\r\n\r\n" + tail
    try:
        msg = parse_message(data)
    except ParseError:
        return
    _assert_round_trip(msg)


def _assert_round_trip(msg):
    """Whatever parsed serializes to a message that parses again, to the same message:
    a re-parse error is a parser or serializer bug, never an acceptable outcome."""
    again = parse_message(bytes(msg))
    assert type(again) is type(msg)

    # the serializer writes Content-Length itself (last, the body's length)
    def fields(m):
        return [(n, v) for n, v in m.headers if n != "Content-Length"]

    assert fields(again) == fields(msg)
    assert again.headers.get("content-length") == str(len(msg.body))
    assert again.body == msg.body
    if isinstance(msg, Request):
        assert (again.method, str(again.uri), again.version) == (
            msg.method,
            str(msg.uri),
            msg.version,
        )
    else:
        assert (again.status, again.reason, again.version) == (
            msg.status,
            msg.reason,
            msg.version,
        )
    assert bytes(again) == bytes(msg)
    # the parts the stack parses and writes back (a Via it annotates, a Contact it turns
    # into a Request-URI) parse again to the same object
    for value in msg.headers.get_all("via"):
        _assert_object_round_trip(Via.parse, value)
    for name in ("from", "to", "contact"):
        for value in msg.headers.get_all(name):
            _assert_object_round_trip(NameAddr.parse, value)


def _assert_object_round_trip(parse, text):
    try:
        parsed = parse(text)
    except ParseError:
        return  # refused, not our concern here: the message layer checks what it needs
    written = str(parsed)
    assert parse(written) == parsed, (text, written)
    assert str(parse(written)) == written


# -- the fast paths agree with the general parsers they shortcut -------------------------
def _outcome(parse, text):
    try:
        return parse(text)
    except ParseError as exc:
        return ("ParseError", str(exc))


_URI_CHARS = "sSiIpPtel:+0123456789abcXYZ@.;=?&-_%\"[] \t/!~*'()$,#"
_URI_TEXT = st.one_of(
    st.text(_URI_CHARS, max_size=40),
    st.builds(lambda s, rest: s + rest, st.sampled_from(["sip:", "sips:", "SIP:"]),
              st.text(_URI_CHARS, max_size=40)),
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(_URI_TEXT)
def test_uri_fast_path_agrees_with_the_general_parser(text):
    assert _outcome(SipURI.parse, text) == _outcome(SipURI._parse_general, text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:+15551234567@proxy.example.com:5060;user=phone?X-Business-Id=123&X-Phone-Id=abc",
        "sip:host;x=a@b",  # the '@' belongs to the user part: general path
        "sip:1555;isub=1@host",
        "sip:a@h:0",
        "sip:a@h:65536",
        "sip:a@h?=v",
        "sip:a@h?",
        "sip:a@h;",
        "sip:A@Example.COM",
        "sips:a@h:5061;transport=tls",
    ],
)
def test_uri_fast_path_edges(text):
    assert _outcome(SipURI.parse, text) == _outcome(SipURI._parse_general, text)


_VIA_TEXT = st.builds(
    lambda a, b: a + b,
    st.sampled_from(["SIP/2.0/UDP ", "SIP/2.0/tcp ", "SIP / 2.0 / TLS ", "SIP/2.0/UDP", ""]),
    st.text('abcH0123456789.:-;="[] \tz9hG4bK,rport', max_size=30),
)


@settings(max_examples=1000, deadline=None)
@given(_VIA_TEXT)
def test_via_fast_path_agrees_with_the_general_parser(text):
    assert _outcome(Via.parse, text) == _outcome(Via._parse_general, text)


def _head_pairs(parse, text):
    out = _outcome(parse, text)
    return out if isinstance(out, tuple) and out[0] == "ParseError" else (out[0], list(out[1]))


@settings(max_examples=600, deadline=None)
@given(st.lists(_LINES, max_size=12), st.sampled_from(["\r\n", "\n"]))
def test_head_fast_path_agrees_with_the_line_parser(lines, sep):
    text = sep.join(line.decode("latin-1") for line in lines)
    fast = message._head_fast(text)
    if fast is not None:
        assert (fast[0], list(fast[1])) == _head_pairs(message._head_by_line, text)


@pytest.mark.parametrize("path", sorted((VECTORS / "valid").glob("*.sip")), ids=lambda p: p.name)
def test_head_fast_path_agrees_on_the_vectors(path):
    head, _ = message.split_head(path.read_bytes())
    text = head.decode("utf-8").lstrip("\r\n")
    slow = _head_pairs(message._head_by_line, text)
    fast = message._head_fast(text)
    assert fast is None or (fast[0], list(fast[1])) == slow


# -- parsed objects the stack writes back parse again to the same object ----------------
_ADDR_TEXT = st.builds(
    lambda a, b: a + b,
    st.sampled_from(["", "sip:", "<sip:", "sips:a@", '"x" <sip:', "A <", '"', "tel:", "<tel:"]),
    st.text("sSiIpPtel:+0123456789abc@.;=?&-_%\"[] \t/!~*'()$,#<>\\", max_size=24),
)


@settings(max_examples=1500, deadline=None)
@given(_ADDR_TEXT)
def test_name_addr_parses_or_raises_and_round_trips(text):
    _assert_object_round_trip(NameAddr.parse, text)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        # a password is escaped like the user part ('>' would end the <...> it sits in)
        ("<sip:u:p>x@h>", None),
        ("<sip:u:a%3Eb@h>", "<sip:u:a%3Eb@h>"),
        ("sip:2:c>8@1", None),
        # a quoted display name may hold '<' and escaped quotes
        ('"a<b\\"c" <sip:x@h>;tag=1', '"a<b\\"c" <sip:x@h>;tag=1'),
        ("Bob <sip:x@h>", '"Bob" <sip:x@h>'),
        ('"unterminated <sip:x@h>', None),
        ('"a" junk <sip:x@h>', None),
        # an addr-spec without <...> cannot carry '<', '>' or '"'
        ("tel:>", None),
        ('sip:a"@h', None),
        # a tel number's surrounding whitespace is not part of it
        ("<tel:+1555 ;x=1>", "<tel:+1555;x=1>"),
    ],
)
def test_name_addr_vectors(text, written):
    if written is None:
        with pytest.raises(ParseError):
            NameAddr.parse(text)
        return
    parsed = NameAddr.parse(text)
    assert str(parsed) == written
    assert NameAddr.parse(written) == parsed
