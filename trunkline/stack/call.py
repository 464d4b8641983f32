"""A demo call through the local stack: INVITE to the SIP edge, follow its 302 to the
media node, talk PCMU for a few seconds, hang up (media.caller does the SIP and RTP), then
read the call's queue entry from the history once it has ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.sip.message import Response
from media.caller import place_call
from trunkline.core.settings import Settings
from trunkline.stack.base import BadInput
from trunkline.stack.calls import CallHistory

#: headers of an answer worth showing the operator
SHOWN_HEADERS = ("Contact", "Warning", "Retry-After")


@dataclass(frozen=True)
class SipAnswer:
    who: str  # "edge" or "media node"
    status: int
    reason: str
    headers: dict[str, str]


@dataclass(frozen=True)
class CallReport:
    answers: list[SipAnswer]
    answered: bool  # the media node said 200 OK
    packets_sent: int
    packets_received: int
    bye_status: int | None
    queue_id: str | None
    entry: dict[str, Any] | None = None
    error: str | None = field(default=None)


def edge_address(text: str) -> tuple[str, int]:
    """host:port of the edge to call; 0.0.0.0 or no host means this machine."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadInput(f"the edge address {text!r} is not host:port")
    return ("127.0.0.1" if host in ("", "0.0.0.0") else host), int(port)


def _answer(who: str, resp: Response) -> SipAnswer:
    headers = {
        name: str(resp.headers.get(name)) for name in SHOWN_HEADERS if resp.headers.get(name)
    }
    return SipAnswer(who, resp.status, resp.reason, headers)


def place(
    s: Settings,
    number: str,
    edge: str | None = None,
    seconds: float = 3.0,
    read_entry: bool = True,
    entry_timeout: float = 10.0,
) -> CallReport:
    host, port = edge_address(edge or s.sip_listen)
    r = place_call(host, port, number, seconds=seconds)
    answers = [
        _answer(who, resp)
        for who, resp in (("edge", r.redirect), ("media node", r.answer))
        if resp is not None
    ]
    queue_id = r.queue_id or (
        str(r.redirect.headers.get("x-callqueue-id"))
        if r.redirect is not None and r.redirect.headers.get("x-callqueue-id")
        else None
    )
    entry = None
    if queue_id and read_entry:
        history = CallHistory(s)
        try:
            entry = history.settled_call(queue_id, entry_timeout)
        finally:
            history.close()
    return CallReport(
        answers=answers,
        answered=r.answer is not None and r.answer.status == 200,
        packets_sent=r.packets_sent,
        packets_received=r.packets_received,
        bye_status=r.bye_status,
        queue_id=queue_id,
        entry=entry,
        error=r.error,
    )
