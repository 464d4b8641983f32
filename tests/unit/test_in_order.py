"""Records reach the agents in offset order, each once (streams/patches.py, patch 5).

The traced loss: a worker that took over a killed worker's partition (committed at 46)
got offers 315.. first, because Faust had pulled 46..314 out of the consumer while the
partition was not handed over yet; Faust's drain loop counted 47..314 as handled (a jump
in offsets, as compaction leaves) and the commit passed offers no agent had seen. Here
Faust's own `_drain_messages`, `seek` and `_new_offset` run over a fake log, with and
without the patch.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from faust.transport import consumer as fc
from faust.types import TP
from intervaltree import IntervalTree
from mode import Service

from streams import patches
from streams.patches import Sequencer, Verdict

patches.apply()
TOPIC = TP("trunkline.admission", 1)
KEY = (TOPIC.topic, TOPIC.partition)
CHANGELOG = TP("app-admission-slots-changelog", 1)


# -- the sequencer, pure ---------------------------------------------------------------


def started(position: int | None = 46) -> Sequencer:
    seq = Sequencer()
    seq.new_batch(generation=3)
    seq.start(3, {KEY: position})
    seq.new_batch(generation=3)
    return seq


def test_nothing_is_delivered_before_the_seek_that_ends_a_rebalance():
    seq = Sequencer()
    seq.new_batch(generation=3)
    assert seq.judge(KEY, 315) is Verdict.WAIT
    assert seq.judge(KEY, 46) is Verdict.WAIT
    seq.start(3, {KEY: 46})
    assert seq.judge(KEY, 46) is Verdict.DELIVER


def test_records_in_order_are_delivered_once():
    seq = started()
    assert [seq.judge(KEY, o) for o in (46, 47, 48)] == [Verdict.DELIVER] * 3
    assert seq.judge(KEY, 47) is Verdict.REPEAT
    assert seq.expected(KEY) == 49


def test_a_jump_asks_for_one_seek_back_and_drops_the_rest_of_its_batch():
    seq = started()
    assert seq.judge(KEY, 315) is Verdict.REWIND
    assert seq.judge(KEY, 316) is Verdict.SKIP
    assert seq.seeking(KEY, 46)
    seq.seek(KEY, 46)  # the patched seek tells the sequencer
    seq.new_batch(generation=3)
    assert seq.judge(KEY, 46) is Verdict.DELIVER
    assert seq.rewinding == {}


def test_a_jump_still_there_after_two_seeks_back_is_a_hole_in_the_log():
    seq = started(10)
    assert seq.judge(KEY, 50) is Verdict.REWIND
    seq.new_batch(generation=3)
    assert seq.judge(KEY, 50) is Verdict.REWIND
    seq.new_batch(generation=3)
    assert seq.judge(KEY, 50) is Verdict.HOLE  # records 10..49 are gone (retention)
    assert seq.hole_start(KEY) == 9
    assert seq.judge(KEY, 51) is Verdict.DELIVER


def test_a_new_generation_forgets_every_position():
    seq = started()
    seq.new_batch(generation=4)
    assert seq.judge(KEY, 46) is Verdict.WAIT


def test_a_partition_with_nothing_committed_takes_its_first_record():
    seq = started(None)
    assert seq.judge(KEY, 7) is Verdict.DELIVER
    assert seq.judge(KEY, 9) is Verdict.REWIND
    seq = started(46)
    seq.take_first(KEY)
    assert seq.judge(KEY, 500) is Verdict.DELIVER


# -- through Faust's drain loop ----------------------------------------------------------


class Rec(SimpleNamespace):
    offset: int


class Msg(SimpleNamespace):
    tp: TP
    offset: int


class FakeLog:
    """One partition holding offsets 0..last, read from `position` in batches of
    `batch`; `cut` hands over only that many records of the next batch (as Faust's
    getmany does when the flow stops), though the whole batch left the buffer."""

    def __init__(self, c: Any, position: int, last: int, batch: int = 10) -> None:
        self.c, self.position, self.last, self.batch = c, position, last, batch
        self.cut: int | None = None
        self.seeks: list[int] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        if self.position > self.last:
            self.c._stopped.set()
            return
        offsets = list(range(self.position, min(self.position + self.batch, self.last + 1)))
        self.position = offsets[-1] + 1  # out of the consumer's buffer
        self.c._tl_pulled = {TOPIC: [Rec(offset=o) for o in offsets]}
        cut, self.cut = self.cut, None
        for o in offsets[:cut]:
            yield TOPIC, Msg(tp=TOPIC, topic=TOPIC.topic, offset=o)
        await asyncio.sleep(0)


def consumer(committed: int, position: int, last: int, patched: bool) -> tuple[Any, FakeLog]:
    c = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
        _read_offset=defaultdict(lambda: None),
        _tl_in_flight=patches.InFlight(),
        _tl_sequencer=Sequencer(),
    )
    log = FakeLog(c, position, last)
    delivered: list[int] = []

    async def deliver(message: Any) -> None:
        delivered.append(message.offset)
        c._acked[TOPIC].append(message.offset)  # the agent handled it
        c._acked_index[TOPIC].add(message.offset)

    c.delivered = delivered
    c._committed_offset[TOPIC] = committed
    c._read_offset[TOPIC] = committed  # Faust's perform_seek: the committed offset
    c._tl_sequencer.new_batch(generation=3)
    c._tl_sequencer.start(3, {KEY: committed})
    c.callback = c._tl_in_flight.wrap(deliver)
    c._seek = log.seek
    c.seek = fc.Consumer.seek.__get__(c)  # the patched chain, down to Faust's own seek
    c.log = SimpleNamespace(dev=lambda *a, **k: None, exception=print)
    c._is_changelog_tp = lambda tp: tp.topic == CHANGELOG.topic
    c.getmany = (
        (lambda timeout: patches.in_order(c, log.getmany(timeout))) if patched else (log.getmany)
    )
    c._stopped = asyncio.Event()
    c._crashed = asyncio.Event()
    c.suspend_flow = asyncio.Event()
    c.diag = SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
    c._commit_every = None
    c.app = SimpleNamespace(
        topics=SimpleNamespace(acks_enabled_for=lambda t: True), consumer_generation_id=3
    )
    c.should_stop = False
    c.consumer_stopped_errors = ()

    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    c.sleep = no_sleep
    return c, log


async def drain(c: Any) -> None:
    c.loop = asyncio.get_running_loop()
    c.wait_first = Service.wait_first.__get__(c)
    c._add_gap = fc.Consumer._add_gap.__get__(c)
    await fc.Consumer._drain_messages(c, SimpleNamespace(_stopped=asyncio.Event()))


def test_the_defect_faust_alone_hands_over_a_jump_and_commits_over_what_it_skipped():
    c, _ = consumer(committed=46, position=315, last=330, patched=False)
    asyncio.run(drain(c))
    assert c.delivered == list(range(315, 331))  # 46..314 never reach the agents
    assert sorted(c._gap[TOPIC])[0].begin == 47  # counted as handled
    # the commit passes 46..314, none of which any agent handled
    assert fc.Consumer._new_offset(c, TOPIC) == 316


def test_the_patch_reads_the_skipped_records_again_in_order_and_commits_no_further():
    c, log = consumer(committed=46, position=315, last=330, patched=True)
    asyncio.run(drain(c))
    assert c.delivered == list(range(46, 331))
    assert log.seeks == [46]  # one seek back, at the jump
    assert not c._gap[TOPIC]
    assert fc.Consumer._new_offset(c, TOPIC) == 331


def test_a_batch_faust_left_unfinished_is_read_again_at_once():
    c, log = consumer(committed=46, position=46, last=80, patched=True)
    log.cut = 3  # the flow stopped after 46, 47, 48: 49..55 left the buffer unseen
    asyncio.run(drain(c))
    assert c.delivered == list(range(46, 81))
    assert log.seeks == [49]  # right after that batch, not when the next record shows it
    assert fc.Consumer._new_offset(c, TOPIC) == 81


def test_changelog_records_pass_untouched():
    seq = Sequencer()
    c = SimpleNamespace(
        _tl_sequencer=seq,
        app=SimpleNamespace(consumer_generation_id=1),
        _is_changelog_tp=lambda tp: tp.topic == CHANGELOG.topic,
        _read_offset={},
    )

    async def records() -> AsyncIterator[tuple[Any, Any]]:
        for o in (5, 9, 3):
            yield CHANGELOG, Msg(tp=CHANGELOG, offset=o)
        yield TOPIC, Msg(tp=TOPIC, offset=1)  # nothing expected yet: dropped

    async def run() -> list[int]:
        return [m.offset async for _, m in patches.in_order(c, records())]

    assert asyncio.run(run()) == [5, 9, 3]
