"""Rebuilding the projections from the log, and their digests (pure).

Kafka is the source of truth; everything else is a projection of it (DESIGN.md). This
module is what `trunkline replay rebuild` runs over the records it reads, with no I/O:

- **ClickHouse tables** come from one topic each (`SOURCES`): `call-events` ->
  `call_events_log`, `billing` -> `billing_records_log`, `webhook-deliveries` ->
  `webhook_deliveries_log`, through the same `streams.projection.table_row` the sink uses.
- **The machines' tables** (the Faust tables: admission's slots, routing's reservations,
  heartbeats and ticks, billing's calls) come from re-running the pure machines over their
  input topics, the way `streams/agents.py` and `streams/billing_agent.py` drive them: the
  same table writes (a value only when the machine changed it, finished entries stamped
  with their partition and end time, deleted on the partition's ticks), nothing published.

Digests are order-insensitive: the XOR of one 64-bit hash per row (or per table entry)
and the count, so two rebuilds that met the records in different interleavings agree
exactly when they hold the same rows. A row's hash leaves out where a copy of its record
landed (`POSITION_COLUMNS`): at-least-once delivery writes some records twice, and which
copy a ReplacingMergeTree keeps is not part of the event. ClickHouse computes the same
idea in SQL (`groupBitXor(cityHash64(...))`, streams/shadow.py); the two hashes are not
meant to be equal to each other, only each to itself.

Nothing here reads the wall clock, draws random ids or uses floats for money: time is
each event's `occurred_at`, ids derive from the causing event (the machines'), amounts
are decimals (billing). Replays therefore decide the same.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from streams import admission, billing, retention, routing
from streams.config_view import ConfigView
from streams.projection import TABLE_COLUMNS, ProjectionError, Row, table_row
from trunkline.core.events import Emit, TransitionError

#: topic (suffix) -> the ClickHouse table its records are projected into
SOURCES: dict[str, str] = {
    "call-events": "call_events_log",
    "billing": "billing_records_log",
    "webhook-deliveries": "webhook_deliveries_log",
}
#: columns that say where or when a copy of a record landed, not what it says
POSITION_COLUMNS = frozenset({"kafka_partition", "kafka_offset", "published_at", "ingested_at"})
#: each table's ReplacingMergeTree key (ORDER BY) and version column: what FINAL folds
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "call_events_log": ("call_id", "event_id"),
    "billing_records_log": ("call_id",),
    "webhook_deliveries_log": ("subscription_id", "webhook_id", "attempt"),
}
TABLE_VERSION: dict[str, str] = {"billing_records_log": "rating_run"}

#: the machines' tables, as Faust names them (`<app id>-<name>-changelog`)
DECISION_TABLES = ("admission-slots", "routing-reservations", "routing-heartbeats", "routing-ticks")
BILLING_TABLES = ("billing-calls",)

#: routing ends at most this many calls per tick (streams.agents.EXPIRE_PER_TICK)
EXPIRE_PER_TICK = 32
#: billing deletes at most this many rated calls per event (streams.billing_agent)
BILLING_SWEEP_LIMIT = 100


def digest_columns(table: str) -> tuple[str, ...]:
    """The columns a table's digest covers: what the sink writes, less the positions."""
    return tuple(c for c in TABLE_COLUMNS[table] if c not in POSITION_COLUMNS)


@dataclass(frozen=True)
class Digest:
    """An order-insensitive digest: how many rows, and the XOR of their hashes."""

    count: int = 0
    xor: int = 0

    def add(self, h: int) -> Digest:
        return Digest(self.count + 1, self.xor ^ h)


