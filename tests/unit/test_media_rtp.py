import pytest

from media.rtp import JitterBuffer, RtpPacket, extend_sequence

# RFC 3550 §5.1 header: V=2, M=1, PT=0, seq 0xfffe, ts 160, SSRC 0x12345678, one CSRC
VECTOR = bytes.fromhex("8180fffe000000a0123456780000abcd") + b"\xff" * 160


def test_parse_vector_and_round_trip():
    p = RtpPacket.parse(VECTOR)
    assert (p.version, p.marker, p.payload_type) == (2, 1, 0)
    assert (p.sequence_number, p.timestamp, p.ssrc) == (0xFFFE, 160, 0x12345678)
    assert p.csrc == [0xABCD]
    assert p.payload == b"\xff" * 160
    assert p.serialize() == VECTOR


def test_csrc_and_padding_round_trip():
    p = RtpPacket(payload_type=8, sequence_number=7, timestamp=320, ssrc=1, payload=b"ab")
    p.csrc = [5, 6]
    data = p.serialize()
    q = RtpPacket.parse(data)
    assert q.csrc == [5, 6] and q.payload == b"ab" and q.payload_type == 8


def test_truncated_packet_is_refused():
    with pytest.raises(ValueError, match="RTP packet length is less than 12 bytes"):
        RtpPacket.parse(VECTOR[:8])


@pytest.mark.parametrize(
    ("seq", "highest", "ext"),
    [
        (5, None, 5),
        (65535, 65534, 65535),
        (0, 65535, 65536),
        (1, 65536, 65537),
        (65535, 65537, 65535),
        (10, 131071, 131082),
    ],
)
def test_sequence_extension_across_the_wrap(seq, highest, ext):
    assert extend_sequence(seq, highest) == ext


def packet(seq, ts):
    return RtpPacket(
        payload_type=0,
        sequence_number=seq % 65536,
        timestamp=ts % (1 << 32),
        ssrc=1,
        payload=bytes([seq % 256]) * 160,
    )


def test_reorders_across_the_wrap_and_marks_losses():
    jb = JitterBuffer(clock_rate=8000, depth=2)
    seqs = [65533, 65535, 65534, 0, 2, 3, 4]  # 1 is lost, 65534 arrives late but in depth
    for i, s in enumerate(seqs):
        ext = s if s > 60000 else s + 65536
        jb.push(packet(ext, ext * 160), arrival_s=i * 0.02)
    out = jb.pop() + jb.pop(flush=True)
    assert [e for e, _ in out] == [65533, 65534, 65535, 65536, 65537, 65538, 65539, 65540]
    assert [p is None for _, p in out] == [False, False, False, False, True, False, False, False]
    assert (jb.stats.received, jb.stats.lost) == (7, 1)


def test_duplicates_and_late_packets_are_counted_not_played():
    jb = JitterBuffer(clock_rate=8000, depth=1)
    for s in (10, 11, 11, 12):
        jb.push(packet(s, s * 160), 0.0)
    assert [e for e, _ in jb.pop()] == [10, 11, 12]
    jb.push(packet(9, 9 * 160), 0.1)
    assert (jb.stats.duplicates, jb.stats.late) == (1, 1)


def test_interarrival_jitter():
    steady = JitterBuffer(clock_rate=8000)
    for i in range(50):
        steady.push(packet(i, i * 160), arrival_s=1.0 + i * 0.02)
    assert steady.stats.jitter_ms(8000) == pytest.approx(0.0, abs=1e-6)
    shaky = JitterBuffer(clock_rate=8000)
    for i in range(200):
        shaky.push(packet(i, i * 160), arrival_s=1.0 + i * 0.02 + (0.004 if i % 2 else 0))
    assert shaky.stats.jitter_ms(8000) == pytest.approx(4.0, rel=0.1)


def test_the_node_packs_headers_aiortc_parses():
    from media.rtp_session import _RTP_HEADER

    data = _RTP_HEADER.pack(0x80, 8, 65535, 4_000_000_000, 0xDEADBEEF) + b"\xd5" * 160
    p = RtpPacket.parse(data)
    assert (p.version, p.payload_type, p.sequence_number, p.timestamp, p.ssrc) == (
        2,
        8,
        65535,
        4_000_000_000,
        0xDEADBEEF,
    )
    assert p.payload == b"\xd5" * 160 and p.serialize() == data
