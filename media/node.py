"""A media node: the SIP backend listener (UAS) that answers the redirected call, RTP, the
conversation session with its agent, heartbeats and the call's lifecycle events.

The SIP layer is the proxy's (edge/sip: messages, server transactions); SDP, RTP and
codecs are media/sdp.py, media/rtp.py, media/codecs.py. This module is the I/O around
them: one UDP socket for SIP, one per call for RTP, a thread following this node's
assignments (CallRouted keyed by its server id), a confluent-kafka producer.

Not built yet (see README): SIP over TCP on the node, re-INVITE beyond hold/resume SDP,
provider WebSocket media, the `websocket` agent, crash detection by routing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiohttp import web

from edge.sip.errors import ParseError, TransactionError
from edge.sip.message import Request, Response, SipURI, make_response, parse_message
from edge.sip.transaction import Address, NewRequest, Send, ServerTransactions, TxKey
from edge.sip.transport import Listen, SipStream, annotate_via, response_addr
from media.agents import Agent, CallInfo, make_agent
from media.agents.base import FRAME_BYTES, SAMPLE_RATE, SILENCE
from media.codecs import open_codec
from media.rtp import JitterBuffer, RtpPacket
from media.sdp import Answer, SdpError, SessionDescription, negotiate
from media.ws import build_app
from schemas.codec import CodecError, make_codec
from trunkline.core.aio import Datagrams, serve_until_signalled, tune_gc
from trunkline.core.events import derived_id, envelope
from trunkline.core.kafka import KeyFollower, Producers
from trunkline.core.settings import Settings
from trunkline.core.topics import ADMISSION, ASSIGNMENTS, CALL_EVENTS, HEARTBEATS, ROUTING

log = logging.getLogger("trunkline.media")
_T = TypeVar("_T")
_RTP_HEADER = struct.Struct("!BBHII")
DTMF_EVENTS = "0123456789*#ABCD"


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


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP: receive -> jitter buffer -> decode -> agent; agent -> encode -> send,
    paced every 20 ms by the node's media clock."""

    def __init__(self, answer: Answer, agent: Agent) -> None:
        self.answer = answer
        self.agent = agent
        self.codec = open_codec(answer.codec.name, answer.codec.payload_type)
        self.jitter = JitterBuffer(answer.codec.clock_rate)
        self.transport: asyncio.DatagramTransport | None = None
        self.remote = answer.remote
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.sent = 0
        self.last_rx = time.monotonic()
        self._last_dtmf_ts: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return  # not RTP (or RTCP): ignore
        self.last_rx = time.monotonic()
        dtmf = self.answer.dtmf
        if dtmf is not None and packet.payload_type == dtmf.payload_type:
            self._dtmf(packet)
            return
        if packet.payload_type != self.answer.codec.payload_type:
            return
        self.jitter.push(packet, time.monotonic())
        for ext, p in self.jitter.pop():
            if p is None:
                self.agent.on_audio(SILENCE)
                continue
            pcm = self.codec.decode(p.payload, p.timestamp, SAMPLE_RATE)
            for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
                self.agent.on_audio(pcm[i : i + FRAME_BYTES])
            del ext

    def _dtmf(self, packet: RtpPacket) -> None:
        """RFC 4733: one event per timestamp; act on the first packet (end bit and marker
        are not relied on, carriers drop them)."""
        if len(packet.payload) < 4 or packet.timestamp == self._last_dtmf_ts:
            return
        self._last_dtmf_ts = packet.timestamp
        event = packet.payload[0]
        if event < len(DTMF_EVENTS):
            self.agent.on_dtmf(DTMF_EVENTS[event])

    def tick(self) -> None:
        """Send the next 20 ms (called by the node's media clock)."""
        if self.transport is None or self.answer.on_hold:
            return
        frame = self.agent.next_frame()
        for payload in self.codec.encode(frame, SAMPLE_RATE):
            # the fixed 12-byte header (RFC 3550 §5.1, V=2, no CSRC) packed directly: this
            # runs 50 times a second per call, where building an RtpPacket costs more
            header = _RTP_HEADER.pack(
                0x80, self.answer.codec.payload_type & 0x7F, self.seq, self.ts, self.ssrc
            )
            self.transport.sendto(header + payload, self.remote)
            self.seq = (self.seq + 1) % 65536
            self.sent += 1
        self.ts = (self.ts + self.codec.timestamp_step) % (1 << 32)

    def stats(self) -> dict[str, Any]:
        s = self.jitter.stats
        return {
            "packets_sent": self.sent,
            "packets_received": s.received,
            "packets_lost": s.lost,
            "jitter_ms": round(s.jitter_ms(self.jitter.clock_rate), 3),
        }

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Dialog:
    queue_id: str
    routed: dict[str, Any]
    invite: Request
    invite_key: TxKey
    source: Address
    local_tag: str
    answer: Answer
    session: RtpSession
    agent: Agent
    accepted_at: float
    ok: bytes = b""  # the 200 OK, retransmitted until the ACK (§13.3.1.4)
    ok_next: float = 0.0
    ok_interval: float = 0.5
    ok_deadline: float = 0.0
    answered_at: float | None = None
    local_cseq: int = 1
    ended: bool = False
    bye: bytes = b""
    bye_next: float = 0.0
    agent_task: asyncio.Task[None] | None = None
    conn: Any = None  # the TCP connection the INVITE came on (None: UDP)


