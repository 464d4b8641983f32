"""Stream framing, h11-style: whole buffer, byte by byte, and with trailing data."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.sip.errors import ParseError
from edge.sip.framing import StreamFramer
from edge.sip.message import parse_message

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sip" / "valid"
MESSAGES = [
    (VECTORS / "wsinv.sip").read_bytes(),
    (VECTORS / "trunk_invite.sip").read_bytes(),
    (VECTORS / "esc01.sip").read_bytes(),
]
STREAM = b"".join(MESSAGES)


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (m := framer.next_message()) is not None:
        out.append(m)
    return out


def test_whole_buffer():
    f = StreamFramer()
    f.receive_data(STREAM)
    got = drain(f)
    assert got == MESSAGES
    assert [parse_message(m, stream=True).call_id for m in got] == [
        "wsinv.ndaksdj@192.0.2.1",
        "a84b4c76e66710@pc33.atlanta.example.com",
        "esc01.239409asdfakjkn23onasd0-3234",
    ]
    assert f.buffered == 0


def test_byte_by_byte():
    f = StreamFramer()
    got = []
    for i in range(len(STREAM)):
        f.receive_data(STREAM[i : i + 1])
        got += drain(f)
    assert got == MESSAGES


def test_trailing_partial_message_waits():
    f = StreamFramer()
    f.receive_data(STREAM + MESSAGES[0][:40])
    assert drain(f) == MESSAGES
    assert f.buffered == 40
    f.receive_data(MESSAGES[0][40:])
    assert drain(f) == [MESSAGES[0]]


def test_keepalive_pings_are_skipped_and_counted():
    f = StreamFramer()
    f.receive_data(b"\r\n\r\n" + MESSAGES[1] + b"\r\n\r\n\r\n\r\n")
    assert drain(f) == [MESSAGES[1]]
    assert f.pongs_due == 3


def test_missing_content_length_is_fatal():
    f = StreamFramer()
    f.receive_data(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")
    with pytest.raises(ParseError, match="missing Content-Length"):
        f.next_message()


def test_endless_headers_are_fatal():
    f = StreamFramer()
    f.receive_data(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 4000)
    with pytest.raises(ParseError, match="no end of headers"):
        f.next_message()


def test_oversized_body_is_fatal():
    f = StreamFramer()
    f.receive_data(b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999\r\n\r\n")
    with pytest.raises(ParseError, match="exceeds"):
        f.next_message()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=60))
def test_any_chunking_gives_the_same_messages(sizes):
    f = StreamFramer()
    got, pos, i = [], 0, 0
    while pos < len(STREAM):
        n = sizes[i % len(sizes)]
        f.receive_data(STREAM[pos : pos + n])
        pos += n
        i += 1
        got += drain(f)
    assert got == MESSAGES
