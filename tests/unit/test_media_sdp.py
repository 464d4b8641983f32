import pytest

from media.sdp import Direction, SdpError, SessionDescription, negotiate


def offer(
    formats="0 8 101",
    extra="",
    conn="203.0.113.10",
    media="audio",
    port=40000,
    rtpmaps="a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
):
    return SessionDescription.parse(
        f"v=0\r\no=- 1 1 IN IP4 {conn}\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n"
        f"m={media} {port} RTP/AVP {formats}\r\n{rtpmaps}{extra}"
    )


OPUS = "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
DTMF = "a=rtpmap:101 telephone-event/8000\r\n"


@pytest.mark.parametrize(
    ("formats", "rtpmaps", "preference", "codec", "pt", "dtmf"),
    [
        ("0 8 101", DTMF, ("OPUS", "G722", "PCMU", "PCMA"), "PCMU", 0, 101),
        ("8 0", "", ("OPUS", "G722", "PCMU", "PCMA"), "PCMU", 0, None),
        ("111 0 101", OPUS + DTMF, ("OPUS", "PCMU"), "OPUS", 111, 101),
        ("111 0", OPUS, ("PCMU", "OPUS"), "PCMU", 0, None),
        ("9 0 8", "", ("G722", "PCMU"), "G722", 9, None),
        ("0 8", "", ("PCMA",), "PCMA", 8, None),
    ],
)
def test_negotiation_table(formats, rtpmaps, preference, codec, pt, dtmf):
    answer = negotiate(offer(formats, rtpmaps=rtpmaps), "198.51.100.5", 30000, preference)
    assert (answer.codec.name, answer.codec.payload_type) == (codec, pt)
    assert (answer.dtmf.payload_type if answer.dtmf else None) == dtmf
    assert answer.remote == ("203.0.113.10", 40000)
    audio = answer.sdp.audio()
    assert audio.formats == [pt] + ([dtmf] if dtmf else [])
    assert audio.port == 30000 and answer.sdp.connection == "198.51.100.5"


def test_answer_serializes_and_parses_back():
    answer = negotiate(offer("111 0 101", rtpmaps=OPUS + DTMF), "198.51.100.5", 30000)
    text = bytes(answer.sdp).decode()
    assert "m=audio 30000 RTP/AVP 111 101\r\n" in text
    assert "a=rtpmap:111 opus/48000/2\r\n" in text and "a=fmtp:111 useinbandfec=1\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\n" in text and "a=sendrecv" in text
    again = SessionDescription.parse(text)
    assert again.audio().codecs == answer.sdp.audio().codecs


@pytest.mark.parametrize(
    ("extra", "conn", "direction"),
    [
        ("a=sendonly\r\n", "203.0.113.10", Direction.RECVONLY),
        ("", "0.0.0.0", Direction.RECVONLY),
        ("a=inactive\r\n", "203.0.113.10", Direction.INACTIVE),
        ("a=recvonly\r\n", "203.0.113.10", Direction.SENDONLY),
        ("", "203.0.113.10", Direction.SENDRECV),
    ],
)
def test_hold_and_resume(extra, conn, direction):
    answer = negotiate(offer(extra=extra, conn=conn), "198.51.100.5", 30000)
    assert answer.direction is direction
    assert answer.on_hold is (direction in (Direction.RECVONLY, Direction.INACTIVE))


@pytest.mark.parametrize(
    ("sdp", "status", "message"),
    [
        (offer("18", rtpmaps="a=rtpmap:18 G729/8000\r\n"), 488, "no common codec: offered G729"),
        (offer(media="video"), 488, "no active audio stream"),
        (offer(port=0), 488, "no active audio stream"),
    ],
)
def test_nothing_to_answer_is_488(sdp, status, message):
    with pytest.raises(SdpError, match=message) as info:
        negotiate(sdp, "198.51.100.5", 30000)
    assert info.value.status == status


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("o=- 1 1 IN IP4 x\r\n", "must start with v=0"),
        ("v=0\r\nc=IN IP4\r\n", "c= must be"),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", "bad port"),
        ("v=0\r\nm=audio 4000 RTP/AVP 0 zz\r\n", "bad RTP payload type"),
        ("v=0\r\nm=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n", "bad rtpmap"),
        ("v=0\r\nnot a line\r\n", "is not <type>=<value>"),
    ],
)
def test_bad_sdp_is_400(text, message):
    with pytest.raises(SdpError, match=message) as info:
        SessionDescription.parse(text)
    assert info.value.status == 400
