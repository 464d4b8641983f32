"""Provider media WebSockets on the media node, one adapter per provider behind one
session: Twilio Media Streams at `/twilio`, Telnyx media streaming at `/telnyx`, Vonage
WebSockets at `/vonage`. Each stream is a call on media/call.py's machine, like a SIP
INVITE: the queue entry is waited for and checked the same way, and the call ends the
same way (CallEnded with its reason).

The queue id is `callQueueId` (`queueId` is accepted as an alias): Twilio
`customParameters` (the TwiML `<Parameter>`), Telnyx `custom_parameters` or the
`client_state` of the `answer` command, the Vonage NCCO header, or the URL's
`?callQueueId=`. A stream may claim only an entry whose call came in over its provider
(CallRouted's `provider`): `/twilio` cannot take a SIP call's queue id.

Bad input ends only its own stream, with a reason: a message of the wrong shape closes
with 1003 (unsupported data), a refused entry with 1008 (policy), our own failure with
1011; a protocol error after the call was accepted ends it as `failed` with the error as
CallEnded's detail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from media import events
from media.agents import Agent, make_agent
from media.agents.base import FRAME_BYTES, SAMPLE_RATE, CallInfo
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
    State,
)
from media.codecs import G711Codec
from media.host import Host
from media.providers import telnyx, twilio, vonage
from media.providers.base import ProtocolError
from media.queue import queue_id_from
from trunkline.core import logs

log = logging.getLogger("trunkline.media.ws")

CLOSE_POLICY = 1008  # a refused queue entry
CLOSE_UNSUPPORTED = 1003  # a message of the wrong shape, an unsupported format
CLOSE_INTERNAL = 1011  # our own failure


Decode = Callable[[bytes], bytes]  # provider payload -> 16 kHz PCM
Send = Callable[[bytes], Awaitable[None]]  # 20 ms of 16 kHz PCM -> the provider


def _reason(text: str) -> bytes:
    """A close reason: at most 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    return text.encode("utf-8")[:120].decode("utf-8", "ignore").encode("utf-8")


