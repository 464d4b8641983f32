"""`websocket`: bridges the call to an external agent over a WebSocket that speaks the
Twilio Media Streams format, playing Twilio's part, so voice-agent frameworks that serve
Twilio's protocol attach unchanged. The route's `agentOptions.url` names the server.

We send `connected`, `start` (customParameters: callQueueId, and queueId as an alias,
businessId, from, to), `media`
(the caller, mu-law 8 kHz, 20 ms), `dtmf`, `stop`; the server sends `media` (played in
order), `mark` (sent back once the audio queued before it has played) and `clear` (drops
queued audio; pending marks come back at once, as Twilio does).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque

import aiohttp

from media.agents.base import FRAME_BYTES, SAMPLE_RATE, SILENCE, Agent, CallInfo
from media.codecs import G711Codec
from media.providers import twilio
from media.providers.base import ProtocolError

log = logging.getLogger("trunkline.agents.websocket")


class WebSocketAgent(Agent):
    def __init__(self) -> None:
        super().__init__()
        self.codec = G711Codec("PCMU")
        self.url = ""
        self.call: CallInfo | None = None
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self._up: deque[bytes | str] = deque()  # caller audio frames and dtmf digits
        self._play: deque[bytes | twilio.Mark] = deque()
        self._marks_due: deque[str] = deque()
        self._wake = asyncio.Event()
        self.connected = False

    def start(self, call: CallInfo) -> None:
        self.call = call
        self.url = call.options.get("url", "")
        if not self.url:
            log.error("call %s: websocket agent without agentOptions.url", call.call_id)
            self.hang_up()

    def on_audio(self, frame: bytes) -> None:
        if self.connected:
            self._up.append(frame)
            self._wake.set()

    def on_dtmf(self, digit: str) -> None:
        super().on_dtmf(digit)
        self._up.append(digit)
        self._wake.set()

    def next_frame(self) -> bytes:
        while self._play:
            item = self._play.popleft()
            if isinstance(item, twilio.Mark):
                self._marks_due.append(item.name)
                self._wake.set()
                continue
            return item
        return SILENCE

    def clear(self) -> None:
        for item in self._play:
            if isinstance(item, twilio.Mark):
                self._marks_due.append(item.name)
        self._play.clear()
        self._wake.set()

    async def run(self) -> None:
        call = self.call
        if call is None or not self.url:
            return
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(self.url) as ws:
                await ws.send_str(twilio.connected_message())
                await ws.send_str(
                    twilio.start_message(
                        self.stream_sid,
                        call.call_id,
                        {
                            "callQueueId": call.call_id,
                            "queueId": call.call_id,  # the name before issue 13, kept
                            "businessId": call.business_id,
                            "from": call.from_number,
                            "to": call.to_number,
                        },
                    )
                )
                self.connected = True
                sender = asyncio.create_task(self._send(ws))
                try:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        self._receive(msg.data)
                finally:
                    sender.cancel()
        except (aiohttp.ClientError, OSError, ProtocolError) as exc:
            log.error("call %s: agent at %s: %s", call.call_id, self.url, exc)
        finally:
            self.connected = False
            self.hang_up()  # the agent went away: end the call

    def _receive(self, text: str) -> None:
        event = twilio.parse_outbound(text)
        if isinstance(event, twilio.Clear):
            self.clear()
        elif isinstance(event, twilio.Mark):
            self._play.append(event)
        else:
            pcm = self.codec.decode(event.payload, 0, SAMPLE_RATE)
            for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
                self._play.append(pcm[i : i + FRAME_BYTES])

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        seq, chunk = 2, 1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._marks_due:
                await ws.send_str(twilio.mark_message(self.stream_sid, self._marks_due.popleft()))
            while self._up:
                item = self._up.popleft()
                if isinstance(item, str):
                    await ws.send_str(twilio.dtmf_message(self.stream_sid, seq, item))
                else:
                    for payload in self.codec.encode(item, SAMPLE_RATE):
                        await ws.send_str(
                            twilio.inbound_media_message(
                                self.stream_sid, seq, chunk, (chunk - 1) * 20, payload
                            )
                        )
                        chunk += 1
                seq += 1
