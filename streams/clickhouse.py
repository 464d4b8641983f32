"""ClickHouse access through clickhouse-connect: embedded chDB or a server over HTTP.

chDB is in-process and one process owns a data path at a time, so with the embedded
default the worker owns it: the sink writes and the worker's web views answer reads
(`trunkline calls ...` asks the worker). With an HTTP DSN any process may connect.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.projection import TABLE_COLUMNS, Row, json_compact_each_row

DDL_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
DEFAULT_DATABASE = "trunkline"


class ClickHouseUnavailable(RuntimeError):
    pass


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

    def insert_block(self, table: str, columns: tuple[str, ...], block: bytes) -> None:
        """Insert a JSONCompactEachRow block (rows in `columns` order) into `table` of this
        store's database (the replay's shadow tables: streams/shadow.py)."""
        with self._lock:
            self.client.raw_insert(
                f"{self.database}.{table}", list(columns), insert_block=block,
                fmt="JSONCompactEachRow",
            )  # fmt: skip

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

    def close(self) -> None:
        with self._lock:
            try:
                self.client.close()
            except ClickHouseError:
                pass