class ProviderLeg:
    """One provider stream on the node: the call machine, the agent, the pacing."""

    def __init__(
        self, node: Host, ws: web.WebSocketResponse, provider: str, stream_id: str
    ) -> None:
        self.node, self.ws, self.provider = node, ws, provider
        self.call = Call(
            f"{provider.lower()}:{stream_id}",
            node.clock(),
            reliable=True,
            wait_s=node.config.assignment_wait_s,
            media_timeout=None,  # the WebSocket's own heartbeat watches the connection
        )
        self.queue_id: str | None = None
        self.routed: dict[str, Any] | None = None
        self.agent: Agent | None = None
        self.codec = ""
        self.decode: Decode | None = None
        self.send: Send | None = None
        self.sent = self.received = self.lost = 0
        self.close_code = 1000
        self.close_why = ""
        self.tasks: list[asyncio.Task[Any]] = []  # pacing and the agent's I/O
        self.closing: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<ProviderLeg {self.call!r} {self.queue_id}>"

    def media_rx(self) -> float | None:
        return None

    def forget(self) -> None:
        pass

    # -- the machine's actions ---------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        node = self.node
        for action in actions:
            if isinstance(action, Reply):
                log.info(
                    "refusing %s stream: %s %s",
                    self.provider,
                    action.status,
                    action.why,
                    extra=logs.call(self.queue_id),
                )
                self._close(CLOSE_POLICY, f"{action.status} {action.why}")
            elif isinstance(action, PublishAccepted):
                assert self.queue_id is not None and self.routed is not None
                node.emit(
                    events.accepted(
                        node.config.server_id, self.queue_id, self.routed, node.wall_ms()
                    )
                )
            elif isinstance(action, PublishAnswered):
                assert self.queue_id is not None
                node.emit(
                    events.answered(
                        node.config.server_id, self.queue_id, self.codec, node.wall_ms()
                    )
                )
            elif isinstance(action, PublishEnded) and self.routed is not None:
                assert self.queue_id is not None
                node.emit(
                    events.ended(
                        node.config.server_id,
                        self.queue_id,
                        self.routed,
                        node.wall_ms(),
                        reason=action.reason,
                        side=action.side,
                        setup_ms=action.setup_ms,
                        talk_ms=action.talk_ms,
                        codec=self.codec or None,
                        media={
                            "packets_sent": self.sent,
                            "packets_received": self.received,
                            "packets_lost": self.lost,
                            "jitter_ms": 0.0,
                        },
                        detail=action.detail,
                    )
                )
                log.info(
                    "call %s ended: %s by %s",
                    self.queue_id,
                    action.reason,
                    action.side,
                    extra=logs.call(self.queue_id),
                )
            elif isinstance(action, Release):
                current = asyncio.current_task()
                for task in self.tasks:
                    if task is not current:
                        task.cancel()
                node.release(self.queue_id, self)
            elif isinstance(action, HangUp):
                self._close(self.close_code, self.close_why)
            # SendOk: a stream has no 200 OK to send

    def _close(self, code: int, why: str) -> None:
        async def close() -> None:
            if not self.ws.closed:
                await self.ws.close(code=code, message=_reason(why))
            if self.call.state is State.ENDING:
                self.node.feed(self, Input.BYE_DONE)

        self.closing.append(asyncio.ensure_future(close()))

    # -- the call --------------------------------------------------------------------------
    def fail(self, code: int, why: str) -> None:
        """A protocol error (or our own) during the call: CallEnded `failed` with `why`,
        and the stream closed with `code`."""
        self.close_code, self.close_why = code, why
        self.node.feed(self, Input.LOCAL_END, reason="failed", side="system", why=why)

    def begin(self, agent: Agent, call_from: str = "", call_to: str = "") -> None:
        assert self.queue_id is not None and self.routed is not None
        self.agent = agent
        agent.start(
            CallInfo(
                self.queue_id,
                self.routed["business_id"],
                call_from,
                call_to,
                dict(self.routed.get("agent_options") or {}),
            )
        )
        self.node.feed(self, Input.CLAIM)
        self.node.feed(self, Input.ANSWER)  # a stream is up as soon as it is accepted
        self.tasks += [asyncio.create_task(self._pace()), asyncio.create_task(agent.run())]

    def on_payload(self, payload: bytes) -> None:
        assert self.agent is not None and self.decode is not None
        self.received += 1
        pcm = self.decode(payload)
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.agent.on_audio(pcm[i : i + FRAME_BYTES])

    async def _pace(self) -> None:
        """The agent's audio every 20 ms; its hang-up ends the call."""
        assert self.agent is not None and self.send is not None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while self.call.state is State.ANSWERED and not self.agent.hangup_requested:
                await self.send(self.agent.next_frame())
                self.sent += 1
                next_at += 0.02
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        except (ConnectionError, RuntimeError):
            return  # the socket is closing: the handler ends the call
        if self.call.state is State.ANSWERED:
            self.node.feed(self, Input.LOCAL_END, reason="completed", side="agent")

    def stream_gone(self) -> None:
        """The socket closed (the provider hung up, or our close completed)."""
        if self.call.state in (State.ACCEPTED, State.ANSWERED, State.HELD):
            self.node.feed(self, Input.REMOTE_END, reason="completed", side="caller")
        elif self.call.state is State.ENDING:
            self.node.feed(self, Input.BYE_DONE)
        elif self.call.state in (State.OFFERED, State.WAITING):
            self.node.feed(self, Input.CANCEL)


async def _open(
    node: Host,
    ws: web.WebSocketResponse,
    provider: str,
    stream_id: str,
    queue_id: str | None,
) -> ProviderLeg:
    """The stream's call, waited for and checked like a SIP INVITE's. The leg comes back
    ACCEPTED and ready for `begin`, or ENDED (refused: the socket is closing)."""
    leg = ProviderLeg(node, ws, provider, stream_id)
    node.open_leg(leg)
    if not queue_id:
        node.feed(leg, Input.REFUSE, status=404, why="no callQueueId")
        return leg
    leg.queue_id = queue_id
    routed = node.assignments.get(queue_id)
    if routed is None:
        why = f"queue entry {queue_id} is not assigned to this node"
        node.feed(leg, Input.WAIT, status=404, why=why)
        routed = await node.await_entry(leg.call, lambda: node.assignments.get(queue_id))
        if routed is None:
            return leg  # the wait expired: refused (1008)
    leg.routed = routed
    refusal = node.claim(queue_id, routed, provider, leg)
    if refusal is not None:
        node.feed(leg, Input.REFUSE, status=refusal[0], why=refusal[1])
    return leg


def _begin(leg: ProviderLeg) -> bool:
    """Start the route's agent on the accepted stream; a route naming an unknown agent
    refuses the call (500, like a SIP INVITE)."""
    assert leg.routed is not None
    try:
        agent = make_agent(leg.routed.get("agent") or "greeting")
    except ValueError as exc:
        leg.node.feed(leg, Input.REFUSE, status=500, why=str(exc))
        return False
    leg.begin(agent)
    return True


