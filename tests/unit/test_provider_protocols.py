"""Telnyx and Vonage media WebSocket messages as their providers document them."""

import base64
import json

import pytest

from media.providers import telnyx, twilio, vonage
from media.providers.base import ProtocolError


def media(seq, payload=b"\xd5" * 160, track="inbound"):
    return json.dumps(
        {
            "event": "media",
            "sequence_number": str(seq),
            "stream_id": "s1",
            "media": {
                "track": track,
                "chunk": str(seq),
                "timestamp": str(seq * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def test_telnyx_start_reads_the_encoding():
    start = telnyx.parse(
        json.dumps(
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": "32DE0DEA",
                "start": {
                    "user_id": "u",
                    "call_control_id": "v3:abc",
                    "client_state": "",
                    "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1},
                    "custom_parameters": {"queueId": "q-1"},
                },
            }
        )
    )
    assert start == telnyx.Start("32DE0DEA", "v3:abc", "PCMA", 8000, {"queueId": "q-1"})


def test_telnyx_media_dtmf_stop():
    m = telnyx.parse(media(4))
    assert (m.sequence_number, m.track, m.payload) == (4, "inbound", b"\xd5" * 160)
    assert telnyx.parse('{"event": "dtmf", "dtmf": {"digit": "7"}}') == telnyx.Dtmf("7")
    assert isinstance(telnyx.parse('{"event": "stop", "stop": {}}'), telnyx.Stop)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"event": "start", "start": {}}', "start: missing 'media_format'"),
        ('{"event": "media", "media": {"payload": "%%"}}', "media: payload is not base64"),
        ('{"event": "nope"}', "unknown event 'nope'"),
    ],
)
def test_telnyx_bad_frames(text, message):
    with pytest.raises(telnyx.ProtocolError, match=message):
        telnyx.parse(text)


def test_telnyx_reorders_by_sequence_number():
    r = telnyx.MediaReorder(window=2)
    out = []
    for seq in (3, 2, 4, 5, 8, 9, 10, 11, 6, 12):
        out += [m.sequence_number for m in r.push(telnyx.parse(media(seq)))]
    assert out == [2, 3, 4, 5, 8, 9, 10, 11, 12]  # 6 and 7 given up: 7 lost, 6 too late
    assert r.lost == 2
    r.push(telnyx.parse(media(14)))  # a gap at the end of the stream...
    assert [m.sequence_number for m in r.flush()] == [14]  # ...still plays on stop


def test_vonage_first_frame_and_framing():
    opened = vonage.parse_first(
        json.dumps(
            {
                "event": "websocket:connected",
                "content-type": "audio/l16;rate=16000",
                "queueId": "q-9",
            }
        )
    )
    assert opened == vonage.Open(16000, {"queueId": "q-9"})
    with pytest.raises(vonage.ProtocolError, match="only audio/l16"):
        vonage.parse_first('{"content-type": "audio/pcmu"}')
    buf = bytearray(b"\x01" * 1500)
    assert [len(f) for f in vonage.frames(buf)] == [640, 640] and len(buf) == 220
    assert json.loads(vonage.clear_message()) == {"action": "clear"}


# -- valid JSON of the wrong shape (issue 17): a ProtocolError naming the field ----------------
def _twilio_start(**start) -> str:
    body = {
        "accountSid": "AC1",
        "streamSid": "MZ1",
        "callSid": "CA1",
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        **start,
    }
    return json.dumps({"event": "start", "start": body})


def _telnyx_start(**start) -> str:
    body = {"media_format": {"encoding": "PCMU", "sample_rate": 8000}, **start}
    return json.dumps({"event": "start", "stream_id": "s", "start": body})


