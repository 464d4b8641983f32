"""The media node waits for an assignment still in flight: woken when one arrives, until
the call machine's wait ends (its timer, fired by the node's clock)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from media.call import Call, Input, State
from media.node import MediaNode
from media.queue import Assignments, check_claim, queue_id_from


def _node() -> SimpleNamespace:
    node = SimpleNamespace(_pulse=asyncio.Event(), clock=time.monotonic)
    node.wake = lambda: MediaNode.wake(node)  # type: ignore[arg-type]
    return node


def _waiting(wait_s: float) -> Call:
    call = Call("c", time.monotonic(), wait_s=wait_s)
    call.handle(Input.WAIT, time.monotonic(), status=404, why="not here")
    return call


async def _timer(node: SimpleNamespace, call: Call) -> None:
    """The node's clock: fire the call's timer at its deadline."""
    while call.state is not State.ENDED:
        await asyncio.sleep(0.01)
        if call.deadline is not None and time.monotonic() >= call.deadline:
            call.expire(time.monotonic())
            node.wake()


def test_an_assignment_that_arrives_later_is_picked_up_when_it_arrives():
    async def run() -> tuple[object, float]:
        node, call, book = _node(), _waiting(5.0), Assignments()

        async def arrive() -> None:
            await asyncio.sleep(0.2)
            book.add({"envelope": {"call_id": "q-1"}, "provider_call_id": "abc@host"})
            node.wake()

        asyncio.get_running_loop().create_task(arrive())
        t0 = time.monotonic()
        found = await MediaNode.await_entry(node, call, lambda: book.get("q-1"))  # type: ignore[arg-type]
        return found, time.monotonic() - t0

    found, waited = asyncio.run(run())
    assert found == {"envelope": {"call_id": "q-1"}, "provider_call_id": "abc@host"}
    assert 0.15 <= waited < 1.0  # woken by the arrival, not by a poll or the deadline


def test_an_assignment_that_never_arrives_ends_with_the_machines_wait():
    async def run() -> tuple[object, float, Call]:
        node, call = _node(), _waiting(0.3)
        timer = asyncio.get_running_loop().create_task(_timer(node, call))
        t0 = time.monotonic()
        found = await MediaNode.await_entry(node, call, lambda: None)  # type: ignore[arg-type]
        await timer
        return found, time.monotonic() - t0, call

    found, waited, call = asyncio.run(run())
    assert found is None and call.state is State.ENDED
    assert 0.25 <= waited < 2.0


def test_an_assignment_already_here_is_not_waited_for():
    async def run() -> float:
        t0 = time.monotonic()
        found = await MediaNode.await_entry(_node(), _waiting(2.0), lambda: "q-2")  # type: ignore[arg-type]
        assert found == "q-2"
        return time.monotonic() - t0

    assert asyncio.run(run()) < 0.05


def test_a_cancelled_call_keeps_waiting_for_its_entry_past_the_assignment_wait():
    async def run() -> object:
        node, call, book = _node(), _waiting(0.1), Assignments()
        call.handle(Input.CANCEL, time.monotonic())
        timer = asyncio.get_running_loop().create_task(_timer(node, call))

        async def arrive() -> None:
            await asyncio.sleep(0.4)  # after the 0.1 s assignment wait
            book.add({"envelope": {"call_id": "q-3"}})
            node.wake()

        asyncio.get_running_loop().create_task(arrive())
        found = await MediaNode.await_entry(node, call, lambda: book.get("q-3"))  # type: ignore[arg-type]
        timer.cancel()
        return found

    assert asyncio.run(run()) == {"envelope": {"call_id": "q-3"}}


def test_assignments_by_queue_id_and_by_call_id_and_expiry():
    book = Assignments()
    book.add({"envelope": {"call_id": "q-1"}, "provider_call_id": "x@y", "redirect_deadline": 10})
    assert book.by_provider_call == {"x@y": "q-1"}
    assert book.expired(10 + 60_000) == [] and book.expired(10 + 60_001) == ["q-1"]
    book.discard("q-1")
    assert book.get("q-1") is None and book.by_provider_call == {}


def test_a_call_finds_its_entry_by_queue_id_or_by_the_call_id_the_edge_saw():
    book = Assignments()
    record = {"envelope": {"call_id": "q-1"}, "provider_call_id": "abc@ua"}
    book.add(record)
    assert book.find("q-1") == ("q-1", record)
    assert book.find(None, "abc@ua") == ("q-1", record)
    assert book.find("q-9", "abc@ua") is None  # a named entry is the one looked for
    assert book.find(None, "other@ua") is None


ROUTED = {"backend_id": "backend-1", "region_id": "us-east-1", "provider": "TWILIO"}


def _check(routed=ROUTED, provider="TWILIO", processing=(), active=0, capacity=2):
    return check_claim(
        "q-1",
        routed,
        provider,
        server_id="backend-1",
        region_id="us-east-1",
        processing=processing,
        active=active,
        capacity=capacity,
    )


def test_the_queue_checks_in_order():
    assert _check() is None
    assert _check({**ROUTED, "backend_id": "backend-2"}) == (
        403,
        "queue entry q-1 belongs to backend-2",
    )
    assert _check({**ROUTED, "region_id": "eu"})[0] == 403
    assert _check(provider="SIP") == (403, "queue entry q-1 is a TWILIO call, not a SIP one")
    assert _check({**ROUTED, "provider": None}, "SIP") is None  # older records: SIP
    assert _check(processing={"q-1"}) == (486, "queue entry q-1 is already being processed")
    assert _check(active=2) == (503, "node at capacity")


def test_a_provider_names_its_entry_by_call_queue_id_then_queue_id():
    assert queue_id_from({"callQueueId": "a", "queueId": "b"}) == "a"
    assert queue_id_from({"queueId": "b"}, {"callQueueId": "c"}) == "b"
    assert queue_id_from({}, {"callQueueId": "c"}) == "c"
    assert queue_id_from({"callQueueId": ""}, {}) is None
