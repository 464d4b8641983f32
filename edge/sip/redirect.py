"""The proxy's transaction user: a redirect server whose decisions come from Kafka. Pure.

For each new INVITE: answer ``100 Trying`` at once, publish CallOffered to admission
(keyed by business; admission copies it to the call-events history with its decision),
and wait for the decision with a deadline. A number that names no business is refused
here, and its offer and rejection go to the history directly. The decision becomes the
final response: 302 with the backend in Contact, or the rejection's code with a Warning
that says why (Retry-After on 503). No decision in time: 503 + CallEnded(edge_timeout)
so admission and routing release what they hold. CANCEL before the final response: 200
to the CANCEL, 487 to the INVITE and CallEnded(cancelled). OPTIONS: 200. Other methods:
405 with Allow.

Inputs carry `now` (Unix seconds); outputs are Reply (for the transaction layer) and
Publish (for Kafka). The I/O lives in edge/sip/service.py.
"""

from __future__ import annotations

import heapq
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.sip.identifiers import (
    calling_number,
    safe_form,
    valid_call_id,
    valid_id,
    valid_number,
)
from edge.sip.message import Request, Response, SipURI, make_response
from edge.sip.transaction import Address, TxKey
from trunkline.core.events import Destination, derived_id, envelope

log = logging.getLogger("trunkline.sip.redirect")

ALLOW = "INVITE, ACK, CANCEL, OPTIONS"
REASONS = {
    100: "Trying", 200: "OK", 302: "Moved Temporarily", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 416: "Unsupported URI Scheme",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    500: "Server Internal Error", 503: "Service Unavailable", 505: "Version Not Supported",
}  # fmt: skip
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)", re.M)
_STATIC_PT = {"0": "PCMU", "3": "GSM", "4": "G723", "8": "PCMA", "9": "G722", "18": "G729"}


@dataclass
class Reply:
    key: TxKey
    response: Response


@dataclass
class Publish:
    dest: Destination
    key: str
    name: str
    record: dict[str, Any]


Out = Reply | Publish


@dataclass
class Pending:
    call_id: str
    key: TxKey
    request: Request
    deadline: float
    to_tag: str
    business_id: str
    number: str


@dataclass
class NumberEntry:
    business_id: str
    phone_id: str


_CODEC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MAX_CODECS = 16


def offered_codecs(body: bytes) -> list[str]:
    """Codec names of the first audio m= line of an SDP offer (enough for CallOffered);
    at most `MAX_CODECS`, and only names that look like codec names."""
    text = body.decode("utf-8", "replace")
    m = re.search(r"^m=audio \d+(?:/\d+)? \S+ ([0-9 ]+)", text, re.M)
    if not m:
        return []
    names = {pt: name for pt, name in _RTPMAP.findall(text)}
    found = (names.get(pt) or _STATIC_PT.get(pt, pt) for pt in m.group(1).split())
    return [name for name in found if _CODEC_NAME.match(name)][:MAX_CODECS]


def dialled_number(request: Request) -> str:
    user = request.uri.user or (request.to.uri.user or "")
    return user.split(";", 1)[0]


