"""ClickHouse access through clickhouse-connect: embedded chDB or a server over HTTP.

chDB is in-process and one process owns a data path at a time, so with the embedded
default the sink owns it: it writes, and its web views answer reads (`trunkline calls
...` and `trunkline sql` ask it). With an HTTP DSN any process may connect.

Ad-hoc queries (`read_only`) run on a second client with ClickHouse's own `readonly=1`:
with chDB a query's settings stay on the connection's session, so the writer's client
must never carry them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams import arrow_blocks
from streams.projection import TABLE_COLUMNS, Row, json_compact_each_row

DDL_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
DEFAULT_DATABASE = "trunkline"


class ClickHouseUnavailable(RuntimeError):
    pass


class QueryRefused(ValueError):
    """ClickHouse refused an ad-hoc query (read-only mode, syntax, unknown table...); the
    message is ClickHouse's."""


#: a server whose user profile is already read-only may refuse `readonly=1` itself as a
#: settings change (older releases); its profile keeps the query read-only anyway
_PROFILE_READ_ONLY = "Cannot modify 'readonly' setting in readonly mode"


def ddl_statements(database: str) -> list[str]:
    out: list[str] = []
    for path in sorted(DDL_DIR.glob("*.sql")):
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        out.extend(s.strip().replace("{db}", database) for s in text.split(";") if s.strip())
    return out


