"""Telnyx and Vonage media WebSocket messages as their providers document them."""

import base64
import json

import pytest

from media.providers import telnyx, vonage


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
