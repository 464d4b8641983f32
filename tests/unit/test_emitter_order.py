"""The emitter's ordering rule, against a fake producer: a table's changelog record is
written only after every output queued before it was acknowledged, and is acknowledged
itself before the flush (which precedes Faust's offset commit) returns."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import SingleObjectCodec
from streams.emitter import Emitter
from tests.samples import sample
from trunkline.core.events import Emit
from trunkline.core.kafka import PublishError, PublishTimeout

CHANGELOG = "app-admission-slots-changelog"
TOPICS = {"routing": "routing", "call-events": "call-events", "admission": "admission"}


@dataclass
class FakeProducers:
    """Records every produce and flush. A flush acknowledges what is queued, unless told
    to time out first (`stalls`) or to refuse (`refuse`)."""

    sent: int = 0
    pending: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    acked: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    log: list[tuple[str, ...]] = field(default_factory=list)
    stalls: int = 0
    refuse: bool = False

    def produce(self, topic, key, value, *, partition=-1, profile=None):
        self.pending.append((topic, key, value))
        self.log.append(("produce", topic, key))
        self.sent += 1

    def queued(self):
        return len(self.pending)

    def refused_pending(self):
        return self.refuse

    def flush(self, timeout=30.0):
        self.log.append(("flush",))
        if self.stalls:
            self.stalls -= 1
            raise PublishTimeout(f"{len(self.pending)} record(s) not acknowledged")
        if self.refuse:
            self.refuse = False
            self.pending.clear()
            raise PublishError("1 record(s) refused")
        self.acked += self.pending
        self.pending = []

    def close(self):
        pass


def emitter(out=None, ticks=None):
    return Emitter(
        "unused:9092",
        SingleObjectCodec(),
        TOPICS,
        out=out or FakeProducers(),
        ticks=ticks or FakeProducers(),
    )


def release(call_id):
    ended = sample("CallEnded", call_id=call_id)
    return [
        Emit("admission", "b", "CallEnded", ended),
        Emit("call-events", call_id, "CallEnded", ended),
    ]


def test_changelog_waits_for_the_flush_and_follows_the_outputs():
    out = FakeProducers()
    em = emitter(out)
    em.emit(release("q-1"))  # an event's outputs, then its table write
    em.changelog(CHANGELOG, b'"q-1"', b'{"state":"RELEASED"}', 0)
    assert [op[1] for op in out.log] == ["admission", "call-events"]  # not written yet
    assert em.held() == 1
    em.flush()
    assert out.log == [
        ("produce", "admission", b"b"),
        ("produce", "call-events", b"q-1"),
        ("flush",),  # every output acknowledged...
        ("produce", CHANGELOG, b'"q-1"'),  # ...before the changelog is written
        ("flush",),  # and acknowledged before the commit that follows
    ]
    assert out.pending == [] and em.held() == 0


def test_a_key_written_twice_between_flushes_is_written_once_with_its_last_value():
    out = FakeProducers()
    em = emitter(out)
    em.changelog(CHANGELOG, b'"q-1"', b'{"state":"ADMITTED"}', 1)
    em.changelog(CHANGELOG, b'"q-2"', b'{"state":"ADMITTED"}', 1)
    em.changelog(CHANGELOG, b'"q-1"', None, 1)  # deleted: a tombstone
    em.flush()
    assert out.acked == [
        (CHANGELOG, b'"q-1"', None),
        (CHANGELOG, b'"q-2"', b'{"state":"ADMITTED"}'),
    ]


def test_refused_outputs_write_no_changelog_and_keep_it_for_the_next_flush():
    out = FakeProducers(refuse=True)
    em = emitter(out)
    em.emit(release("q-1"))
    em.changelog(CHANGELOG, b'"q-1"', b'{"state":"RELEASED"}', 0)
    with pytest.raises(PublishError):
        em.flush()
    assert all(op[1:2] != (CHANGELOG,) for op in out.log) and em.held() == 1
    em.changelog(CHANGELOG, b'"q-2"', b"{}", 0)  # written meanwhile: newer than what was held
    em.flush()
    assert {k for _, k, _ in out.acked} == {b'"q-1"', b'"q-2"'}


def test_a_flush_waits_out_an_unreachable_broker():
    out = FakeProducers(stalls=3)  # three flush rounds find records still queued
    em = emitter(out)
    em.emit(release("q-1"))
    em.changelog(CHANGELOG, b'"q-1"', b"{}", 0)
    asyncio.run(em.flush_async())
    assert out.log.count(("flush",)) == 5 and out.pending == []
    assert out.log.index(("produce", CHANGELOG, b'"q-1"')) == 6  # after the 4th flush passed


def test_a_flush_with_a_timeout_gives_up_and_keeps_the_changelog():
    out = FakeProducers(stalls=100)
    em = emitter(out)
    em.emit(release("q-1"))
    em.changelog(CHANGELOG, b'"q-1"', b"{}", 0)
    with pytest.raises(PublishTimeout):
        em.flush(timeout=0)
    assert em.held() == 1


def test_ticks_are_not_sent_while_the_last_ones_are_unacknowledged():
    ticks = FakeProducers()
    em = emitter(ticks=ticks)
    assert em.emit_ticks([("routing", b"r1", b"t1"), ("routing", b"r2", b"t2")])
    assert not em.emit_ticks([("routing", b"r1", b"t3")])  # t1, t2 still on their way
    ticks.flush()
    assert em.emit_ticks([("routing", b"r1", b"t4")])
    assert [v for _, _, v in ticks.acked + ticks.pending] == [b"t1", b"t2", b"t4"]


# A random interleaving of outputs, table writes and flushes (some finding the broker away
# for a while): whenever a changelog record is written, every output queued before its
# table write was acknowledged; when a flush returns, the last value written to each key
# before it is acknowledged.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.integers(1, 3)),
        st.tuples(st.just("write"), st.integers(0, 3)),
        st.tuples(st.just("flush"), st.integers(0, 2)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_no_changelog_record_gets_ahead_of_the_outputs_queued_before_it(ops):
    out = WatchedProducers()
    em = emitter(out)
    outputs = 0  # outputs queued so far
    needs: dict[bytes, int] = {}  # changelog value -> outputs queued before its table write
    latest: dict[bytes, bytes] = {}  # key -> last value written since the last flush
    for i, (op, n) in enumerate(ops):
        if op == "emit":
            em.emit(release(f"q-{outputs}")[:1] * n)
            outputs += n
        elif op == "write":
            key, value = str(n).encode(), f"v{i}".encode()
            em.changelog(CHANGELOG, key, value, 0)
            needs[value], latest[key] = outputs, value
        else:
            out.stalls = n
            em.flush()
            stored = {k: v for t, k, v in out.acked if t == CHANGELOG}
            assert all(stored[k] == v for k, v in latest.items())
            latest = {}
    for value, acked_outputs in out.changelog_written:
        assert acked_outputs >= needs[value]


class WatchedProducers(FakeProducers):
    """Notes, for each changelog record written, how many outputs were acknowledged."""

    def __init__(self):
        super().__init__()
        self.changelog_written: list[tuple[bytes, int]] = []

    def produce(self, topic, key, value, *, partition=-1, profile=None):
        if topic == CHANGELOG:
            acked = sum(1 for t, _, _ in self.acked if t != CHANGELOG)
            self.changelog_written.append((value, acked))
        super().produce(topic, key, value, partition=partition, profile=profile)


class Killed(Exception):
    pass


class DyingProducers(FakeProducers):
    """Dies at its `die_at`-th operation (a produce or a flush), like a SIGKILL."""

    def __init__(self, die_at):
        super().__init__()
        self.die_at = die_at
        self.ops = 0
        self.dead = False

    def _tick(self):
        self.ops += 1
        if self.ops == self.die_at:
            self.dead = True
            raise Killed

    def produce(self, topic, key, value, *, partition=-1, profile=None):
        self._tick()
        super().produce(topic, key, value, partition=partition, profile=profile)

    def flush(self, timeout=30.0):
        self._tick()
        super().flush(timeout)


def test_a_kill_at_any_point_leaves_no_admitted_call_without_its_history():
    """The hole a RELEASED slot (which drops its decision) left: an offer and the call's
    release are processed, the worker dies before the commit, and on restart the offer is
    processed again against whatever state the changelog holds. Whatever reached the
    broker (every acknowledged record, and, at worst, every changelog record produced but
    not acknowledged while no unacknowledged output did), the history ends up with the
    call's CallAdmitted."""
    from streams import admission
    from tests.unit.test_admission import CONFIG, offer

    ended = sample("CallEnded", call_id="q-1")
    inputs = [("CallOffered", offer()), ("CallEnded", ended)]
    for die_at in range(1, 20):
        out = DyingProducers(die_at)
        em = emitter(out)
        slot = None
        try:
            for name, event in inputs:  # the agent: handle, write the table, emit
                result = admission.handle(name, event, slot, 0, CONFIG)
                if result.slot != slot:
                    slot = result.slot
                    em.changelog(CHANGELOG, b'"q-1"', orjson.dumps(slot.to_json()), 0)
                em.emit(result.emits)
            em.flush()  # the flush before the commit; the commit would follow
        except Killed:
            pass
        if not out.dead:
            continue  # it got to the commit: nothing is processed again
        broker = list(out.acked) + [r for r in out.pending if r[0] == CHANGELOG]
        stored = [v for t, _, v in broker if t == CHANGELOG]
        recovered = admission.Slot.from_json(orjson.loads(stored[-1])) if stored else None
        state = recovered.state if recovered else None
        history = [CODEC.decode(v)[0] for t, _, v in broker if t == "call-events"]
        for name, event in inputs:  # the restarted worker re-processes both events
            result = admission.handle(name, event, recovered, 0, CONFIG)
            recovered = result.slot
            history += [e.name for e in result.emits if e.dest == "call-events"]
        assert "CallAdmitted" in history, (die_at, state, history)


CODEC = SingleObjectCodec()