def hash64(value: Any) -> int:
    """A stable 64-bit hash of a JSON-ready value (keys sorted)."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def digest_of(hashes: Iterable[int]) -> Digest:
    count = xor = 0
    for h in hashes:
        count += 1
        xor ^= h
    return Digest(count, xor)


def entries_digest(entries: Mapping[str, Any]) -> Digest:
    """A table (key -> JSON value, deleted keys absent or None) as a digest."""
    return digest_of(hash64([k, v]) for k, v in entries.items() if v is not None)


# -- ClickHouse tables --------------------------------------------------------------------
class Projection:
    """The ClickHouse tables as FINAL would show them, from records in any order: one row
    per table key, the highest version where the table has one (a tie keeps the row met
    first; the rows of one key differ only in their positions)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], Row]] = {t: {} for t in TABLE_KEYS}
        cols = {t: TABLE_COLUMNS[t] for t in TABLE_KEYS}
        self._key = {t: tuple(cols[t].index(c) for c in TABLE_KEYS[t]) for t in TABLE_KEYS}
        self._version = {t: cols[t].index(c) for t, c in TABLE_VERSION.items()}
        self._digest = {t: tuple(cols[t].index(c) for c in digest_columns(t)) for t in TABLE_KEYS}

    def add(self, name: str, record: dict[str, Any], partition: int, offset: int) -> str:
        """Project one record (raises projection.ProjectionError/KeyError like the sink's
        decoding, which parks such records); returns its table."""
        table, row = table_row(name, record, partition, offset)
        self.add_row(table, row)
        return table

    def add_row(self, table: str, row: Row) -> None:
        key = tuple(row[i] for i in self._key[table])
        rows = self.rows[table]
        old = rows.get(key)
        at = self._version.get(table)
        if old is None or (at is not None and row[at] > old[at]):
            rows[key] = row

    def digests(self) -> dict[str, Digest]:
        return {
            t: digest_of(hash64([row[i] for i in self._digest[t]]) for row in rows.values())
            for t, rows in self.rows.items()
        }


# -- the machines' tables -----------------------------------------------------------------
@dataclass
class Table:
    """A Faust table as its changelog holds it: key -> JSON value (None: deleted), and the
    partition each key was last written in (the changelog partition)."""

    values: dict[str, Any] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any, partition: int) -> None:
        self.values[key] = value
        self.partitions[key] = partition

    def delete(self, key: str, partition: int) -> None:
        self.set(key, None, partition)

    def live(self) -> dict[str, Any]:
        """The entries a recovered table holds (no deleted keys), as JSON text would
        give them back: lists, not tuples; plain dicts."""
        return {k: _json_value(v) for k, v in self.values.items() if v is not None}


def _json_value(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, default=str))


