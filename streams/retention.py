"""Forgetting finished calls: the per-call entries of the admission and routing tables.

A slot or reservation that reached a terminal state (REJECTED, RELEASED) is kept for
`retention_ms` so a late duplicate (an INVITE retransmitted for up to 32 s, an event
delivered again after a worker restart) still meets the call's final state and is
answered the same way. After that the entry is deleted: the table writes a tombstone to
its changelog and compaction drops the key, so memory and changelog stay bounded by the
calls of the last `retention_ms` instead of growing with every call ever taken.

Deletion happens on a PartitionTick, an event the worker's leader timer sends to every
partition of the admission and routing topics. A table write goes to the changelog
partition of the event being processed, so an entry is only ever deleted while a tick of
its own partition is processed; that is why each entry remembers its partition.

Time is the tick's `occurred_at`: replays delete the same entries. Pure (`scripts/setup`
compiles it with mypyc, as billing.py); the agents (streams/agents.py) hold one
`Retention` per table and rebuild it after recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_RETENTION_MS = 10 * 60 * 1000
#: at most this many deletions per tick and partition (a tick per second: 2000/s)
SWEEP_LIMIT = 2000
DONE_KEY = "done"  # values written before 2026-11-26 carry [partition, done_ms] here
DONE_PARTITION, DONE_MS = "done_partition", "done_ms"  # flat: no list for the GC to track


def mark_done(
    value: dict[str, Any], old: dict[str, Any] | None, partition: int, now_ms: int
) -> dict[str, Any]:
    """`value` (a terminal entry's JSON) stamped with when and where it finished; an entry
    already finished keeps its first stamp."""
    first, when = done_stamp(old) or (partition, now_ms)
    return {**value, DONE_PARTITION: first, DONE_MS: when}


def done_stamp(value: dict[str, Any] | None) -> tuple[int, int] | None:
    if not value:
        return None
    if DONE_MS in value:
        return int(value[DONE_PARTITION]), int(value[DONE_MS])
    stamp = value.get(DONE_KEY)
    return (int(stamp[0]), int(stamp[1])) if stamp else None


class Retention:
    """Finished entries per partition, in the order they finished."""

    def __init__(self, retention_ms: int = DEFAULT_RETENTION_MS) -> None:
        if retention_ms <= 0:
            raise ValueError(f"retention_ms must be positive, not {retention_ms}")
        self.retention_ms = retention_ms
        self._done: dict[int, dict[str, int]] = {}  # partition -> key -> done_ms
        self._partition: dict[str, int] = {}  # key -> its partition in _done
        # partition -> done_ms of its first entry, while known: `due` answers from it
        # alone while nothing is due (callers sweep after every event or tick)
        self._head: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._partition)

    def note(self, key: str, value: dict[str, Any] | None) -> None:
        """Follow a table write: track `key` if its new value is finished, else drop it.
        Runs on every table write, so both cases are a dict lookup or two."""
        self.note_stamp(key, done_stamp(value))

    def note_stamp(self, key: str, stamp: tuple[int, int] | None) -> None:
        """`note` of a value whose stamp (partition, done ms) is known: None, not done."""
        if stamp is None:
            self.forget(key)
        elif key not in self._partition:  # the first stamp wins
            self._add(key, *stamp)

    def forget(self, key: str) -> None:
        partition = self._partition.pop(key, None)
        if partition is not None:
            del self._done[partition][key]
            self._head.pop(partition, None)  # it may have been the first

    def due(self, partition: int, now_ms: int, limit: int = SWEEP_LIMIT) -> list[str]:
        """Keys of `partition` finished at least `retention_ms` before `now_ms`, oldest
        first, at most `limit`. Entries are kept in finishing order and the scan stops at
        the first one not yet due, so a sweep costs what it deletes; while the first is not
        due, its remembered time answers without looking at the entries."""
        cutoff = now_ms - self.retention_ms
        head = self._head.get(partition)
        if head is not None and head > cutoff:
            return []
        out: list[str] = []
        done = self._done.get(partition)
        if not done:
            return out
        first = True
        for key, done_ms in done.items():
            if first:
                self._head[partition] = done_ms
                first = False
            if done_ms > cutoff or len(out) >= limit:
                break
            out.append(key)
        return out

    def rebuild(self, items: Iterable[tuple[str, dict[str, Any] | None]]) -> None:
        found = []
        for key, value in items:
            stamp = done_stamp(value)
            if stamp is not None:
                found.append((stamp[1], stamp[0], key))
        self._done, self._partition, self._head = {}, {}, {}
        for done_ms, partition, key in sorted(found):
            self._add(key, partition, done_ms)

    def _add(self, key: str, partition: int, done_ms: int) -> None:
        done = self._done.get(partition)
        if done is None:
            done = self._done[partition] = {}
        if not done:
            self._head[partition] = done_ms  # the first (entries after it leave it first)
        done[key] = done_ms
        self._partition[key] = partition
