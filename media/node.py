"""A media node: answers the calls routed to it, SIP (media/sip.py) and provider media
WebSockets (media/ws.py), and publishes their lifecycle and its heartbeats. This module
is the I/O shell around them: sockets (SIP over UDP and TCP, the WebSocket app), Kafka (a
follower of this node's assignments, a producer for its records) and clocks.

Every call, whatever carries it, is a `Leg` running media/call.py's machine; the node
feeds it inputs and timer expiries and the leg carries out the actions. The node also
keeps what calls share: the assignments (media/queue.py), which call holds which entry,
and the wait for an assignment still in flight.

Clocks, one per concern: SIP timers, the call machine and RTP arrivals all run on
`time.monotonic()` (`clock()`); event timestamps (`occurred_at`) are the wall clock's
epoch milliseconds (`wall_ms()`), taken when an event is published; the media clock
paces RTP every 20 ms on the loop's clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from edge.sip.transaction import Address
from edge.sip.transport import SipStream
from media.call import Action, Call, Input, State, TransitionError
from media.host import Leg, NodeConfig
from media.queue import Assignments, check_claim
from media.sip import SipUas
from media.ws import build_app
from schemas.codec import CodecError, make_codec
from trunkline.core import metrics
from trunkline.core.aio import Datagrams, serve_until_signalled, tune_gc
from trunkline.core.events import Emit, envelope
from trunkline.core.kafka import KeyFollower, Producers
from trunkline.core.settings import Settings
from trunkline.core.topics import ADMISSION, ASSIGNMENTS, CALL_EVENTS, HEARTBEATS, ROUTING

__all__ = ["MediaNode", "NodeConfig", "run_node"]

log = logging.getLogger("trunkline.media")

#: the node's calls and their media, for its /metrics (on the WebSocket port); media
#: counts are added when a call ends, from its CallEnded
CALLS_ACCEPTED = Counter("trunkline_media_calls_accepted_total", "Calls this node accepted")
CALLS_ANSWERED = Counter("trunkline_media_calls_answered_total", "Calls answered (media flows)")
CALLS_ENDED = Counter("trunkline_media_calls_ended_total", "Calls ended, by reason", ["reason"])
ACTIVE = Gauge("trunkline_media_active_calls", "Calls this node holds (its queue entries claimed)")
RTP_PACKETS = Counter(
    "trunkline_media_rtp_packets_total",
    "RTP packets (provider streams: media frames) of ended calls, by direction",
    ["direction"],
)
RTP_LOST = Counter(
    "trunkline_media_rtp_packets_lost_total", "Packets of ended calls that never arrived"
)
CALL_JITTER = Histogram(
    "trunkline_media_call_jitter_ms",
    "An ended call's interarrival jitter (RFC 3550), ms",
    buckets=(1, 2, 5, 10, 20, 30, 50, 100, 200),
)
CALL_LOSS = Histogram(
    "trunkline_media_call_loss_ratio",
    "An ended call's received-packet loss, lost / (received + lost)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5),
)


def count(e: Emit) -> None:
    """Move the counters for one of the node's records: each once, at its history copy
    (the same record also goes to admission or routing)."""
    if e.dest != "call-events":
        return
    if e.name == "CallAccepted":
        CALLS_ACCEPTED.inc()
    elif e.name == "CallAnswered":
        CALLS_ANSWERED.inc()
    elif e.name == "CallEnded":
        r = e.record
        CALLS_ENDED.labels(str(r["reason"])).inc()
        media = r.get("media")
        if media:
            received, lost = int(media["packets_received"]), int(media["packets_lost"])
            RTP_PACKETS.labels("sent").inc(int(media["packets_sent"]))
            RTP_PACKETS.labels("received").inc(received)
            RTP_LOST.inc(lost)
            if received + lost:
                CALL_JITTER.observe(float(media["jitter_ms"]))
                CALL_LOSS.observe(lost / (received + lost))


_T = TypeVar("_T")
TOPICS = {"admission": ADMISSION, "routing": ROUTING, "call-events": CALL_EVENTS}
#: the states in which a call waits for its queue entry
_UNRESOLVED = frozenset({State.OFFERED, State.WAITING, State.CANCELLED})


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
        self.assignments = Assignments()
        self.live: set[Leg] = set()  # every call not ENDED, SIP or provider stream
        self.claims: dict[str, Leg] = {}  # queue id -> the call processing it
        self.sip = SipUas(self)
        self.out: Publisher = out or Producers(
            settings.kafka_bootstrap, ("decision",), name="media"
        )
        self._tcp: asyncio.AbstractServer | None = None  # SIP over TCP, from start()
        self._assignments: KeyFollower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulse = asyncio.Event()  # set (and replaced) when a waiting call may proceed
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()  # SIP messages being handled
        self._ws_runner: web.AppRunner | None = None
        self.ready = threading.Event()
        self.started_ms = self.wall_ms()  # heartbeats carry it: a restart is visible

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
        listen = self.config.listen

        def datagram(data: bytes, addr: Address) -> None:
            if data.strip(b"\r\n"):  # keep-alive pings are CRLFs
                self._spawn(self.sip.on_message(data, addr, None))

        transport, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(datagram), local_addr=(listen.host, listen.port)
        )
        self.sip.udp = transport
        self._tcp = await loop.create_server(
            lambda: SipStream(
                "TCP", lambda data, peer, conn: self._spawn(self.sip.on_message(data, peer, conn))
            ),
            listen.host,
            listen.port,
        )
        self._tasks = [
            asyncio.create_task(self._media_clock()),
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._timers()),
        ]
        if self.config.ws_listen is not None:
            app = build_app(self)
            app.router.add_get("/metrics", self._metrics)
            self._ws_runner = web.AppRunner(app, access_log=None)
            await self._ws_runner.setup()
            ws = self.config.ws_listen
            await web.TCPSite(self._ws_runner, ws.host, ws.port).start()
        self.ready.set()
        log.info(
            "media node %s (%s) listening on %s:%s",
            self.config.server_id,
            self.config.region_id,
            listen.host,
            listen.port,
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """One message's handling, as a task the node keeps until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def stop(self) -> None:
        for leg in list(self.live):
            if leg.call.state in (State.ACCEPTED, State.ANSWERED, State.HELD):
                self.feed(leg, Input.LOCAL_END, reason="node_stopped", side="system")
        await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        if self.sip.udp is not None:
            self.sip.udp.close()
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
        """The queue checks (media/queue.py); then `holder` holds the entry. None, or
        the refusal (status, why)."""
        refusal = check_claim(
            queue_id,
            routed,
            provider,
            server_id=self.config.server_id,
            region_id=self.config.region_id,
            processing=self.claims,
            active=len(self.claims),
            capacity=self.config.capacity,
        )
        if refusal is None:
            self.claims[queue_id] = holder
        return refusal

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

    async def _metrics(self, request: web.Request) -> web.Response:
        ACTIVE.set(self.active_calls)
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

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
        if leg.call.state is State.ENDED and leg in self.live:
            self.live.discard(leg)
            leg.forget()
        self.wake()

    def emit(self, emits: list[Emit]) -> None:
        for e in emits:
            count(e)
            self.out.produce(
                TOPICS[e.dest].name(self.settings.topic_prefix),
                e.key.encode(),
                self.codec.encode(e.name, e.record),
            )

    # -- clocks -----------------------------------------------------------------------------
    async def _media_clock(self) -> None:
        """Every 20 ms, each answered SIP call sends its next frame (one clock for all)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += 0.02
            self.sip.tick()
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _timers(self) -> None:
        """SIP transaction timers and every call's timer, on the node's clock."""
        next_prune = self.clock() + 10.0
        while True:
            await asyncio.sleep(0.05)  # SIP's shortest timer is T1 (500 ms)
            now = self.clock()
            self.sip.expire(now)
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
                # routing ends the calls a previous process of this node had accepted
                # (streams/routing.py, backend_restarted): they died with it
                "started_at": self.started_ms,
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
