"""A media node: the SIP backend listener (UAS) that answers the redirected call, the
provider media WebSockets, heartbeats. This module is the I/O around the pure pieces:
sockets (SIP over UDP and TCP, one RTP socket per call), Kafka (a follower of this node's
assignments, a producer for its events) and clocks.

What a call does is media/call.py's machine, fed by SIP here and by provider streams in
media/ws.py: this module turns SIP messages and timers into its inputs and carries out
the actions it returns. The SIP messages of a dialog are built by media/dialog.py, RTP
runs in media/rtp_session.py, the lifecycle records are media/events.py's.

Clocks, one per concern: SIP timers, the call machine and RTP arrivals all run on
`time.monotonic()` (`clock()`); event timestamps (`occurred_at`) are the wall clock's
epoch milliseconds (`wall_ms()`), taken when an event is published; the media clock
paces RTP on the loop's clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import web

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
from edge.sip.transport import Listen, SipStream, annotate_via, response_addr
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
    TransitionError,
)
from media.dialog import ALLOW, Dialog, error_response, phrase, queue_id_of
from media.rtp_session import RtpSession
from media.sdp import Answer, SdpError, SessionDescription, negotiate
from media.ws import build_app
from schemas.codec import CodecError, make_codec
from trunkline.core.aio import Datagrams, serve_until_signalled, tune_gc
from trunkline.core.events import Emit, envelope
from trunkline.core.kafka import KeyFollower, Producers
from trunkline.core.settings import Settings
from trunkline.core.topics import ADMISSION, ASSIGNMENTS, CALL_EVENTS, HEARTBEATS, ROUTING

log = logging.getLogger("trunkline.media")
_T = TypeVar("_T")
TOPICS = {"admission": ADMISSION, "routing": ROUTING, "call-events": CALL_EVENTS}
#: the states in which a call waits for its queue entry
_UNRESOLVED = frozenset({State.OFFERED, State.WAITING, State.CANCELLED})
#: an assignment nobody claimed is forgotten this long after its redirect deadline
ASSIGNMENT_GRACE_MS = 60_000


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


def _cancelled(call: Call) -> bool:
    """The caller cancelled (a function: the state changes across awaits)."""
    return call.state is State.CANCELLED


class Leg(Protocol):
    """One call on the node, whatever carries it: its machine and how to act on it."""

    call: Call

    def apply(self, actions: list[Action]) -> None: ...

    def media_rx(self) -> float | None: ...


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


@dataclass(eq=False)
class SipLeg:
    """A SIP call on the node: the machine, its dialog, its media."""

    node: MediaNode
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

    def apply(self, actions: list[Action]) -> None:
        self.node.apply_sip(self, actions)

    def media_rx(self) -> float | None:
        return self.session.last_rx if self.session is not None else None

    @property
    def codec(self) -> str | None:
        if self.answer is None:
            return None
        return f"{self.answer.codec.name}/{self.answer.codec.clock_rate}"


class Publisher(Protocol):
    """Where the node's records go: `trunkline.core.kafka.Producers`, or a test double."""

    def produce(self, topic: str, key: bytes | None, value: bytes | None) -> None: ...

    def close(self) -> None: ...