class DecisionMachines:
    """Admission and routing re-run over their topics (`admission`; `routing` with
    `backend-heartbeats`), as streams/agents.py runs them, nothing published. `apply_*`
    return what the machine emitted (tests route it on like the worker would)."""

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]],
        settings: routing.Settings,
        retention_ms: int = retention.DEFAULT_RETENTION_MS,
    ) -> None:
        self.config = ConfigView(config)
        self.settings = settings
        self.slots = Table()
        self.reservations = Table()
        self.heartbeats = Table()
        self.ticks = Table()
        self.watches: dict[str, routing.Watch] = {}
        self.slot_index = admission.SlotIndex()
        self.load_index = routing.LoadIndex()
        self.slots_done = retention.Retention(retention_ms)
        self.reservations_done = retention.Retention(retention_ms)
        self.skipped = 0  # events a machine refused (the agents log and skip them)

    def tables(self) -> dict[str, Table]:
        return dict(
            zip(
                DECISION_TABLES,
                (self.slots, self.reservations, self.heartbeats, self.ticks),
                strict=True,
            )
        )

    def _sweep(self, table: Table, done: retention.Retention, index: Any, parse: Any,
               tick: dict[str, Any], partition: int) -> None:  # fmt: skip
        now_ms = int(tick["envelope"]["occurred_at"])
        for call_id in done.due(int(tick["partition"]), now_ms):
            index.apply(call_id, parse(table.get(call_id)), None)
            table.delete(call_id, partition)
            done.forget(call_id)

    def apply_admission(self, partition: int, name: str, value: dict[str, Any]) -> list[Emit]:
        if name == "PartitionTick":
            self._sweep(self.slots, self.slots_done, self.slot_index, admission.Slot.from_json,
                        value, partition)  # fmt: skip
            return []
        call_id = value["envelope"]["call_id"]
        old_value = self.slots.get(call_id)
        slot = admission.Slot.from_json(old_value)
        business_id = value.get("business_id") or (slot.business_id if slot else "")
        try:
            result = admission.handle(
                name, value, slot, self.slot_index.count(business_id), self.config
            )
        except TransitionError:
            self.skipped += 1
            return []
        if result.slot != slot:
            new_value = None
            if result.slot is not None:
                new_value = result.slot.to_json()
                if result.slot.state in admission.FINISHED:
                    at = int(value["envelope"]["occurred_at"])
                    new_value = retention.mark_done(new_value, old_value, partition, at)
            self.slots.set(call_id, new_value, partition)
            self.slots_done.note(call_id, new_value)
            self.slot_index.apply(call_id, slot, result.slot)
        return result.emits

    def _apply(self, changes: routing.Changes, now_ms: int, partition: int) -> None:
        for call_id, new in changes.reservations.items():
            old_value = self.reservations.get(call_id)
            old = routing.Reservation.from_json(old_value)
            new_value = new.to_json()
            if new.state in routing.FINISHED:
                new_value = retention.mark_done(new_value, old_value, partition, now_ms)
            self.reservations.set(call_id, new_value, partition)
            self.reservations_done.note(call_id, new_value)
            self.load_index.apply(call_id, old, new)

    def apply_routing(self, partition: int, name: str, value: dict[str, Any]) -> list[Emit]:
        """A record of `routing` or `backend-heartbeats` (co-partitioned: one stream)."""
        if name == "BackendHeartbeat":
            self.heartbeats.set(value["backend_id"], value, partition)
            return []
        if name == "PartitionTick":
            self._sweep(self.reservations, self.reservations_done, self.load_index,
                        routing.Reservation.from_json, value, partition)  # fmt: skip
            return []
        beats: Mapping[str, dict[str, Any]] = _Present(self.heartbeats.values)
        if name == "RoutingTick":
            region = value["region_id"]
            now_ms = int(value["envelope"]["occurred_at"])
            watch, changes = routing.tick(
                region,
                now_ms,
                self.watches.get(region, routing.NO_TICKS),
                lambda c: routing.Reservation.from_json(self.reservations.get(c)),
                self.load_index,
                beats,
                self.settings,
                EXPIRE_PER_TICK,
            )
            if watch != self.watches.get(region):
                self.watches[region] = watch
                self.ticks.set(region, watch.to_json(), partition)
            self._apply(changes, now_ms, partition)
            return changes.emits
        call_id = value["envelope"]["call_id"]
        res = routing.Reservation.from_json(self.reservations.get(call_id))
        region = value.get("region_id") or (res.region_id if res else "")
        try:
            changes = routing.handle(
                name,
                value,
                res,
                self.config,
                beats,
                self.load_index.load,
                self.settings,
                self.watches.get(region, routing.NO_TICKS),
            )
        except TransitionError:
            self.skipped += 1
            return []
        self._apply(changes, int(value["envelope"]["occurred_at"]), partition)
        return changes.emits


