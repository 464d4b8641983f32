"""Twilio Media Streams messages as Twilio documents them (numbers arrive as strings)."""

import base64
import json

import pytest

from media.providers import twilio

START = {
    "event": "start", "sequenceNumber": "1", "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
    "start": {
        "accountSid": "AC123", "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
        "callSid": "CA123", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"queueId": "q-1"},
    },
}  # fmt: skip


def test_start():
    s = twilio.parse(json.dumps(START))
    assert s == twilio.Start(
        "MZ18ad3ab5a668481ce02b83e7395059f0",
        "AC123",
        "CA123",
        "audio/x-mulaw",
        8000,
        1,
        ("inbound",),
        {"queueId": "q-1"},
    )


def test_media_with_string_numbers():
    msg = {
        "event": "media",
        "sequenceNumber": "3",
        "streamSid": "MZ1",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "5",
            "payload": base64.b64encode(b"\xff" * 160).decode(),
        },
    }
    m = twilio.parse(json.dumps(msg))
    assert (m.sequence_number, m.chunk, m.timestamp, m.payload) == (3, 1, 5, b"\xff" * 160)


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            twilio.Connected("Call", "1.0.0"),
        ),
        (
            {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "1"}},
            twilio.Dtmf("1"),
        ),
        (
            {"event": "mark", "streamSid": "MZ1", "mark": {"name": "greeting"}},
            twilio.Mark("greeting"),
        ),
        (
            {"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}},
            twilio.Stop("CA1"),
        ),
    ],
)
def test_other_events(msg, expected):
    assert twilio.parse(json.dumps(msg)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"nothing": 1}', "missing 'event'"),
        ('{"event": "sing"}', "unknown event 'sing'"),
        ('{"event": "media", "media": {"payload": "***"}}', "payload is not base64"),
        ('{"event": "start", "start": {"accountSid": "A"}}', "start: missing 'mediaFormat'"),
    ],
)
def test_bad_messages(text, message):
    with pytest.raises(twilio.ProtocolError, match=message):
        twilio.parse(text)


def test_outgoing_messages():
    assert json.loads(twilio.media_message("MZ1", b"\x00\x01")) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": "AAE="},
    }
    assert json.loads(twilio.mark_message("MZ1", "m")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "m"},
    }
    assert json.loads(twilio.clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
