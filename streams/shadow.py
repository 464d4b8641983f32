"""Shadow copies of the ClickHouse tables: create, fill, verify, swap, clean.

`trunkline replay rebuild` writes what it projects from the topics into `<table>__shadow`
(same structure and engine: `CREATE TABLE ... AS`), never into the live table the sink
writes. Then:

- **verify** compares shadow and live over the rebuilt offset range, per table, with an
  order-insensitive digest: `count()` and `groupBitXor(cityHash64(columns))` over
  `FINAL`, the columns being what the sink writes less where a copy landed
  (`streams.rebuild.POSITION_COLUMNS`). The live rows are those whose
  `(kafka_partition, kafka_offset)` lies in the range. When the digests differ, the same
  digest per call id names the first calls that differ.
- **swap** promotes the shadow: `EXCHANGE TABLES live AND shadow` (atomic: views such as
  `calls` read the new table at once), then the rows of the old table outside the rebuilt
  range (written before `--from`, or by the sink after the rebuild's end offsets) are
  copied in, and the old table is kept as `<table>__old`.
- **clean** drops the `__old` and `__shadow` tables.

Every operation takes a `ClickHouseStore`. With the embedded chDB only the sink's process
may open the data path, so the sink runs these for the replay command
(streams/sink_service.py, `/replay/...`); the swap then holds the store's lock, so no
sink insert lands between the exchange and the copy. With a ClickHouse server the command
runs them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams import arrow_blocks
from streams.clickhouse import ClickHouseStore
from streams.projection import TABLE_COLUMNS
from streams.rebuild import TABLE_KEYS, digest_columns

SHADOW, OLD = "__shadow", "__old"
#: the tables a rebuild shadows (each fed by one topic: streams.rebuild.SOURCES)
TABLES = tuple(TABLE_KEYS)
#: partition -> [start, end) offsets of the topic feeding a table
Ranges = Mapping[int, tuple[int, int]]


class ShadowError(ValueError):
    """A request the shadow tables cannot serve (unknown table, no shadow to swap...)."""


def _check(table: str) -> str:
    if table not in TABLES:
        raise ShadowError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
    return table


def range_clause(ranges: Ranges) -> str:
    """SQL for "the row's Kafka position lies in `ranges`" (integers only: no injection)."""
    parts = [
        f"(kafka_partition = {int(p)} AND kafka_offset >= {int(a)} AND kafka_offset < {int(b)})"
        for p, (a, b) in sorted(ranges.items())
        if int(b) > int(a)
    ]
    return " OR ".join(parts) if parts else "0"


def _hash_expr(table: str) -> str:
    # a tuple: cityHash64 of a NULL argument is NULL, and aggregates skip NULLs
    return f"cityHash64(tuple({', '.join(digest_columns(table))}))"


def create(store: ClickHouseStore, tables: tuple[str, ...] = TABLES) -> None:
    """Empty shadows of `tables` (an earlier shadow is dropped)."""
    db = store.database
    statements = []
    for t in map(_check, tables):
        statements.append(f"DROP TABLE IF EXISTS {db}.{t}{SHADOW}")
        statements.append(f"CREATE TABLE {db}.{t}{SHADOW} AS {db}.{t}")
    store.commands(statements)


#: the block formats a shadow takes (rows in `TABLE_COLUMNS[table]` order)
FORMATS = ("ArrowStream", "JSONCompactEachRow")


#: a shadow's inserts: no folding of the block's duplicate keys on insert (the
#: ReplacingMergeTree's merge of the sorted block costs as much as the rest of the
#: insert). Copies of an event (at-least-once delivery) stay separate rows until a
#: background merge, as the sink's copies in separate inserts do: everything that reads
#: the tables folds them (FINAL in the views, the digests, `swap`'s count), and which copy
#: a fold keeps differs only in where it landed (streams.rebuild.POSITION_COLUMNS).
INSERT_SETTINGS: dict[str, int] = {"optimize_on_insert": 0}


def insert(
    store: ClickHouseStore, table: str, block: bytes | memoryview, fmt: str = "ArrowStream"
) -> None:
    """Rows (an Arrow IPC stream of one or more record batches,
    `streams.arrow_blocks.ipc_stream`, or JSONCompactEachRow) into `table`'s shadow.
    A stream for the embedded chDB is read in place (`insert_batches`)."""
    _check(table)
    if fmt not in FORMATS:
        raise ShadowError(f"unknown row block format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "ArrowStream" and store.reads_arrow_in_place:
        try:
            batches = arrow_blocks.read_stream(block)
        except ValueError as exc:
            raise ShadowError(f"the rows are not an Arrow IPC stream: {exc}") from exc
        insert_batches(store, table, batches)
        return
    store.insert_block(f"{table}{SHADOW}", TABLE_COLUMNS[table], block, fmt, INSERT_SETTINGS)


def insert_batches(store: ClickHouseStore, table: str, batches: list[Any]) -> None:
    """Arrow record batches (`streams.arrow_blocks.record_batch`, columns in
    `TABLE_COLUMNS[table]` order) into `table`'s shadow."""
    _check(table)
    try:
        store.insert_arrow(f"{table}{SHADOW}", TABLE_COLUMNS[table], batches, INSERT_SETTINGS)
    except ValueError as exc:
        raise ShadowError(str(exc)) from exc


