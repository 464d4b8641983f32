"""The SIP side of a call on the media node (RFC 3261 §12-§15, UAS), pure: which queue
entry an INVITE asks for, and the messages of its dialog (the 200 OK with our SDP, error
answers, the answer to a re-INVITE, our BYE, and whether a response answers that BYE).
Random values (tags, branches) are passed in; the node draws them."""

from __future__ import annotations

from dataclasses import dataclass

from edge.sip.errors import ParseError
from edge.sip.message import NameAddr, Request, Response, SipURI, make_response

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"

PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    503: "Service Unavailable",
}


def phrase(status: int) -> str:
    return PHRASES.get(status, "Error")


def queue_id_of(request: Request) -> str | None:
    """The queue id an INVITE names: RFC 3261 §19.1.5, a UA following the 302's Contact
    copies its URI headers (`?X-CallQueue-Id=...`) into the request; some keep them on the
    Request-URI instead. None when it names none (the node then matches the Call-ID the
    proxy saw, which a UA following a redirect keeps, §8.1.3.4)."""
    uri_headers = {k.lower(): v for k, v in request.uri.headers.items()}
    return request.headers.get("x-callqueue-id") or uri_headers.get("x-callqueue-id") or None


def error_response(request: Request, status: int, why: str, tag: str, server_id: str) -> Response:
    """A final error to `request`, with our reason in a Warning (RFC 3261 §20.43)."""
    quoted = why.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return make_response(
        request,
        status,
        phrase(status),
        to_tag=tag,
        headers=[("Warning", f'399 {server_id} "{quoted}"')],
    )


@dataclass
class Dialog:
    """One dialog we answer as UAS. `transport` is the INVITE's ("UDP" or "TCP"); `host`
    and `port` are our own SIP address (our Contact and our BYE's Via)."""

    invite: Request
    local_tag: str
    host: str
    port: int
    transport: str = "UDP"
    local_cseq: int = 1
    bye_data: bytes = b""
    bye_cseq: int = 0

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    def ok(self, sdp: bytes) -> Response:
        """The 200 OK to the INVITE with our SDP answer."""
        contact = SipURI(user=self.invite.uri.user, host=self.host, port=self.port)
        return make_response(
            self.invite,
            200,
            "OK",
            to_tag=self.local_tag,
            headers=[
                ("Contact", f"<{contact}>"),
                ("Content-Type", "application/sdp"),
                ("Allow", ALLOW),
            ],
            body=sdp,
        )

    def in_dialog(self, request: Request) -> bool:
        """A request inside this dialog (its To tag is ours): a re-INVITE, an ACK, a BYE."""
        try:
            return request.to.tag == self.local_tag
        except ParseError:
            return False

    def reinvite_ok(self, request: Request, sdp: bytes) -> Response:
        return make_response(
            request,
            200,
            "OK",
            to_tag=self.local_tag,
            headers=[("Content-Type", "application/sdp")],
            body=sdp,
        )

    def remote_target(self) -> str:
        """Where requests in the dialog go: the caller's Contact, else its From URI."""
        try:
            contact = self.invite.headers.get("contact")
            if contact:
                return str(NameAddr.parse(contact).uri)
            return str(self.invite.from_.uri)
        except ParseError:
            return str(self.invite.from_.uri)

    def bye(self, branch: str) -> bytes:
        """Our BYE (§15.1.1). Built once: a retransmission is the same bytes (same branch
        and CSeq), as a client transaction resends its request (§17.1.2.2)."""
        if self.bye_data:
            return self.bye_data
        self.local_cseq += 1
        self.bye_cseq = self.local_cseq
        inv = self.invite
        self.bye_data = (
            f"BYE {self.remote_target()} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: {inv.headers.get('to')};tag={self.local_tag}\r\n"
            f"To: {inv.headers.get('from')}\r\n"
            f"Call-ID: {inv.call_id}\r\n"
            f"CSeq: {self.bye_cseq} BYE\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        return self.bye_data

    def answers_bye(self, response: Response) -> bool:
        """A final response to our BYE (any status: 200, 481 and 408 all end it)."""
        if not self.bye_cseq or response.status < 200 or response.call_id != self.call_id:
            return False
        try:
            return response.cseq == (self.bye_cseq, "BYE")
        except ParseError:
            return False
