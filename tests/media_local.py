"""A media node in the test's own process, for tests that drive it through its sockets
without Kafka: its records are caught (decoded) instead of produced, and its assignments
are handed in. Its SIP and WebSocket ports are free localhost ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from edge.sip.transport import Listen
from media.node import MediaNode, NodeConfig
from schemas import SingleObjectCodec
from tests.harness import free_port
from tests.samples import sample
from trunkline.core.settings import Settings

CODEC = SingleObjectCodec()


class Caught:
    """The node's publisher, keeping (topic, record name, record) instead of producing."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        assert value is not None
        name, record = CODEC.decode(value)
        if name != "BackendHeartbeat":
            self.records.append((topic, name, record))

    def close(self) -> None:
        pass

    def history(self, queue_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (name, r)
            for topic, name, r in self.records
            if topic.endswith("call-events") and r["envelope"]["call_id"] == queue_id
        ]


class Node:
    def __init__(self, node: MediaNode, caught: Caught, ws_port: int) -> None:
        self.node, self.caught, self.ws_port = node, caught, ws_port

    def assign(self, queue_id: str, provider: str = "SIP") -> None:
        routed = sample("CallRouted", call_id=queue_id)
        routed.update(
            backend_id="backend-1",
            region_id="us-east-1",
            provider=provider,
            redirect_deadline=MediaNode.wall_ms() + 60_000,
        )
        self.node.assign(CODEC.encode("CallRouted", routed))

    @property
    def sip_port(self) -> int:
        return self.node.config.listen.port

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "condition never held"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running_node(wait_s: float = 0.3, **config: Any) -> AsyncIterator[Node]:
    caught = Caught()
    ws_port = free_port()
    node = MediaNode(
        Settings.from_env({"TRUNKLINE_TOPIC_PREFIX": "t."}),
        NodeConfig(
            "backend-1",
            "us-east-1",
            Listen("127.0.0.1", free_port()),
            ws_listen=Listen("127.0.0.1", ws_port),
            assignment_wait_s=wait_s,
            heartbeat_interval_s=60,
            **config,
        ),
        out=caught,
    )
    await node.start(follow_assignments=False)
    try:
        yield Node(node, caught, ws_port)
    finally:
        await node.stop()


def run(test: Callable[[Node], Awaitable[None]], wait_s: float = 0.3, **config: Any) -> None:
    async def main() -> None:
        async with running_node(wait_s, **config) as node:
            await test(node)

    asyncio.run(main())
