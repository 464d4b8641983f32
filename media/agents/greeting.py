"""`greeting`: plays the greeting clip shipped with the package (the seed's "AI greeting
plays"), then echoes what the caller says. DTMF `#` hangs up (so tests and demos can end
a call from the caller's keypad)."""

from __future__ import annotations

import wave
from collections import deque
from functools import lru_cache
from pathlib import Path

from media.agents.base import FRAME_BYTES, SAMPLE_RATE, SILENCE, Agent, CallInfo

GREETING = Path(__file__).resolve().parent.parent / "assets" / "greeting.wav"


@lru_cache(maxsize=1)
def greeting_frames() -> tuple[bytes, ...]:
    with wave.open(str(GREETING), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{GREETING} must be 16-bit mono {SAMPLE_RATE} Hz")
        pcm = w.readframes(w.getnframes())
    return tuple(pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES))


class GreetingAgent(Agent):
    def __init__(self) -> None:
        super().__init__()
        self._play: deque[bytes] = deque()
        self._echo: deque[bytes] = deque(maxlen=250)  # at most 5 s behind
        self.greeted = False

    def start(self, call: CallInfo) -> None:
        self._play.extend(greeting_frames())

    def on_audio(self, frame: bytes) -> None:
        if self.greeted:
            self._echo.append(frame)

    def next_frame(self) -> bytes:
        if self._play:
            frame = self._play.popleft()
            if not self._play:
                self.greeted = True
            return frame
        self.greeted = True
        return self._echo.popleft() if self._echo else SILENCE

    def on_dtmf(self, digit: str) -> None:
        super().on_dtmf(digit)
        if digit == "#":
            self.hang_up()

    def clear(self) -> None:
        self._play.clear()
        self._echo.clear()
