"""A real local HTTP receiver for lifecycle webhooks (aiohttp, its own thread and loop).

Every request is verified with the `standardwebhooks` package (an independent
implementation of the signature), recorded, and answered as the test's `behave(path, n)`
says: n is how many times this webhook-id has come to this path before. A behaviour may
hold a request until the test releases it (a subscriber that never answers).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay_s: float = 0.0
    hold: bool = False  # never answer until `release()`
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    webhook_id: str
    payload: dict[str, Any] | None  # None: the signature did not verify
    status: int
    at: float
    attempt: int  # 1-based, per (path, webhook-id), in order of arrival
    headers: dict[str, str]


class Receiver:
    def __init__(self, secret: str, port: int) -> None:
        self.hook = Webhook(secret)
        self.port = port
        self.seen: list[Seen] = []
        self.behave: Callable[[str, int, dict[str, Any] | None], Answer] = lambda p, n, b: Answer()
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._held = 0
        self._arrivals: dict[tuple[str, str], int] = {}
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            verified = self.hook.verify(body, headers)
        except WebhookVerificationError:
            verified = None
        path = request.match_info["path"]
        webhook_id = headers.get("webhook-id", "")
        with self._cond:  # n counts arrivals: a slow answer is recorded after a later one
            n = self._arrivals.get((path, webhook_id), 0)
            self._arrivals[(path, webhook_id)] = n + 1
        answer = self.behave(path, n, verified) if verified is not None else Answer(400)
        if answer.hold:
            with self._cond:
                self._held += 1
                self._cond.notify_all()
            assert self._release is not None
            await self._release.wait()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        with self._cond:
            self.seen.append(
                Seen(path, webhook_id, verified, answer.status, time.monotonic(), n + 1, headers)
            )
            self._cond.notify_all()
        return web.Response(status=answer.status, headers=answer.headers, text="ok")

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def release(self) -> None:
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def wait_for(self, check: Callable[[list[Seen]], bool], timeout: float, what: str) -> None:
        """Wait (on the receiver's own notifications, not a sleep) until `check(seen)`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; seen: "
                        + json.dumps([(s.path, s.webhook_id, s.status) for s in self.seen])[:3000]
                    )
                self._cond.wait(left)

    def accepted(self, path: str) -> list[Seen]:
        with self._cond:
            return [s for s in self.seen if s.path == path and 200 <= s.status < 300]

    def on(self, path: str) -> list[Seen]:
        with self._cond:
            return [s for s in self.seen if s.path == path]

    def stop(self) -> None:
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