WRONG_SHAPES = [
    (twilio.parse, "[]", "message is an array, not an object"),
    (twilio.parse, "null", "message is null, not an object"),
    (twilio.parse, "3.5", "message is a number, not an object"),
    (twilio.parse, '{"event": ["start"]}', "event is an array, not a string"),
    (twilio.parse, '{"event": "start", "start": "x"}', "start is a string, not an object"),
    (twilio.parse, _twilio_start(mediaFormat=[]), "start.mediaFormat is an array"),
    (twilio.parse, _twilio_start(customParameters=["a"]), "customParameters is an array"),
    (twilio.parse, _twilio_start(customParameters="a=b"), "customParameters is a string"),
    (twilio.parse, _twilio_start(customParameters={"a": [1]}), "customParameters.a is an array"),
    (twilio.parse, _twilio_start(tracks="inbound"), "start.tracks is a string, not an array"),
    (twilio.parse, _twilio_start(callSid={"x": 1}), "start.callSid is an object"),
    (twilio.parse, '{"event": "media", "media": []}', "media is an array, not an object"),
    (twilio.parse, '{"event": "media", "media": {"payload": 5}}', "payload is a number"),
    (twilio.parse, '{"event": "dtmf", "dtmf": {"digit": "12"}}', "'12' is not a DTMF digit"),
    (twilio.parse, '{"event": "dtmf", "dtmf": "1"}', "dtmf is a string, not an object"),
    (twilio.parse, '{"event": "stop", "stop": [1]}', "stop is an array, not an object"),
    (twilio.parse, '{"event": "media", "sequenceNumber": true, "media": {}}', "not a number"),
    (twilio.parse_outbound, '"clear"', "message is a string, not an object"),
    (telnyx.parse, "[1]", "message is an array, not an object"),
    (telnyx.parse, _telnyx_start(custom_parameters=["q"]), "custom_parameters is an array"),
    (telnyx.parse, _telnyx_start(custom_parameters="q"), "custom_parameters is a string"),
    (telnyx.parse, _telnyx_start(client_state=[1]), "client_state is an array"),
    (telnyx.parse, '{"event": "start", "start": {"media_format": 1}}', "media_format is a num"),
    (telnyx.parse, '{"event": "media", "media": "AAAA"}', "media is a string, not an object"),
    (vonage.parse_first, "[]", "first message is an array, not an object"),
    (vonage.parse_first, '{"content-type": ["audio/l16"]}', "content-type is an array"),
    (vonage.parse_first, '{"content-type": "audio/l16", "callQueueId": 5}', "is a number"),
    (vonage.parse_event, '"websocket:dtmf"', "message is a string, not an object"),
    (vonage.parse_event, '{"event": "websocket:dtmf"}', "missing 'digit'"),
]


@pytest.mark.parametrize(("parse", "text", "message"), WRONG_SHAPES)
def test_valid_json_of_the_wrong_shape_is_a_protocol_error(parse, text, message):
    with pytest.raises(ProtocolError) as caught:
        parse(text)
    assert message in str(caught.value)


def test_custom_parameters_keep_scalars_as_text():
    start = twilio.parse(_twilio_start(customParameters={"callQueueId": "q", "n": 5, "b": True}))
    assert start.custom_parameters == {"callQueueId": "q", "n": "5", "b": "true"}


@pytest.mark.parametrize(
    ("client_state", "queue_id"),
    [
        (base64.b64encode(b"q-1").decode(), "q-1"),
        (base64.b64encode(b'{"callQueueId": "q-2"}').decode(), "q-2"),
        (base64.b64encode(b'{"queueId": "q-3"}').decode(), "q-3"),
        (base64.b64encode(b'{"other": 1}').decode(), None),
        (base64.b64encode(b"[1]").decode(), "[1]"),
        ("not base64!", None),
        ("", None),
    ],
)
def test_telnyx_client_state_names_the_queue_id(client_state, queue_id):
    assert telnyx.client_state_queue_id(client_state) == queue_id
    start = telnyx.parse(_telnyx_start(client_state=client_state))
    assert start.client_state == client_state


def test_vonage_events_during_the_call():
    assert vonage.parse_event('{"event": "websocket:dtmf", "digit": "5", "duration": 260}') == (
        twilio.Dtmf("5")
    )
    assert vonage.parse_event('{"event": "websocket:media:update"}') == vonage.Notice(
        "websocket:media:update"
    )


def test_vonage_headers_keep_scalars_and_drop_nested_values():
    opened = vonage.parse_first(
        json.dumps(
            {
                "event": "websocket:connected",
                "content-type": "audio/l16;rate=8000",
                "callQueueId": "q",
                "n": 1,
                "nested": {"a": 1},
            }
        )
    )
    assert opened == vonage.Open(8000, {"callQueueId": "q", "n": "1"})
