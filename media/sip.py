"""The media node's SIP side (a UAS for the redirected call): SIP messages and
transaction timers in, the call machine's inputs out (media/call.py), and its actions
carried out on the SIP transport. The transaction layer is edge/sip's; the dialog's
messages are media/dialog.py's; each call's RTP is a media/rtp_session.py socket.

Requests: INVITE (a new call, or a re-INVITE for hold and resume), ACK (the 200 OK's:
the call is answered), BYE, CANCEL (200, and the machine says 487), OPTIONS, others 405.
Responses: a final answer to our BYE completes it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from edge.sip.errors import ParseError, TransactionError
from edge.sip.message import Request, Response, make_response, parse_message
from edge.sip.transaction import (
    Address,
    CancelRequest,
    NewRequest,
    Send,
    ServerTransactions,
    TxKey,
)
from edge.sip.transport import annotate_via, response_addr
from media import events
from media.agents import Agent, CallInfo, make_agent
from media.call import (
    Action,
    Call,
    HangUp,
    Input,
    PublishAccepted,
    PublishAnswered,
    PublishEnded,
    Release,
    Reply,
    SendOk,
    State,
)
from media.dialog import ALLOW, Dialog, error_response, phrase, queue_id_of
from media.host import Host
from media.rtp_session import RtpSession
from media.sdp import Answer, SdpError, SessionDescription, negotiate
from trunkline.core import logs

log = logging.getLogger("trunkline.media.sip")


def _cancelled(call: Call) -> bool:
    """The caller cancelled (a function: the state changes across awaits)."""
    return call.state is State.CANCELLED


@dataclass(eq=False)
class SipLeg:
    """A SIP call on the node: the machine, its dialog, its media."""

    uas: SipUas
    call: Call
    request: Request
    key: TxKey
    source: Address
    conn: Any  # the TCP connection the INVITE came on (None: UDP)
    dialog: Dialog
    queue_id: str | None = None
    routed: dict[str, Any] | None = None
    offer: SessionDescription | None = None
    answer: Answer | None = None
    session: RtpSession | None = None
    agent: Agent | None = None
    agent_task: asyncio.Task[None] | None = None
    ok: bytes = b""

    def __repr__(self) -> str:
        return f"<SipLeg {self.call!r} {self.queue_id}>"

    def apply(self, actions: list[Action]) -> None:
        self.uas.apply(self, actions)

    def media_rx(self) -> float | None:
        return self.session.last_rx if self.session is not None else None

    def forget(self) -> None:
        self.uas.forget(self)

    @property
    def codec(self) -> str | None:
        if self.answer is None:
            return None
        return f"{self.answer.codec.name}/{self.answer.codec.clock_rate}"


class SipUas:
    """The node's SIP endpoint. `udp` is the node's SIP datagram transport (set once it
    is open); TCP answers go back on the connection a request came on."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.transactions = ServerTransactions()
        self.legs: dict[str, SipLeg] = {}  # by Call-ID
        self.by_invite: dict[TxKey, SipLeg] = {}  # ... and by INVITE transaction (CANCEL)
        self.udp: asyncio.DatagramTransport | None = None

    # -- sending ---------------------------------------------------------------------
    def send(self, data: bytes, addr: Address, conn: Any = None) -> None:
        if conn is not None:
            if not conn.is_closing():
                conn.write(data)
            return
        if self.udp is not None:
            self.udp.sendto(data, addr)

    def respond(self, key: TxKey, response: Response, now: float) -> None:
        try:
            sends = self.transactions.respond(key, response, now)
        except TransactionError as exc:  # the transaction is gone (timed out)
            log.debug("no response sent: %s", exc)
            return
        for send in sends:
            if isinstance(send, Send):
                self.send(send.data, send.addr, send.conn)

    def expire(self, now: float) -> None:
        """The transaction layer's timers (retransmitted error answers, Timer H...)."""
        for send in self.transactions.expire(now):
            if isinstance(send, Send):
                self.send(send.data, send.addr, send.conn)

    # -- the machine's actions ---------------------------------------------------------
    def apply(self, leg: SipLeg, actions: list[Action]) -> None:
        host = self.host
        server_id = host.config.server_id
        now = host.clock()
        for action in actions:
            if isinstance(action, Reply):
                log.info(
                    "refusing %s: %s %s",
                    leg.call.call_id,
                    action.status,
                    action.why,
                    extra=logs.call(leg.queue_id),
                )
                response = error_response(
                    leg.request, action.status, action.why, leg.dialog.local_tag, server_id
                )
                self.respond(leg.key, response, now)
            elif isinstance(action, SendOk):
                if action.retransmission:
                    self.send(leg.ok, response_addr(leg.request, leg.source), leg.conn)
                else:
                    assert leg.answer is not None
                    ok = leg.dialog.ok(bytes(leg.answer.sdp))
                    leg.ok = bytes(ok)
                    self.respond(leg.key, ok, now)
                    log.info(
                        "call %s answered with %s",
                        leg.queue_id,
                        leg.codec,
                        extra=logs.call(leg.queue_id),
                    )
            elif isinstance(action, PublishAccepted):
                assert leg.queue_id is not None and leg.routed is not None
                host.emit(events.accepted(server_id, leg.queue_id, leg.routed, host.wall_ms()))
            elif isinstance(action, PublishAnswered):
                assert leg.queue_id is not None
                host.emit(events.answered(server_id, leg.queue_id, leg.codec or "", host.wall_ms()))
            elif isinstance(action, PublishEnded):
                self._publish_ended(leg, action)
            elif isinstance(action, Release):
                if leg.session is not None:
                    leg.session.close()
                if leg.agent_task is not None:
                    leg.agent_task.cancel()
                host.release(leg.queue_id, leg)
            elif isinstance(action, HangUp):
                data = leg.dialog.bye(f"z9hG4bK{uuid.uuid4().hex[:16]}")
                self.send(data, leg.source, leg.conn)

    def _publish_ended(self, leg: SipLeg, ended: PublishEnded) -> None:
        if leg.queue_id is None or leg.routed is None:
            return  # nobody to tell: the entry never turned up
        host = self.host
        host.emit(
            events.ended(
                host.config.server_id,
                leg.queue_id,
                leg.routed,
                host.wall_ms(),
                reason=ended.reason,
                side=ended.side,
                setup_ms=ended.setup_ms,
                talk_ms=ended.talk_ms,
                codec=leg.codec,
                media=leg.session.stats() if leg.session is not None else None,
                detail=ended.detail,
            )
        )
        log.info(
            "call %s ended: %s by %s",
            leg.queue_id,
            ended.reason,
            ended.side,
            extra=logs.call(leg.queue_id),
        )

    def forget(self, leg: SipLeg) -> None:
        if self.legs.get(leg.call.call_id) is leg:
            del self.legs[leg.call.call_id]
        if self.by_invite.get(leg.key) is leg:
            del self.by_invite[leg.key]

    # -- the media clock -----------------------------------------------------------------
    def tick(self) -> None:
        """Every 20 ms: each answered call sends its next frame; an agent that hung up
        ends its call."""
        feed = self.host.feed
        for leg in list(self.legs.values()):
            if leg.call.state not in (State.ANSWERED, State.HELD) or leg.session is None:
                continue
            try:
                leg.session.tick()
            except Exception as exc:  # one call's failure must not stop the others
                log.exception("call %s: media error", leg.queue_id, extra=logs.call(leg.queue_id))
                feed(leg, Input.LOCAL_END, reason="failed", side="system", why=f"media: {exc}")
                continue
            if leg.agent is not None and leg.agent.hangup_requested:
                feed(leg, Input.LOCAL_END, reason="completed", side="agent")

    # -- receiving -------------------------------------------------------------------------
    async def on_message(self, data: bytes, source: Address, conn: Any) -> None:
        """One SIP message, from UDP (`conn` None) or a TCP connection."""
        now = self.host.clock()
        try:
            msg = parse_message(data, stream=conn is not None)
        except ParseError as exc:
            if exc.partial is not None and exc.partial.method != "ACK":
                r = make_response(exc.partial, exc.status_hint, "Bad Request", to_tag="bad")
                self.send(bytes(r), response_addr(exc.partial, source), conn)
            return
        if isinstance(msg, Response):
            leg = self.legs.get(msg.call_id)
            if leg is not None and leg.dialog.answers_bye(msg):
                self.host.feed(leg, Input.BYE_DONE)
            return  # other responses are not ours to handle
        try:
            annotate_via(msg, source)
            if msg.method == "ACK":
                self.transactions.receive(msg, source, now)  # ACKs for our error answers
                leg = self.legs.get(msg.call_id)
                if leg is not None and leg.dialog.in_dialog(msg):
                    self.host.feed(leg, Input.ANSWER)
                return
            actions = self.transactions.receive(
                msg,
                source,
                now,
                reliable=conn is not None,
                conn=conn,
                reply_to=response_addr(msg, source),
            )
        except (ParseError, TransactionError) as exc:
            log.debug("dropped a request from %s: %s", source, exc)
            return
        for action in actions:
            if isinstance(action, Send):
                self.send(action.data, action.addr, action.conn)
            elif isinstance(action, CancelRequest):
                self._on_cancel(action, now)
            elif isinstance(action, NewRequest):
                await self._on_request(action.request, action.key, source, now, conn)

    def _on_cancel(self, cancel: CancelRequest, now: float) -> None:
        """RFC 3261 §9.2: the CANCEL itself gets 200; the INVITE, if not answered yet,
        487 (the machine says so)."""
        self.respond(cancel.key, make_response(cancel.request, 200, "OK"), now)
        leg = self.by_invite.get(cancel.invite_key)
        if leg is not None:
            self.host.feed(leg, Input.CANCEL)

    async def _on_request(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any
    ) -> None:
        if req.method == "INVITE":
            existing = self.legs.get(req.call_id)
            if existing is not None and existing.dialog.in_dialog(req):
                self._reinvite(existing, req, key, now)
            else:
                await self._invite(req, key, source, now, conn)
        elif req.method == "BYE":
            leg = self.legs.get(req.call_id)
            if (
                leg is None
                or not leg.dialog.in_dialog(req)
                or not self.host.feed(leg, Input.REMOTE_END, reason="completed", side="caller")
            ):
                self.respond(key, make_response(req, 481, phrase(481), to_tag="none"), now)
                return
            self.respond(key, make_response(req, 200, "OK"), now)
        elif req.method == "CANCEL":  # no INVITE transaction matches it (RFC 3261 §9.2)
            self.respond(key, make_response(req, 481, phrase(481), to_tag="none"), now)
        elif req.method == "OPTIONS":
            ok = make_response(req, 200, "OK", to_tag="opt", headers=[("Allow", ALLOW)])
            self.respond(key, ok, now)
        else:
            self.respond(
                key,
                make_response(req, 405, phrase(405), to_tag="na", headers=[("Allow", ALLOW)]),
                now,
            )

    # -- a new call ------------------------------------------------------------------------
    async def _invite(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any
    ) -> None:
        host, config = self.host, self.host.config
        self.respond(key, make_response(req, 100, "Trying"), now)
        call = Call(
            req.call_id,
            now,
            reliable=conn is not None,
            wait_s=config.assignment_wait_s,
            media_timeout=config.media_timeout_s,
        )
        dialog = Dialog(
            req,
            uuid.uuid4().hex[:10],
            config.listen.host,
            config.listen.port,
            "TCP" if conn else "UDP",
        )
        leg = SipLeg(self, call, req, key, source, conn, dialog)
        self.legs[req.call_id] = leg
        self.by_invite[key] = leg
        host.open_leg(leg)
        named = queue_id_of(req)

        def lookup() -> tuple[str, dict[str, Any]] | None:
            return host.assignments.find(named, req.call_id)

        found = lookup()
        if found is None:
            why = (
                f"queue entry {named} is not assigned to this node"
                if named
                else "no X-CallQueue-Id and no queue entry for this Call-ID"
            )
            host.feed(leg, Input.WAIT, status=404, why=why)
            found = await host.await_entry(call, lookup)
            if found is None:
                return  # the wait expired (404), or the call was cancelled and never named
        leg.queue_id, leg.routed = found
        refusal = host.claim(leg.queue_id, leg.routed, "SIP", leg)
        if refusal is not None:
            host.feed(leg, Input.REFUSE, status=refusal[0], why=refusal[1])
            return
        if not _cancelled(call):
            try:
                leg.offer = SessionDescription.parse(req.body)
                negotiate(leg.offer, config.media_ip, 9)  # 488 if nothing matches
            except SdpError as exc:
                host.feed(leg, Input.REFUSE, status=exc.status, why=str(exc))
                return
            try:
                await self._open_media(leg)
            except (OSError, ValueError) as exc:
                log.error(
                    "call %s: cannot open its media: %s",
                    leg.queue_id,
                    exc,
                    extra=logs.call(leg.queue_id),
                )
                host.feed(leg, Input.REFUSE, status=500, why=f"cannot open the media: {exc}")
                return
        if _cancelled(call):  # before the entry turned up, or while the socket opened
            host.feed(leg, Input.CLAIM)  # CallEnded `cancelled` to the entry's business
            return
        assert leg.agent is not None and leg.routed is not None
        leg.agent.start(
            CallInfo(
                leg.queue_id,
                leg.routed["business_id"],
                req.from_.uri.user or "",
                req.uri.user or "",
                dict(leg.routed.get("agent_options") or {}),
            )
        )
        leg.agent_task = asyncio.create_task(leg.agent.run())
        host.feed(leg, Input.CLAIM)

    async def _open_media(self, leg: SipLeg) -> None:
        """The agent and the RTP socket, then the SDP answer with the socket's port."""
        assert leg.offer is not None and leg.routed is not None
        media_ip = self.host.config.media_ip
        agent = make_agent(leg.routed.get("agent") or "greeting")
        placeholder = negotiate(leg.offer, media_ip, 9)
        loop = asyncio.get_running_loop()
        _, session = await loop.create_datagram_endpoint(
            lambda: RtpSession(placeholder, agent, self.host.clock),
            local_addr=(media_ip, 0),
        )
        leg.session, leg.agent = session, agent
        leg.answer = negotiate(leg.offer, media_ip, session.port)
        session.update(leg.answer)

    def _reinvite(self, leg: SipLeg, req: Request, key: TxKey, now: float) -> None:
        """Hold and resume (RFC 3264 §8.4): a new answer on the same socket."""
        if leg.session is None or leg.call.state not in (State.ANSWERED, State.HELD):
            # before the ACK: 491 (§14.2); once we hang up, the dialog is going: 481
            status = 491 if leg.call.state is State.ACCEPTED else 481
            self.respond(
                key, make_response(req, status, phrase(status), to_tag=leg.dialog.local_tag), now
            )
            return
        try:
            answer = negotiate(
                SessionDescription.parse(req.body),
                self.host.config.media_ip,
                leg.session.port,
                session_id=1,
                version=leg.dialog.local_cseq,
            )
        except SdpError as exc:
            refusal = error_response(
                req, exc.status, str(exc), leg.dialog.local_tag, self.host.config.server_id
            )
            self.respond(key, refusal, now)
            return
        self.host.feed(leg, Input.HOLD if answer.on_hold else Input.RESUME)
        leg.answer = answer
        leg.session.update(answer)
        self.respond(key, leg.dialog.reinvite_ok(req, bytes(answer.sdp)), now)
        log.info(
            "call %s re-INVITE: %s",
            leg.queue_id,
            "hold" if answer.on_hold else "resume",
            extra=logs.call(leg.queue_id),
        )