def _digest(store: ClickHouseStore, name: str, table: str, where: str) -> dict[str, int]:
    rows = store.query(
        f"SELECT count() AS n, groupBitXor({_hash_expr(table)}) AS x "
        f"FROM {store.database}.{name} FINAL WHERE {where}"
    )
    return {"count": int(rows[0]["n"]), "xor": int(rows[0]["x"] or 0)}


def compare(store: ClickHouseStore, table: str, ranges: Ranges, limit: int = 10) -> dict[str, Any]:
    """Shadow vs live over `ranges`: both digests, equal or not, and the first differing
    call ids (sorted) when not."""
    _check(table)
    db, where = store.database, range_clause(ranges)
    live = _digest(store, table, table, where)
    shadow = _digest(store, f"{table}{SHADOW}", table, where)
    differing: list[str] = []
    if live != shadow:
        per_call = (
            "SELECT call_id AS {c}, count() AS n, groupBitXor(h) AS x FROM "
            f"(SELECT call_id, {_hash_expr(table)} AS h FROM {db}.{{name}} FINAL WHERE {where}) "
            "GROUP BY call_id"
        )
        rows = store.query(
            f"SELECT if(l.lc != '', l.lc, s.sc) AS call_id FROM "
            f"({per_call.format(c='lc', name=table)}) AS l FULL OUTER JOIN "
            f"({per_call.format(c='sc', name=table + SHADOW)}) AS s ON l.lc = s.sc "
            f"WHERE l.n != s.n OR l.x != s.x ORDER BY call_id LIMIT {int(limit)}"
        )
        differing = [str(r["call_id"]) for r in rows]
    return {
        "table": table,
        "live": live,
        "shadow": shadow,
        "equal": live == shadow,
        "differing_calls": differing,
    }


def existing(store: ClickHouseStore) -> dict[str, list[str]]:
    """Which shadow and old tables exist: {"shadow": [...], "old": [...]} (base names)."""
    rows = store.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": store.database}
    )
    names = {str(r["name"]) for r in rows}
    return {
        "shadow": [t for t in TABLES if f"{t}{SHADOW}" in names],
        "old": [t for t in TABLES if f"{t}{OLD}" in names],
    }


def swap(store: ClickHouseStore, table: str, ranges: Ranges) -> dict[str, Any]:
    """Promote `table`'s shadow; the previous live table is kept as `<table>__old`.
    Rows of the live table outside `ranges` are carried over. One lock hold, so the sink
    (same store) inserts nothing between the exchange and the copy."""
    _check(table)
    if table not in existing(store)["shadow"]:
        raise ShadowError(f"{table} has no shadow to swap in: run `trunkline replay rebuild`")
    db, where = store.database, range_clause(ranges)
    store.commands(
        [
            f"DROP TABLE IF EXISTS {db}.{table}{OLD}",
            f"EXCHANGE TABLES {db}.{table} AND {db}.{table}{SHADOW}",
            f"INSERT INTO {db}.{table} SELECT * FROM {db}.{table}{SHADOW} WHERE NOT ({where})",
            f"RENAME TABLE {db}.{table}{SHADOW} TO {db}.{table}{OLD}",
        ]
    )
    rows = store.query(f"SELECT count() AS n FROM {db}.{table} FINAL")
    return {"table": table, "rows": int(rows[0]["n"]), "kept_as": f"{table}{OLD}"}


def clean(store: ClickHouseStore) -> list[str]:
    """Drop every `__old` and `__shadow` table; returns what was dropped."""
    found = existing(store)
    names = [f"{t}{OLD}" for t in found["old"]] + [f"{t}{SHADOW}" for t in found["shadow"]]
    store.commands([f"DROP TABLE IF EXISTS {store.database}.{n}" for n in names])
    return names
