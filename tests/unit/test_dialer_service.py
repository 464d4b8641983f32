"""The dialer service's hand-off of an answer to the API requests waiting for it (the
machine itself is tested on a hand-held clock in test_dialer.py): each waiting request
gets the answer in the loop iteration after the dialer learns it, a request with no
answer in time gets None, and a request that goes away leaves the others waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from edge.dialer.machine import Reply
from edge.dialer.service import DialerService
from schemas.codec import SingleObjectCodec

PLACED = Reply("q-1", "placed", 201, "")


def service() -> DialerService:
    svc = DialerService(
        "webhook-1",
        public_url="http://edge.test",
        codec=SingleObjectCodec(),
        out=None,  # type: ignore[arg-type]  # nothing here publishes
        topics={},
        accounts=lambda account_id: None,
        kinds=dict,
        decision_timeout=5.0,
        retention=600.0,
        bootstrap="",
    )
    svc.loop = asyncio.get_running_loop()
    return svc


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_waiting_requests_get_the_answer_in_the_next_loop_iteration() -> None:
    async def main() -> None:
        svc = service()
        first = asyncio.create_task(svc.reply("q-1", 30))
        second = asyncio.create_task(svc.reply("q-1", 30))
        await asyncio.sleep(0)  # both wait now
        assert not first.done() and len(svc.waiters["q-1"]) == 2
        svc.apply([PLACED])
        await asyncio.sleep(0)  # one iteration
        assert first.done() and second.done()
        assert first.result() is PLACED and second.result() is PLACED
        assert svc.waiters == {}

    run(main())


def test_a_known_answer_is_returned_at_once() -> None:
    async def main() -> None:
        svc = service()
        svc.machine.replies["q-1"] = PLACED
        assert await svc.reply("q-1", 30) is PLACED
        assert svc.waiters == {}

    run(main())


def test_no_answer_in_time_is_none_and_leaves_no_waiter() -> None:
    async def main() -> None:
        svc = service()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await svc.reply("q-1", 0.05) is None
        assert loop.time() - started >= 0.05
        assert svc.waiters == {}
        svc.apply([PLACED])  # a late answer finds nobody waiting, and nothing breaks

    run(main())


def test_a_request_that_goes_away_leaves_the_others_waiting() -> None:
    async def main() -> None:
        svc = service()
        gone = asyncio.create_task(svc.reply("q-1", 30))
        stays = asyncio.create_task(svc.reply("q-1", 30))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert gone.cancelled() and len(svc.waiters["q-1"]) == 1
        svc.apply([PLACED])
        assert await stays is PLACED
        assert svc.waiters == {}

    run(main())
