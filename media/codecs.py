"""Audio codecs for RTP payloads, through aiortc's encoders and decoders (PyAV).

An `AudioCodec` turns 20 ms of 16-bit mono PCM at any sample rate into one RTP payload,
and a payload back into 20 ms of PCM at the rate the session wants; the resampling on the
way in is aiortc's, on the way out PyAV's. Codec names are the SDP ones (media/sdp.py).
"""

from __future__ import annotations

import fractions
from functools import lru_cache

import numpy as np
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.base import Decoder, Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler, CodecContext
from av.packet import Packet

FRAME_MS = 20
#: SDP name -> (aiortc mime type, RTP clock, channels in SDP)
_MIME = {
    "PCMU": ("audio/PCMU", 8000, 1),
    "PCMA": ("audio/PCMA", 8000, 1),
    "G722": ("audio/G722", 8000, 1),
    "OPUS": ("audio/opus", 48000, 2),
}


class CodecError(ValueError):
    pass


class AudioCodec:
    def __init__(self, name: str, payload_type: int | None = None) -> None:
        name = name.upper()
        if name not in _MIME:
            raise CodecError(f"unsupported codec {name}; we run {', '.join(_MIME)}")
        mime, clock, channels = _MIME[name]
        params = RTCRtpCodecParameters(
            mimeType=mime, clockRate=clock, channels=channels, payloadType=payload_type or 0
        )
        self.name = name
        self.clock_rate = clock
        self.encoder: Encoder = get_encoder(params)
        self.decoder: Decoder = get_decoder(params)
        self._pts = 0
        self._resamplers: dict[int, AudioResampler] = {}

    @property
    def timestamp_step(self) -> int:
        """RTP timestamp units per 20 ms frame."""
        return self.clock_rate * FRAME_MS // 1000

    def encode(self, pcm: bytes, sample_rate: int) -> list[bytes]:
        """20 ms of s16le mono PCM -> RTP payloads (usually one; none while buffering)."""
        samples = len(pcm) // 2
        if samples * 1000 != sample_rate * FRAME_MS:
            raise CodecError(f"{len(pcm)} bytes is not 20 ms of 16-bit mono at {sample_rate} Hz")
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, sample_rate)
        self._pts += samples
        payloads, _ = self.encoder.encode(frame)
        return payloads

    def decode(self, payload: bytes, timestamp: int, sample_rate: int) -> bytes:
        """One RTP payload -> s16le mono PCM at `sample_rate`."""
        frames = self.decoder.decode(JitterFrame(data=payload, timestamp=timestamp))
        out = bytearray()
        resampler = self._resamplers.get(sample_rate)
        if resampler is None:
            resampler = AudioResampler(format="s16", layout="mono", rate=sample_rate)
            self._resamplers[sample_rate] = resampler
        for frame in frames:
            for converted in resampler.resample(frame):
                out += bytes(converted.planes[0])[: converted.samples * 2]
        return bytes(out)


@lru_cache(maxsize=2)
def _g711_tables(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(encode table indexed by sample + 32768, decode table indexed by code), built once by
    running every 16-bit value and every code through PyAV's own G.711 codec (the one
    aiortc uses), so the fast path is bit-exact with it."""
    codec_name = "pcm_mulaw" if name == "PCMU" else "pcm_alaw"
    tb = fractions.Fraction(1, 8000)
    enc = CodecContext.create(codec_name, "w")
    enc.format, enc.layout, enc.sample_rate, enc.time_base = "s16", "mono", 8000, tb
    values = np.arange(-32768, 32768, dtype="<i2")
    frame = AudioFrame(format="s16", layout="mono", samples=len(values))
    frame.planes[0].update(values.tobytes())
    frame.sample_rate, frame.pts, frame.time_base = 8000, 0, tb
    encoded = b"".join(bytes(p) for p in enc.encode(frame)) + b"".join(
        bytes(p) for p in enc.encode(None)
    )
    dec = CodecContext.create(codec_name, "r")
    dec.format, dec.layout, dec.sample_rate = "s16", "mono", 8000
    packet = Packet(bytes(range(256)))
    packet.pts, packet.time_base = 0, tb
    decoded = b"".join(bytes(f.planes[0])[: f.samples * 2] for f in dec.decode(packet))
    return (
        np.frombuffer(encoded, dtype=np.uint8).copy(),
        np.frombuffer(decoded, dtype="<i2").copy(),
    )


class G711Codec:
    """PCMU/PCMA with lookup tables (see _g711_tables) and 2:1 resampling in numpy: the
    per-frame cost of PyAV's resampler and codec objects dominated a call's CPU in
    bench/media.py. Same interface as AudioCodec; 8 and 16 kHz PCM."""

    clock_rate = 8000

    def __init__(self, name: str) -> None:
        self.name = name.upper()
        self._enc, self._dec = _g711_tables(self.name)

    @property
    def timestamp_step(self) -> int:
        return self.clock_rate * FRAME_MS // 1000

    def encode(self, pcm: bytes, sample_rate: int) -> list[bytes]:
        x = np.frombuffer(pcm, dtype="<i2")
        if len(x) * 1000 != sample_rate * FRAME_MS:
            raise CodecError(f"{len(pcm)} bytes is not 20 ms of 16-bit mono at {sample_rate} Hz")
        if sample_rate == 16000:  # [1 2 1]/4 low-pass, then every second sample
            padded = np.concatenate((x[:1], x, x[-1:])).astype(np.int32)
            x = ((padded[:-2] + 2 * padded[1:-1] + padded[2:]) >> 2)[::2]
        elif sample_rate != 8000:
            raise CodecError(f"G.711 fast path takes 8 or 16 kHz PCM, not {sample_rate} Hz")
        return [self._enc[x.astype(np.int32) + 32768].tobytes()]

    def decode(self, payload: bytes, timestamp: int, sample_rate: int) -> bytes:
        y = self._dec[np.frombuffer(payload, dtype=np.uint8)]
        if sample_rate == 16000:  # linear interpolation to twice the rate
            nxt = np.concatenate((y[1:], y[-1:])).astype(np.int32)
            mid = ((y.astype(np.int32) + nxt) >> 1).astype("<i2")
            y = np.column_stack((y, mid)).ravel()
        elif sample_rate != 8000:
            raise CodecError(f"G.711 fast path gives 8 or 16 kHz PCM, not {sample_rate} Hz")
        return y.astype("<i2").tobytes()


def open_codec(name: str, payload_type: int | None = None) -> AudioCodec | G711Codec:
    """The codec for an SDP name: table-driven G.711, aiortc for G.722 and Opus."""
    if name.upper() in ("PCMU", "PCMA"):
        return G711Codec(name)
    return AudioCodec(name, payload_type)
