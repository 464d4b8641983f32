"""Identifier rules of the SIP edge (edge/sip/identifiers.py) and the throttles."""

from __future__ import annotations

import pytest

from edge.sip.identifiers import (
    calling_number,
    safe_form,
    valid_call_id,
    valid_id,
    valid_number,
)
from edge.sip.message import make_response, parse_message
from trunkline.core.throttle import LogThrottle, TokenBucket


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a84b4c76e66710@pc33.atlanta.com", True),  # RFC 3261's own example
        ("f81d4fae-7dec-11d0-a765-00a0c91e6bf6@[2001:db8::1]", True),
        ("abc", True),
        ("", False),
        ("has space", False),
        ("nul\x00byte", False),
        ("x@y@z", False),
        ("a" * 128, True),
        ("a" * 129, False),
    ],
)
def test_call_ids(value, ok):
    assert valid_call_id(value) is ok


def test_ids_and_numbers():
    assert valid_id("b-main") and valid_id("123") and not valid_id("-x") and not valid_id("a b")
    assert valid_number("+15551234567") and valid_number("*72") and valid_number("alice")
    assert not valid_number("9" * 33) and not valid_number("a;b") and not valid_number("")


def test_safe_form_keeps_nothing_that_breaks_a_line_a_header_or_sql():
    assert safe_form("'; DROP TABLE calls;--") == "___DROP_TABLE_calls_--"
    assert safe_form('a\r\nb\x00c"d') == "a__b_c_d"
    long = safe_form("Z" * 8192)
    assert long == "Z" * 40 + "…(8192 chars)"


def test_a_calling_number_is_kept_when_plausible():
    assert calling_number("+15550001111") == "+15550001111"
    assert calling_number("alice") == "alice"
    assert calling_number("\x00evil'--") == "_evil_--"


def test_a_response_to_an_unreadable_to_header_is_still_formed():
    request = b"INVITE sip:+1@h SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKa\r\n"
    request += b"From: <sip:a@h>;tag=1\r\nTo: <sip:ok@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
    request += b"Content-Length: 0\r\n\r\n"
    parsed = parse_message(request)
    parsed.headers.remove("to")
    parsed.headers.add("To", "<sip:@@@:bad>")
    response = make_response(parsed, 400, "Bad Request", to_tag="t1")
    assert response.headers.get("to") == "<sip:@@@:bad>;tag=t1"


def test_token_bucket_spends_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 0.1 s
    assert bucket.take(0.1) is False


def test_log_throttle_summarises_at_most_once_per_interval():
    t = LogThrottle(interval=10)
    assert t.note(0.0, "a") == (1, "a")
    assert t.note(1.0, "b") is None and t.note(9.9, "c") is None
    assert t.note(10.0, "d") == (3, "d")
    assert t.note(12.0, "e") is None
    assert t.note(15.0, "a batch", count=250) is None  # a batch of drops noted at once
    assert t.note(20.0, "f") == (252, "f")
