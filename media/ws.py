"""Provider media WebSockets on the media node, one adapter per provider behind one
session: Twilio Media Streams at `/twilio`, Telnyx media streaming at `/telnyx`, Vonage
WebSockets at `/vonage`. The queue id comes from the provider's custom parameters
(Twilio `customParameters.queueId`, Telnyx `custom_parameters.queueId`, Vonage NCCO
header `queueId`) or the URL's `?queueId=`, and is checked like a SIP INVITE's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from media.agents import make_agent
from media.agents.base import FRAME_BYTES, SAMPLE_RATE, CallInfo
from media.codecs import G711Codec
from media.providers import telnyx, twilio, vonage


class MediaNode(Protocol):
    """What a provider stream needs of the node it runs on (media/node.py)."""

    ws_calls: dict[str, Any]

    async def claim(self, qid: str) -> dict[str, Any] | tuple[int, str, str]: ...

    def publish_accepted(self, queue_id: str, routed: dict[str, Any], now: float) -> None: ...

    def publish_answered(self, queue_id: str, at: float, codec: str) -> None: ...

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
    ) -> None: ...


log = logging.getLogger("trunkline.media.ws")

Decode = Callable[[bytes], bytes]  # provider payload -> 16 kHz PCM
Send = Callable[[bytes], Awaitable[None]]  # 20 ms of 16 kHz PCM -> the provider


class ProviderCall:
    """One provider stream: the agent session, the pacing, the events."""

    def __init__(
        self,
        node: MediaNode,
        queue_id: str,
        routed: dict[str, Any],
        codec: str,
        decode: Decode,
        send: Send,
    ) -> None:
        self.node, self.queue_id, self.routed = node, queue_id, routed
        self.codec, self.decode, self.send = codec, decode, send
        self.agent = make_agent(routed.get("agent") or "greeting")
        self.accepted_at = self.answered_at = time.time()
        self.sent = self.received = self.lost = 0
        self.side = "caller"
        self.tasks: list[asyncio.Task[None]] = []

    def begin(self, call_info_from: str = "", call_info_to: str = "") -> None:
        self.node.ws_calls[self.queue_id] = self
        self.agent.start(
            CallInfo(
                self.queue_id,
                self.routed["business_id"],
                call_info_from,
                call_info_to,
                dict(self.routed.get("agent_options") or {}),
            )
        )
        self.node.publish_accepted(self.queue_id, self.routed, self.accepted_at)
        self.node.publish_answered(self.queue_id, self.answered_at, self.codec)
        self.tasks = [asyncio.create_task(self._pace()), asyncio.create_task(self.agent.run())]

    def on_payload(self, payload: bytes) -> None:
        self.received += 1
        pcm = self.decode(payload)
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.agent.on_audio(pcm[i : i + FRAME_BYTES])

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.agent.hangup_requested:
            await self.send(self.agent.next_frame())
            self.sent += 1
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        self.side = "agent"

    def end(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.node.ws_calls.pop(self.queue_id, None)
        self.node.publish_ended(
            self.queue_id,
            self.routed,
            "completed",
            self.side,
            time.time(),
            self.accepted_at,
            self.answered_at,
            self.codec,
            {
                "packets_sent": self.sent,
                "packets_received": self.received,
                "packets_lost": self.lost,
                "jitter_ms": 0.0,
            },
        )


async def _claim(
    node: MediaNode, ws: web.WebSocketResponse, qid: str | None, label: str
) -> dict[str, Any] | None:
    claimed = await node.claim(qid) if qid else (404, "Not Found", "no queueId")
    if isinstance(claimed, tuple):
        status, _, why = claimed
        log.info("refusing %s stream: %s %s", label, status, why)
        await ws.close(code=1008, message=f"{status} {why}"[:120].encode())
        return None
    return claimed


async def _watch_hangup(call: ProviderCall, ws: web.WebSocketResponse) -> None:
    while not call.agent.hangup_requested:
        await asyncio.sleep(0.05)
    await ws.close()


@dataclass(frozen=True)
class _Opening:
    encoding: str  # PCMU or PCMA
    params: dict[str, str]
    stream_id: str


class _TwilioAdapter:
    """Twilio Media Streams: mu-law only, frames in order."""

    label = "twilio"

    def parse(self, text: str) -> Any:
        return twilio.parse(text)

    def opening(self, event: Any) -> _Opening | None:
        if not isinstance(event, twilio.Start):
            return None
        if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
            raise twilio.ProtocolError("only audio/x-mulaw at 8000 Hz")
        return _Opening("PCMU", event.custom_parameters, event.stream_sid)

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

    label = "telnyx"

    def __init__(self) -> None:
        self.reorder = telnyx.MediaReorder()

    def parse(self, text: str) -> Any:
        return telnyx.parse(text)

    def opening(self, event: Any) -> _Opening | None:
        if not isinstance(event, telnyx.Start):
            return None
        if event.encoding not in ("PCMU", "PCMA") or event.sample_rate != 8000:
            raise telnyx.ProtocolError("only PCMU or PCMA at 8000 Hz")
        return _Opening(event.encoding, event.custom_parameters, event.stream_id)

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


async def _json_stream(
    request: web.Request, adapter: _TwilioAdapter | _TelnyxAdapter
) -> web.WebSocketResponse:
    """A provider stream of JSON text frames carrying G.711 (Twilio, Telnyx)."""
    node: MediaNode = request.app["node"]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    call: ProviderCall | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                event = adapter.parse(msg.data)
                opening = adapter.opening(event) if call is None else None
            except twilio.ProtocolError as exc:
                await ws.close(code=1003, message=str(exc)[:120].encode())
                break
            if opening is not None:
                qid = opening.params.get("queueId") or request.query.get("queueId")
                routed = await _claim(node, ws, qid, adapter.label)
                if routed is None:
                    break
                g711 = G711Codec(opening.encoding)

                async def send(pcm: bytes, g711: G711Codec = g711, o: _Opening = opening) -> None:
                    for payload in g711.encode(pcm, SAMPLE_RATE):
                        await ws.send_str(adapter.media_message(o, payload))

                call = ProviderCall(
                    node,
                    qid or "",
                    routed,
                    f"{opening.encoding}/8000",
                    lambda p, g711=g711: g711.decode(p, 0, SAMPLE_RATE),
                    send,
                )
                call.begin()
                call.tasks.append(asyncio.create_task(_watch_hangup(call, ws)))
            elif call is None:
                continue
            elif isinstance(event, twilio.Dtmf):
                call.agent.on_dtmf(event.digit)
            elif isinstance(event, twilio.Stop):
                for payload in adapter.flush():
                    call.on_payload(payload)
                break
            else:
                for payload in adapter.payloads(event):
                    call.on_payload(payload)
                call.lost = adapter.lost()
    finally:
        if call is not None:
            call.end()
        if not ws.closed:
            await ws.close()
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
    node: MediaNode = request.app["node"]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    call: ProviderCall | None = None
    buffer = bytearray()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and call is None:
                try:
                    opened = vonage.parse_first(msg.data)
                except vonage.ProtocolError as exc:
                    await ws.close(code=1003, message=str(exc)[:120].encode())
                    break
                if opened.rate not in (8000, 16000):
                    await ws.close(code=1003, message=b"L16 at 8 or 16 kHz only")
                    break
                qid = opened.headers.get("queueId") or request.query.get("queueId")
                routed = await _claim(node, ws, qid, "vonage")
                if routed is None:
                    break

                rate = opened.rate

                async def send(pcm: bytes, rate: int = rate) -> None:
                    # 20 ms binary frames, paced by the session; 8 kHz legs get every
                    # second sample of our 16 kHz audio
                    await ws.send_bytes(pcm if rate == SAMPLE_RATE else _half(pcm))

                call = ProviderCall(
                    node,
                    qid or "",
                    routed,
                    f"L16/{rate}",
                    lambda p, rate=rate: _resample(p, rate),
                    send,
                )
                call.begin()
                call.tasks.append(asyncio.create_task(_watch_hangup(call, ws)))
            elif msg.type == WSMsgType.BINARY and call is not None:
                buffer.extend(msg.data)
                size = vonage.FRAME_BYTES if call.codec == "L16/16000" else vonage.FRAME_BYTES // 2
                for frame in vonage.frames(buffer, size):
                    call.on_payload(frame)
    finally:
        if call is not None:
            call.end()
        if not ws.closed:
            await ws.close()
    return ws


def build_app(node: MediaNode) -> web.Application:
    app = web.Application()
    app["node"] = node
    app.router.add_get("/twilio", twilio_stream)
    app.router.add_get("/telnyx", telnyx_stream)
    app.router.add_get("/vonage", vonage_stream)
    return app
