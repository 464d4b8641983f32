"""The redirect core (the proxy's TU) with a hand-held clock and no sockets."""

import itertools

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from edge.sip.message import SipURI, parse_message
from edge.sip.redirect import NumberEntry, Publish, RedirectCore, Reply, offered_codecs
from tests.samples import sample
from trunkline.core.kafka import partition_for

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 9 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def invite(uri="sip:+15551234567@edge:5060;user=phone?X-Business-Id=123&X-Phone-Id=abc", extra=""):
    return parse_message(
        (
            f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKx\r\n"
            f"From: <sip:+15550001111@h>;tag=f1\r\nTo: <sip:+15551234567@edge>\r\n"
            f"Call-ID: sipcall-1@h\r\nCSeq: 1 INVITE\r\n{extra}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n"
        ).encode()
        + SDP
    )


def core(**kw):
    ids = itertools.count(1)
    return RedirectCore(
        "edge-1",
        new_call_id=lambda: f"q-{next(ids)}",
        new_tag=lambda: "tag1",
        decision_timeout=5.0,
        **kw,
    )


SRC = ("203.0.113.10", 5060)


def test_invite_gets_100_and_publishes_the_offer():
    c = core()
    out = c.on_request(invite(), ("k",), SRC, "UDP", now=100.0)
    assert isinstance(out[0], Reply) and out[0].response.status == 100
    pubs = [o for o in out if isinstance(o, Publish)]
    # only to admission: it copies the offer to call-events with its decision
    assert [(p.dest, p.key, p.name) for p in pubs] == [("admission", "123", "CallOffered")]
    offered = pubs[0].record
    assert offered["provider_call_id"] == "sipcall-1@h"
    assert (offered["business_id"], offered["phone_id"]) == ("123", "abc")
    assert offered["to_number"] == "+15551234567" and offered["from_number"] == "+15550001111"
    assert (offered["source_ip"], offered["source_port"]) == SRC
    assert offered["offered_codecs"] == ["PCMU", "PCMA", "G722", "telephone-event"]
    assert offered["envelope"]["occurred_at"] == 100_000
    assert c.next_deadline() == 105.0


def test_routed_decision_becomes_302_with_queue_id_in_contact():
    c = core()
    c.on_request(invite(), ("k",), SRC, "UDP", 100.0)
    routed = sample("CallRouted", call_id="q-1")
    [reply] = c.on_decision("CallRouted", routed, 100.05)
    resp = reply.response
    assert (reply.key, resp.status, resp.reason) == (("k",), 302, "Moved Temporarily")
    contact = resp.headers.get("contact")
    assert contact == "<sip:+15551234567@127.0.0.1:5070?X-CallQueue-Id=q-1>"
    assert SipURI.parse(contact[1:-1]).headers == {"X-CallQueue-Id": "q-1"}
    assert resp.to.tag == "tag1"
    assert c.on_decision("CallRouted", routed, 100.1) == []  # answered once
    assert c.next_deadline() is None


def test_rejections_keep_their_codes_and_say_why():
    c = core()
    for n, (status, phrase) in enumerate(
        [(403, "Forbidden"), (404, "Not Found"), (486, "Busy Here"), (503, "Service Unavailable")]
    ):
        c.on_request(invite(), (f"k{n}",), SRC, "UDP", 1.0)
        rejected = sample("CallRejected", call_id=f"q-{n + 1}")
        rejected.update(status_code=status, reason="why it was refused", retry_after_s=7)
        [reply] = c.on_decision("CallRejected", rejected, 1.1)
        assert (reply.response.status, reply.response.reason) == (status, phrase)
        assert reply.response.headers.get("warning") == '399 edge-1 "why it was refused"'
        assert (reply.response.headers.get("retry-after") == "7") is (status == 503)


def test_no_decision_in_time_is_503_and_releases():
    c = core()
    c.on_request(invite(), ("k",), SRC, "UDP", 100.0)
    assert c.expire(104.9) == []
    out = c.expire(105.0)
    reply = out[0]
    assert reply.response.status == 503 and reply.response.headers.get("retry-after") == "5"
    ended = [o for o in out if isinstance(o, Publish)]
    assert [(p.dest, p.key, p.name) for p in ended] == [
        ("admission", "123", "CallEnded"),
        ("call-events", "q-1", "CallEnded"),
    ]
    assert ended[0].record["reason"] == "edge_timeout"
    assert c.on_decision("CallRouted", sample("CallRouted", call_id="q-1"), 106.0) == []


def test_cancel_before_the_answer():
    c = core()
    c.on_request(invite(), ("inv",), SRC, "UDP", 1.0)
    cancel = parse_message(
        bytes(invite())
        .replace(b"INVITE sip", b"CANCEL sip")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    )
    out = c.on_cancel(cancel, ("can",), ("inv",), 2.0)
    replies = [(o.key, o.response.status) for o in out if isinstance(o, Reply)]
    assert replies == [(("can",), 200), (("inv",), 487)]
    ended = [o.record for o in out if isinstance(o, Publish)]
    assert ended[0]["reason"] == "cancelled" and ended[0]["status_code"] == 487
    # a CANCEL after the final answer only gets its 200
    assert [o.response.status for o in c.on_cancel(cancel, ("c2",), ("inv",), 3.0)] == [200]