class _Present(Mapping[str, dict[str, Any]]):
    """A table's values without its deleted keys (a Faust table's `get` gives None)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> dict[str, Any]:
        value = self._values[key]
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        value = self._values.get(key)
        return default if value is None else value

    def __iter__(self) -> Any:
        return (k for k, v in self._values.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self._values.values() if v is not None)


class BillingMachine:
    """The billing machine re-run over `call-events`, as streams/billing_agent.py runs it.

    The agent keeps each call's state as JSON in its table and parses it back for the
    call's next event; here the machine keeps the `Call` itself (with where and when it
    finished) and makes the JSON values once, when the table is asked for (`calls`,
    `tables()`): the state is the same (`Call.from_json(call.to_json())` equals `call`:
    tests/unit/test_rebuild.py runs both ways), the per-event serialization is saved."""

    def __init__(
        self, config: Mapping[str, Mapping[str, Any]], retention_ms: int = 24 * 3600 * 1000
    ) -> None:
        self.config = billing.RatingConfig(config)
        self.rated = retention.Retention(retention_ms)
        self.newest: dict[int, int] = {}
        self.skipped = 0
        # call id -> (its Call, None when deleted; the (partition, ms) it was first rated
        # at; the partition of its last write: the changelog partition)
        self._state: dict[str, tuple[billing.Call | None, tuple[int, int] | None, int]] = {}

    def tables(self) -> dict[str, Table]:
        return {"billing-calls": self.calls}

    @property
    def calls(self) -> Table:
        """The table as the agent's changelog holds it (made on each access)."""
        table = Table()
        for call_id, (call, stamp, partition) in self._state.items():
            table.set(call_id, _billing_value(call, stamp), partition)
        return table

    def value(self, call_id: str) -> dict[str, Any] | None:
        """One entry of `calls`."""
        held = self._state.get(call_id)
        return None if held is None else _billing_value(held[0], held[1])

    def apply(self, partition: int, name: str, value: dict[str, Any]) -> list[Emit]:
        if name not in _BILLING_INPUTS:
            return []
        env = value["envelope"]
        call_id = env["call_id"]
        if not call_id:
            return []
        at = int(env["occurred_at"])
        held = self._state.get(call_id)
        call = None if held is None else held[0]
        try:
            result = billing.handle(name, value, call, self.config)
        except TransitionError:
            self.skipped += 1
            return []
        new = result.call
        # `handle` gives the call back itself when the event changed nothing
        if new is not None and new is not call:
            stamp = None
            if new.state is _RATED:
                stamp = (held[1] if held else None) or (partition, at)
                self.rated.note_stamp(call_id, stamp)
            elif held is not None and held[1] is not None:
                self.rated.forget(call_id)
            self._state[call_id] = (new, stamp, partition)
        newest = self.newest.get(partition)
        if newest is None or at > newest:
            self.newest[partition] = newest = at
        due = self.rated.due(partition, newest, BILLING_SWEEP_LIMIT)
        if due:
            for key in due:
                self._state[key] = (None, None, partition)
                self.rated.forget(key)
        return result.emits


_BILLING_INPUTS = billing.INPUTS
_RATED = billing.CallState.RATED


def _billing_value(call: billing.Call | None, stamp: tuple[int, int] | None) -> Any:
    """A billing-calls table value, as the agent writes it (`mark_done` when rated)."""
    if call is None:
        return None
    value = call.to_json()
    if stamp is not None:
        value[retention.DONE_PARTITION], value[retention.DONE_MS] = stamp
    return value


def table_digests(tables: Mapping[str, Table]) -> dict[str, Digest]:
    return {name: entries_digest(t.live()) for name, t in tables.items()}


def differing_keys(
    live: Mapping[str, Any], shadow: Mapping[str, Any], limit: int = 10
) -> list[str]:
    """The first keys (sorted) whose entries differ between two tables."""
    keys = sorted(set(live) | set(shadow))
    out = []
    for k in keys:
        if hash64(live.get(k)) != hash64(shadow.get(k)):
            out.append(k)
            if len(out) >= limit:
                break
    return out


# -- one rebuild --------------------------------------------------------------------------
def pause_gc() -> bool:
    """The cyclic garbage collector off for a rebuild's passes; returns whether it was on
    (give it to `resume_gc`). The passes allocate a few dicts and tuples per record and
    keep the machines' state: each full collection walked all of it and found nothing to
    free (the projections and machines make no reference cycles), a tenth of the time."""
    was = gc.isenabled()
    gc.disable()
    return was


def resume_gc(was: bool) -> None:
    if was:
        gc.enable()


