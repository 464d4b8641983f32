"""Audio codecs for RTP payloads, through aiortc's encoders and decoders (PyAV).

An `AudioCodec` turns 20 ms of 16-bit mono PCM at any sample rate into one RTP payload,
and a payload back into 20 ms of PCM at the rate the session wants; the resampling on the
way in is aiortc's, on the way out PyAV's. Codec names are the SDP ones (media/sdp.py).
"""

from __future__ import annotations

import fractions

from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.base import Decoder, Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler

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
