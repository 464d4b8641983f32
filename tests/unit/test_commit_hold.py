"""Faust never commits over a record its agents did not get (streams/patches.py, patch 4).

Faust's own `Consumer._new_offset` runs here on the bookkeeping it keeps (acked offsets,
gaps, the committed offset); the patch only adds the records still in flight.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as fc
from faust.types import TP
from intervaltree import IntervalTree

from streams import patches

patches.apply()
TOPIC = TP("trunkline.admission", 0)


def bookkeeping(committed: int | None, acked: list[int], in_flight: list[int]) -> Any:
    held = patches.InFlight()
    if in_flight:
        held.by_tp[TOPIC] = set(in_flight)
    c = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
        _tl_in_flight=held,
    )
    c._committed_offset[TOPIC] = committed
    c._acked[TOPIC] = list(acked)
    c._acked_index[TOPIC] = set(acked)
    return c


def new_offset(c: Any) -> int | None:
    return fc.Consumer._new_offset(c, TOPIC)


def test_the_defect_faust_alone_commits_over_the_committed_offset_when_it_was_never_acked():
    # the traced loss: 592 committed (next to read), 592 dropped, 593 acked -> Faust says 594
    c = bookkeeping(592, [593], in_flight=[])
    assert new_offset(c) == 594


def test_a_record_in_flight_at_the_committed_offset_holds_the_commit_and_keeps_the_acks():
    c = bookkeeping(592, [593, 594], in_flight=[592])
    assert new_offset(c) is None or new_offset(c) <= 592
    assert c._acked[TOPIC] == [593, 594]
    assert c._acked_index[TOPIC] == {593, 594}
    # once 592 comes back from the agents and is acked, everything commits at once
    c._tl_in_flight.by_tp[TOPIC].discard(592)
    c._acked[TOPIC].insert(0, 592)
    c._acked_index[TOPIC].add(592)
    assert new_offset(c) == 595


def test_acks_below_a_record_in_flight_commit_up_to_it_and_no_further():
    c = bookkeeping(100, [100, 101, 102, 104, 105], in_flight=[103])
    assert new_offset(c) == 103
    assert c._acked[TOPIC] == [104, 105]


def test_a_gap_past_the_record_in_flight_does_not_carry_the_commit_over_it():
    # Faust fills 101..109 from its gap bookkeeping (offsets it believes hold no record)
    c = bookkeeping(100, [100, 104], in_flight=[105])
    c._gap[TOPIC].addi(101, 110)
    assert new_offset(c) == 105


def test_with_nothing_in_flight_faust_decides_alone():
    c = bookkeeping(10, [10, 11, 12, 14], in_flight=[])
    assert new_offset(c) == 13
    assert new_offset(bookkeeping(10, [], in_flight=[])) is None


class Msg(SimpleNamespace):
    tp: TP
    offset: int


def test_a_delivery_cut_off_before_its_first_step_stays_in_flight():
    asyncio.run(cut_off_before_its_first_step())


async def cut_off_before_its_first_step() -> None:
    held = patches.InFlight()
    got: list[int] = []

    async def deliver(message: Any) -> None:
        got.append(message.offset)

    cb = held.wrap(deliver)
    cut = asyncio.ensure_future(cb(Msg(tp=TOPIC, offset=7)))
    cut.cancel()  # what wait_first does when suspend_flow wins before the task ran
    with pytest.raises(asyncio.CancelledError):
        await cut
    await cb(Msg(tp=TOPIC, offset=8))
    assert got == [8]
    assert held.lowest(TOPIC) == 7
    assert held.limit(TOPIC, 9) == 7
    assert held.limit(TOPIC, 5) == 5
    held.forget()
    assert held.lowest(TOPIC) is None and held.limit(TOPIC, 9) == 9


def test_a_delivery_cut_off_while_waiting_for_flow_control_stays_in_flight():
    asyncio.run(cut_off_while_waiting())


async def cut_off_while_waiting() -> None:
    held = patches.InFlight()
    flow = asyncio.Event()
    parked = asyncio.Event()

    async def deliver(message: Any) -> None:
        parked.set()
        await flow.wait()

    cb = held.wrap(deliver)
    task = asyncio.ensure_future(cb(Msg(tp=TOPIC, offset=3)))
    await parked.wait()  # the delivery now waits on flow control
    assert held.lowest(TOPIC) == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert held.lowest(TOPIC) == 3
    done = asyncio.ensure_future(cb(Msg(tp=TOPIC, offset=4)))
    flow.set()
    await done
    assert held.by_tp[TOPIC] == {3}


def test_faust_still_hands_records_over_the_way_the_patch_expects():
    """An upgrade that changes these internals must fail here, not drop records silently."""
    drain = inspect.getsource(fc.Consumer._drain_messages)
    assert "callback = self.callback" in drain
    assert "callback(message), self.suspend_flow.wait()" in drain
    assert "set_read_offset(tp, offset)" in drain
    assert "getmany = self.getmany" in drain
    assert "getmany(timeout=1.0)" in drain
    assert "gap > 1 and r_offset" in drain  # the jump it counts as handled
    getmany = inspect.getsource(patches_original("getmany"))
    assert "records, active_partitions = await self._wait_next_records(timeout)" in getmany
    assert "if not self.flow_active:" in getmany  # where it leaves a batch unfinished
    assert getattr(fc.Consumer._new_offset, "__qualname__", "").startswith(
        "hold_commits_at_undelivered"
    )
    for name in ("__init__", "perform_seek", "seek", "getmany", "_wait_next_records"):
        assert getattr(getattr(fc.Consumer, name), "__qualname__", "").startswith(
            "deliver_in_order"
        ), name
    for name in ("_is_changelog_tp", "earliest_offsets", "assignment", "_read_offset"):
        assert name in inspect.getsource(fc.Consumer) or hasattr(fc.Consumer, name), name


def patches_original(name: str) -> Any:
    """Faust's own method `name` (the patch keeps it in its closure)."""
    patched = getattr(fc.Consumer, name)
    for cell in patched.__closure__ or ():
        value = cell.cell_contents
        if callable(value) and getattr(value, "__name__", "") == name:
            return value
    raise AssertionError(f"Faust's {name} is not in the patch's closure")


