"""Provider media WebSockets on the media node. Twilio Media Streams at `/twilio`; the
queue id comes from the stream's `customParameters.queueId` (our TwiML sets it with
`<Parameter name="queueId" .../>`) or the URL's `?queueId=`, and is checked like a SIP
INVITE's. Telnyx and Vonage endpoints are not built yet."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from media.agents import make_agent
from media.agents.base import FRAME_BYTES, SAMPLE_RATE, CallInfo
from media.codecs import G711Codec
from media.providers import twilio

if TYPE_CHECKING:
    from media.node import MediaNode

log = logging.getLogger("trunkline.media.ws")


class TwilioCall:
    def __init__(
        self,
        node: MediaNode,
        queue_id: str,
        routed: dict[str, Any],
        start: twilio.Start,
        ws: web.WebSocketResponse,
    ) -> None:
        self.node, self.queue_id, self.routed, self.start, self.ws = (
            node,
            queue_id,
            routed,
            start,
            ws,
        )
        self.codec = G711Codec("PCMU")
        self.agent = make_agent(routed.get("agent") or "greeting")
        self.accepted_at = self.answered_at = time.time()
        self.sent = self.received = self.lost = 0
        self.last_seq: int | None = None
        self.side = "caller"

    def on_media(self, m: twilio.Media) -> None:
        if m.track not in ("inbound", ""):
            return
        if self.last_seq is not None and m.sequence_number > self.last_seq + 1:
            self.lost += m.sequence_number - self.last_seq - 1
        self.last_seq = m.sequence_number
        self.received += 1
        pcm = self.codec.decode(m.payload, m.timestamp, SAMPLE_RATE)
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self.agent.on_audio(pcm[i : i + FRAME_BYTES])

    async def send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.ws.closed:
            if self.agent.hangup_requested:
                self.side = "agent"
                await self.ws.close()
                return
            for payload in self.codec.encode(self.agent.next_frame(), SAMPLE_RATE):
                await self.ws.send_str(twilio.media_message(self.start.stream_sid, payload))
                self.sent += 1
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def stats(self) -> dict[str, Any]:
        return {
            "packets_sent": self.sent,
            "packets_received": self.received,
            "packets_lost": self.lost,
            "jitter_ms": 0.0,
        }


async def twilio_stream(request: web.Request) -> web.WebSocketResponse:
    node: MediaNode = request.app["node"]
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    call: TwilioCall | None = None
    sender: asyncio.Task[None] | None = None
    agent_task: asyncio.Task[None] | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                event = twilio.parse(msg.data)
            except twilio.ProtocolError as exc:
                log.warning("twilio stream: %s", exc)
                await ws.close(code=1003, message=str(exc)[:120].encode())
                break
            if isinstance(event, twilio.Start) and call is None:
                if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
                    await ws.close(code=1003, message=b"only audio/x-mulaw at 8000 Hz")
                    break
                qid = event.custom_parameters.get("queueId") or request.query.get("queueId")
                claimed = await node.claim(qid) if qid else (404, "Not Found", "no queueId")
                if isinstance(claimed, tuple):
                    status, _, why = claimed
                    log.info("refusing stream %s: %s %s", event.stream_sid, status, why)
                    await ws.close(code=1008, message=f"{status} {why}"[:120].encode())
                    break
                call = TwilioCall(node, qid or "", claimed, event, ws)
                node.ws_calls[call.queue_id] = call
                call.agent.start(
                    CallInfo(
                        call.queue_id,
                        claimed["business_id"],
                        "",
                        "",
                        dict(claimed.get("agent_options") or {}),
                    )
                )
                agent_task = asyncio.create_task(call.agent.run())
                node.publish_accepted(call.queue_id, claimed, call.accepted_at)
                node.publish_answered(call.queue_id, call.answered_at, "PCMU/8000")
                sender = asyncio.create_task(call.send_loop())
            elif call is None:
                continue
            elif isinstance(event, twilio.Media):
                call.on_media(event)
            elif isinstance(event, twilio.Dtmf):
                call.agent.on_dtmf(event.digit)
            elif isinstance(event, twilio.Stop):
                break
    finally:
        for task in (sender, agent_task):
            if task is not None:
                task.cancel()
        if call is not None:
            node.ws_calls.pop(call.queue_id, None)
            node.publish_ended(
                call.queue_id,
                call.routed,
                "completed",
                call.side,
                time.time(),
                call.accepted_at,
                call.answered_at,
                "PCMU/8000",
                call.stats(),
            )
        if not ws.closed:
            await ws.close()
    return ws


def build_app(node: MediaNode) -> web.Application:
    app = web.Application()
    app["node"] = node
    app.router.add_get("/twilio", twilio_stream)
    return app