@dataclass(frozen=True)
class _Opening:
    encoding: str  # PCMU or PCMA
    queue_id: str | None
    stream_id: str


class _TwilioAdapter:
    """Twilio Media Streams: mu-law only, frames in order."""

    provider = "TWILIO"

    def parse(self, text: str) -> Any:
        return twilio.parse(text)

    def opening(self, event: Any, query: Any) -> _Opening | None:
        if not isinstance(event, twilio.Start):
            return None
        if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
            raise ProtocolError("only audio/x-mulaw at 8000 Hz")
        return _Opening("PCMU", queue_id_from(event.custom_parameters, query), event.stream_sid)

    def payloads(self, event: Any) -> list[bytes]:
        ok = isinstance(event, twilio.Media) and event.track in ("inbound", "")
        return [event.payload] if ok else []

    def flush(self) -> list[bytes]:
        return []

    def lost(self) -> int:
        return 0

    def media_message(self, opening: _Opening, payload: bytes) -> str:
        return twilio.media_message(opening.stream_id, payload)


class _TelnyxAdapter:
    """Telnyx media streaming: the leg's encoding (read it, never assume), frames
    reordered by sequence number."""

    provider = "TELNYX"

    def __init__(self) -> None:
        self.reorder = telnyx.MediaReorder()

    def parse(self, text: str) -> Any:
        return telnyx.parse(text)

    def opening(self, event: Any, query: Any) -> _Opening | None:
        if not isinstance(event, telnyx.Start):
            return None
        if event.encoding not in ("PCMU", "PCMA") or event.sample_rate != 8000:
            raise ProtocolError("only PCMU or PCMA at 8000 Hz")
        queue_id = queue_id_from(event.custom_parameters) or telnyx.client_state_queue_id(
            event.client_state
        )
        return _Opening(event.encoding, queue_id or queue_id_from(query), event.stream_id)

    def payloads(self, event: Any) -> list[bytes]:
        if not (isinstance(event, telnyx.Media) and event.track in ("inbound", "")):
            return []
        return [m.payload for m in self.reorder.push(event)]

    def flush(self) -> list[bytes]:
        return [m.payload for m in self.reorder.flush()]

    def lost(self) -> int:
        return self.reorder.lost

    def media_message(self, opening: _Opening, payload: bytes) -> str:
        return telnyx.media_message(payload)


async def _end_stream(leg: ProviderLeg | None, ws: web.WebSocketResponse) -> None:
    """The handler is done with the socket: let the closes the call asked for finish
    (their codes and reasons), then tell the call the stream is gone."""
    if leg is not None:
        for closing in list(leg.closing):
            await closing
        leg.stream_gone()
    if not ws.closed:
        await ws.close()


async def _bad_input(
    leg: ProviderLeg | None, ws: web.WebSocketResponse, code: int, why: str
) -> None:
    """Before the call is up, close the socket with `code` and `why`; during it, end the
    call as `failed` with `why` (which closes the socket the same way)."""
    log.info("%s: %s", leg or "stream", why, extra=logs.call(leg.queue_id if leg else None))
    if leg is not None and leg.call.state in (State.ACCEPTED, State.ANSWERED, State.HELD):
        leg.fail(code, why)
    elif not ws.closed:
        await ws.close(code=code, message=_reason(why))