@dataclass
class RedirectCore:
    edge_id: str
    directory: Callable[[str], NumberEntry | None] = lambda number: None
    #: is this business id / phone id configured? (the service follows the numbers
    #: config; an unknown id is refused here and never stored)
    known_business: Callable[[str], bool] = lambda business_id: True
    known_phone: Callable[[str], bool] = lambda phone_id: True
    #: can offers reach the event log now? While not, INVITEs get 503 with Retry-After at
    #: once (no decision could come), and nothing is published
    available: Callable[[], bool] = lambda: True
    decision_timeout: float = 5.0
    retry_after_s: int = 5
    new_call_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    new_tag: Callable[[], str] = field(default=lambda: uuid.uuid4().hex[:12])
    pending: dict[str, Pending] = field(default_factory=dict)
    by_key: dict[TxKey, str] = field(default_factory=dict)
    # (deadline, call id) heap; answered calls leave stale entries that are skipped
    _deadlines: list[tuple[float, str]] = field(default_factory=list)

    # -- requests from the transaction layer --------------------------------------------
    def on_request(
        self, request: Request, key: TxKey, source: Address, transport: str, now: float
    ) -> list[Out]:
        method = request.method
        if method == "OPTIONS":
            return [
                Reply(
                    key,
                    make_response(
                        request,
                        200,
                        "OK",
                        to_tag=self.new_tag(),
                        headers=[("Allow", ALLOW), ("Accept", "application/sdp")],
                    ),
                )
            ]
        if method == "CANCEL":  # no INVITE transaction matched (the layer checked)
            return [Reply(key, make_response(request, 481, REASONS[481], to_tag=self.new_tag()))]
        if method != "INVITE":
            return [
                Reply(
                    key,
                    make_response(
                        request,
                        405,
                        REASONS[405],
                        to_tag=self.new_tag(),
                        headers=[("Allow", ALLOW)],
                    ),
                )
            ]
        return self._invite(request, key, source, transport, now)

    def _invite(
        self, request: Request, key: TxKey, source: Address, transport: str, now: float
    ) -> list[Out]:
        tag = self.new_tag()
        if request.uri.scheme not in ("sip", "sips"):
            return [Reply(key, make_response(request, 416, REASONS[416], to_tag=tag))]
        max_forwards = request.headers.get("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0":
            return [Reply(key, make_response(request, 483, REASONS[483], to_tag=tag))]
        if not self.available():
            return [
                Reply(
                    key,
                    make_response(
                        request,
                        503,
                        REASONS[503],
                        to_tag=tag,
                        headers=[
                            ("Warning", f'399 {self.edge_id} "event log unavailable"'),
                            ("Retry-After", str(self.retry_after_s)),
                        ],
                    ),
                )
            ]
        if not valid_call_id(request.call_id):
            why = f"Call-ID {safe_form(request.call_id)} is not an RFC 3261 callid"
            return [Reply(key, make_response(request, 400, f"Bad Request ({why})", to_tag=tag))]
        call_id = self.new_call_id()
        at_ms = int(now * 1000)
        number = dialled_number(request)
        business_id, phone_id, refusal = self._identify(request, number)
        if refusal:
            number = number if valid_number(number) else ""
        offered = {
            "envelope": envelope(call_id, self.edge_id, at_ms, derived_id(call_id, "CallOffered")),
            "provider": "SIP",
            "provider_call_id": request.call_id,
            "direction": "INBOUND",
            "business_id": business_id,
            "phone_id": phone_id,
            "to_number": number,
            "from_number": calling_number(request.from_.uri.user or ""),
            "source_ip": source[0],
            "source_port": source[1],
            "transport": transport,
            "offered_codecs": offered_codecs(request.body),
            "edge_id": self.edge_id,
        }
        out: list[Out] = [Reply(key, make_response(request, 100, REASONS[100]))]
        if refusal:
            rejected = self._rejected(call_id, at_ms, 404, refusal, None)
            out += [
                Publish("call-events", call_id, "CallOffered", offered),
                Publish("call-events", call_id, "CallRejected", rejected),
                Reply(key, self._error(request, tag, 404, refusal, None, call_id)),
            ]
            return out
        self.pending[call_id] = Pending(
            call_id, key, request, now + self.decision_timeout, tag, business_id, number
        )
        self.by_key[key] = call_id
        heapq.heappush(self._deadlines, (now + self.decision_timeout, call_id))
        # admission copies the offer to the history (call-events) with its decision
        out.append(Publish("admission", business_id, "CallOffered", offered))
        return out

    def _identify(self, request: Request, number: str) -> tuple[str, str, str]:
        """(business id, phone id, refusal): Request-URI headers, then request headers (a
        UA that followed a URI with headers copies them, RFC 3261 §19.1.5), then the
        directory. An id that is not configured gives a refusal (404) and empty ids, so
        the caller's string is never stored; the refusal names a safe form of it."""
        uri_h = {k.lower(): v for k, v in request.uri.headers.items()}
        business = uri_h.get("x-business-id") or request.headers.get("x-business-id") or ""
        phone = uri_h.get("x-phone-id") or request.headers.get("x-phone-id") or ""
        if phone and not (valid_id(phone) and self.known_phone(phone)):
            return "", "", f"phone {safe_form(phone)} is not configured"
        if business:
            if not (valid_id(business) and self.known_business(business)):
                return "", "", f"business {safe_form(business)} not found"
            return business, phone, ""
        entry = self.directory(number) if number and valid_number(number) else None
        if entry is None:
            return "", "", f"number {safe_form(number) or '(none)'} is not provisioned"
        return entry.business_id, phone or entry.phone_id, ""

    def on_cancel(self, cancel: Request, key: TxKey, invite_key: TxKey, now: float) -> list[Out]:
        out: list[Out] = [Reply(key, make_response(cancel, 200, "OK"))]
        call_id = self.by_key.get(invite_key)
        pending = self.pending.pop(call_id, None) if call_id else None
        if pending is None:
            return out  # already answered: the CANCEL has no effect (§9.2)
        del self.by_key[invite_key]
        out.append(
            Reply(
                invite_key,
                make_response(
                    pending.request,
                    487,
                    REASONS[487],
                    to_tag=pending.to_tag,
                    headers=[("X-CallQueue-Id", pending.call_id)],
                ),
            )
        )
        out += self._ended(pending, now, "cancelled", 487, "caller")
        return out

    # -- decisions from Kafka -------------------------------------------------------------
    def on_decision(self, name: str, record: dict[str, Any], now: float) -> list[Out]:
        call_id = record["envelope"]["call_id"]
        pending = self.pending.pop(call_id, None)
        if pending is None:
            return []  # not ours, answered already, timed out or cancelled
        self.by_key.pop(pending.key, None)
        if name == "CallRouted":
            return [Reply(pending.key, self._redirect(pending, record))]
        if name == "CallRejected":
            return [
                Reply(
                    pending.key,
                    self._error(
                        pending.request,
                        pending.to_tag,
                        int(record["status_code"]),
                        record["reason"],
                        record.get("retry_after_s"),
                        call_id,
                    ),
                )
            ]
        log.warning("call %s: unexpected decision %s", call_id, name)
        self.pending[call_id] = pending
        self.by_key[pending.key] = call_id
        return []

    def _redirect(self, pending: Pending, routed: dict[str, Any]) -> Response:
        host, _, port = routed["backend_sip_address"].rpartition(":")
        contact = SipURI(
            scheme=pending.request.uri.scheme,
            user=pending.number or None,
            host=host,
            port=int(port) if port.isdigit() else None,
            headers={"X-CallQueue-Id": pending.call_id},
        )
        return make_response(
            pending.request,
            302,
            REASONS[302],
            to_tag=pending.to_tag,
            headers=[("Contact", f"<{contact}>"), ("X-CallQueue-Id", pending.call_id)],
        )

    def _error(
        self,
        request: Request,
        tag: str,
        status: int,
        reason: str,
        retry_after: int | None,
        call_id: str,
    ) -> Response:
        """A rejection: the standard phrase, why in a Warning, our queue id for support."""
        headers = [
            ("Warning", f'399 {self.edge_id} "{_quote(reason)}"'),
            ("X-CallQueue-Id", call_id),
        ]
        if status == 503:
            headers.append(("Retry-After", str(retry_after or self.retry_after_s)))
        return make_response(
            request, status, REASONS.get(status, "Rejected"), to_tag=tag, headers=headers
        )

    # -- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self.pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[Out]:
        out: list[Out] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self._deadlines)
            pending = self.pending.get(call_id)
            if pending is None or pending.deadline > now:
                continue
            del self.pending[call_id]
            self.by_key.pop(pending.key, None)
            reason = f"no routing decision within {self.decision_timeout:g}s"
            out.append(
                Reply(
                    pending.key,
                    self._error(
                        pending.request, pending.to_tag, 503, reason, self.retry_after_s, call_id
                    ),
                )
            )
            out += self._ended(pending, now, "edge_timeout", 503, "system")
        return out

    # -- records --------------------------------------------------------------------------
    def _ended(
        self, pending: Pending, now: float, reason: str, status: int, side: str
    ) -> list[Out]:
        at_ms = int(now * 1000)
        ended = {
            "envelope": envelope(
                pending.call_id, self.edge_id, at_ms, derived_id(pending.call_id, reason)
            ),
            "reason": reason,
            "hangup_side": side,
            "status_code": status,
            "business_id": pending.business_id,
            "region_id": None,
            "backend_id": None,
            "setup_ms": None,
            "talk_ms": None,
            "codec": None,
            "media": None,
        }
        return [
            Publish("admission", pending.business_id, "CallEnded", ended),
            Publish("call-events", pending.call_id, "CallEnded", ended),
        ]

    def _rejected(
        self, call_id: str, at_ms: int, status: int, reason: str, business_id: str | None
    ) -> dict[str, Any]:
        return {
            "envelope": envelope(call_id, self.edge_id, at_ms, derived_id(call_id, "CallRejected")),
            "stage": "EDGE",
            "status_code": status,
            "reason": reason,
            "retry_after_s": None,
            "business_id": business_id,
            "region_id": None,
            "edge_id": self.edge_id,
        }


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
