"""Finished calls are forgotten after the retention, per partition, oldest first."""

from __future__ import annotations

import pytest

from streams.retention import DONE_KEY, DONE_MS, DONE_PARTITION, Retention, done_stamp, mark_done


def test_mark_done_stamps_partition_and_time_once():
    first = mark_done({"state": "RELEASED"}, None, 4, 1_000)
    assert first == {"state": "RELEASED", DONE_PARTITION: 4, DONE_MS: 1_000}
    # a later write of an entry already finished keeps when and where it finished
    again = mark_done({"state": "RELEASED", "x": 1}, first, 2, 9_000)
    assert (again[DONE_PARTITION], again[DONE_MS], again["x"]) == (4, 1_000, 1)
    assert done_stamp(again) == (4, 1_000)
    assert done_stamp({"state": "ADMITTED"}) is None and done_stamp(None) is None


def test_values_stamped_before_the_flat_form_still_read():
    old = {"state": "RELEASED", DONE_KEY: [3, 500]}  # a changelog written by an older worker
    assert done_stamp(old) == (3, 500)
    assert done_stamp(mark_done({"state": "RELEASED"}, old, 1, 9_000)) == (3, 500)


def test_due_only_past_retention_in_the_ticks_partition_oldest_first():
    r = Retention(retention_ms=10_000)
    r.note("a", mark_done({}, None, 1, 1_000))
    r.note("b", mark_done({}, None, 1, 2_000))
    r.note("c", mark_done({}, None, 2, 1_500))
    r.note("live", {"state": "ADMITTED"})  # not finished: not tracked
    assert len(r) == 3
    assert r.due(1, 10_999) == []
    assert r.due(1, 11_000) == ["a"]
    assert r.due(1, 12_000) == ["a", "b"]
    assert r.due(2, 12_000) == ["c"]
    assert r.due(0, 99_000) == []
    assert r.due(1, 12_000, limit=1) == ["a"]


def test_forget_and_rewrites():
    r = Retention(retention_ms=1)
    r.note("a", mark_done({}, None, 0, 5))
    r.forget("a")
    assert r.due(0, 100) == []
    # noting a key again whose value is no longer finished drops it
    r.note("b", mark_done({}, None, 0, 5))
    r.note("b", {"state": "ADMITTED"})
    assert r.due(0, 100) == [] and len(r) == 0
    # the first stamp wins when a finished entry is noted twice
    r.note("c", mark_done({}, None, 0, 5))
    r.note("c", mark_done({}, None, 0, 50))
    assert r.due(0, 6) == ["c"]


def test_rebuild_from_table_items_orders_by_end_time():
    r = Retention(retention_ms=100)
    r.rebuild(
        [
            ("late", mark_done({}, None, 3, 500)),
            ("live", {"state": "RESERVED"}),
            ("gone", None),
            ("early", mark_done({}, None, 3, 100)),
        ]
    )
    assert r.due(3, 10_000) == ["early", "late"]
    assert len(r) == 2


def test_retention_must_be_positive():
    with pytest.raises(ValueError, match="retention_ms must be positive"):
        Retention(0)


def test_due_follows_the_first_entry_as_entries_come_and_go():
    """`due` answers from the partition's first entry while it is not due: forgetting
    it, emptying the partition or rebuilding must never leave a due entry unreported."""
    r = Retention(retention_ms=10)
    r.note("a", mark_done({}, None, 1, 0))
    r.note("b", mark_done({}, None, 1, 5))
    assert r.due(1, 9) == []
    r.forget("a")  # the first goes: b is the first now
    assert r.due(1, 14) == []
    assert r.due(1, 15) == ["b"]
    r.forget("b")
    assert r.due(1, 10_000) == []
    r.note("c", mark_done({}, None, 1, 100))  # into the emptied partition
    assert r.due(1, 109) == []
    assert r.due(1, 110) == ["c"]
    r.note("d", mark_done({}, None, 1, 50))  # finished earlier, noted later: after c
    assert r.due(1, 60) == []  # the scan stops at c, as it always did
    assert r.due(1, 110, limit=0) == []
    assert r.due(1, 110) == ["c", "d"]
    r.note("c", {"state": "ADMITTED"})  # no longer finished
    assert r.due(1, 60) == ["d"]
    r.rebuild([("e", mark_done({}, None, 1, 7))])
    assert r.due(1, 16) == [] and r.due(1, 17) == ["e"]


class _Scan:
    """The plain model: every sweep scans its partition's entries in finishing order."""

    def __init__(self, retention_ms):
        self.retention_ms, self.done, self.where = retention_ms, {}, {}

    def note(self, key, value):
        stamp = done_stamp(value)
        if stamp is None:
            self.forget(key)
        elif key not in self.where:
            self.done.setdefault(stamp[0], {})[key] = stamp[1]
            self.where[key] = stamp[0]

    def forget(self, key):
        if key in self.where:
            del self.done[self.where.pop(key)][key]

    def due(self, partition, now_ms, limit):
        out = []
        for key, ms in self.done.get(partition, {}).items():
            if ms > now_ms - self.retention_ms or len(out) >= limit:
                break
            out.append(key)
        return out


def test_sweeps_report_what_a_full_scan_reports():
    """A long random run of notes, forgets and sweeps (the module in use: the mypyc build
    when there is one): the same keys as scanning every partition's entries each time."""
    import random

    rnd = random.Random(5)
    a, b = Retention(retention_ms=50), _Scan(50)
    now = [0, 0, 0]
    for i in range(5_000):
        p, key = rnd.randrange(3), f"k{rnd.randrange(300)}"
        now[p] += rnd.randrange(5)
        op = rnd.random()
        if op < 0.5:
            value = mark_done({}, None, p, now[p] - rnd.randrange(20)) if op < 0.4 else {}
            a.note(key, value)
            b.note(key, value)
        elif op < 0.6:
            a.forget(key)
            b.forget(key)
        else:
            limit = rnd.randrange(1, 5)
            due = a.due(p, now[p], limit)
            assert due == b.due(p, now[p], limit), i
            for k in due:
                a.forget(k)
                b.forget(k)
        assert len(a) == len(b.where)
