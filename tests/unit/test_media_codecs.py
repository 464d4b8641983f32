import numpy as np
import pytest

from media.codecs import AudioCodec, CodecError, G711Codec, open_codec


def tone(rate, ms, freq=440.0, start=0):
    n = rate * ms // 1000
    t = (np.arange(n) + start) / rate
    return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2")


def dominant(pcm, rate):
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))]


@pytest.mark.parametrize(
    ("name", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("G722", 16000), ("OPUS", 48000)]
)
def test_round_trip_keeps_the_tone(name, rate):
    codec = AudioCodec(name)
    out = bytearray()
    ts = 0
    for i in range(25):  # half a second
        for payload in codec.encode(tone(rate, 20, start=i * rate // 50).tobytes(), rate):
            out += codec.decode(payload, ts, 16000)
            ts += codec.timestamp_step
    assert len(out) >= 16000 * 2 * 0.4  # most of the half second came back
    assert dominant(bytes(out[-16000:]), 16000) == pytest.approx(440, abs=15)


def test_g711_is_close_sample_by_sample():
    codec = AudioCodec("PCMU")
    pcm = tone(8000, 20)
    [payload] = codec.encode(pcm.tobytes(), 8000)
    assert len(payload) == 160
    back = np.frombuffer(codec.decode(payload, 0, 8000), dtype="<i2")
    snr = 10 * np.log10(np.sum(pcm.astype(float) ** 2) / np.sum((pcm - back).astype(float) ** 2))
    assert snr > 30


def test_wrong_frame_size_and_unknown_codec():
    with pytest.raises(CodecError, match="is not 20 ms"):
        AudioCodec("PCMU").encode(b"\x00" * 100, 8000)
    with pytest.raises(CodecError, match="unsupported codec G729"):
        AudioCodec("G729")


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_fast_path_is_bit_exact_with_aiortc(name):
    fast, ref = G711Codec(name), AudioCodec(name)
    pcm = (np.random.default_rng(7).normal(0, 6000, 160)).clip(-32768, 32767).astype("<i2")
    [a] = fast.encode(pcm.tobytes(), 8000)
    [b] = ref.encode(pcm.tobytes(), 8000)
    assert a == b
    assert fast.decode(a, 0, 8000) == ref.decode(b, 0, 8000)


def test_g711_fast_path_resamples_16k_and_keeps_the_tone():
    codec = open_codec("PCMU")
    assert isinstance(codec, G711Codec)
    out = bytearray()
    for i in range(25):
        [payload] = codec.encode(tone(16000, 20, start=i * 320).tobytes(), 16000)
        assert len(payload) == 160
        out += codec.decode(payload, 0, 16000)
    assert len(out) == 25 * 640
    assert dominant(bytes(out), 16000) == pytest.approx(440, abs=10)
