"""The provider adapters against independent peers: requests signed with the providers'
own libraries (Twilio's RequestValidator, PyNaCl for Telnyx's Ed25519, PyJWT for
Vonage), forged each way, and answers parsed as documents (XML, JSON)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import jwt
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from edge.webhook import telnyx, twilio, vonage
from edge.webhook.base import (
    CallEvent,
    Ignored,
    InboundCall,
    Progress,
    Provider,
    Refused,
    Routed,
    WebhookError,
)

URL = "https://hooks.example.com/webhooks/twilio/voice"
TOKEN = "0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0


def voice_params(**extra: str) -> dict[str, str]:
    return {
        "CallSid": "CA1234",
        "AccountSid": "AC42",
        "From": "+15550001111",
        "To": "+15557654321",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def twilio_signed(params: dict[str, str], url: str = URL, token: str = TOKEN) -> dict[str, str]:
    return {"x-twilio-signature": RequestValidator(token).compute_signature(url, params)}


def refused(call, label: str | None = None) -> WebhookError:
    with pytest.raises(WebhookError) as info:
        call()
    assert info.value.status == 403, info.value.reason
    if label:
        assert info.value.label == label
    return info.value


# -- Twilio ---------------------------------------------------------------------------------
def test_twilio_signature_from_twilios_own_validator_is_accepted():
    params = voice_params()
    body = urlencode(params).encode()
    parsed, is_json = twilio.parse(body, "application/x-www-form-urlencoded")
    twilio.verify(TOKEN, URL, parsed, twilio_signed(params), body, is_json)
    # Twilio signs with or without the default port: both verify
    twilio.verify(
        TOKEN, URL, parsed, twilio_signed(params, "https://hooks.example.com:443/webhooks/"
                                          "twilio/voice"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("forge", "label"),
    [
        ("wrong key", "bad_signature"),
        ("altered parameter", "bad_signature"),
        ("other URL", "bad_signature"),
        ("missing", "missing_signature"),
    ],
)
def test_twilio_forgeries_are_refused(forge, label):
    params = voice_params()
    headers = twilio_signed(params, token="f" * 32 if forge == "wrong key" else TOKEN)
    if forge == "altered parameter":
        params = voice_params(To="+15550009999")
    if forge == "other URL":
        headers = twilio_signed(params, url=URL + "?x=1")
    if forge == "missing":
        headers = {}
    parsed = twilio.parse(urlencode(params).encode(), "application/x-www-form-urlencoded")[0]
    refused(lambda: twilio.verify(TOKEN, URL, parsed, headers), label)


def test_twilio_json_body_with_body_sha256():
    body = json.dumps({"CallSid": "CA1", "AccountSid": "AC42", "To": "+1555"}).encode()
    url = f"{URL}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    headers = {"x-twilio-signature": RequestValidator(TOKEN).compute_signature(url, {})}
    assert RequestValidator(TOKEN).validate(url, body.decode(), headers["x-twilio-signature"])
    params, is_json = twilio.parse(body, "application/json")
    assert is_json and dict(params)["CallSid"] == "CA1"
    twilio.verify(TOKEN, url, params, headers, body, is_json)
    refused(lambda: twilio.verify(TOKEN, url, params, headers, body + b" ", True))


def test_twilio_voice_becomes_an_inbound_call_and_the_answer_is_twiml():
    params, _ = twilio.parse(
        urlencode(voice_params()).encode(), "application/x-www-form-urlencoded"
    )
    call = twilio.voice_call(params, "twilio-main", "198.51.100.7")
    assert call == InboundCall(
        Provider.TWILIO, "twilio-main", "CA1234", "+15557654321", "+15550001111", "CA1234",
        "198.51.100.7",
    )  # fmt: skip
    routed = twilio.answer(Routed(call.call_id, "wss://media.example:8081/", "backend-1"))
    assert routed.status == 200 and routed.content_type == "text/xml"
    root = ET.fromstring(routed.body)
    assert root.tag == "Response" and [c.tag for c in root] == ["Connect"]
    (stream,) = list(root.find("Connect"))
    assert stream.tag == "Stream" and stream.get("url") == "wss://media.example:8081/twilio"
    (param,) = list(stream)
    assert param.tag == "Parameter"
    assert param.attrib == {"name": "callQueueId", "value": call.call_id}


@pytest.mark.parametrize(("status", "reason"), [(486, "busy"), (503, "busy"), (404, "rejected")])
def test_twilio_rejections(status, reason):
    root = ET.fromstring(twilio.answer(Refused("q", status, "why")).body)
    assert [(c.tag, c.attrib) for c in root] == [("Reject", {"reason": reason})]


def test_twilio_status_callbacks():
    def event(**extra: str) -> CallEvent:
        params = [(k, v) for k, v in voice_params(**extra).items()]
        return twilio.status_event(params, {}, "twilio-main")

    assert event(CallStatus="ringing", SequenceNumber="0").progress is Progress.PROGRESS
    answered = event(CallStatus="in-progress", SequenceNumber="1")
    assert answered.progress is Progress.ANSWERED and answered.event_key == "seq/1"
    done = event(CallStatus="completed", SequenceNumber="3", CallDuration="42")
    assert (done.progress, done.reason, done.duration_ms) == (Progress.ENDED, "completed", 42_000)
    assert event(CallStatus="canceled").reason == "cancelled"
    assert event(CallStatus="no-answer").reason == "no_answer"
    no_seq = twilio.status_event(
        list(voice_params(CallStatus="busy").items()), {"i-twilio-idempotency-token": "tok-9"}, "t"
    )
    assert no_seq.event_key == "tok-9"
    with pytest.raises(WebhookError, match="unknown CallStatus 'exploded'"):
        event(CallStatus="exploded")


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"a=%zz&b", "application/x-www-form-urlencoded", 400),
        (b"{nope", "application/json", 400),
        (b"[1]", "application/json", 400),
        (b"x", "text/plain", 415),
    ],
)
def test_twilio_bad_bodies(body, ctype, status):
    with pytest.raises(WebhookError) as info:
        twilio.parse(body, ctype)
    assert info.value.status == status


# -- Telnyx ---------------------------------------------------------------------------------
SIGNER = nacl.signing.SigningKey(b"\x07" * 32)
PUBLIC = base64.b64encode(bytes(SIGNER.verify_key)).decode()


def telnyx_body(kind: str = "call.initiated", event_id: str = "ev-1", **payload: object) -> bytes:
    return json.dumps(
        {
            "data": {
                "record_type": "event",
                "event_type": kind,
                "id": event_id,
                "occurred_at": "2026-11-30T12:00:10.000000Z",
                "payload": {
                    "call_control_id": "v3:cc-1",
                    "connection_id": "conn-1",
                    "from": "+15550001111",
                    "to": "+15557654321",
                    "direction": "incoming",
                    **payload,
                },
            }
        }
    ).encode()


def telnyx_headers(body: bytes, at: float = NOW, key: nacl.signing.SigningKey = SIGNER) -> dict:
    stamp = str(int(at))
    sig = key.sign(stamp.encode() + b"|" + body).signature
    return {"telnyx-signature-ed25519": base64.b64encode(sig).decode(), "telnyx-timestamp": stamp}


def test_telnyx_signature_by_pynacl_is_accepted_and_forgeries_refused():
    body = telnyx_body()
    telnyx.verify(PUBLIC, telnyx_headers(body), body, NOW)
    other = nacl.signing.SigningKey(b"\x08" * 32)
    refused(lambda: telnyx.verify(PUBLIC, telnyx_headers(body, key=other), body, NOW))
    altered = body.replace(b"+15557654321", b"+15557654322")
    refused(lambda: telnyx.verify(PUBLIC, telnyx_headers(body), altered, NOW))
    stale = telnyx_headers(body, at=NOW - 301)
    refused(lambda: telnyx.verify(PUBLIC, stale, body, NOW), "stale_signature")
    refused(lambda: telnyx.verify(PUBLIC, {}, body, NOW), "missing_signature")


def test_telnyx_events_decode():
    data = telnyx.parse(telnyx_body(), "application/json")
    assert telnyx.connection_id(data) == "conn-1"
    call = telnyx.decode(data, "telnyx-main")
    assert isinstance(call, InboundCall)
    assert (call.provider_call_id, call.event_key, call.to_number) == (
        "v3:cc-1", "ev-1", "+15557654321"
    )  # fmt: skip
    hangup = telnyx.decode(
        telnyx.parse(
            telnyx_body(
                "call.hangup",
                "ev-9",
                hangup_cause="normal_clearing",
                hangup_source="caller",
                start_time="2026-11-30T12:00:00.000000Z",
                call_quality_stats={"inbound": {"mos": "4.31", "packet_count": "500"}},
            ),
            "application/json",
        ),
        "telnyx-main",
    )
    assert isinstance(hangup, CallEvent)
    assert (hangup.progress, hangup.reason, hangup.status, hangup.hangup_side) == (
        Progress.ENDED, "completed", "normal_clearing", "caller"
    )  # fmt: skip
    assert hangup.duration_ms == 10_000 and hangup.mos == pytest.approx(4.31)
    other = telnyx.parse(telnyx_body("call.dtmf.received"), "application/json")
    assert isinstance(telnyx.decode(other, "t"), Ignored)


def test_telnyx_commands_carry_the_stream_and_derived_command_ids():
    call = telnyx.decode(telnyx.parse(telnyx_body(), "application/json"), "telnyx-main")
    assert isinstance(call, InboundCall)
    answer = telnyx.command(call, Routed(call.call_id, "ws://127.0.0.1:8081", "b"))
    assert answer.path == "/v2/calls/v3:cc-1/actions/answer"
    assert answer.body["stream_url"] == "ws://127.0.0.1:8081/telnyx"
    assert answer.body["stream_track"] == "both_tracks"
    assert answer.body["stream_bidirectional_mode"] == "rtp"
    state = json.loads(base64.b64decode(str(answer.body["client_state"])))
    assert state == {"callQueueId": call.call_id}
    again = telnyx.command(call, Routed(call.call_id, "ws://127.0.0.1:8081", "b"))
    assert again.body["command_id"] == answer.body["command_id"]  # a retry is a no-op
    busy = telnyx.command(call, Refused(call.call_id, 486, "limit"))
    assert busy.path.endswith("/reject") and busy.body["cause"] == "USER_BUSY"
    assert telnyx.command(call, Refused(call.call_id, 404, "x")).body["cause"] == "CALL_REJECTED"


# -- Vonage ---------------------------------------------------------------------------------
SECRET = "vonage-signature-secret-0123456789"


def vonage_jwt(body: bytes, secret: str = SECRET, iat: float = NOW, **claims: object) -> str:
    payload = {
        "iat": int(iat),
        "jti": "j-1",
        "iss": "Vonage",
        "application_id": "app-1",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def test_vonage_signed_event_by_pyjwt_is_accepted_and_forgeries_refused():
    body = json.dumps({"uuid": "u-1", "status": "answered", "to": "15557654321"}).encode()
    token = vonage_jwt(body)
    assert vonage.bearer({"authorization": f"Bearer {token}"}) == token
    assert vonage.unverified_application_id(token) == "app-1"
    assert vonage.verify(SECRET, token, body, NOW)["application_id"] == "app-1"
    refused(lambda: vonage.verify(SECRET, vonage_jwt(body, "wrong-secret-000000000000"), body, NOW))
    refused(lambda: vonage.verify(SECRET, token, body.replace(b"answered", b"completed"), NOW))
    refused(
        lambda: vonage.verify(SECRET, vonage_jwt(body, iat=NOW - 400), body, NOW), "stale_signature"
    )
    refused(lambda: vonage.bearer({}), "missing_signature")


def test_vonage_answer_token_is_compared():
    vonage.check_answer_token("tok", "tok")
    refused(lambda: vonage.check_answer_token("tok", "tak"))
    refused(lambda: vonage.check_answer_token("tok", ""), "missing_signature")


def test_vonage_answer_is_an_ncco_document():
    call = vonage.answer_call({"uuid": "u-1", "to": "15557654321", "from": "15550001111"}, "v")
    assert (call.to_number, call.from_number) == ("+15557654321", "+15550001111")
    ncco = json.loads(vonage.answer(Routed(call.call_id, "wss://m.example", "b"), call).body)
    assert ncco == [
        {
            "action": "connect",
            "from": "15557654321",
            "endpoint": [
                {
                    "type": "websocket",
                    "uri": "wss://m.example/vonage",
                    "content-type": "audio/l16;rate=16000",
                    "headers": {"callQueueId": call.call_id},
                }
            ],
        }
    ]
    refusal = json.loads(vonage.answer(Refused(call.call_id, 486, "x"), call).body)
    assert [a["action"] for a in refusal] == ["talk"]


def test_vonage_events():
    done = vonage.event({"uuid": "u-1", "status": "completed", "duration": "17"}, "v")
    assert isinstance(done, CallEvent)
    assert (done.progress, done.duration_ms, done.event_key) == (
        Progress.ENDED, 17_000, "u-1/completed"
    )  # fmt: skip
    assert isinstance(vonage.event({"uuid": "u-1", "status": "transfer"}, "v"), Ignored)


def test_the_same_provider_call_is_the_same_queue_id_on_any_edge():
    a = InboundCall(Provider.TWILIO, "acc", "CA1", "+1", "+2", "CA1")
    b = InboundCall(Provider.TWILIO, "acc", "CA1", "+1", "+3", "other")
    assert a.call_id == b.call_id
    assert a.call_id != InboundCall(Provider.TELNYX, "acc", "CA1", "+1", "+2", "x").call_id


def test_timestamps_are_passed_in():
    """No adapter reads the clock: a signature made now is stale for a `now` far ahead."""
    body = telnyx_body()
    now = time.time()
    refused(lambda: telnyx.verify(PUBLIC, telnyx_headers(body, at=now), body, now + 1000))


# -- garbage never escapes as anything but a WebhookError ------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _decode_all(body: bytes) -> None:
    for ctype in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        try:
            params, _ = twilio.parse(body, ctype)
            twilio.voice_call(params, "a", "")
            twilio.status_event(params, {}, "a")
        except WebhookError:
            pass
        try:
            telnyx.decode(telnyx.parse(body, ctype), "a")
        except WebhookError:
            pass
        try:
            data = vonage.parse_json(body, ctype)
            vonage.event(data, "a")
            vonage.answer_call(data, "a")
        except WebhookError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_webhook_errors(body):
    _decode_all(body)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_arbitrary_json_raises_only_webhook_errors(doc):
    _decode_all(json.dumps(doc).encode())
    _decode_all(
        json.dumps({"data": {"event_type": "call.hangup", "id": "e", "payload": doc}}).encode()
    )
    if isinstance(doc, dict):
        _decode_all(json.dumps({"status": "completed", "uuid": "u", **doc}).encode())


def test_telnyx_call_cost_is_kept_as_the_providers_cost():
    cost = telnyx.decode(
        telnyx.parse(
            telnyx_body(
                "call.cost", "ev-cost", total_cost="0.0042", currency="usd", billed_duration_secs=60
            ),
            "application/json",
        ),
        "telnyx-main",
    )
    assert isinstance(cost, CallEvent)
    assert (cost.progress, cost.cost, cost.currency, cost.billed_seconds) == (
        Progress.COST, "0.0042", "USD", 60,
    )  # fmt: skip
    for bad in ({"total_cost": "lots", "currency": "USD"}, {"total_cost": "0.1"}):
        body = telnyx.parse(telnyx_body("call.cost", "ev-bad", **bad), "application/json")
        with pytest.raises(WebhookError) as info:
            telnyx.decode(body, "telnyx-main")
        assert info.value.status == 400
