"""The SIP proxy edge service: sockets, the transaction layer, the redirect core, Kafka.

Thin I/O around the pure parts: UDP and TCP (and TLS when a certificate is configured)
listeners feed bytes to the parser and the transaction layer; the redirect core decides
what to answer and what to publish; a confluent-kafka producer publishes; a consumer
thread reads this edge's decisions (the partition its id hashes to, filtered by key); a
second thread follows the numbers config topic so calls without X-Business-Id headers can
be resolved from the dialled number. Bad input never crashes it: it answers 400 when a
response can be addressed and drops the packet otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

from edge.sip.errors import ParseError, TransactionError
from edge.sip.flood import FloodGuard, Limits
from edge.sip.message import Response, make_response, parse_message
from edge.sip.redirect import NumberEntry, Out, Publish, RedirectCore, Reply
from edge.sip.transaction import (
    AckTimeout,
    Action,
    Address,
    CancelRequest,
    NewRequest,
    Send,
    ServerTransactions,
)
from edge.sip.transport import Listen, SipStream, annotate_via, response_addr
from schemas.codec import Codec, CodecError, make_codec
from trunkline.core import logs
from trunkline.core.aio import UdpEndpoint, serve_until_signalled, tune_gc
from trunkline.core.kafka import BrokerWatch, CompactedFollower, KeyFollower, Producers
from trunkline.core.settings import Settings
from trunkline.core.throttle import LogThrottle
from trunkline.core.topics import ADMISSION, CALL_EVENTS, DECISIONS, NUMBERS

log = logging.getLogger("trunkline.sip.edge")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


#: what the edge saw and did, for `/metrics` (Prometheus text format)
MESSAGES = Counter(
    "trunkline_sip_messages_total",
    "SIP messages the edge received, by what became of them",
    # received | malformed | dropped (unanswerable) | stray_response | flood (over the
    # source's limit) | retransmit_skipped (the target's response budget was spent)
    ["outcome"],
)
INVITES = Counter("trunkline_sip_invites_total", "New INVITE transactions")
REQUESTS = Counter("trunkline_sip_requests_total", "New SIP transactions by method", ["method"])
RESPONSES = Counter("trunkline_sip_responses_total", "Responses the edge sent by code", ["code"])
INVITE_LATENCY = Histogram(
    "trunkline_sip_invite_final_seconds",
    "INVITE received -> final answer sent (302 or a rejection), by the final code",
    ["code"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
DECISIONS_IN = Counter(
    "trunkline_sip_decisions_total", "Decisions read for this edge's calls", ["decision"]
)
PUBLISHED = Counter(
    "trunkline_sip_published_total", "Events the edge published, by outcome", ["outcome"]
)
# the children counted per datagram, looked up once (a `labels()` call costs more than the
# flood check itself)
_RECEIVED = MESSAGES.labels("received")
_FLOOD = MESSAGES.labels("flood")


class SipEdge:
    def __init__(
        self,
        settings: Settings,
        edge_id: str,
        listen: Listen,
        *,
        tls_listen: Listen | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        udp: bool = True,
        tcp: bool = True,
        codec: Codec | None = None,
        metrics_listen: Listen | None = None,
    ) -> None:
        self.settings = settings
        self.metrics_listen = metrics_listen
        self._metrics: Any = None  # the /metrics HTTP server, once started
        self.edge_id = edge_id
        self.listen = listen
        self.tls_listen = tls_listen
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.enable_udp, self.enable_tcp = udp, tcp
        self.codec = codec or make_codec(settings.schema_registry_url)
        self.numbers: dict[str, NumberEntry] = {}  # SIP numbers by dialled number
        self._number_by_id: dict[str, str] = {}
        self.phones: dict[str, str] = {}  # every configured phone id -> its business id
        self.businesses: dict[str, int] = {}  # business id -> how many numbers it has
        self.transactions = ServerTransactions()
        self.core = RedirectCore(
            edge_id,
            directory=self.numbers.get,
            known_business=self.businesses.__contains__,
            known_phone=self.phones.__contains__,
            available=lambda: self.broker.available,
            decision_timeout=settings.decision_timeout_s,
        )
        prefix = settings.topic_prefix
        self.topics = {
            "admission": ADMISSION.name(prefix),
            "call-events": CALL_EVENTS.name(prefix),
        }
        self.decisions_topic = DECISIONS.name(prefix)
        self.numbers_topic = NUMBERS.name(prefix)
        self.broker = BrokerWatch(settings.kafka_bootstrap)
        self.out = Producers(
            settings.kafka_bootstrap, ("decision",), name="sip-edge", error_cb=self.broker.on_error
        )
        self.udp: UdpEndpoint | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._followers: list[KeyFollower | CompactedFollower] = []
        self._drops = LogThrottle(10.0)
        self.flood = FloodGuard(
            Limits(
                rate=settings.sip_flood_rate,
                burst=settings.sip_flood_burst,
                trusted_rate=settings.sip_trusted_rate,
                trusted_burst=2 * settings.sip_trusted_rate,
            )
        )
        self._flood_log = LogThrottle(10.0)
        # a source that never ACKs (a flood within its rate) must not write a line per call
        self._no_ack_log = LogThrottle(10.0)
        self._allowed_ips: dict[str, list[str]] = {}  # phone id -> its allowedSourceIps
        self._wake = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self.ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # assigned before the first INVITE, so no decision for a call of ours is missed
        self._followers.append(
            KeyFollower(
                self.settings.kafka_bootstrap,
                f"sip-edge-{self.edge_id}",
                self.decisions_topic,
                self.edge_id,
                self._decision_bytes,
            )
        )
        numbers = CompactedFollower(
            self.settings.kafka_bootstrap,
            f"sip-edge-{self.edge_id}-numbers",
            self.numbers_topic,
            self._number_record,
        )
        self._followers.append(numbers)
        for follower in self._followers:
            follower.start()
        # the numbers say which business and phone ids exist: an INVITE naming one we do
        # not know is refused without storing it, so take no traffic before they are read
        loaded = await self.loop.run_in_executor(None, numbers.caught_up.wait, 30.0)
        if not loaded:
            raise RuntimeError(f"could not read {self.numbers_topic} within 30 s")
        if self.enable_udp:
            self.udp = await UdpEndpoint.bind(self.listen.host, self.listen.port, self.on_datagrams)
        if self.enable_tcp:
            self.servers.append(
                await self.loop.create_server(
                    lambda: self._stream("TCP"), self.listen.host, self.listen.port
                )
            )
        if self.tls_listen is not None and self.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            self.servers.append(
                await self.loop.create_server(
                    lambda: self._stream("TLS"),
                    self.tls_listen.host,
                    self.tls_listen.port,
                    ssl=ctx,
                )
            )
        self._timer_task = asyncio.create_task(self._timers())
        if self.metrics_listen is not None:  # Prometheus text format at /metrics
            self._metrics, _ = start_http_server(
                self.metrics_listen.port, addr=self.metrics_listen.host
            )
        self.ready.set()
        log.info(
            "SIP edge %s listening on %s:%s (udp=%s tcp=%s tls=%s)",
            self.edge_id,
            self.listen.host,
            self.listen.port,
            self.enable_udp,
            self.enable_tcp,
            bool(self.tls_listen and self.tls_cert),
        )

    async def stop(self) -> None:
        if self._timer_task:
            self._timer_task.cancel()
        if self._metrics is not None:
            self._metrics.shutdown()
        for server in self.servers:
            server.close()
        if self.udp:
            self.udp.close()
        loop = asyncio.get_running_loop()
        for follower in self._followers:
            await loop.run_in_executor(None, follower.stop)
        await loop.run_in_executor(None, self.out.close)

    def _stream(self, name: str) -> SipStream:
        def malformed() -> None:
            MESSAGES.labels("malformed").inc()

        return SipStream(
            name,
            lambda data, peer, conn: self.on_message(data, peer, name, conn, stream=True),
            malformed,
        )

    def local_port(self, kind: str = "udp") -> int:
        if kind == "udp" and self.udp:
            return int(self.udp.sockname[1])
        for server in self.servers:
            return int(server.sockets[0].getsockname()[1])
        raise RuntimeError(f"no {kind} listener")

    # -- input ----------------------------------------------------------------------------
    def on_datagrams(self, batch: list[tuple[bytes, Any]]) -> None:
        """The datagrams one turn of the loop read from the UDP socket. Flood control
        sees them first (no parse, no per-packet metric or log line): a flooding
        source's datagrams cost a dict lookup each, so the loop drains them faster than
        they come and the datagrams of other sources behind them do not wait."""
        mono = time.monotonic()
        admitted = self.flood.admit(batch, mono)
        for data, source in admitted.requests:
            try:
                self._accept(data, source, "UDP", None, stream=False)
            except Exception:  # one message must not cost the rest of the batch
                log.exception("a datagram from %s failed", source[0])
        if admitted.received:
            _RECEIVED.inc(admitted.received)
        if admitted.dropped:
            self._flooded(mono, admitted.last_dropped, admitted.dropped)

    def _flooded(self, mono: float, source: str, count: int) -> None:
        """`count` requests over their source's limit were dropped silently (an answer
        feeds the flood): counted, and a summary line at most every 10 s."""
        _FLOOD.inc(count)
        summary = self._flood_log.note(mono, source, count)
        if summary is not None:
            log.warning(
                "flood control: %d request(s) over the limit since the last report (last from %s)",
                *summary,
            )

    def on_message(
        self, data: bytes, source: Address, transport: str, conn: Any, *, stream: bool
    ) -> None:
        """A message framed from a TCP/TLS stream (UDP comes in batches: `on_datagrams`)."""
        _RECEIVED.inc()
        mono = time.monotonic()
        if not self.flood.allow_request(source[0], mono):
            self._flooded(mono, source[0], 1)
            return
        self._accept(data, source, transport, conn, stream=stream)

    def _accept(
        self, data: bytes, source: Address, transport: str, conn: Any, *, stream: bool
    ) -> None:
        """A message within its source's limit: parsed and handed to the transactions."""
        now = time.time()
        try:
            message = parse_message(data, stream=stream)
        except ParseError as exc:
            MESSAGES.labels("malformed").inc()
            self._bad_request(exc, source, transport, conn)
            return
        if isinstance(message, Response):
            MESSAGES.labels("stray_response").inc()  # a redirect server sends no requests
            return
        annotate_via(message, source)
        try:
            actions = self.transactions.receive(
                message,
                source,
                now,
                reliable=transport != "UDP",
                conn=conn,
                reply_to=response_addr(message, source),
            )
            self._run(actions, transport, now)
        except (ParseError, TransactionError) as exc:
            MESSAGES.labels("malformed").inc()
            self._bad_request(ParseError(str(exc), message), source, transport, conn)

    def _bad_request(self, exc: ParseError, source: Address, transport: str, conn: Any) -> None:
        if exc.partial is None or exc.partial.method == "ACK":
            MESSAGES.labels("dropped").inc()
            # one line per interval, not per packet: a flood must not grow the log
            summary = self._drops.note(time.monotonic(), f"{source[0]}:{source[1]}: {exc}")
            if summary is not None:
                log.info(
                    "dropped %d unanswerable packet(s) since the last report; last from %s",
                    *summary,
                )
            return
        reason = _CONTROL.sub(" ", str(exc))[:100]
        status = exc.status_hint
        phrase = "Version Not Supported" if status == 505 else f"Bad Request ({reason})"
        response = make_response(exc.partial, status, phrase, to_tag="bad")
        self._send(Send(bytes(response), response_addr(exc.partial, source), conn))

    def _run(self, actions: list[Action], transport: str, now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, NewRequest):
                REQUESTS.labels(action.request.method).inc()
                if action.request.method == "INVITE":
                    INVITES.inc()
                self._apply(
                    self.core.on_request(action.request, action.key, action.source, transport, now),
                    now,
                )
            elif isinstance(action, CancelRequest):
                self._apply(
                    self.core.on_cancel(action.request, action.key, action.invite_key, now), now
                )
            elif isinstance(action, AckTimeout):
                self._no_ack(action.request.call_id)

    def _no_ack(self, call_id: str) -> None:
        """A final response never ACKed: one line per 10 s with how many (a caller that
        never ACKs, at its flood limit, would otherwise grow the log by a line a call)."""
        summary = self._no_ack_log.note(time.monotonic(), call_id)
        if summary is not None:
            count, last = summary
            log.info(
                "no ACK for %d final response(s) since the last report (last: %s)", count, last
            )

    def _apply(self, outs: list[Out], now: float) -> None:
        for out in outs:
            if isinstance(out, Reply):
                tx = self.transactions.get(out.key)
                if tx is None:
                    continue
                status = out.response.status
                RESPONSES.labels(str(status)).inc()
                if status >= 200 and tx.is_invite:
                    INVITE_LATENCY.labels(str(status)).observe(max(0.0, now - tx.started))
                for send in self.transactions.respond(out.key, out.response, now):
                    if isinstance(send, Send):
                        self._send(send)
            elif isinstance(out, Publish):
                self._publish(out)
        self._wake.set()

    def _send(self, send: Send) -> None:
        conn: Any = send.conn
        if conn is not None:
            if not conn.is_closing():
                conn.write(send.data)
            return
        if self.udp:
            self.udp.sendto(send.data, send.addr)

    def _publish(self, out: Publish) -> None:
        try:
            value = self.codec.encode(out.name, out.record)
        except CodecError as exc:
            log.error("cannot encode %s: %s", out.name, exc)
            PUBLISHED.labels("unencodable").inc()
            return
        self.out.produce(self.topics[out.dest], out.key.encode(), value)
        PUBLISHED.labels("queued").inc()
        if log.isEnabledFor(logging.DEBUG):
            call_id = out.record["envelope"]["call_id"]
            log.debug("call %s: %s to %s", call_id, out.name, out.dest, extra=logs.call(call_id))

    # -- decisions --------------------------------------------------------------------------
    def _decision_bytes(self, value: bytes) -> None:
        """A decision for one of this edge's calls (the follower's thread)."""
        try:
            name, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable decision: %s", exc)
            return
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._on_decision, name, record)

    def _on_decision(self, name: str, record: dict[str, Any]) -> None:
        DECISIONS_IN.labels(name).inc()
        if log.isEnabledFor(logging.DEBUG):
            call_id = record["envelope"]["call_id"]
            code = record.get("status_code") or 302
            log.debug("call %s: %s, answering %s", call_id, name, code, extra=logs.call(call_id))
        now = time.time()
        self._apply(self.core.on_decision(name, record, now), now)

    def _retrust(self) -> None:
        """Sources in any number's allowedSourceIps get the trusted flood limit (applied on
        the event loop, which owns the guard)."""
        entries = sorted({ip for ips in self._allowed_ips.values() for ip in ips})
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.flood.trust, entries)

    def _number_record(self, phone_id: str, value: bytes | None) -> None:
        """A numbers config record (the follower's thread): every number makes its phone
        id and its business known; SIP numbers also resolve calls that carry no
        X-Business-Id by the dialled number. Plain dict writes, safe under the GIL."""
        old = self._number_by_id.pop(phone_id, None)
        if old is not None:
            self.numbers.pop(old, None)
        if self._allowed_ips.pop(phone_id, None) is not None:
            self._retrust()
        owner = self.phones.pop(phone_id, None)
        if owner is not None:
            self.businesses[owner] -= 1
            if not self.businesses[owner]:
                del self.businesses[owner]
        if value is None:
            return
        try:
            _, record = self.codec.decode(value)
        except CodecError as exc:
            log.error("undecodable number %s: %s", phone_id, exc)
            return
        business_id = record["business_id"]
        self.phones[phone_id] = business_id
        if record.get("allowed_source_ips"):
            self._allowed_ips[phone_id] = list(record["allowed_source_ips"])
            self._retrust()
        self.businesses[business_id] = self.businesses.get(business_id, 0) + 1
        if record["provider"] != "SIP":
            return
        self.numbers[record["number"]] = NumberEntry(business_id, record["id"])
        self._number_by_id[phone_id] = record["number"]

    # -- timers -----------------------------------------------------------------------------
    async def _timers(self) -> None:
        while True:
            now = time.time()
            deadlines = [
                d
                for d in (self.transactions.next_deadline(), self.core.next_deadline())
                if d is not None
            ]
            delay = min(deadlines) - now if deadlines else 1.0
            self._wake.clear()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
                except TimeoutError:
                    pass
            now = time.time()
            self._apply(self.core.expire(now), now)
            mono = time.monotonic()
            for action in self.transactions.expire(now):
                if isinstance(action, Send):
                    # a retransmission spends from its target's budget: a source that
                    # never ACKs must not turn the edge into an amplifier
                    if action.conn is None and not self.flood.allow_retransmit(
                        action.addr[0], mono
                    ):
                        MESSAGES.labels("retransmit_skipped").inc()
                        continue
                    self._send(action)
                elif isinstance(action, AckTimeout):
                    self._no_ack(action.request.call_id)


async def run_edge(edge: SipEdge) -> None:
    tune_gc()
    await serve_until_signalled(edge, lambda: log.info("SIP edge %s stopping", edge.edge_id))
