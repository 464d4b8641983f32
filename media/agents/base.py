"""The agent interface. A session feeds the agent 20 ms frames of 16-bit mono PCM at
`SAMPLE_RATE` and asks it for the next frame to play every 20 ms. Pure: no I/O, no clock."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

SAMPLE_RATE = 16_000
FRAME_BYTES = SAMPLE_RATE // 50 * 2  # 20 ms
SILENCE = b"\x00" * FRAME_BYTES


@dataclass(frozen=True)
class CallInfo:
    call_id: str
    business_id: str
    from_number: str
    to_number: str
    options: dict[str, str] = field(default_factory=dict)


class Agent(ABC):
    hangup_requested: bool = False
    dtmf_seen: list[str]

    def __init__(self) -> None:
        self.dtmf_seen = []

    @abstractmethod
    def start(self, call: CallInfo) -> None: ...

    @abstractmethod
    def on_audio(self, frame: bytes) -> None:
        """20 ms of the caller's audio (FRAME_BYTES), or SILENCE for a lost frame."""

    @abstractmethod
    def next_frame(self) -> bytes:
        """The next 20 ms to play to the caller (SILENCE when there is nothing)."""

    def on_dtmf(self, digit: str) -> None:
        self.dtmf_seen.append(digit)

    def clear(self) -> None:  # noqa: B027 - a no-op unless the agent queues audio
        """Barge-in: drop whatever is queued to play."""

    def hang_up(self) -> None:
        self.hangup_requested = True

    async def run(self) -> None:  # noqa: B027 - pure agents need no I/O
        """I/O an agent needs while the call lasts (the node runs it as a task and cancels
        it when the call ends). Pure agents need none."""