def test_faust_drain_cut_by_a_rebalance_no_longer_leads_to_a_commit_over_the_dropped_record():
    """The whole mechanism through Faust's own `_drain_messages`: the record at the
    committed offset waits on flow control when a rebalance suspends the flow, so Faust
    drops it, while the next record still gets through. Without the patch the commit
    that follows passes the dropped record (592 committed, 593 acked: 594)."""
    asyncio.run(drain_cut_by_a_rebalance())


async def drain_cut_by_a_rebalance() -> None:
    from mode import Service

    parked = asyncio.Event()
    delivered: list[int] = []

    async def deliver(message: Any) -> None:
        if message.offset == 592:
            parked.set()
            await asyncio.Event().wait()  # flow control that never opens in time
        delivered.append(message.offset)

    batch = [(TOPIC, Msg(tp=TOPIC, offset=592)), (TOPIC, Msg(tp=TOPIC, offset=593))]
    stopped = asyncio.Event()

    async def getmany(timeout: float) -> Any:
        if stopped.is_set():
            return
        for item in batch:
            yield item
        stopped.set()

    c = bookkeeping(592, [], in_flight=[])
    c._read_offset = defaultdict(lambda: None)
    c._read_offset[TOPIC] = 592  # Faust's seek: the committed offset, next to read
    c.callback = c._tl_in_flight.wrap(deliver)
    c.getmany = getmany
    c._stopped = stopped
    c._crashed = asyncio.Event()
    c.loop = asyncio.get_running_loop()
    c.suspend_flow = asyncio.Event()
    c.diag = SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
    c._commit_every = None
    c.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: True))
    c.should_stop = False
    c.consumer_stopped_errors = ()
    c.wait_first = Service.wait_first.__get__(c)

    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    c.sleep = no_sleep
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    drain = asyncio.ensure_future(fc.Consumer._drain_messages(c, fetcher))
    await parked.wait()
    c.suspend_flow.set()  # the rebalance: Consumer.stop_flow()
    await drain

    assert delivered == [593]  # 592 dropped, 593 handed over
    assert c._read_offset[TOPIC] == 593  # Faust will not read 592 again by itself
    c._acked[TOPIC] = [593]  # the agent handled 593
    c._acked_index[TOPIC] = {593}
    assert fc.Consumer._new_offset(c, TOPIC) is None  # held: 592 is read again after the seek
    assert c._acked[TOPIC] == [593]