async def _json_stream(
    request: web.Request, adapter: _TwilioAdapter | _TelnyxAdapter
) -> web.WebSocketResponse:
    """A provider stream of JSON text frames carrying G.711 (Twilio, Telnyx)."""
    node: Host = request.app[NODE]  # type: ignore[assignment]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    leg: ProviderLeg | None = None
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                raise ProtocolError("a binary frame: this protocol sends JSON text frames")
            if msg.type is not WSMsgType.TEXT:
                continue
            event = adapter.parse(msg.data)
            if leg is None:
                opening = adapter.opening(event, request.query)
                if opening is None:
                    continue  # `connected` and anything before `start`
                leg = await _open(node, ws, adapter.provider, opening.stream_id, opening.queue_id)
                if leg.call.state is not State.OFFERED and leg.call.state is not State.WAITING:
                    break  # refused: the socket is closing
                g711 = G711Codec(opening.encoding)

                async def send(pcm: bytes, g711: G711Codec = g711, o: _Opening = opening) -> None:
                    for payload in g711.encode(pcm, SAMPLE_RATE):
                        await ws.send_str(adapter.media_message(o, payload))

                leg.codec = f"{opening.encoding}/8000"
                leg.decode = lambda p, g711=g711: g711.decode(p, 0, SAMPLE_RATE)
                leg.send = send
                if not _begin(leg):
                    break
            elif leg.call.state is not State.ANSWERED:
                continue  # ending: what still arrives is not played
            elif isinstance(event, twilio.Dtmf):
                assert leg.agent is not None
                leg.agent.on_dtmf(event.digit)
            elif isinstance(event, twilio.Stop):
                for payload in adapter.flush():
                    leg.on_payload(payload)
                break
            else:
                for payload in adapter.payloads(event):
                    leg.on_payload(payload)
                leg.lost = adapter.lost()
    except ProtocolError as exc:
        await _bad_input(leg, ws, CLOSE_UNSUPPORTED, f"{adapter.provider}: {exc}")
    except Exception as exc:
        log.exception("%s stream failed", adapter.provider)
        await _bad_input(leg, ws, CLOSE_INTERNAL, f"internal error: {type(exc).__name__}")
    finally:
        await _end_stream(leg, ws)
    return ws


async def twilio_stream(request: web.Request) -> web.WebSocketResponse:
    return await _json_stream(request, _TwilioAdapter())


async def telnyx_stream(request: web.Request) -> web.WebSocketResponse:
    return await _json_stream(request, _TelnyxAdapter())


def _half(pcm: bytes) -> bytes:
    import numpy as np

    return np.frombuffer(pcm, dtype="<i2")[::2].astype("<i2").tobytes()


def _resample(pcm: bytes, rate: int) -> bytes:
    """L16 at 8 or 16 kHz -> 16 kHz (the agents' rate)."""
    if rate == SAMPLE_RATE:
        return pcm
    import numpy as np

    x = np.frombuffer(pcm, dtype="<i2")
    return np.repeat(x, SAMPLE_RATE // rate).astype("<i2").tobytes()


async def vonage_stream(request: web.Request) -> web.WebSocketResponse:
    node: Host = request.app[NODE]  # type: ignore[assignment]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    leg: ProviderLeg | None = None
    buffer = bytearray()
    size = vonage.FRAME_BYTES
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and leg is None:
                opened = vonage.parse_first(msg.data)
                if opened.rate not in (8000, 16000):
                    raise ProtocolError("L16 at 8 or 16 kHz only")
                queue_id = queue_id_from(opened.headers, request.query)
                leg = await _open(node, ws, "VONAGE", queue_id or "", queue_id)
                if leg.call.state is not State.OFFERED and leg.call.state is not State.WAITING:
                    break
                rate = opened.rate
                size = vonage.FRAME_BYTES if rate == 16000 else vonage.FRAME_BYTES // 2

                async def send(pcm: bytes, rate: int = rate) -> None:
                    # 20 ms binary frames, paced by the session; 8 kHz legs get every
                    # second sample of our 16 kHz audio
                    await ws.send_bytes(pcm if rate == SAMPLE_RATE else _half(pcm))

                leg.codec = f"L16/{rate}"
                leg.decode = lambda p, rate=rate: _resample(p, rate)
                leg.send = send
                if not _begin(leg):
                    break
            elif leg is None:
                if msg.type is WSMsgType.BINARY:
                    raise ProtocolError("audio before the first text frame")
            elif leg.call.state is not State.ANSWERED:
                continue
            elif msg.type is WSMsgType.TEXT:
                event = vonage.parse_event(msg.data)
                if isinstance(event, twilio.Dtmf):
                    assert leg.agent is not None
                    leg.agent.on_dtmf(event.digit)
            elif msg.type is WSMsgType.BINARY:
                buffer.extend(msg.data)
                for frame in vonage.frames(buffer, size):
                    leg.on_payload(frame)
    except ProtocolError as exc:
        await _bad_input(leg, ws, CLOSE_UNSUPPORTED, f"VONAGE: {exc}")
    except Exception as exc:
        log.exception("VONAGE stream failed")
        await _bad_input(leg, ws, CLOSE_INTERNAL, f"internal error: {type(exc).__name__}")
    finally:
        await _end_stream(leg, ws)
    return ws


NODE = web.AppKey("node", object)


def build_app(node: Host) -> web.Application:
    app = web.Application()
    app[NODE] = node
    app.router.add_get("/twilio", twilio_stream)
    app.router.add_get("/telnyx", telnyx_stream)
    app.router.add_get("/vonage", vonage_stream)
    return app
