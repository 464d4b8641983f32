"""What a call's carrier (media/sip.py for SIP dialogs, media/ws.py for provider
streams) needs of the node it runs on, and what the node needs of a call: declared here so
that the carriers do not import the node (media/node.py), which imports them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from edge.sip.transport import Listen
from media.call import Action, Call, Input
from media.queue import Assignments
from trunkline.core.events import Emit

_T = TypeVar("_T")


@dataclass
class NodeConfig:
    server_id: str
    region_id: str
    listen: Listen
    capacity: int = 100
    media_ip: str = "127.0.0.1"
    media_timeout_s: float = 10.0
    assignment_wait_s: float = 2.0
    ws_listen: Listen | None = None  # provider media WebSockets (media/ws.py)
    heartbeat_interval_s: float = 1.0


class Leg(Protocol):
    """One call on the node, whatever carries it: its machine and how to act on it."""

    call: Call

    def apply(self, actions: list[Action]) -> None:
        """Carry out what the machine returned."""

    def media_rx(self) -> float | None:
        """When media last arrived (the node's clock), for the media timeout."""

    def forget(self) -> None:
        """The call ended: drop what refers to it."""


class Host(Protocol):
    """The node, as a call's carrier sees it."""

    config: NodeConfig
    assignments: Assignments

    def clock(self) -> float: ...

    def wall_ms(self) -> int: ...

    async def await_entry(self, call: Call, lookup: Callable[[], _T | None]) -> _T | None: ...

    def claim(
        self, queue_id: str, routed: dict[str, Any], provider: str, holder: Leg
    ) -> tuple[int, str] | None: ...

    def release(self, queue_id: str | None, holder: Leg) -> None: ...

    def open_leg(self, leg: Leg) -> None: ...

    def feed(self, leg: Leg, event: Input, **data: Any) -> bool: ...

    def run(self, leg: Leg, actions: list[Action]) -> None: ...

    def emit(self, emits: list[Emit]) -> None: ...
