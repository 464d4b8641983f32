"""Server transactions driven by a hand-held clock (no sleeping)."""

import itertools

import pytest

from edge.sip.errors import TransactionError
from edge.sip.message import make_response, parse_message
from edge.sip.transaction import (
    INVITE_TABLE,
    NON_INVITE_TABLE,
    AckTimeout,
    CancelRequest,
    Event,
    NewRequest,
    Send,
    ServerTransaction,
    ServerTransactions,
    State,
    transaction_key,
)

SRC = ("203.0.113.10", 5060)


def invite(branch="z9hG4bKabc", cseq=1, call_id="c1@h"):
    return parse_message(
        (
            f"INVITE sip:+15551234567@edge SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 203.0.113.10:5060;branch={branch}\r\n"
            f"From: <sip:a@h>;tag=f1\r\nTo: <sip:+15551234567@edge>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )


def request(method, branch="z9hG4bKabc", to_tag="", cseq=1):
    to = "<sip:+15551234567@edge>" + (f";tag={to_tag}" if to_tag else "")
    return parse_message(
        (
            f"{method} sip:+15551234567@edge SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 203.0.113.10:5060;branch={branch}\r\n"
            f"From: <sip:a@h>;tag=f1\r\nTo: {to}\r\nCall-ID: c1@h\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )


def test_invite_302_retransmits_on_timer_g_until_ack():
    layer = ServerTransactions()
    [new] = layer.receive(invite(), SRC, now=0.0)
    assert isinstance(new, NewRequest)
    [trying] = layer.respond(new.key, make_response(new.request, 100, "Trying"), 0.0)
    assert b"100 Trying" in trying.data
    # the caller retransmits: the 100 goes again, nothing reaches the TU
    assert [a.data for a in layer.receive(invite(), SRC, 0.4)] == [trying.data]
    final = make_response(new.request, 302, "Moved Temporarily", to_tag="t")
    [sent] = layer.respond(new.key, final, 1.0)
    assert layer.get(new.key).state is State.COMPLETED
    # Timer G: 0.5, 1, 2, 4, 4 ... after the response at t=1.0
    assert layer.next_deadline() == 1.5
    times = []
    t = 1.0
    while t < 20:
        t = layer.next_deadline()
        out = layer.expire(t)
        if out and isinstance(out[0], Send):
            assert out[0].data == sent.data
            times.append(t)
        if len(times) == 6:
            break
    assert times == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5]
    # the retransmitted INVITE gets the identical final response
    assert [a.data for a in layer.receive(invite(), SRC, 17.0)] == [sent.data]
    # ACK: absorbed, Timer I then ends the transaction
    assert layer.receive(request("ACK", to_tag="t"), SRC, 17.1) == []
    assert layer.get(new.key).state is State.CONFIRMED
    assert layer.receive(request("ACK", to_tag="t"), SRC, 17.2) == []  # ACK retransmit
    assert layer.next_deadline() == pytest.approx(22.1)
    assert layer.expire(22.1) == []
    assert layer.get(new.key) is None


def test_timer_h_reports_a_missing_ack():
    layer = ServerTransactions()
    [new] = layer.receive(invite(), SRC, 0.0)
    layer.respond(new.key, make_response(new.request, 486, "Busy Here", to_tag="t"), 0.0)
    actions = layer.expire(31.9)
    assert all(isinstance(a, Send) for a in actions)
    actions = layer.expire(32.0)
    assert [type(a) for a in actions] == [AckTimeout]
    assert layer.get(new.key) is None


def test_reliable_transport_has_no_retransmissions():
    layer = ServerTransactions()
    [new] = layer.receive(invite(), SRC, 0.0, reliable=True, conn="conn")
    [sent] = layer.respond(new.key, make_response(new.request, 302, "Moved", to_tag="t"), 0.0)
    assert sent.conn == "conn"
    assert layer.next_deadline() == 32.0  # only Timer H
    layer.receive(request("ACK", to_tag="t"), SRC, 0.1, reliable=True)
    assert layer.next_deadline() == 0.1  # Timer I = 0 over TCP
    layer.expire(0.1)
    assert len(layer) == 0


def test_cancel_matches_the_invite_and_is_its_own_transaction():
    layer = ServerTransactions()
    [new] = layer.receive(invite(), SRC, 0.0)
    [cancel] = layer.receive(request("CANCEL"), SRC, 0.2)
    assert isinstance(cancel, CancelRequest)
    assert cancel.invite_key == new.key and cancel.key != new.key
    # a CANCEL for nothing is an ordinary new request (the TU answers 481)
    [stray] = layer.receive(request("CANCEL", branch="z9hG4bKother"), SRC, 0.3)
    assert isinstance(stray, NewRequest)


def test_non_invite_timer_j():
    layer = ServerTransactions()
    [new] = layer.receive(request("OPTIONS"), SRC, 0.0)
    [ok] = layer.respond(new.key, make_response(new.request, 200, "OK"), 0.0)
    assert [a.data for a in layer.receive(request("OPTIONS"), SRC, 1.0)] == [ok.data]
    assert layer.next_deadline() == 32.0
    layer.expire(32.0)
    assert len(layer) == 0


def test_rfc2543_key_without_magic_cookie():
    a = transaction_key(invite(branch="oldstyle1"))
    assert a[0].startswith("2543:")
    assert transaction_key(invite(branch="oldstyle1")) == a
    assert transaction_key(invite(branch="oldstyle1", cseq=2)) != a
    assert transaction_key(request("ACK", branch="oldstyle1", to_tag="x"), "INVITE") == a


def test_responding_on_unknown_transaction_raises():
    with pytest.raises(TransactionError, match="no server transaction"):
        ServerTransactions().respond(("nope",), make_response(invite(), 200, "OK"), 0.0)


@pytest.mark.parametrize(
    "table,start_method", [(INVITE_TABLE, "INVITE"), (NON_INVITE_TABLE, "OPTIONS")]
)
def test_every_state_event_pair(table, start_method):
    req = invite() if start_method == "INVITE" else request("OPTIONS")
    for state, event in itertools.product(State, Event):
        if state not in table:
            continue
        tx = ServerTransaction(("k",), req, SRC, False, None, state)
        target = table[state].get(event)
        if target is None:
            with pytest.raises(TransactionError, match="cannot take"):
                tx.fire(event)
            assert tx.state is state
        else:
            assert tx.fire(event) is target
