"""The queue entries a media node may take, pure: the assignments routing sent it
(CallRouted, the entry's ProcessedProxy state), where a call names its entry, and the
seed's checks before a call may take one. The same for a SIP INVITE and a provider
stream."""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

#: an assignment nobody claimed is forgotten this long after its redirect deadline
#: (routing has freed its backend slot by then; the minute absorbs clock skew)
ASSIGNMENT_GRACE_MS = 60_000
#: where a provider stream names its entry: the name, then its alias (before issue 13)
QUEUE_ID_NAMES = ("callQueueId", "queueId")


class Assignments:
    """This node's CallRouted records, by queue id and by the Call-ID (or provider call
    id) the edge saw. Written by the follower's thread (plain dict writes), read by the
    loop."""

    def __init__(self) -> None:
        self.by_queue: dict[str, dict[str, Any]] = {}
        self.by_provider_call: dict[str, str] = {}

    def add(self, record: dict[str, Any]) -> str:
        queue_id: str = record["envelope"]["call_id"]
        self.by_queue[queue_id] = record
        if record.get("provider_call_id"):
            self.by_provider_call[record["provider_call_id"]] = queue_id
        return queue_id

    def get(self, queue_id: str) -> dict[str, Any] | None:
        return self.by_queue.get(queue_id)

    def find(self, queue_id: str | None, call_id: str = "") -> tuple[str, dict[str, Any]] | None:
        """The entry named `queue_id`, or else the one whose call the edge saw with
        `call_id` (a UA that drops the redirect's headers keeps the Call-ID)."""
        qid = queue_id or self.by_provider_call.get(call_id)
        routed = self.by_queue.get(qid) if qid else None
        return (qid, routed) if qid and routed is not None else None

    def discard(self, queue_id: str) -> None:
        """The entry is used up (its call was taken and ended) or expired."""
        record = self.by_queue.pop(queue_id, None)
        if record is not None and record.get("provider_call_id"):
            self.by_provider_call.pop(record["provider_call_id"], None)

    def expired(self, now_ms: int) -> list[str]:
        return [
            q
            for q, r in list(self.by_queue.items())
            if int(r.get("redirect_deadline") or 0) + ASSIGNMENT_GRACE_MS < now_ms
        ]


def queue_id_from(*sources: Mapping[str, Any]) -> str | None:
    """`callQueueId` (or its alias `queueId`) from the first source that has one: a
    provider's custom parameters or headers, then the URL's query string."""
    for source in sources:
        for name in QUEUE_ID_NAMES:
            value = source.get(name)
            if value:
                return str(value)
    return None


def check_claim(
    queue_id: str,
    routed: dict[str, Any],
    provider: str,
    *,
    server_id: str,
    region_id: str,
    processing: Container[str],
    active: int,
    capacity: int,
) -> tuple[int, str] | None:
    """The seed's queue checks, in order: the entry is this node's (403), it came in over
    `provider` ("SIP", "TWILIO", ... : 403 otherwise, so `/twilio` cannot take a SIP
    call), nobody is processing it (486), the node has room (503). None: it may be taken."""
    if routed["backend_id"] != server_id or routed["region_id"] != region_id:
        return 403, f"queue entry {queue_id} belongs to {routed['backend_id']}"
    came_by = routed.get("provider") or "SIP"
    if came_by != provider:
        return 403, f"queue entry {queue_id} is a {came_by} call, not a {provider} one"
    if queue_id in processing:
        return 486, f"queue entry {queue_id} is already being processed"
    if active >= capacity:
        return 503, "node at capacity"
    return None
