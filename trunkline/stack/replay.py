"""Replay for the operator: rebuild every projection from the topics, verify it against
the live one, promote it; export and re-publish events.

`rebuild` records each topic's end offsets when it starts and reads up to them:
- `call-events`, `billing` and `webhook-deliveries` (from `--from`, else their oldest
  record) are projected, as the sink projects them, into shadow ClickHouse tables
  (streams/shadow.py);
- the machines re-run over their inputs from the oldest record kept (a machine's state at
  any time depends on everything before it): admission over `admission`, routing over
  `routing` and `backend-heartbeats` (each partition's two topics merged by record time),
  billing over `call-events`; the config is the compacted config topics as they are now.
  Their shadow tables stay in this process (streams/rebuild.py) and are compared with the
  live changelogs of the workers' active table generation.

`--swap` exchanges the ClickHouse shadows with the live tables, then promotes the machine
tables as the next table generation (`promote`: new changelogs and consumer groups, the
generation record last; docs/design.md, "Table generations"). Workers pick it up when
they restart. `clean` drops what a swap kept: the `__old` tables and the older
generations' topics and groups.

Reaching ClickHouse: with the embedded chDB only one process may open the data path, and
the running sink owns it, so the shadow operations go through the sink's HTTP API
(`/replay/...`, the same way `trunkline calls` reads); the heavy part (reading, decoding,
projecting) stays here, and only finished row blocks cross. When no sink answers (or
with a ClickHouse server), this process opens the store itself.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaException, Message

from schemas.codec import Codec, CodecError, make_codec
from schemas.registry import LIFECYCLE_EVENTS
from streams import arrow_blocks, queries, routing, shadow
from streams.arrow_blocks import ARROW_STREAM
from streams.clickhouse import ClickHouseStore, ClickHouseUnavailable
from streams.projection import TABLE_COLUMNS
from streams.rebuild import (
    BILLING_TABLES,
    SOURCES,
    LogRecord,
    Rebuilder,
    RowBuffer,
    Table,
    differing_keys,
    entries_digest,
    pause_gc,
    resume_gc,
    routing_stream,
)
from trunkline.core import admin, generations, kafka
from trunkline.core.generations import GenerationError, GenerationRecord
from trunkline.core.memory import keep_freed_memory
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    ADMISSION,
    ALL_TOPICS,
    BILLING,
    BILLING_CONFIG_SECTIONS,
    CALL_EVENTS,
    CONFIG_TOPICS,
    DEAD_LETTERS,
    GENERATIONS,
    HEARTBEATS,
    ROUTING,
    WEBHOOK_DELIVERIES,
    WORKER_CONFIG_SECTIONS,
    TopicSpec,
    billing_internal_topics,
    internal_topics,
)
from trunkline.stack.base import BadInput, StackError

#: rows per Arrow record batch, made as the rows come (the rows are freed once converted)
BLOCK_ROWS = 50_000
#: rows per insert into a shadow table (one part each: ClickHouse merges fewer, larger
#: parts; 200k-row inserts cost 1.8 us an event with their merges, 50k-row ones 4.4), and
#: the Arrow bytes that send a block before that (the sink takes up to 512 MiB a request)
INSERT_ROWS = 200_000
INSERT_BYTES = 256 * 1024 * 1024
#: the topics whose records feed the ClickHouse tables
CH_TOPICS: tuple[TopicSpec, ...] = (CALL_EVENTS, BILLING, WEBHOOK_DELIVERIES)
#: topics `replay events` reads, by suffix
EVENT_TOPICS: dict[str, TopicSpec] = {
    t.suffix: t for t in ALL_TOPICS if not t.compacted and t.records[0] not in ("json",)
} | {t.suffix: t for t in CONFIG_TOPICS.values()}
#: what the machines and services consume: re-publishing into these needs --force
#: (every declared topic has a consumer: machines, edges, media nodes, dialers, the sink,
#: the webhook service; only the dead letters are read by people)
LIVE_INPUTS = frozenset(t.suffix for t in ALL_TOPICS if t is not DEAD_LETTERS)


# -- arguments ----------------------------------------------------------------------------
_AGO = re.compile(r"^\d+[smhdw]$")


def parse_time(text: str, what: str, now_ms: int | None = None) -> int:
    """An operator's time as epoch ms: ISO 8601 (UTC unless it says otherwise), epoch
    milliseconds, a duration ago (`15m`, `2h`, `7d`) or `now`. BadInput naming `what`."""
    raw = text.strip()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if raw == "now":
        return now
    if _AGO.match(raw):
        return now - queries.parse_duration(raw) * 1000
    if raw.isdigit() and len(raw) >= 12:
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"{what}: {text!r} is not a time (ISO 8601 like 2026-11-30T19:00:00Z, epoch "
            "milliseconds, a duration ago like 15m or 2h, or now)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _window(from_ms: int | None, to_ms: int | None) -> None:
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        raise BadInput("--from must be earlier than --to")


# -- progress -----------------------------------------------------------------------------
class RebuildProgress(Protocol):
    def phase(self, what: str, total: int) -> None:
        """A new phase that will take `total` records."""

    def advance(self, done: int) -> None:
        """`done` more records of the current phase are handled."""


class NoProgress:
    def phase(self, what: str, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


# -- where the shadow tables are ----------------------------------------------------------
class ShadowTarget(Protocol):
    def create(self, tables: tuple[str, ...]) -> None: ...

    def insert_batches(self, table: str, batches: list[Any]) -> None:
        """Rows of `table` as Arrow record batches (`streams.arrow_blocks.record_batch`)."""

    def compare(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]: ...

    def swap(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]: ...

    def clean(self) -> list[str]: ...

    def existing(self) -> dict[str, list[str]]: ...


class LocalShadow:
    """The store opened by this process (a ClickHouse server, or chDB with no sink)."""

    def __init__(self, store: ClickHouseStore) -> None:
        self.store = store
        self.where = f"ClickHouse at {store.dsn}"

    def create(self, tables: tuple[str, ...]) -> None:
        shadow.create(self.store, tables)

    def insert_batches(self, table: str, batches: list[Any]) -> None:
        shadow.insert_batches(self.store, table, batches)

    def compare(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]:
        return shadow.compare(self.store, table, ranges)

    def swap(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]:
        return shadow.swap(self.store, table, ranges)

    def clean(self) -> list[str]:
        return shadow.clean(self.store)

    def existing(self) -> dict[str, list[str]]:
        return shadow.existing(self.store)


class SinkShadow:
    """The sink's `/replay/...` API: the sink owns the embedded chDB."""

    def __init__(self, base_url: str, timeout: float = 600.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.where = f"the sink at {base_url}"

    def _post(
        self, path: str, body: bytes | memoryview, content_type: str = "application/json"
    ) -> Any:
        req = urllib.request.Request(
            f"{self.base_url}{path}", data=body, method="POST",
            headers={"Content-Type": content_type},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            if exc.code == 400:
                raise BadInput(str(detail)) from exc
            raise StackError(f"the sink answered {exc.code} to {path}: {detail}") from exc

    def _json(self, path: str, body: dict[str, Any]) -> Any:
        return self._post(path, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))

    def create(self, tables: tuple[str, ...]) -> None:
        self._json("/replay/shadow/", {"tables": list(tables)})

    def insert_batches(self, table: str, batches: list[Any]) -> None:
        stream = memoryview(arrow_blocks.ipc_stream(batches))
        self._post(f"/replay/shadow/{table}/rows/", stream, ARROW_STREAM)

    def compare(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("/replay/compare/", {"table": table, "ranges": ranges})
        return result

    def swap(self, table: str, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("/replay/swap/", {"table": table, "ranges": ranges})
        return result

    def clean(self) -> list[str]:
        dropped: list[str] = self._json("/replay/clean/", {})
        return dropped

    def existing(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = self._json("/replay/tables/", {})
        return found

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health/", timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def open_target(s: Settings) -> tuple[ShadowTarget, Callable[[], None]]:
    """The sink's API when it owns the embedded engine and answers; else the store
    itself. Returns the target and what closes it."""
    if s.is_embedded_clickhouse:
        sink = SinkShadow(s.sink_url)
        if sink.answers():
            keep_freed_memory(None, ("pyarrow",))  # the blocks are built here
            return sink, lambda: None
    # a pass frees and allocates its blocks' memory every insert
    keep_freed_memory(None, ("pyarrow", "chdb") if s.is_embedded_clickhouse else ("pyarrow",))
    try:
        store = ClickHouseStore(s.clickhouse_dsn)
        store.ensure_schema()
    except ClickHouseUnavailable as exc:
        raise StackError(f"{exc} (is the sink running? it owns the embedded engine)") from exc
    return LocalShadow(store), store.close


# -- results ------------------------------------------------------------------------------
@dataclass
class TableCheck:
    """One table's verification: shadow vs live."""

    table: str
    kind: str  # "clickhouse" or "faust"
    live: dict[str, int]
    shadow: dict[str, int]
    equal: bool
    differing: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class RebuildReport:
    ranges: dict[str, list[dict[str, int]]]  # topic -> [{partition, start, end}]
    records: int
    rows: dict[str, int]  # shadow table -> rows written
    undecodable: int
    machine_tables: dict[str, int]  # Faust table -> live entries in the shadow
    skipped: int  # events a machine refused (as the agents skip them)
    seconds: float
    via: str
    checks: list[TableCheck] = field(default_factory=list)
    swapped: list[dict[str, Any]] = field(default_factory=list)
    #: the workers' table generation: {"active": n}; after a swap also "previous",
    #: "topics" (the new generation's changelogs: entries written) and "groups"
    generation: dict[str, Any] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return all(c.equal for c in self.checks)


# -- the rebuild --------------------------------------------------------------------------
def _name(s: Settings, spec: TopicSpec) -> str:
    return spec.name(s.topic_prefix)


def read_config(s: Settings, codec: Codec) -> dict[str, dict[str, Any]]:
    """The config sections the machines read, as they are now (compacted topics)."""
    out: dict[str, dict[str, Any]] = {}
    for section in dict.fromkeys(WORKER_CONFIG_SECTIONS + BILLING_CONFIG_SECTIONS):
        records: dict[str, Any] = {}
        for key, value in kafka.read_compacted(
            s.kafka_bootstrap, _name(s, CONFIG_TOPICS[section])
        ).items():
            if value is None:
                continue
            name, record = codec.decode(value)
            record["_type"] = name  # as the worker's config tables hold them
            records[key.decode()] = record
        out[section] = records
    return out


def _ranges_by_topic(ranges: Iterable[kafka.PartitionRange]) -> dict[str, list[dict[str, int]]]:
    out: dict[str, list[dict[str, int]]] = {}
    for r in ranges:
        out.setdefault(r.topic, []).append(
            {"partition": r.partition, "start": r.start, "end": r.end}
        )
    return out


def _table_ranges(ranges: Iterable[kafka.PartitionRange], topic: str) -> dict[int, tuple[int, int]]:
    return {r.partition: (r.start, r.end) for r in ranges if r.topic == topic}


class _Blocks:
    """Rows per shadow table: every BLOCK_ROWS of a table become one Arrow record batch
    (`streams.arrow_blocks.record_batch`), and every INSERT_ROWS (or INSERT_BYTES) of
    batches one insert, one part. (Batches of a few thousand rows cost more CPU in all:
    chDB squashes many small blocks; inserts of 50,000 rows made ClickHouse merge the
    parts while the rebuild ran: docs/benchmarks.md.)"""

    def __init__(self, target: ShadowTarget) -> None:
        self.target = target
        self._rows = RowBuffer(shadow.TABLES, BLOCK_ROWS, self._batch)
        #: one row of a table (compiled: called for every row)
        self.add: Callable[[str, Any], None] = self._rows.add
        self.batches: dict[str, list[Any]] = {t: [] for t in shadow.TABLES}
        self.written: dict[str, int] = dict.fromkeys(shadow.TABLES, 0)

    def _batch(self, table: str, rows: list[Any]) -> None:
        """A block of rows as a record batch; an insert once the batches make one."""
        if not rows:
            return
        batches = self.batches[table]
        batches.append(arrow_blocks.record_batch(TABLE_COLUMNS[table], rows))
        if (
            sum(b.num_rows for b in batches) >= INSERT_ROWS
            or sum(b.nbytes for b in batches) >= INSERT_BYTES
        ):
            self._insert(table)

    def _insert(self, table: str) -> None:
        batches = self.batches[table]
        if batches:
            self.batches[table] = []
            self.target.insert_batches(table, batches)
            self.written[table] += sum(b.num_rows for b in batches)

    def flush(self) -> None:
        """Every table's remaining rows and batches inserted."""
        for t in self.batches:
            self._batch(t, self._rows.drain(t))
            self._insert(t)


def rebuild(
    s: Settings,
    from_ms: int | None = None,
    to_ms: int | None = None,
    verify: bool = False,
    swap: bool = False,
    progress: RebuildProgress | None = None,
    target: ShadowTarget | None = None,
    force: bool = False,
) -> RebuildReport:
    """Rebuild every projection into shadows; `verify` compares them with the live ones;
    `swap` promotes the ClickHouse shadows and the machine tables (a new table
    generation) whatever verify found (a swap is how a wrong live table is repaired: the
    operator's call). A swap is refused while workers run the live generation, unless
    `force`."""
    _window(from_ms, to_ms)
    progress = progress or NoProgress()
    started = time.monotonic()
    codec = make_codec(s.schema_registry_url)
    boot = s.kafka_bootstrap
    history = _name(s, CALL_EVENTS)
    active = active_generation(s)
    if swap and not force:
        _refuse_running(s, active)
    try:
        # every end offset taken once, now: the rebuild reads what existed when it started
        full = kafka.offset_ranges(
            boot, [_name(s, t) for t in (*CH_TOPICS, ADMISSION, ROUTING, HEARTBEATS)], None, to_ms
        )
        starts = {}
        if from_ms is not None:
            for r in kafka.offset_ranges(boot, [_name(s, t) for t in CH_TOPICS], from_ms, to_ms):
                starts[(r.topic, r.partition)] = r.start
        config = read_config(s, codec)
    except kafka.PublishError as exc:
        raise StackError(str(exc)) from exc
    ch_names = {_name(s, t) for t in CH_TOPICS}
    ch_ranges = [
        kafka.PartitionRange(r.topic, r.partition, s0, max(s0, r.end))
        for r in full
        if r.topic in ch_names
        for s0 in [starts.get((r.topic, r.partition), r.start)]
    ]
    # the machines: their inputs from the oldest record kept (billing: all of call-events)
    machine_ranges = [r for r in full if r.topic not in ch_names or r.topic == history]
    if verify:
        # a live table is the state at its worker's committed offsets (its changelog is
        # written in the flush before each commit): compare the machines there
        machine_ranges = _at_committed(s, machine_ranges, history, active)
    billing_end = {r.partition: r.end for r in machine_ranges if r.topic == history}
    opened: Callable[[], None] = lambda: None  # noqa: E731
    if target is None:
        target, opened = open_target(s)
    gc_was = pause_gc()
    try:
        target.create(shadow.TABLES)
        blocks = _Blocks(target)
        rebuilder = Rebuilder(
            config,
            routing.Settings(
                redirect_timeout_ms=s.redirect_timeout_ms,
                heartbeat_timeout_ms=s.heartbeat_timeout_ms,
            ),
            blocks.add,
            s.state_retention_ms,
            s.billing_retention_ms,
        )
        ch_start = {(r.topic, r.partition): r.start for r in ch_ranges}
        ch_end = {(r.topic, r.partition): r.end for r in ch_ranges}
        suffix = {_name(s, t): t.suffix for t in ALL_TOPICS}
        undecodable = 0

        # 1. call-events (projection + billing), billing, webhook-deliveries: streamed
        streamed = [r for r in full if r.topic == history]  # from the oldest: billing
        streamed += [r for r in ch_ranges if r.topic != history]
        progress.phase("ClickHouse tables and billing", sum(r.size for r in streamed))
        decode = codec.decode
        for batch in kafka.read_ranges(boot, streamed):
            for msg in batch:
                topic, partition = msg.topic() or "", msg.partition() or 0
                offset = msg.offset() or 0
                try:
                    name, record = decode(msg.value() or b"")
                except CodecError:
                    undecodable += 1
                    continue
                rebuilder.feed(
                    suffix[topic],
                    partition,
                    offset,
                    msg.timestamp()[1],
                    name,
                    record,
                    topic == history and offset < billing_end[partition],
                    ch_start[(topic, partition)] <= offset < ch_end[(topic, partition)],
                )
            progress.advance(len(batch))
        blocks.flush()

        # 2. the decision machines: each partition in order, routing merged with heartbeats
        decision_ranges = [r for r in machine_ranges if r.topic != history]
        progress.phase("decision tables", sum(r.size for r in decision_ranges))
        kept: dict[tuple[str, int], list[LogRecord]] = {}
        for batch in kafka.read_ranges(boot, decision_ranges):
            for msg in batch:
                topic, partition = msg.topic() or "", msg.partition() or 0
                try:
                    name, record = decode(msg.value() or b"")
                except CodecError:
                    undecodable += 1
                    continue
                kept.setdefault((suffix[topic], partition), []).append(
                    LogRecord(
                        suffix[topic],
                        partition,
                        msg.offset() or 0,
                        msg.timestamp()[1],
                        name,
                        record,
                    )
                )
        for partition in range(ADMISSION.partitions):
            for rec in kept.get(("admission", partition), []):
                rebuilder.run_machines(rec)
            progress.advance(len(kept.get(("admission", partition), [])))
        for partition in range(ROUTING.partitions):
            ours = kept.get(("routing", partition), [])
            beats = kept.get(("backend-heartbeats", partition), [])
            for rec in routing_stream(ours, beats):
                rebuilder.run_machines(rec)
            progress.advance(len(ours) + len(beats))
        undecodable += rebuilder.unprojectable
        decisions = rebuilder.decisions
        rater = rebuilder.billing

        machine_tables = {**decisions.tables(), **rater.tables()}
        all_ranges = ch_ranges + [r for r in machine_ranges if r.topic != history]
        report = RebuildReport(
            ranges=_ranges_by_topic(all_ranges),
            records=sum(r.size for r in streamed) + sum(r.size for r in decision_ranges),
            rows=dict(blocks.written),
            undecodable=undecodable,
            machine_tables={k: len(t.live()) for k, t in machine_tables.items()},
            skipped=decisions.skipped + rater.skipped,
            seconds=0.0,
            via=getattr(target, "where", "ClickHouse"),
            generation={"active": active},
        )
        if verify:
            progress.phase("verify", len(shadow.TABLES) + len(machine_tables))
            for t in CH_TOPICS:
                name = _name(s, t)
                result = target.compare(SOURCES[t.suffix], _table_ranges(ch_ranges, name))
                report.checks.append(
                    TableCheck(
                        result["table"],
                        "clickhouse",
                        result["live"],
                        result["shadow"],
                        bool(result["equal"]),
                        list(result["differing_calls"]),
                    )
                )
                progress.advance(1)
            ends = {(r.topic, r.partition): r.end for r in full}
            report.checks += _verify_machines(
                s, machine_tables, machine_ranges, history, ends, active
            )
            progress.advance(len(machine_tables))
        if swap:
            for t in CH_TOPICS:
                name = _name(s, t)
                report.swapped.append(
                    target.swap(SOURCES[t.suffix], _table_ranges(ch_ranges, name))
                )
            entries = sum(report.machine_tables.values())
            progress.phase("promote the machine tables", entries)
            report.generation = promote(s, machine_tables, machine_ranges, history, active)
            progress.advance(entries)
        report.seconds = time.monotonic() - started
        return report
    finally:
        resume_gc(gc_was)
        opened()


def _worker_id(s: Settings, table: str, generation: int) -> str:
    """The Faust id (consumer group) of the worker that holds `table`."""
    decisions, billing = generations.worker_ids(s.app_id, generation)
    return billing if table in BILLING_TABLES else decisions


def _changelog(s: Settings, table: str, generation: int) -> str:
    return f"{_worker_id(s, table, generation)}-{table}-changelog"


# -- table generations (docs/design.md, "Table generations") -----------------------------
def active_generation(s: Settings) -> int:
    """The workers' active table generation; BadInput for a malformed record."""
    try:
        return admin.active_generation(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    except GenerationError as exc:
        raise BadInput(f"{exc} (in {GENERATIONS.name(s.topic_prefix)})") from exc
    except admin.BrokerUnavailable as exc:
        raise StackError(str(exc)) from exc


def _members(s: Settings, groups: Iterable[str]) -> dict[str, int]:
    try:
        return {g: n for g, n in kafka.group_members(s.kafka_bootstrap, groups).items() if n}
    except kafka.PublishError as exc:
        raise StackError(str(exc)) from exc


def _refuse_running(s: Settings, active: int) -> None:
    """BadInput when a worker is a member of the live generation's groups."""
    running = _members(s, generations.worker_ids(s.app_id, active))
    if running:
        who = ", ".join(f"{g} ({n} member{'s' * (n > 1)})" for g, n in sorted(running.items()))
        raise BadInput(
            f"--swap: workers are running table generation {active}: {who}. Stop them first "
            "(a running worker keeps deciding on the old tables, and what it decides after "
            "the rebuild is not in the new ones), or add --force and restart them right after"
        )


def _existing(s: Settings) -> tuple[set[str], set[str]]:
    """Every topic and consumer group on the cluster."""
    try:
        return admin.topic_names(s.kafka_bootstrap), set(kafka.group_ids(s.kafka_bootstrap))
    except (admin.BrokerUnavailable, kafka.PublishError) as exc:
        raise StackError(str(exc)) from exc


def promote(
    s: Settings,
    tables: dict[str, Table],
    ranges: list[kafka.PartitionRange],
    history: str,
    active: int,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The shadow machine tables as the next table generation: its topics created, each
    table's live entries written to its changelog (the partition the rebuild wrote the key
    in, the bytes Faust writes), both workers' groups committed at the offsets `ranges`
    end at, and the generation record written last (a crash before it leaves the live
    generation in use and a partial one `replay clean` deletes)."""
    boot = s.kafka_bootstrap
    topics, groups = _existing(s)
    n = max({active} | generations.generations_named(s.app_id, topics | groups)) + 1
    decisions, billing = generations.worker_ids(s.app_id, n)
    specs = (
        *internal_topics(decisions, s.decision_partitions),
        *billing_internal_topics(s.app_id, n),
    )
    written: dict[str, int] = {}
    try:
        admin.apply_topics(boot, "", specs)  # as `topics apply` makes them
        producer = kafka.make_producer(boot)
        for table, shadow_table in tables.items():
            topic = _changelog(s, table, n)
            entries = shadow_table.live()
            written[topic] = kafka.publish_all(
                producer,
                (
                    kafka.Outgoing(
                        topic,
                        generations.table_key(key),
                        generations.table_value(value),
                        shadow_table.partitions[key],  # the partition it was written in
                    )
                    for key, value in entries.items()
                ),
                timeout=120,
            )
        for group, ours in (
            (decisions, [r for r in ranges if r.topic != history]),
            (billing, [r for r in ranges if r.topic == history]),
        ):
            kafka.set_group_offsets(boot, group, {(r.topic, r.partition): r.end for r in ours})
        record = GenerationRecord(
            s.app_id, n, active, int(time.time() * 1000) if now_ms is None else now_ms
        )
        key, value = record.encode()
        kafka.publish_all(producer, [kafka.Outgoing(GENERATIONS.name(s.topic_prefix), key, value)])
    except (
        kafka.PublishError,
        admin.BrokerUnavailable,
        admin.PartitionMismatch,
        KafkaException,
    ) as exc:
        raise StackError(
            f"promoting the machine tables as generation {n}: {exc} (generation {active} "
            "stays in use; run the swap again, `replay clean` deletes the partial one)"
        ) from exc
    return {"active": n, "previous": active, "topics": written, "groups": [decisions, billing]}


def _verify_machines(
    s: Settings,
    tables: dict[str, Table],
    ranges: list[kafka.PartitionRange],
    history: str,
    ends: dict[tuple[str, int], int],
    generation: int,
) -> list[TableCheck]:
    """Each machine table's shadow against its live changelog; a note when the live
    worker's committed offsets are not the rebuild's end offsets (its tables then hold
    more, or fewer, events than the shadow)."""
    checks = []
    for table, shadow_table in tables.items():
        try:
            raw = kafka.read_compacted(s.kafka_bootstrap, _changelog(s, table, generation))
        except kafka.PublishError as exc:
            checks.append(TableCheck(table, "faust", {}, {}, False, [], str(exc)))
            continue
        live = {_table_key(k): orjson.loads(v) for k, v in raw.items() if v is not None}
        mine = shadow_table.live()
        a, b = entries_digest(live), entries_digest(mine)
        equal = a == b
        group = _worker_id(s, table, generation)
        inputs = [r for r in ranges if (r.topic == history) == (table in BILLING_TABLES)]
        keys = [] if equal else differing_keys(live, mine)
        note = _behind(group, inputs, ends)
        if keys:
            what = _fields_differing(live.get(keys[0]), mine.get(keys[0]))
            note = "; ".join(x for x in (note, f"{keys[0]}: {what}") if x)
        checks.append(
            TableCheck(
                table,
                "faust",
                {"count": a.count, "xor": a.xor},
                {"count": b.count, "xor": b.xor},
                equal,
                keys,
                note,
            )
        )
    return checks


def _fields_differing(live: Any, shadow: Any, limit: int = 4) -> str:
    """How one entry differs: the fields with their live and shadow values."""
    if not isinstance(live, dict) or not isinstance(shadow, dict):
        return f"live {live!r:.120}, shadow {shadow!r:.120}"
    fields = sorted(k for k in set(live) | set(shadow) if live.get(k) != shadow.get(k))
    return ", ".join(
        f"{k} live {live.get(k)!r:.80} shadow {shadow.get(k)!r:.80}" for k in fields[:limit]
    )


def _table_key(raw: bytes) -> str:
    """A changelog key as the table knows it: Faust writes a table's keys as JSON."""
    try:
        key = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    return key if isinstance(key, str) else raw.decode("utf-8", "replace")


def _at_committed(
    s: Settings, ranges: list[kafka.PartitionRange], history: str, generation: int
) -> list[kafka.PartitionRange]:
    """`ranges` ending at the live workers' committed offsets (the decision worker's on
    its inputs, the billing worker's on call-events); a partition it never committed is
    one it holds nothing of."""
    out = []
    decisions, billing = generations.worker_ids(s.app_id, generation)
    for group, ours in (
        (decisions, [r for r in ranges if r.topic != history]),
        (billing, [r for r in ranges if r.topic == history]),
    ):
        try:
            committed = kafka.committed_offsets(
                s.kafka_bootstrap, group, [(r.topic, r.partition) for r in ours]
            )
        except kafka.PublishError as exc:
            raise StackError(str(exc)) from exc
        for r in ours:
            at = committed.get((r.topic, r.partition), -1)
            end = min(r.end, at) if at >= 0 else r.start
            out.append(kafka.PartitionRange(r.topic, r.partition, r.start, max(r.start, end)))
    return out


def _behind(
    group: str, ranges: list[kafka.PartitionRange], full: dict[tuple[str, int], int]
) -> str:
    """Where the compared range stops short of the end offsets (the live worker's
    position), for the report."""
    short = [
        f"{r.topic}[{r.partition}] {r.end}/{full[(r.topic, r.partition)]}"
        for r in ranges
        if r.end < full[(r.topic, r.partition)]
    ]
    if not short:
        return ""
    return f"compared at {group}'s committed offsets, short of the end: " + ", ".join(short[:4])


@dataclass
class CleanReport:
    dropped: list[str]  # ClickHouse tables (__old, __shadow)
    topics: list[str]  # older table generations' Faust topics
    groups: list[str]  # older table generations' consumer groups
    generation: int  # the active one, kept


def clean(s: Settings) -> CleanReport:
    """Drop the ClickHouse tables a swap kept and any shadows, and delete every table
    generation but the active one (its topics and consumer groups). Refused while a
    worker still runs an older generation."""
    active = active_generation(s)
    topics, groups = _existing(s)
    old = (generations.generations_named(s.app_id, topics | groups) | {0}) - {active}
    old_groups = sorted(g for n in old for g in generations.worker_ids(s.app_id, n) if g in groups)
    running = _members(s, old_groups)
    if running:
        who = ", ".join(sorted(running))
        raise BadInput(
            f"workers still run an older table generation ({who}): restart them on "
            f"generation {active} before `replay clean` deletes its topics"
        )
    old_topics = sorted(
        t
        for n in old
        for t in generations.generation_topics(s.app_id, n, s.decision_partitions)
        if t in topics
    )
    try:
        deleted_topics = admin.delete_topics(s.kafka_bootstrap, old_topics)
        deleted_groups = kafka.delete_groups(s.kafka_bootstrap, old_groups)
    except (admin.BrokerUnavailable, kafka.PublishError) as exc:
        raise StackError(str(exc)) from exc
    target, close = open_target(s)
    try:
        dropped = target.clean()
    finally:
        close()
    return CleanReport(dropped, deleted_topics, deleted_groups, active)


# -- replay events ------------------------------------------------------------------------
@dataclass(frozen=True)
class EventFilter:
    call_id: str | None = None
    business_id: str | None = None
    type: str | None = None

    def matches(self, name: str, record: dict[str, Any]) -> bool:
        if self.type is not None and name != self.type:
            return False
        env = record.get("envelope") or {}
        if self.call_id is not None and env.get("call_id") != self.call_id:
            return False
        return self.business_id is None or record.get("business_id") == self.business_id


@dataclass
class EventsReport:
    topic: str
    read: int
    matched: int
    written: int
    destination: str  # a file, a topic, or "" (dry run)


def event_topic(s: Settings, name: str) -> str:
    """The topic `--topic` names: one of ours by its short name (prefixed here), or the
    full name of a topic that exists (a copy `--to-topic` made)."""
    spec = EVENT_TOPICS.get(name)
    if spec is not None:
        return _name(s, spec)
    known = ", ".join(sorted(EVENT_TOPICS))
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
        raise BadInput(f"--topic: {name!r} is not a topic name; one of {known}")
    if not kafka.topic_exists(s.kafka_bootstrap, name):
        raise BadInput(f"--topic: unknown topic {name!r}: not one of {known}, nor on the broker")
    return name


def check_filter(f: EventFilter) -> None:
    known = set(LIFECYCLE_EVENTS) | set(make_codec().schemas.names())
    if f.type is not None and f.type not in known:
        raise BadInput(f"--type: unknown record type {f.type!r}; one of {', '.join(sorted(known))}")


def target_topic(s: Settings, name: str, force: bool) -> str:
    """The topic `--to-topic` names (with the prefix when it is one of ours); refused
    when it is a live input of a machine or service, unless `force`."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
        raise BadInput(f"--to-topic: {name!r} is not a valid Kafka topic name")
    prefix = s.topic_prefix
    suffix = name[len(prefix) :] if prefix and name.startswith(prefix) else name
    internal = name.startswith(s.app_id + "-")  # a Faust topic of any generation
    if (suffix in LIVE_INPUTS or internal) and not force:
        raise BadInput(
            f"--to-topic: {name!r} is a live input (machines or services consume it); "
            "re-publishing there is repeated to them: add --force if that is what you want"
        )
    return s.topic_prefix + suffix if suffix in EVENT_TOPICS else name


def events(
    s: Settings,
    topic: str,
    from_ms: int | None,
    to_ms: int | None,
    where: EventFilter,
    out: Path | None = None,
    to_topic: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> EventsReport:
    """Read `topic` between the times; write the matching events as JSON lines to `out`,
    or re-publish their bytes unchanged (same key) to `to_topic`, or only count."""
    check_filter(where)
    _window(from_ms, to_ms)
    if (out is not None) + (to_topic is not None) + bool(dry_run) != 1:
        raise BadInput("give exactly one of --out FILE, --to-topic NAME, --dry-run")
    dest = target_topic(s, to_topic, force) if to_topic else None
    source = event_topic(s, topic)
    if dest is not None and not kafka.topic_exists(s.kafka_bootstrap, dest):
        raise BadInput(f"--to-topic: {dest!r} does not exist (create it first: the broker does "
                       "not create topics on first use)")  # fmt: skip
    if dest == source:
        raise BadInput("--to-topic: the topic being read")
    codec = make_codec(s.schema_registry_url)
    try:
        ranges = kafka.offset_ranges(s.kafka_bootstrap, [source], from_ms, to_ms)
    except kafka.PublishError as exc:
        raise StackError(str(exc)) from exc
    report = EventsReport(source, 0, 0, 0, str(out) if out else (dest or ""))
    matched = _matching(s, codec, ranges, where, report)
    try:
        if out is not None:
            with open(out, "wb") as f:
                for msg, name, record in matched:
                    f.write(orjson.dumps(json_line(msg, name, record), default=str) + b"\n")
                    report.written += 1
        elif dest is not None:
            producer = kafka.make_producer(s.kafka_bootstrap)
            report.written = kafka.publish_all(
                producer,
                (kafka.Outgoing(dest, msg.key(), msg.value()) for msg, _n, _r in matched),
            )
        else:
            for _ in matched:
                pass
    except kafka.PublishError as exc:
        raise StackError(str(exc)) from exc
    except OSError as exc:
        raise BadInput(f"--out: cannot write {out}: {exc}") from exc
    return report


def _matching(
    s: Settings,
    codec: Codec,
    ranges: list[kafka.PartitionRange],
    where: EventFilter,
    report: EventsReport,
) -> Iterator[tuple[Message, str, dict[str, Any]]]:
    for batch in kafka.read_ranges(s.kafka_bootstrap, ranges):
        for msg in batch:
            report.read += 1
            try:
                name, record = codec.decode(msg.value() or b"")
            except CodecError:
                continue
            if where.matches(name, record):
                report.matched += 1
                yield msg, name, record


def json_line(msg: Message, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """One exported event: where it was, what type, the record (Avro as JSON: decimals
    as strings), and its key."""
    kind, ts = msg.timestamp()
    key = msg.key()
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": ts if kind else None,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "type": name,
        "record": record,
    }
