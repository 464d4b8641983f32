import numpy as np
import pytest

from media.codecs import AudioCodec, CodecError


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
