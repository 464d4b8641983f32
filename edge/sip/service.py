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
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from edge.sip.errors import ParseError, TransactionError
from edge.sip.framing import StreamFramer
from edge.sip.message import Request, Response, make_response, parse_message
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
from schemas.codec import Codec, CodecError, make_codec
from trunkline.aio import Datagrams, serve_until_signalled, tune_gc
from trunkline.kafka_io import key_partition_consumer
from trunkline.settings import Settings
from trunkline.topics import ADMISSION, CALL_EVENTS, DECISIONS, NUMBERS

log = logging.getLogger("trunkline.sip.edge")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not host:port")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


@dataclass
class EdgeStats:
    received: int = 0
    malformed: int = 0
    dropped: int = 0
    invites: int = 0
    decisions: int = 0
    published: int = 0
    publish_errors: int = 0


class SipStream(asyncio.Protocol):
    """SIP over one TCP/TLS connection: frames messages by Content-Length, answers
    keep-alive pings, and hands each message to `on_message(data, peer, transport)`.
    A framing error closes the connection (the stream cannot be resynchronised)."""

    def __init__(
        self,
        name: str,
        on_message: Callable[[bytes, Address, asyncio.Transport], Any],
        on_error: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.on_message = on_message
        self.on_error = on_error
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.framer.receive_data(data)
        while True:
            try:
                message = self.framer.next_message()
            except ParseError as exc:
                log.warning("%s %s: closing, cannot frame: %s", self.name, self.peer, exc)
                if self.on_error is not None:
                    self.on_error()
                self.transport.close()
                return
            if self.framer.pongs_due:
                self.transport.write(b"\r\n" * self.framer.pongs_due)  # RFC 5626 pong
                self.framer.pongs_due = 0
            if message is None:
                return
            self.on_message(message, self.peer, self.transport)


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
    ) -> None:
        self.settings = settings
        self.edge_id = edge_id
        self.listen = listen
        self.tls_listen = tls_listen
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.enable_udp, self.enable_tcp = udp, tcp
        self.codec = codec or make_codec(settings.schema_registry_url)
        self.stats = EdgeStats()
        self.numbers: dict[str, NumberEntry] = {}
        self.transactions = ServerTransactions()
        self.core = RedirectCore(
            edge_id, directory=self.numbers.get, decision_timeout=settings.decision_timeout_s
        )
        prefix = settings.topic_prefix
        self.topics = {
            "admission": ADMISSION.name(prefix),
            "call-events": CALL_EVENTS.name(prefix),
        }
        self.decisions_topic = DECISIONS.name(prefix)
        self.numbers_topic = NUMBERS.name(prefix)
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,
                "partitioner": "murmur2_random",
                "log_level": 4,
                # the callback runs only for a refused record: a report per record woke
                # the poll thread, which then waited for the GIL the SIP loop held
                "delivery.report.only.error": True,
            }
        )
        self.udp: Datagrams | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self.ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        decisions = self._decision_consumer()  # assigned before the first INVITE
        self._spawn(self._follow_decisions, decisions, "decisions")
        self._spawn(self._follow_numbers, None, "numbers")
        self._spawn(self._poll_producer, None, "producer")
        if self.enable_udp:
            _, proto = await self.loop.create_datagram_endpoint(
                lambda: Datagrams(self.on_datagram), local_addr=(self.listen.host, self.listen.port)
            )
            self.udp = proto
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
        self._stop.set()
        if self._timer_task:
            self._timer_task.cancel()
        for server in self.servers:
            server.close()
        if self.udp and self.udp.transport:
            self.udp.transport.close()
        for t in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
        self.producer.flush(10)

    def _stream(self, name: str) -> SipStream:
        def malformed() -> None:
            self.stats.malformed += 1

        return SipStream(
            name,
            lambda data, peer, conn: self.on_message(data, peer, name, conn, stream=True),
            malformed,
        )

    def local_port(self, kind: str = "udp") -> int:
        if kind == "udp" and self.udp and self.udp.transport:
            return int(self.udp.transport.get_extra_info("sockname")[1])
        for server in self.servers:
            return int(server.sockets[0].getsockname()[1])
        raise RuntimeError(f"no {kind} listener")

    def _spawn(self, target: Any, arg: Any, name: str) -> None:
        t = threading.Thread(
            target=target,
            args=(arg,) if arg is not None else (),
            name=f"sip-edge-{name}",
            daemon=True,
        )
        t.start()
        self._threads.append(t)

    # -- input ----------------------------------------------------------------------------
    def on_datagram(self, data: bytes, source: Address) -> None:
        if data.strip(b"\r\n") == b"":
            return  # keep-alive
        self.on_message(data, source, "UDP", None, stream=False)

    def on_message(
        self, data: bytes, source: Address, transport: str, conn: Any, *, stream: bool
    ) -> None:
        self.stats.received += 1
        now = time.time()
        try:
            message = parse_message(data, stream=stream)
        except ParseError as exc:
            self.stats.malformed += 1
            self._bad_request(exc, source, transport, conn)
            return
        if isinstance(message, Response):
            self.stats.dropped += 1  # a redirect server sends no requests: stray response
            return
        _annotate_via(message, source)
        try:
            actions = self.transactions.receive(
                message,
                source,
                now,
                reliable=transport != "UDP",
                conn=conn,
                reply_to=_response_addr(message, source),
            )
            self._run(actions, transport, now)
        except (ParseError, TransactionError) as exc:
            self.stats.malformed += 1
            self._bad_request(ParseError(str(exc), message), source, transport, conn)

    def _bad_request(self, exc: ParseError, source: Address, transport: str, conn: Any) -> None:
        if exc.partial is None or exc.partial.method == "ACK":
            log.info("dropped unanswerable packet from %s:%s: %s", source[0], source[1], exc)
            return
        reason = str(exc).replace("\r", " ").replace("\n", " ")[:100]
        status = exc.status_hint
        phrase = "Version Not Supported" if status == 505 else f"Bad Request ({reason})"
        response = make_response(exc.partial, status, phrase, to_tag="bad")
        self._send(Send(bytes(response), _response_addr(exc.partial, source), conn))

    def _run(self, actions: list[Action], transport: str, now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, NewRequest):
                if action.request.method == "INVITE":
                    self.stats.invites += 1
                self._apply(
                    self.core.on_request(action.request, action.key, action.source, transport, now),
                    now,
                )
            elif isinstance(action, CancelRequest):
                self._apply(
                    self.core.on_cancel(action.request, action.key, action.invite_key, now), now
                )
            elif isinstance(action, AckTimeout):
                log.info("no ACK for the final response to %s", action.request.call_id)

    def _apply(self, outs: list[Out], now: float) -> None:
        for out in outs:
            if isinstance(out, Reply):
                tx = self.transactions.get(out.key)
                if tx is None:
                    continue
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
        if self.udp and self.udp.transport:
            self.udp.transport.sendto(send.data, send.addr)

    def _publish(self, out: Publish) -> None:
        try:
            value = self.codec.encode(out.name, out.record)
        except CodecError as exc:
            log.error("cannot encode %s: %s", out.name, exc)
            self.stats.publish_errors += 1
            return

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                self.stats.publish_errors += 1
                log.error("publish %s to %s failed: %s", out.name, msg.topic(), err)

        while True:
            try:
                self.producer.produce(
                    self.topics[out.dest], key=out.key.encode(), value=value, on_delivery=delivered
                )
                break
            except BufferError:
                self.producer.poll(0.01)
        self.stats.published += 1

    # -- decisions --------------------------------------------------------------------------
    def _decision_consumer(self) -> Consumer:
        return key_partition_consumer(
            self.settings.kafka_bootstrap,
            f"sip-edge-{self.edge_id}",
            self.decisions_topic,
            self.edge_id,
        )

    def _follow_decisions(self, consumer: Consumer) -> None:
        key = self.edge_id.encode()
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None or msg.error() or msg.key() != key:
                    continue
                try:
                    name, record = self.codec.decode(msg.value() or b"")
                except CodecError as exc:
                    log.error("undecodable decision at offset %s: %s", msg.offset(), exc)
                    continue
                assert self.loop is not None
                self.loop.call_soon_threadsafe(self._on_decision, name, record)
        finally:
            consumer.close()

    def _on_decision(self, name: str, record: dict[str, Any]) -> None:
        self.stats.decisions += 1
        now = time.time()
        self._apply(self.core.on_decision(name, record, now), now)

    def _follow_numbers(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"sip-edge-{self.edge_id}-numbers",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            meta = consumer.list_topics(self.numbers_topic, timeout=10).topics.get(
                self.numbers_topic
            )
            if meta is None or meta.error is not None:
                log.warning(
                    "no %s topic: numbers resolve only by X-Business-Id", self.numbers_topic
                )
                return
            consumer.assign([TopicPartition(self.numbers_topic, p, 0) for p in meta.partitions])
            by_id: dict[str, str] = {}
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                phone_id = (msg.key() or b"").decode()
                old = by_id.pop(phone_id, None)
                if old is not None:
                    self.numbers.pop(old, None)
                if msg.value() is None:
                    continue
                try:
                    _, record = self.codec.decode(msg.value())
                except CodecError as exc:
                    log.error("undecodable number %s: %s", phone_id, exc)
                    continue
                if record["provider"] != "SIP":
                    continue
                self.numbers[record["number"]] = NumberEntry(record["business_id"], record["id"])
                by_id[phone_id] = record["number"]
        finally:
            consumer.close()

    def _poll_producer(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

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
            for action in self.transactions.expire(now):
                if isinstance(action, Send):
                    self._send(action)
                elif isinstance(action, AckTimeout):
                    log.info("no ACK for the final response to %s", action.request.call_id)


def _annotate_via(request: Request, source: Address) -> None:
    """RFC 3261 §18.2.1 `received` and RFC 3581 `rport` on the top Via."""
    values = request.headers.get_all("via")
    if not values:
        return
    via = request.top_via
    changed = False
    if via.host != source[0]:
        via.params["received"] = source[0]
        changed = True
    if "rport" in via.params and not via.params["rport"]:
        via.params["rport"] = str(source[1])
        changed = True
    if changed:
        request.headers.remove("via")
        for v in [str(via), *values[1:]]:
            request.headers.add("Via", v)


def _response_addr(request: Request, source: Address) -> Address:
    """Where a UDP response goes: the source with rport, else received + sent-by port."""
    try:
        via = request.top_via
    except ParseError:
        return source
    if "rport" in via.params:
        return source
    return (source[0], via.port or 5060)


async def run_edge(edge: SipEdge) -> None:
    tune_gc()
    await serve_until_signalled(edge, lambda: log.info("SIP edge %s stopping", edge.edge_id))
