"""The lifecycle records a media node publishes, pure: CallAccepted (to routing: the
reservation becomes ACCEPTED; and to the history), CallAnswered (history) and CallEnded
(to admission, which frees the plan slot and forwards it to routing for the backend slot;
and to the history).

Event ids derive from the queue id and this node's id, so a call ends once per node
however often the node says so (a replay, a duplicate hang-up). `at_ms` is the wall
clock's epoch milliseconds, taken by the caller at the I/O edge."""

from __future__ import annotations

from typing import Any

from trunkline.core.events import Emit, derived_id, envelope, fan_out


def _envelope(server_id: str, queue_id: str, at_ms: int, what: str) -> dict[str, Any]:
    return envelope(queue_id, server_id, at_ms, derived_id(queue_id, f"{what}/{server_id}"))


def accepted(server_id: str, queue_id: str, routed: dict[str, Any], at_ms: int) -> list[Emit]:
    record = {
        "envelope": _envelope(server_id, queue_id, at_ms, "accepted"),
        "backend_id": server_id,
        "region_id": routed["region_id"],
        "agent": routed.get("agent") or "greeting",
    }
    return fan_out(
        ("routing", "call-events"), {"routing": routed["region_id"]}, "CallAccepted", record
    )


def answered(server_id: str, queue_id: str, codec: str, at_ms: int) -> list[Emit]:
    record = {
        "envelope": _envelope(server_id, queue_id, at_ms, "answered"),
        "backend_id": server_id,
        "codec": codec,
    }
    return fan_out(("call-events",), {}, "CallAnswered", record)


def ended(
    server_id: str,
    queue_id: str,
    routed: dict[str, Any],
    at_ms: int,
    *,
    reason: str,
    side: str,
    setup_ms: int | None = None,
    talk_ms: int | None = None,
    codec: str | None = None,
    media: dict[str, Any] | None = None,
    detail: str = "",
) -> list[Emit]:
    record = {
        "envelope": _envelope(server_id, queue_id, at_ms, "ended"),
        "reason": reason,
        "hangup_side": side,
        "status_code": None,
        "business_id": routed["business_id"],
        "region_id": routed["region_id"],
        "backend_id": server_id,
        "setup_ms": setup_ms,
        "talk_ms": talk_ms,
        "codec": codec,
        "media": media,
        "detail": detail[:500],
    }
    return fan_out(
        ("admission", "call-events"), {"admission": routed["business_id"]}, "CallEnded", record
    )