class MediaNode:
    def __init__(self, settings: Settings, config: NodeConfig) -> None:
        self.settings = settings
        self.config = config
        self.codec = make_codec(settings.schema_registry_url)
        self.transactions = ServerTransactions()
        self.assignments: dict[str, dict[str, Any]] = {}
        self.by_provider_call: dict[str, str] = {}  # the Call-ID the proxy saw -> queue id
        self.dialogs: dict[str, Dialog] = {}  # by SIP Call-ID
        self.by_queue: dict[str, Dialog] = {}
        self.ws_calls: dict[str, Any] = {}  # queue id -> media.ws provider session
        self.out = Producers(settings.kafka_bootstrap, ("decision",), name="media")
        self.sip: Datagrams | None = None
        self._tcp: asyncio.AbstractServer | None = None  # SIP over TCP, from start()
        self._assignments: KeyFollower | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # start 1000 records back: assignments younger than a redirect survive a restart
        self._assignments = KeyFollower(
            self.settings.kafka_bootstrap,
            f"media-{self.config.server_id}",
            ASSIGNMENTS.name(self.settings.topic_prefix),
            self.config.server_id,
            self._assignment,
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
        for d in list(self.by_queue.values()):
            self._hang_up(d, "agent", "node_stopped")
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

    # -- assignments ------------------------------------------------------------------------
    def _assignment(self, value: bytes) -> None:
        """A CallRouted for this node (the follower's thread; plain dict writes)."""
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable assignment: %s", exc)
            return
        if name == "CallRouted":
            queue_id = record["envelope"]["call_id"]
            self.assignments[queue_id] = record
            if record.get("provider_call_id"):
                self.by_provider_call[record["provider_call_id"]] = queue_id

    # -- SIP --------------------------------------------------------------------------------
    def _send(self, data: bytes, addr: Address, conn: Any = None) -> None:
        if conn is not None:
            if not conn.is_closing():
                conn.write(data)
            return
        if self.sip and self.sip.transport:
            self.sip.transport.sendto(data, addr)

    async def on_datagram(self, data: bytes, source: Address) -> None:
        if data.strip(b"\r\n"):
            await self.on_message(data, source, None)

    async def on_message(self, data: bytes, source: Address, conn: Any) -> None:
        """One SIP message, from UDP (`conn` None) or a TCP connection."""
        now = time.time()
        try:
            msg = parse_message(data, stream=conn is not None)
        except ParseError as exc:
            if exc.partial is not None and exc.partial.method != "ACK":
                r = make_response(exc.partial, exc.status_hint, "Bad Request", to_tag="bad")
                self._send(bytes(r), response_addr(exc.partial, source), conn)
            return
        if isinstance(msg, Response):
            return  # responses to our BYE: nothing more to do
        annotate_via(msg, source)
        if msg.method == "ACK":
            d = self.dialogs.get(msg.call_id)
            if d is not None and d.answered_at is None:
                d.answered_at = now
                d.ok = b""
                self.publish_answered(
                    d.queue_id, now, f"{d.answer.codec.name}/{d.answer.codec.clock_rate}"
                )
            self.transactions.receive(msg, source, now)  # ACKs for our error answers
            return
        try:
            actions = self.transactions.receive(
                msg,
                source,
                now,
                reliable=conn is not None,
                conn=conn,
                reply_to=response_addr(msg, source),
            )
        except (ParseError, TransactionError):
            return
        for action in actions:
            if isinstance(action, Send):
                self._send(action.data, action.addr, action.conn)
            elif isinstance(action, NewRequest):
                await self._on_request(action.request, action.key, source, now, conn)

    def _respond(self, key: TxKey, response: Response, now: float) -> None:
        for send in self.transactions.respond(key, response, now):
            if isinstance(send, Send):
                self._send(send.data, send.addr, send.conn)

    async def _on_request(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any = None
    ) -> None:
        if req.method == "INVITE":
            existing = self.dialogs.get(req.call_id)
            if existing is not None and req.to.tag == existing.local_tag:
                self._reinvite(existing, req, key, now)
            else:
                await self._invite(req, key, source, now, conn)
        elif req.method == "BYE":
            d = self.dialogs.get(req.call_id)
            if d is None:
                self._respond(
                    key,
                    make_response(req, 481, "Call/Transaction Does Not Exist", to_tag="none"),
                    now,
                )
                return
            self._respond(key, make_response(req, 200, "OK"), now)
            self._end(d, "completed", "caller", now)
        elif req.method == "CANCEL":
            self._respond(key, make_response(req, 200, "OK"), now)  # we answer at once
        elif req.method == "OPTIONS":
            self._respond(
                key,
                make_response(
                    req,
                    200,
                    "OK",
                    to_tag="opt",
                    headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
                ),
                now,
            )
        else:
            self._respond(
                key,
                make_response(
                    req,
                    405,
                    "Method Not Allowed",
                    to_tag="na",
                    headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
                ),
                now,
            )

    async def claim(self, qid: str) -> dict[str, Any] | tuple[int, str, str]:
        """The seed's queue checks, for SIP and provider WebSockets alike: the entry exists
        (waiting briefly for an assignment still in flight), it is this node's, and nobody
        is processing it. Returns the CallRouted record, or (status, phrase, why)."""
        routed = await self._in_flight(lambda: self.assignments.get(qid))
        if routed is None:
            return 404, "Not Found", f"queue entry {qid} is not assigned to this node"
        if (
            routed["backend_id"] != self.config.server_id
            or routed["region_id"] != self.config.region_id
        ):
            return 403, "Forbidden", f"queue entry {qid} belongs to {routed['backend_id']}"
        if qid in self.by_queue or qid in self.ws_calls:
            return 486, "Busy Here", f"queue entry {qid} is already being processed"
        if self.active_calls >= self.config.capacity:
            return 503, "Service Unavailable", "node at capacity"
        return routed

    async def _in_flight(self, lookup: Callable[[], _T | None]) -> _T | None:
        """What `lookup` finds, asking again for up to `assignment_wait_s`: the proxy sends
        the 302 and the node's assignment at the same moment, and a UA may follow the
        redirect before the assignment arrives here."""
        found = lookup()
        waited = 0.0
        while found is None and waited < self.config.assignment_wait_s:
            await asyncio.sleep(0.05)
            waited += 0.05
            found = lookup()
        return found

    @property
    def active_calls(self) -> int:
        return len(self.by_queue) + len(self.ws_calls)

    def _queue_id(self, req: Request) -> str | None:
        """RFC 3261 §19.1.5: a UA following the Contact copies its URI headers into the
        request; some keep them on the Request-URI; a UA that drops both still keeps the
        Call-ID of the request it redirects."""
        uri_headers = {k.lower(): v for k, v in req.uri.headers.items()}
        qid = req.headers.get("x-callqueue-id") or uri_headers.get("x-callqueue-id")
        # a UA following a 302 keeps the Call-ID (RFC 3261 §8.1.3.4): match by it
        return qid or self.by_provider_call.get(req.call_id)

    async def _invite(
        self, req: Request, key: TxKey, source: Address, now: float, conn: Any = None
    ) -> None:
        tag = uuid.uuid4().hex[:10]

        def refuse(status: int, phrase: str, why: str) -> None:
            log.info("refusing %s: %s %s", req.call_id, status, why)
            self._respond(
                key,
                make_response(
                    req,
                    status,
                    phrase,
                    to_tag=tag,
                    headers=[("Warning", f'399 {self.config.server_id} "{why}"')],
                ),
                now,
            )

        self._respond(key, make_response(req, 100, "Trying"), now)
        qid = await self._in_flight(lambda: self._queue_id(req))
        if not qid:
            refuse(404, "Not Found", "no X-CallQueue-Id and no queue entry for this Call-ID")
            return
        claimed = await self.claim(qid)
        now = time.time()
        if isinstance(claimed, tuple):
            refuse(*claimed)
            return
        routed = claimed
        try:
            offer = SessionDescription.parse(req.body)
            loop = asyncio.get_running_loop()
            placeholder = negotiate(offer, self.config.media_ip, 9)
            agent = make_agent(routed.get("agent") or "greeting")
            _, session = await loop.create_datagram_endpoint(
                lambda: RtpSession(placeholder, agent), local_addr=(self.config.media_ip, 0)
            )
            answer = negotiate(offer, self.config.media_ip, session.port)
            session.answer = answer
        except SdpError as exc:
            refuse(
                exc.status, "Not Acceptable Here" if exc.status == 488 else "Bad Request", str(exc)
            )
            return
        agent.start(
            CallInfo(
                qid,
                routed["business_id"],
                req.from_.uri.user or "",
                req.uri.user or "",
                dict(routed.get("agent_options") or {}),
            )
        )
        d = Dialog(
            qid, routed, req, key, source, tag, answer, session, agent, accepted_at=now, conn=conn
        )
        self.dialogs[req.call_id] = d
        self.by_queue[qid] = d
        d.agent_task = asyncio.create_task(agent.run())
        self.publish_accepted(qid, routed, now)
        contact = SipURI(
            user=req.uri.user, host=self.config.listen.host, port=self.config.listen.port
        )
        ok = make_response(
            req,
            200,
            "OK",
            to_tag=tag,
            headers=[
                ("Contact", f"<{contact}>"),
                ("Content-Type", "application/sdp"),
                ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS"),
            ],
            body=bytes(answer.sdp),
        )
        self._respond(key, ok, now)
        d.ok, d.ok_next, d.ok_deadline = bytes(ok), now + 0.5, now + 32
        log.info("call %s answered with %s", qid, answer.codec.name)

    def _reinvite(self, d: Dialog, req: Request, key: TxKey, now: float) -> None:
        try:
            answer = negotiate(
                SessionDescription.parse(req.body),
                self.config.media_ip,
                d.session.port,
                session_id=1,
                version=d.local_cseq,
            )
        except SdpError as exc:
            self._respond(
                key, make_response(req, exc.status, "Not Acceptable Here", to_tag=d.local_tag), now
            )
            return
        d.answer = d.session.answer = answer
        d.session.remote = answer.remote
        ok = make_response(
            req,
            200,
            "OK",
            to_tag=d.local_tag,
            headers=[("Content-Type", "application/sdp")],
            body=bytes(answer.sdp),
        )
        self._respond(key, ok, now)
        log.info("call %s re-INVITE: %s", d.queue_id, "hold" if answer.on_hold else "resume")

    def _hang_up(self, d: Dialog, side: str, reason: str) -> None:
        """We end the call: BYE to the caller (in the dialog), then CallEnded."""
        now = time.time()
        inv = d.invite
        d.local_cseq += 1
        target = inv.headers.get("contact") or f"<{inv.from_.uri}>"
        target_uri = target[target.find("<") + 1 : target.find(">")] if "<" in target else target
        host, port = self.config.listen.host, self.config.listen.port
        bye = (
            f"BYE {target_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{'TCP' if d.conn else 'UDP'} {host}:{port};"
            f"branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {inv.headers.get('to')};tag={d.local_tag}\r\n"
            f"To: {inv.headers.get('from')}\r\nCall-ID: {inv.call_id}\r\n"
            f"CSeq: {d.local_cseq} BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        d.bye, d.bye_next = bye, now + 0.5
        self._send(bye, d.source, d.conn)
        self._end(d, reason, side, now)

    def _end(self, d: Dialog, reason: str, side: str, now: float) -> None:
        if d.ended:
            return
        d.ended = True
        d.session.close()
        if d.agent_task is not None:
            d.agent_task.cancel()
        self.by_queue.pop(d.queue_id, None)
        self.publish_ended(
            d.queue_id,
            d.routed,
            reason,
            side,
            now,
            d.accepted_at,
            d.answered_at,
            f"{d.answer.codec.name}/{d.answer.codec.clock_rate}",
            d.session.stats(),
        )

    # -- events -----------------------------------------------------------------------------
    def _publish(self, spec: Any, key: str, name: str, record: dict[str, Any]) -> None:
        self.out.produce(
            spec.name(self.settings.topic_prefix), key.encode(), self.codec.encode(name, record)
        )

    def _envelope(self, queue_id: str, at: float, what: str) -> dict[str, Any]:
        return envelope(
            queue_id,
            self.config.server_id,
            int(at * 1000),
            derived_id(queue_id, f"{what}/{self.config.server_id}"),
        )

    def publish_accepted(self, queue_id: str, routed: dict[str, Any], now: float) -> None:
        accepted = {
            "envelope": self._envelope(queue_id, now, "accepted"),
            "backend_id": self.config.server_id,
            "region_id": routed["region_id"],
            "agent": routed.get("agent") or "greeting",
        }
        self._publish(ROUTING, routed["region_id"], "CallAccepted", accepted)
        self._publish(CALL_EVENTS, queue_id, "CallAccepted", accepted)

    def publish_answered(self, queue_id: str, at: float, codec: str) -> None:
        answered = {
            "envelope": self._envelope(queue_id, at, "answered"),
            "backend_id": self.config.server_id,
            "codec": codec,
        }
        self._publish(CALL_EVENTS, queue_id, "CallAnswered", answered)

    def publish_ended(
        self,
        queue_id: str,
        routed: dict[str, Any],
        reason: str,
        side: str,
        now: float,
        accepted_at: float,
        answered_at: float | None,
        codec: str,
        media: dict[str, Any],
    ) -> None:
        ended = {
            "envelope": self._envelope(queue_id, now, "ended"),
            "reason": reason,
            "hangup_side": side,
            "status_code": None,
            "business_id": routed["business_id"],
            "region_id": routed["region_id"],
            "backend_id": self.config.server_id,
            "setup_ms": int((answered_at - accepted_at) * 1000) if answered_at else None,
            "talk_ms": int((now - answered_at) * 1000) if answered_at else None,
            "codec": codec,
            "media": media,
        }
        self._publish(ADMISSION, routed["business_id"], "CallEnded", ended)
        self._publish(CALL_EVENTS, queue_id, "CallEnded", ended)
        log.info("call %s ended: %s by %s", queue_id, reason, side)

    # -- clocks -----------------------------------------------------------------------------
    async def _media_clock(self) -> None:
        """Every 20 ms, each call sends its next frame (one clock for all calls)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += 0.02
            for d in list(self.by_queue.values()):
                if d.answered_at is None:
                    continue
                try:
                    d.session.tick()
                except Exception:  # one call's failure must not stop the others
                    log.exception("call %s: media error", d.queue_id)
                    self._hang_up(d, "system", "failed")
                    continue
                if d.agent.hangup_requested:
                    self._hang_up(d, "agent", "completed")
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.time()
            for send in self.transactions.expire(now):
                if isinstance(send, Send):
                    self._send(send.data, send.addr, send.conn)
            for call_id, d in list(self.dialogs.items()):
                if d.ok and now >= d.ok_deadline:  # no ACK for our 200: end it (§13.3.1.4)
                    d.ok = b""
                    self._hang_up(d, "system", "no_ack")
                    continue
                if d.ok and now >= d.ok_next and d.conn is None:  # UDP only: TCP is reliable
                    self._send(d.ok, response_addr(d.invite, d.source))
                    d.ok_interval = min(d.ok_interval * 2, 4.0)
                    d.ok_next = now + d.ok_interval
                if (
                    not d.ended
                    and d.answered_at
                    and not d.answer.on_hold
                    and time.monotonic() - d.session.last_rx > self.config.media_timeout_s
                ):
                    self._hang_up(d, "system", "media_timeout")
                if d.ended and now - d.accepted_at > 120:
                    del self.dialogs[call_id]

    async def _heartbeats(self) -> None:
        while True:
            now = int(time.time() * 1000)
            hb = {
                "envelope": envelope("", self.config.server_id, now, str(uuid.uuid4())),
                "backend_id": self.config.server_id,
                "region_id": self.config.region_id,
                "capacity": self.config.capacity,
                "active_calls": self.active_calls,
                "interval_ms": int(self.config.heartbeat_interval_s * 1000),
                "draining": False,
            }
            self._publish(HEARTBEATS, self.config.region_id, "BackendHeartbeat", hb)
            await asyncio.sleep(self.config.heartbeat_interval_s)


async def run_node(node: MediaNode) -> None:
    tune_gc()
    await serve_until_signalled(node)