def test_business_from_request_headers_then_directory():
    c = core(directory={"+15551234567": NumberEntry("456", "n-9")}.get)
    out = c.on_request(
        invite(uri="sip:+15551234567@edge", extra="X-Business-Id: 77\r\n"), ("a",), SRC, "UDP", 1.0
    )
    assert out[1].record["business_id"] == "77"
    out = c.on_request(invite(uri="sip:+15551234567@edge"), ("b",), SRC, "UDP", 1.0)
    assert (out[1].record["business_id"], out[1].record["phone_id"]) == ("456", "n-9")


def test_unknown_number_is_404_at_the_edge():
    out = core().on_request(invite(uri="sip:+19999@edge"), ("k",), SRC, "UDP", 1.0)
    assert [o.response.status for o in out if isinstance(o, Reply)] == [100, 404]
    pubs = [(o.dest, o.name) for o in out if isinstance(o, Publish)]
    assert pubs == [("call-events", "CallOffered"), ("call-events", "CallRejected")]


def test_options_other_methods_and_hops():
    c = core()
    options = parse_message(
        bytes(invite())
        .replace(b"INVITE sip", b"OPTIONS sip")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS")
    )
    [ok] = c.on_request(options, ("o",), SRC, "UDP", 1.0)
    assert ok.response.status == 200 and "INVITE" in ok.response.headers.get("allow")
    bye = parse_message(
        bytes(invite())
        .replace(b"INVITE sip", b"BYE sip")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    )
    [no] = c.on_request(bye, ("b",), SRC, "UDP", 1.0)
    assert no.response.status == 405 and no.response.headers.get("allow") == (
        "INVITE, ACK, CANCEL, OPTIONS"
    )
    [hops] = c.on_request(invite(extra="Max-Forwards: 0\r\n"), ("h",), SRC, "UDP", 1.0)
    assert hops.response.status == 483


def test_offered_codecs_without_sdp():
    assert offered_codecs(b"") == []


def test_partitions_follow_kafkas_murmur2_vectors():
    # Kafka's UtilsTest vectors (signed 32-bit in Java; aiokafka returns them unsigned)
    assert aiokafka_murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert aiokafka_murmur2(b"foobar") == -790332482 & 0xFFFFFFFF
    assert partition_for(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert partition_for(b"abc", 6) == (479470107 & 0x7FFFFFFF) % 6


def _refusal(out):
    pubs = [o for o in out if isinstance(o, Publish)]
    final = [o.response for o in out if isinstance(o, Reply) and o.response.status >= 200]
    return pubs, final[0]


def test_an_unknown_business_is_refused_here_and_not_stored():
    c = core(known_business=lambda b: b == "123")
    uri = "sip:+15551234567@edge?X-Business-Id=%27%3B%20DROP%20TABLE%20calls%3B--"
    pubs, final = _refusal(c.on_request(invite(uri), ("k",), SRC, "UDP", now=1.0))
    assert final.status == 404
    assert [(p.dest, p.name) for p in pubs] == [
        ("call-events", "CallOffered"),
        ("call-events", "CallRejected"),
    ]
    offered, rejected = pubs[0].record, pubs[1].record
    assert (offered["business_id"], offered["phone_id"]) == ("", "")
    assert rejected["reason"] == "business ___DROP_TABLE_calls_-- not found"
    assert "DROP TABLE" not in final.headers.get("warning")
    assert not c.pending  # nothing waits for a decision


def test_an_unknown_phone_id_is_refused_here():
    c = core(known_phone=lambda p: p == "abc")
    uri = "sip:+15551234567@edge?X-Business-Id=123&X-Phone-Id=nope"
    pubs, final = _refusal(c.on_request(invite(uri), ("k",), SRC, "UDP", now=1.0))
    assert final.status == 404 and pubs[1].record["reason"] == "phone nope is not configured"
    assert pubs[0].record["phone_id"] == "" and pubs[0].record["business_id"] == ""


def test_a_dialled_string_that_is_no_number_is_not_stored():
    c = core(directory={}.get)
    uri = "sip:" + "9" * 40 + "@edge"
    pubs, final = _refusal(c.on_request(invite(uri), ("k",), SRC, "UDP", now=1.0))
    assert final.status == 404 and pubs[0].record["to_number"] == ""
    assert pubs[1].record["reason"].startswith("number " + "9" * 40)


def test_a_call_id_that_is_no_callid_gets_400_and_publishes_nothing():
    c = core()
    request = invite()
    request.headers.remove("call-id")
    request.headers.add("Call-ID", "has space\x01")
    out = c.on_request(request, ("k",), SRC, "UDP", now=1.0)
    assert [o.response.status for o in out if isinstance(o, Reply)] == [400]
    assert not [o for o in out if isinstance(o, Publish)]


def test_offered_codecs_are_bounded():
    junk = b"a=rtpmap:96 " + b"X" * 300 + b"/8000\r\n"
    many = " ".join(str(i) for i in range(100)).encode()
    body = b"v=0\r\nm=audio 4000 RTP/AVP " + many + b"\r\n" + junk
    codecs = offered_codecs(body)
    assert len(codecs) == 16 and all(len(c) <= 32 for c in codecs)


def test_while_the_event_log_is_unreachable_invites_get_503_at_once():
    c = core(available=lambda: False)
    out = c.on_request(invite(), ("k",), SRC, "UDP", now=1.0)
    assert [o.response.status for o in out if isinstance(o, Reply)] == [503]
    response = out[0].response
    assert response.headers.get("retry-after") == "5"
    assert "event log unavailable" in response.headers.get("warning")
    assert not [o for o in out if isinstance(o, Publish)] and not c.pending