class MediaNode:
    def __init__(
        self, settings: Settings, config: NodeConfig, out: Publisher | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.codec = make_codec(settings.schema_registry_url)
        self.transactions = ServerTransactions()
        self.assignments = Assignments()
        self.legs: dict[str, SipLeg] = {}  # SIP calls by Call-ID
        self.by_invite: dict[TxKey, SipLeg] = {}  # ... and by INVITE transaction (CANCEL)
        self.live: set[Leg] = set()  # every call not ENDED, SIP or provider stream
        self.claims: dict[str, Leg] = {}  # queue id -> the call processing it
        self.out: Publisher = out or Producers(
            settings.kafka_bootstrap, ("decision",), name="media"
        )
        self.sip: Datagrams | None = None
        self._tcp: asyncio.AbstractServer | None = None  # SIP over TCP, from start()
        self._assignments: KeyFollower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulse = asyncio.Event()  # set (and replaced) when a waiting call may proceed
        self._tasks: list[asyncio.Task[None]] = []
        self._ws_runner: web.AppRunner | None = None
        self.ready = threading.Event()

    # -- clocks ---------------------------------------------------------------------------
    @staticmethod
    def clock() -> float:
        """SIP timers, the call machine, RTP arrivals."""
        return time.monotonic()

    @staticmethod
    def wall_ms() -> int:
        """Event timestamps (`occurred_at`)."""
        return int(time.time() * 1000)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, follow_assignments: bool = True) -> None:
        """Open the sockets and start the clocks; follow this node's assignments in
        Kafka unless told not to (tests hand them in with `assign`)."""
        loop = self._loop = asyncio.get_running_loop()
        if follow_assignments:
            # start 1000 records back: assignments younger than a redirect survive a restart
            self._assignments = KeyFollower(
                self.settings.kafka_bootstrap,
                f"media-{self.config.server_id}",
                ASSIGNMENTS.name(self.settings.topic_prefix),
                self.config.server_id,
                self.assign,
                lookback=1000,
            )
            self._assignments.start()
        _, proto = await loop.create_datagram_endpoint(
            lambda: Datagrams(lambda d, a: loop.create_task(self.on_datagram(d, a))),
            local_addr=(self.config.listen.host, self.config.listen.port),
        )
        self.sip = proto
        self._tcp = await loop.create_server(
            lambda: SipStream(
                "TCP", lambda data, peer, conn: loop.create_task(self.on_message(data, peer, conn))
            ),
            self.config.listen.host,
            self.config.listen.port,
        )
        self._tasks = [
            asyncio.create_task(self._media_clock()),
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._timers()),
        ]
        if self.config.ws_listen is not None:
            self._ws_runner = web.AppRunner(build_app(self), access_log=None)
            await self._ws_runner.setup()
            await web.TCPSite(
                self._ws_runner, self.config.ws_listen.host, self.config.ws_listen.port
            ).start()
        self.ready.set()
        log.info(
            "media node %s (%s) listening on %s:%s",
            self.config.server_id,
            self.config.region_id,
            self.config.listen.host,
            self.config.listen.port,
        )

    async def stop(self) -> None:
        for leg in list(self.live):
            if leg.call.state in (State.ACCEPTED, State.ANSWERED, State.HELD):
                self.feed(leg, Input.LOCAL_END, reason="node_stopped", side="system")
        await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        if self.sip and self.sip.transport:
            self.sip.transport.close()
        if self._tcp is not None:
            self._tcp.close()
        loop = asyncio.get_running_loop()
        if self._assignments is not None:
            await loop.run_in_executor(None, self._assignments.stop)
        await loop.run_in_executor(None, self.out.close)

    # -- assignments and claims (SIP and provider streams alike) ---------------------------
    def assign(self, value: bytes) -> None:
        """A CallRouted for this node, as Kafka holds it (from the follower's thread)."""
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable assignment: %s", exc)
            return
        if name == "CallRouted":
            self.assignments.add(record)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.wake)

    def entry(self, queue_id: str) -> dict[str, Any] | None:
        return self.assignments.get(queue_id)

    def wake(self) -> None:
        """Something a waiting call may be waiting for happened: an assignment arrived,
        or a waiting call's state changed."""
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    async def await_entry(self, call: Call, lookup: Callable[[], _T | None]) -> _T | None:
        """What `lookup` finds, looked up again whenever an assignment arrives, while
        `call` is still waiting for it (WAITING, or CANCELLED and hoping to report it).
        The wait's end is the machine's: its timer, fired by the node's clock."""
        while call.state in _UNRESOLVED:
            found = lookup()
            if found is not None:
                return found
            pulse = self._pulse
            deadline = call.deadline
            timeout = 1.0 if deadline is None else max(0.0, deadline - self.clock()) + 0.05
            try:
                await asyncio.wait_for(pulse.wait(), timeout)
            except TimeoutError:
                pass
        return None

    def claim(
        self, queue_id: str, routed: dict[str, Any], provider: str, holder: Leg
    ) -> tuple[int, str] | None:
        """The seed's queue checks, for SIP and provider streams alike: the entry is this
        node's, came in over `provider` ("SIP", "TWILIO"...), and nobody is processing it;
        then `holder` holds it. Returns None, or the refusal (status, why)."""
        if (
            routed["backend_id"] != self.config.server_id
            or routed["region_id"] != self.config.region_id
        ):
            return 403, f"queue entry {queue_id} belongs to {routed['backend_id']}"
        came_by = routed.get("provider") or "SIP"
        if came_by != provider:
            return 403, f"queue entry {queue_id} is a {came_by} call, not a {provider} one"
        if queue_id in self.claims:
            return 486, f"queue entry {queue_id} is already being processed"
        if len(self.claims) >= self.config.capacity:
            return 503, "node at capacity"
        self.claims[queue_id] = holder
        return None

    def release(self, queue_id: str | None, holder: Leg) -> None:
        """`holder` is done with its entry. An entry whose call was accepted (or reported
        cancelled) is used up: a new INVITE or stream for it is refused as unknown."""
        if queue_id is not None and self.claims.get(queue_id) is holder:
            del self.claims[queue_id]
            call = holder.call
            if call.accepted_at is not None or call.reason == "cancelled":
                self.assignments.discard(queue_id)

    @property
    def active_calls(self) -> int:
        return len(self.claims)

    # -- the machine's inputs and actions ---------------------------------------------------
    def open_leg(self, leg: Leg) -> None:
        self.live.add(leg)

    def feed(self, leg: Leg, event: Input, **data: Any) -> bool:
        """Give `event` to the leg's machine and carry out its actions. False (and nothing
        done) when the machine's table does not take `event` in its state."""
        try:
            actions = leg.call.handle(event, self.clock(), **data)
        except TransitionError as exc:
            log.debug("%s", exc)
            return False
        self.run(leg, actions)
        return True

    def run(self, leg: Leg, actions: list[Action]) -> None:
        if actions:
            leg.apply(actions)
        if leg.call.state is State.ENDED:
            self._forget(leg)
        self.wake()

    def _forget(self, leg: Leg) -> None:
        self.live.discard(leg)
        if isinstance(leg, SipLeg):
            if self.legs.get(leg.call.call_id) is leg:
                del self.legs[leg.call.call_id]
            if self.by_invite.get(leg.key) is leg:
                del self.by_invite[leg.key]

    def emit(self, emits: list[Emit]) -> None:
        for e in emits:
            self.out.produce(
                TOPICS[e.dest].name(self.settings.topic_prefix),
                e.key.encode(),
                self.codec.encode(e.name, e.record),
            )

    def apply_sip(self, leg: SipLeg, actions: list[Action]) -> None:
        now = self.clock()
        for action in actions:
            if isinstance(action, Reply):
                log.info("refusing %s: %s %s", leg.call.call_id, action.status, action.why)
                response = error_response(
                    leg.request,
                    action.status,
                    action.why,
                    leg.dialog.local_tag,
                    self.config.server_id,
                )
                self._respond(leg.key, response, now)
            elif isinstance(action, SendOk):
                if action.retransmission:
                    self._send(leg.ok, response_addr(leg.request, leg.source), leg.conn)
                else:
                    assert leg.answer is not None
                    ok = leg.dialog.ok(bytes(leg.answer.sdp))
                    leg.ok = bytes(ok)
                    self._respond(leg.key, ok, now)
                    log.info("call %s answered with %s", leg.queue_id, leg.codec)
            elif isinstance(action, PublishAccepted):
                assert leg.queue_id is not None and leg.routed is not None
                self.emit(
                    events.accepted(self.config.server_id, leg.queue_id, leg.routed, self.wall_ms())
                )
            elif isinstance(action, PublishAnswered):
                assert leg.queue_id is not None
                self.emit(
                    events.answered(
                        self.config.server_id, leg.queue_id, leg.codec or "", self.wall_ms()
                    )
                )
            elif isinstance(action, PublishEnded):
                self._publish_ended(leg, action)
            elif isinstance(action, Release):
                self._release_media(leg)
            elif isinstance(action, HangUp):
                data = leg.dialog.bye(f"z9hG4bK{uuid.uuid4().hex[:16]}")
                self._send(data, leg.source, leg.conn)

    def _publish_ended(self, leg: SipLeg, ended: PublishEnded) -> None:
        if leg.queue_id is None or leg.routed is None:
            return  # nobody to tell: the entry never turned up
        self.emit(
            events.ended(
                self.config.server_id,
                leg.queue_id,
                leg.routed,
                self.wall_ms(),
                reason=ended.reason,
                side=ended.side,
                setup_ms=ended.setup_ms,
                talk_ms=ended.talk_ms,
                codec=leg.codec,
                media=leg.session.stats() if leg.session is not None else None,
                detail=ended.detail,
            )
        )
        log.info("call %s ended: %s by %s", leg.queue_id, ended.reason, ended.side)

    def _release_media(self, leg: SipLeg) -> None:
        if leg.session is not None:
            leg.session.close()
        if leg.agent_task is not None:
            leg.agent_task.cancel()
        self.release(leg.queue_id, leg)

    # -- SIP --------------------------------------------------------------------------------
    def _send(self, data: bytes, addr: Address, conn: Any = None) -> None:
        if conn is not None:
            if not conn.is_closing():
                conn.write(data)
            return
        if self.sip and self.sip.transport:
            self.sip.transport.sendto(data, addr)

    def _respond(self, key: TxKey, response: Response, now: float) -> None:
        try:
            sends = self.transactions.respond(key, response, now)
        except TransactionError as exc:  # the transaction is gone (timed out)
            log.debug("no response sent: %s", exc)
            return
        for send in sends:
            if isinstance(send, Send):
                self._send(send.data, send.addr, send.conn)

    async def on_datagram(self, data: bytes, source: Address) -> None:
        if data.strip(b"\r\n"):
            await self.on_message(data, source, None)

    async def on_message(self, data: bytes, source: Address, conn: Any) -> None:
        """One SIP message, from UDP (`conn` None) or a TCP connection."""
        now = self.clock()
        try:
            msg = parse_message(data, stream=conn is not None)
        except ParseError as exc:
            if exc.partial is not None and exc.partial.method != "ACK":
                r = make_response(exc.partial, exc.status_hint, "Bad Request", to_tag="bad")
                self._send(bytes(r), response_addr(exc.partial, source), conn)
            return
        if isinstance(msg, Response):
            self._on_response(msg)
            return
        try:
            annotate_via(msg, source)
            if msg.method == "ACK":
                self.transactions.receive(msg, source, now)  # ACKs for our error answers
                leg = self.legs.get(msg.call_id)
                if leg is not None and leg.dialog.in_dialog(msg):
                    self.feed(leg, Input.ANSWER)
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
                self._send(action.data, action.addr, action.conn)
            elif isinstance(action, CancelRequest):
                self._on_cancel(action, now)
            elif isinstance(action, NewRequest):
                await self._on_request(action.request, action.key, source, now, conn)

    def _on_response(self, response: Response) -> None:
        """A response to our BYE ends it; other responses are not ours to handle."""
        leg = self.legs.get(response.call_id)
        if leg is not None and leg.dialog.answers_bye(response):
            self.feed(leg, Input.BYE_DONE)

    def _on_cancel(self, cancel: CancelRequest, now: float) -> None:
        """RFC 3261 §9.2: the CANCEL itself gets 200; the INVITE, if not answered yet,
        487 (the machine says so)."""
        self._respond(cancel.key, make_response(cancel.request, 200, "OK"), now)
        leg = self.by_invite.get(cancel.invite_key)
        if leg is not None:
            self.feed(leg, Input.CANCEL)

    async def _on_request(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any = None
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
                or not self.feed(leg, Input.REMOTE_END, reason="completed", side="caller")
            ):
                self._respond(key, make_response(req, 481, phrase(481), to_tag="none"), now)
                return
            self._respond(key, make_response(req, 200, "OK"), now)
        elif req.method == "CANCEL":  # no INVITE transaction matches it (RFC 3261 §9.2)
            self._respond(key, make_response(req, 481, phrase(481), to_tag="none"), now)
        elif req.method == "OPTIONS":
            self._respond(
                key, make_response(req, 200, "OK", to_tag="opt", headers=[("Allow", ALLOW)]), now
            )
        else:
            self._respond(
                key,
                make_response(req, 405, phrase(405), to_tag="na", headers=[("Allow", ALLOW)]),
                now,
            )

    def _lookup(self, req: Request) -> tuple[str, dict[str, Any]] | None:
        """The queue entry the INVITE is for: by its queue id, or by the Call-ID the proxy
        saw (a UA that drops the Contact's headers keeps the Call-ID, §8.1.3.4)."""
        qid = queue_id_of(req) or self.assignments.by_provider_call.get(req.call_id)
        routed = self.assignments.get(qid) if qid else None
        return (qid, routed) if qid and routed is not None else None

    async def _invite(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any = None
    ) -> None:
        self._respond(key, make_response(req, 100, "Trying"), now)
        call = Call(
            req.call_id,
            now,
            reliable=conn is not None,
            wait_s=self.config.assignment_wait_s,
            media_timeout=self.config.media_timeout_s,
        )
        host, port = self.config.listen.host, self.config.listen.port
        dialog = Dialog(req, uuid.uuid4().hex[:10], host, port, "TCP" if conn else "UDP")
        leg = SipLeg(self, call, req, key, source, conn, dialog)
        self.legs[req.call_id] = leg
        self.by_invite[key] = leg
        self.open_leg(leg)
        found = self._lookup(req)
        if found is None:
            named = queue_id_of(req)
            why = (
                f"queue entry {named} is not assigned to this node"
                if named
                else "no X-CallQueue-Id and no queue entry for this Call-ID"
            )
            self.feed(leg, Input.WAIT, status=404, why=why)
            found = await self.await_entry(call, lambda: self._lookup(req))
            if found is None:
                return  # the wait expired (404), or the call was cancelled and never named
        leg.queue_id, leg.routed = found
        refusal = self.claim(leg.queue_id, leg.routed, "SIP", leg)
        if refusal is not None:
            self.feed(leg, Input.REFUSE, status=refusal[0], why=refusal[1])
            return
        if not _cancelled(call):
            try:
                leg.offer = SessionDescription.parse(req.body)
                negotiate(leg.offer, self.config.media_ip, 9)  # 488 if nothing matches
            except SdpError as exc:
                self.feed(leg, Input.REFUSE, status=exc.status, why=str(exc))
                return
            try:
                await self._open_media(leg)
            except (OSError, ValueError) as exc:
                log.error("call %s: cannot open its media: %s", leg.queue_id, exc)
                self.feed(leg, Input.REFUSE, status=500, why=f"cannot open the media: {exc}")
                return
        if _cancelled(call):  # before the entry turned up, or while the socket opened
            self.feed(leg, Input.CLAIM)  # CallEnded `cancelled` to the entry's business
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
        self.feed(leg, Input.CLAIM)

    async def _open_media(self, leg: SipLeg) -> None:
        """The agent and the RTP socket, then the SDP answer with the socket's port."""
        assert leg.offer is not None and leg.routed is not None
        agent = make_agent(leg.routed.get("agent") or "greeting")
        placeholder = negotiate(leg.offer, self.config.media_ip, 9)
        loop = asyncio.get_running_loop()
        _, session = await loop.create_datagram_endpoint(
            lambda: RtpSession(placeholder, agent, self.clock),
            local_addr=(self.config.media_ip, 0),
        )
        leg.session, leg.agent = session, agent
        leg.answer = negotiate(leg.offer, self.config.media_ip, session.port)
        session.update(leg.answer)

    def _reinvite(self, leg: SipLeg, req: Request, key: TxKey, now: float) -> None:
        """Hold and resume (RFC 3264 §8.4): a new answer on the same socket."""
        if leg.session is None or leg.call.state not in (State.ANSWERED, State.HELD):
            # before the ACK: 491 (§14.2); once we hang up, the dialog is going: 481
            status = 491 if leg.call.state is State.ACCEPTED else 481
            self._respond(
                key, make_response(req, status, phrase(status), to_tag=leg.dialog.local_tag), now
            )
            return
        try:
            answer = negotiate(
                SessionDescription.parse(req.body),
                self.config.media_ip,
                leg.session.port,
                session_id=1,
                version=leg.dialog.local_cseq,
            )
        except SdpError as exc:
            self._respond(
                key,
                error_response(
                    req, exc.status, str(exc), leg.dialog.local_tag, self.config.server_id
                ),
                now,
            )
            return
        self.feed(leg, Input.HOLD if answer.on_hold else Input.RESUME)
        leg.answer = answer
        leg.session.update(answer)
        self._respond(key, leg.dialog.reinvite_ok(req, bytes(answer.sdp)), now)
        log.info("call %s re-INVITE: %s", leg.queue_id, "hold" if answer.on_hold else "resume")

    # -- clocks -----------------------------------------------------------------------------
    async def _media_clock(self) -> None:
        """Every 20 ms, each answered SIP call sends its next frame (one clock for all)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += 0.02
            for leg in list(self.legs.values()):
                if leg.call.state not in (State.ANSWERED, State.HELD) or leg.session is None:
                    continue
                try:
                    leg.session.tick()
                except Exception as exc:  # one call's failure must not stop the others
                    log.exception("call %s: media error", leg.queue_id)
                    self.feed(
                        leg, Input.LOCAL_END, reason="failed", side="system", why=f"media: {exc}"
                    )
                    continue
                if leg.agent is not None and leg.agent.hangup_requested:
                    self.feed(leg, Input.LOCAL_END, reason="completed", side="agent")
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _timers(self) -> None:
        """SIP transaction timers and every call's timer, on the node's clock."""
        next_prune = self.clock() + 10.0
        while True:
            await asyncio.sleep(0.05)  # SIP's shortest timer is T1 (500 ms)
            now = self.clock()
            for send in self.transactions.expire(now):
                if isinstance(send, Send):
                    self._send(send.data, send.addr, send.conn)
            for leg in list(self.live):
                rx = leg.media_rx()
                if rx is not None:
                    leg.call.saw_media(rx)
                deadline = leg.call.deadline
                if deadline is not None and now >= deadline:
                    self.run(leg, leg.call.expire(now))
            if now >= next_prune:
                next_prune = now + 10.0
                for queue_id in self.assignments.expired(self.wall_ms()):
                    if queue_id not in self.claims:
                        self.assignments.discard(queue_id)

    async def _heartbeats(self) -> None:
        while True:
            now = self.wall_ms()
            hb = {
                "envelope": envelope("", self.config.server_id, now, str(uuid.uuid4())),
                "backend_id": self.config.server_id,
                "region_id": self.config.region_id,
                "capacity": self.config.capacity,
                "active_calls": self.active_calls,
                "interval_ms": int(self.config.heartbeat_interval_s * 1000),
                "draining": False,
            }
            self.out.produce(
                HEARTBEATS.name(self.settings.topic_prefix),
                self.config.region_id.encode(),
                self.codec.encode("BackendHeartbeat", hb),
            )
            await asyncio.sleep(self.config.heartbeat_interval_s)


async def run_node(node: MediaNode) -> None:
    tune_gc()
    await serve_until_signalled(node)