class LogRecord(NamedTuple):
    """A decoded record and where it was: `topic` is the topic's suffix (call-events...).
    A tuple: one is made per record read, and a frozen dataclass costs more to build."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    name: str
    record: dict[str, Any]


class RowBuffer:
    """Rows per table, handed on `size` at a time (`full(table, rows)`): what the
    replay's row sink does with every row, compiled with the Rebuilder that calls it."""

    def __init__(
        self, tables: Iterable[str], size: int, full: Callable[[str, list[Row]], None]
    ) -> None:
        self.size = size
        self.full = full
        self.rows: dict[str, list[Row]] = {t: [] for t in tables}

    def add(self, table: str, row: Row) -> None:
        rows = self.rows[table]
        rows.append(row)
        if len(rows) >= self.size:
            self.rows[table] = []
            self.full(table, rows)

    def drain(self, table: str) -> list[Row]:
        """The rows held for `table`, no longer held."""
        rows = self.rows[table]
        self.rows[table] = []
        return rows


#: the topics each machine reads
MACHINE_TOPICS = frozenset({"admission", "routing", "backend-heartbeats", "call-events"})


def routing_stream(routing_records: Iterable[LogRecord], heartbeats: Iterable[LogRecord]) -> Any:
    """One partition of routing's input: `routing` and `backend-heartbeats` are one Faust
    stream, read in arrival order; the log keeps no arrival order across two topics, so
    a rebuild merges them by record time (each topic's own order kept)."""
    return heapq.merge(routing_records, heartbeats, key=lambda r: r.timestamp)


class Rebuilder:
    """Feeds records to the projection (`rows(table, row)` for each ClickHouse row) and to
    the machines. Records of one partition must come in offset order, and a partition of
    routing's input as `routing_stream` merges it; partitions may interleave in any way."""

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]],
        settings: routing.Settings,
        rows: Callable[[str, Row], None],
        retention_ms: int = retention.DEFAULT_RETENTION_MS,
        billing_retention_ms: int = 24 * 3600 * 1000,
    ) -> None:
        self.decisions = DecisionMachines(config, settings, retention_ms)
        self.billing = BillingMachine(config, billing_retention_ms)
        self.rows = rows
        self.unprojectable = 0

    def feed(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        name: str,
        record: dict[str, Any],
        machines: bool,
        project: bool,
    ) -> None:
        """One record read (`topic` its suffix), to its machine when `machines` and to
        its ClickHouse table when `project`: `run_machines` and `project` in one call,
        without a LogRecord (the replay's loop over the history makes one per event)."""
        if machines:
            self._machines(topic, partition, name, record)
        if project:
            self._project(topic, partition, offset, timestamp, name, record)

    def project(self, rec: LogRecord) -> None:
        """A record of a topic that feeds a ClickHouse table; one of another type (the
        sink parks what it cannot project) is counted."""
        self._project(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.name, rec.record)

    def _project(
        self, topic: str, partition: int, offset: int, timestamp: int, name: str,
        record: dict[str, Any],
    ) -> None:  # fmt: skip
        try:
            # the record's Kafka timestamp is part of the row (`published_at`), as the
            # sink writes it
            table, row = table_row(name, record, partition, offset, timestamp)
        except (ProjectionError, KeyError, TypeError, ValueError):
            self.unprojectable += 1
            return
        if table == SOURCES.get(topic):
            self.rows(table, row)
        else:
            self.unprojectable += 1

    def run_machines(self, rec: LogRecord) -> list[Emit]:
        return self._machines(rec.topic, rec.partition, rec.name, rec.record)

    def _machines(
        self, topic: str, partition: int, name: str, record: dict[str, Any]
    ) -> list[Emit]:
        if topic == "call-events":
            return self.billing.apply(partition, name, record)
        if topic == "admission":
            return self.decisions.apply_admission(partition, name, record)
        if topic == "routing" or topic == "backend-heartbeats":
            return self.decisions.apply_routing(partition, name, record)
        return []

    def tables(self) -> dict[str, Table]:
        return {**self.decisions.tables(), **self.billing.tables()}

    @property
    def skipped(self) -> int:
        return self.decisions.skipped + self.billing.skipped