class ClickHouseStore:
    """A thread-safe handle: inserts from the sink thread, queries from the web views."""

    def __init__(self, dsn: str, database: str = DEFAULT_DATABASE) -> None:
        self.dsn = dsn
        self.database = database
        self._lock = threading.Lock()
        self._reader: Any = None  # the read-only client, on first use (read_only)
        self._reader_settings: dict[str, Any] = {"readonly": 1}
        self._arrow_conn: Any = None  # chDB's own handle for insert_arrow, on first use
        parsed = urlparse(dsn)
        if parsed.scheme == "chdb":
            Path(parsed.path).mkdir(parents=True, exist_ok=True)
        try:
            self.client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:  # clickhouse-connect raises several kinds here
            raise ClickHouseUnavailable(f"cannot open ClickHouse at {dsn}: {exc}") from exc

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    def ensure_schema(self) -> None:
        with self._lock:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            for statement in ddl_statements(self.database):
                self.client.command(statement)

    def insert_events(self, rows: list[Row]) -> None:
        """Insert projection rows (streams.projection.event_row) as JSONCompactEachRow."""
        self.insert_rows("call_events_log", rows)

    def insert_rows(self, table: str, rows: list[Row]) -> None:
        """Insert rows of one of streams.projection.TABLE_COLUMNS' tables."""
        if not rows:
            return
        block = json_compact_each_row(rows)
        with self._lock:
            self.client.raw_insert(
                f"{self.database}.{table}",
                list(TABLE_COLUMNS[table]),
                insert_block=block,
                fmt="JSONCompactEachRow",
            )

    def insert_block(
        self,
        table: str,
        columns: tuple[str, ...],
        block: bytes | memoryview,
        fmt: str = "JSONCompactEachRow",
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Insert a block of rows in `columns` order, in ClickHouse's input format `fmt`
        (JSONCompactEachRow, ArrowStream), into `table` of this store's database (the
        replay's shadow tables: streams/shadow.py), with the insert's own `settings`."""
        with self._lock:
            self.client.raw_insert(
                f"{self.database}.{table}",
                list(columns),
                insert_block=block,
                fmt=fmt,
                settings=settings,
            )

    def insert_arrow(
        self,
        table: str,
        columns: tuple[str, ...],
        batches: list[Any],
        settings: dict[str, int] | None = None,
    ) -> None:
        """Insert Arrow record batches (streams/arrow_blocks.py; columns in `columns`
        order) into `table` of this store's database, with the insert's own `settings`.

        With the embedded chDB on a data path, ClickHouse reads the batches where they
        are, through chDB's `Python()` table function (the Arrow table named in the SQL
        is this function's local), on a chDB handle of its own on the same engine: no IPC
        stream is written, and no file (clickhouse-connect's raw insert writes the block
        to a temporary file for chDB to read). The values are converted as an ArrowStream
        insert converts them (tests/integration/test_clickhouse.py). Otherwise the batches
        go as one ArrowStream insert."""
        path = self._chdb_path()
        if path is None or not batches:
            stream = arrow_blocks.ipc_stream(batches) if batches else None
            if stream is not None:
                self.insert_block(table, columns, memoryview(stream), "ArrowStream", settings)
            return
        import pyarrow as pa

        arrow_table = pa.Table.from_batches(batches)  # read by chDB by its name, below
        if arrow_table.schema.names != list(columns):  # Python() is read by position
            raise ValueError(
                f"the batches' columns {arrow_table.schema.names} are not {list(columns)}"
            )
        clause = ", ".join(f"{_identifier(k)} = {int(v)}" for k, v in (settings or {}).items())
        sql = (
            f"INSERT INTO {self.database}.{_identifier(table)} "
            f"({', '.join(map(_identifier, columns))}) "
            f"{'SETTINGS ' + clause + ' ' if clause else ''}SELECT * FROM Python(arrow_table)"
        )
        with self._lock:
            if self._arrow_conn is None:
                import chdb

                self._arrow_conn = chdb.connect(path)
            try:
                self._arrow_conn.query(sql)
            except Exception as exc:  # chDB raises its own error types
                raise ClickHouseError(str(exc)) from exc

    @property
    def reads_arrow_in_place(self) -> bool:
        """Whether insert_arrow hands the batches to chDB as they are."""
        return self._chdb_path() is not None

    def _chdb_path(self) -> str | None:
        """The embedded engine's data path as clickhouse-connect opens it (chDB allows
        one path per process, spelled the same), or None (a server, or chDB in memory)."""
        parsed = urlparse(self.dsn)
        if parsed.scheme != "chdb" or parsed.netloc or not parsed.path:
            return None
        return os.path.realpath(parsed.path)

    def commands(self, statements: list[str]) -> None:
        """Run statements in order under one hold of the lock: no insert of another thread
        (the sink's) lands between them (streams/shadow.py's swap)."""
        with self._lock:
            for statement in statements:
                self.client.command(statement)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self.client.query(sql, parameters=parameters or {})
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def read_only(self, sql: str, limit: int) -> dict[str, Any]:
        """One ad-hoc query (checked first by streams.queries.check_read_only) with
        `readonly=1`, in this store's database: {columns, types, rows, truncated}, at
        most `limit` rows, values as ClickHouse writes them in JSON. QueryRefused with
        ClickHouse's message when it refuses the query."""
        with self._lock:
            if self._reader is None:
                self._reader = clickhouse_connect.get_client(dsn=self.dsn, database=self.database)
            try:
                lines = self._stream(sql)
            except ClickHouseError as exc:
                if _PROFILE_READ_ONLY not in str(exc) or not self._reader_settings:
                    raise QueryRefused(_clickhouse_message(exc)) from exc
                self._reader_settings = {}  # the user's profile is read-only already
                try:
                    lines = self._stream(sql)
                except ClickHouseError as again:
                    raise QueryRefused(_clickhouse_message(again)) from again
            try:
                columns = orjson.loads(next(lines, b"[]"))
                types = orjson.loads(next(lines, b"[]"))
                rows = []
                truncated = False
                for line in lines:
                    if len(rows) >= limit:
                        truncated = True
                        break
                    rows.append(orjson.loads(line))
            except ClickHouseError as exc:  # a failure while the result streams
                raise QueryRefused(_clickhouse_message(exc)) from exc
        return {"columns": columns, "types": types, "rows": rows, "truncated": truncated}

    def _stream(self, sql: str) -> Iterator[bytes]:
        """The result's lines (names, types, then one JSON array per row)."""
        stream = self._reader.raw_stream(
            sql, fmt="JSONCompactEachRowWithNamesAndTypes", settings=self._reader_settings
        )
        return _lines(stream)

    def close(self) -> None:
        with self._lock:
            for client in (self.client, self._reader):
                try:
                    if client is not None:
                        client.close()
                except ClickHouseError:
                    pass
            if self._arrow_conn is not None:
                self._arrow_conn.close()
                self._arrow_conn = None


def _lines(chunks: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *done, pending = pending.split(b"\n")
        yield from (line for line in done if line)
    if pending:
        yield pending


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(name: str) -> str:
    """A table, column or setting name put into SQL: only plain identifiers."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain identifier")
    return name


def _clickhouse_message(exc: Exception) -> str:
    """ClickHouse's own words, without the client's wrapping and the version trailer."""
    text = str(exc).strip()
    start = text.find("DB::Exception:")
    if start >= 0:
        text = text[start + len("DB::Exception:") :].strip()
    return text.split(" (version ")[0].strip()
