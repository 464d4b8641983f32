"""The `websocket` agent against an agent server in this process that speaks Twilio's
Media Streams (the agent plays Twilio's part): the caller's DTMF is forwarded as `dtmf`,
and the server's `clear` drops the audio queued to play and sends its pending marks back
at once, as Twilio does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from media.agents.base import SILENCE, CallInfo
from media.agents.websocket import WebSocketAgent
from media.providers import twilio
from tests.harness import free_port


class AgentServer:
    """Records what the agent sends; `say` sends what the test wants to the agent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.ws: web.WebSocketResponse | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        async for msg in ws:
            self.received.append(json.loads(msg.data))
        return ws

    async def say(self, *messages: str) -> None:
        assert self.ws is not None
        for m in messages:
            await self.ws.send_str(m)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == kind]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def with_agent(test: Callable[[WebSocketAgent, AgentServer], Awaitable[None]]) -> None:
    async def main() -> None:
        server = AgentServer()
        app = web.Application()
        app.router.add_get("/agent", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        agent = WebSocketAgent()
        agent.start(
            CallInfo("q-1", "b-1", "+1555", "+1666", {"url": f"ws://127.0.0.1:{port}/agent"})
        )
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.connected and server.events("start") != [])
            await test(agent, server)
        finally:
            task.cancel()
            await runner.cleanup()

    asyncio.run(main())


def mulaw_frame(value: int) -> str:
    """20 ms of constant mu-law from the server (a media message)."""
    return twilio.media_message("MZ", bytes([value]) * 160)


def test_dtmf_is_forwarded_to_the_agent_server():
    async def test(agent: WebSocketAgent, server: AgentServer) -> None:
        agent.on_dtmf("7")
        agent.on_dtmf("#")
        await until(lambda: len(server.events("dtmf")) == 2)
        first, second = server.events("dtmf")
        assert first["streamSid"] == agent.stream_sid
        assert first["dtmf"] == {"track": "inbound_track", "digit": "7"}
        assert second["dtmf"]["digit"] == "#"
        assert int(second["sequenceNumber"]) > int(first["sequenceNumber"])
        assert agent.dtmf_seen == ["7", "#"]
        assert not agent.hangup_requested  # unlike the greeting agent, '#' is just a key

    with_agent(test)


def test_the_start_names_the_call_by_call_queue_id_and_its_alias():
    async def test(agent: WebSocketAgent, server: AgentServer) -> None:
        params = server.events("start")[0]["start"]["customParameters"]
        assert params["callQueueId"] == params["queueId"] == "q-1"

    with_agent(test)


def test_clear_drops_the_queued_audio_and_returns_the_pending_marks():
    async def test(agent: WebSocketAgent, server: AgentServer) -> None:
        await server.say(
            mulaw_frame(0x00),
            twilio.mark_message("MZ", "first"),
            mulaw_frame(0x00),
            mulaw_frame(0x00),
            twilio.mark_message("MZ", "second"),
        )
        await until(lambda: len(agent._play) == 5)
        assert agent.next_frame() != SILENCE  # the first 20 ms plays
        # the "first" mark is reached as the next frame is taken: it comes back as played
        assert agent.next_frame() != SILENCE
        await until(lambda: [m["mark"]["name"] for m in server.events("mark")] == ["first"])
        await server.say(json.dumps({"event": "clear", "streamSid": "MZ"}))
        # the pending mark comes back at once, without its audio having played
        await until(
            lambda: [m["mark"]["name"] for m in server.events("mark")] == ["first", "second"]
        )
        assert agent.next_frame() == SILENCE  # the queued frame is gone

    with_agent(test)


def test_audio_after_a_clear_plays_again():
    async def test(agent: WebSocketAgent, server: AgentServer) -> None:
        after = agent.codec.decode(bytes([0x10]) * 160, 0, 16000)
        await server.say(mulaw_frame(0x00), json.dumps({"event": "clear"}), mulaw_frame(0x10))
        await until(lambda: list(agent._play) == [after])
        assert agent.next_frame() == after != SILENCE

    with_agent(test)


def test_a_server_message_of_the_wrong_shape_ends_the_agent_and_so_the_call():
    async def test(agent: WebSocketAgent, server: AgentServer) -> None:
        await server.say(json.dumps(["media"]))
        await until(lambda: agent.hangup_requested)
        assert not agent.connected

    with_agent(test)
