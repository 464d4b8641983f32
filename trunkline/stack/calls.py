"""The call history for the operator: one client for the sink's read API.

With the embedded engine (chDB) one process owns the data path: the sink, which serves
`/calls/...` and `/sql/` (streams/sink_service.py). `CallHistory` asks it; when no sink
runs, it opens the engine itself and runs the same queries (streams/queries.py): reading,
not a copy of the routes. With a ClickHouse server DSN anyone may connect, so it queries
directly. Ad-hoc SQL (`sql`, which `trunkline sql` and `trunkline report` use) is checked
read-only on both paths (streams.queries.check_read_only, then ClickHouse's readonly=1).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from streams import queries
from streams.clickhouse import ClickHouseStore, ClickHouseUnavailable, QueryRefused
from streams.projection import FINAL_STATUSES
from trunkline.core import procs
from trunkline.core.settings import Settings
from trunkline.stack.base import BadInput, StackError

SQL_TIMEOUT_S = 600.0


class SinkClient:
    """The sink's read API over HTTP (`GET /calls/`, `GET /calls/{id}/`)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.timeout = timeout

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """JSON from `path`; BadInput for the sink's 400/404, StackError for others.
        Raises urllib.error.URLError when nothing answers."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v})
        return self._call(
            urllib.request.Request(f"{self.base_url}{path}" + (f"?{query}" if query else ""))
        )

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        """JSON from POSTing `body` as JSON to `path`; errors as `get`."""
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        return self._call(request, timeout)

    def _call(self, request: urllib.request.Request, timeout: float | None = None) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            if exc.code in (400, 404):
                raise BadInput(str(detail)) from exc
            raise StackError(f"the sink answered {exc.code}: {detail}") from exc

    def list_calls(self, business: str | None, since: str | None, limit: int) -> Any:
        params = {"business": business or "", "since": since or "", "limit": str(limit)}
        return self.get("/calls/", params)

    def show_call(self, call_id: str, events: bool) -> Any:
        path = f"/calls/{urllib.parse.quote(call_id, safe='')}/"
        return self.get(path, {"events": "1" if events else ""})

    def sql(self, query: str, limit: int) -> Any:
        # an analytics query over a long history may take minutes
        return self.post("/sql/", {"query": query, "limit": limit}, timeout=SQL_TIMEOUT_S)


class CallHistory:
    """Calls from ClickHouse, through the sink when it owns the embedded engine."""

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.sink = SinkClient(s.sink_url)
        self._store: ClickHouseStore | None = None

    def list_calls(
        self, business: str | None = None, since: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first. `since` is a duration such as 15m (BadInput otherwise)."""
        try:
            since_s = queries.parse_duration(since) if since else None
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
        if self._through_sink():
            try:
                rows: list[dict[str, Any]] = self.sink.list_calls(business, since, limit)
                return rows
            except urllib.error.URLError:
                self._sink_must_be_down()
        return queries.list_calls(self._open(), business or None, since_s, limit)

    def show_call(self, call_id: str, events: bool = False) -> dict[str, Any]:
        """One call's queue entry with its logs; BadInput when there is no such call."""
        if self._through_sink():
            try:
                entry: dict[str, Any] = self.sink.show_call(call_id, events)
                return entry
            except urllib.error.URLError:
                self._sink_must_be_down()
        store = self._open()
        found = queries.show_call(store, call_id)
        if found is None:
            raise BadInput(f"no call {call_id!r}")
        if events:
            found["events"] = queries.call_events(store, call_id)
        return found

    def sql(self, query: str, limit: int = queries.SQL_ROW_LIMIT) -> dict[str, Any]:
        """One read-only query: {columns, types, rows, truncated} (at most `limit` rows).
        BadInput when it is refused, by our check or by ClickHouse, with why."""
        try:
            statement = queries.check_read_only(query)
        except queries.ReadOnlyError as exc:
            raise BadInput(str(exc)) from exc
        if self._through_sink():
            try:
                result: dict[str, Any] = self.sink.sql(statement, limit)
                return result
            except urllib.error.URLError:
                self._sink_must_be_down()
        try:
            # no DDL on a server for a read (its user may be read-only; the sink that
            # writes there creates the views): only the embedded engine, which no sink holds
            return self._open(schema=self.settings.is_embedded_clickhouse).read_only(
                statement, limit
            )
        except QueryRefused as exc:
            raise BadInput(str(exc)) from exc

    def read(self, path: str, params: dict[str, str], local: Any) -> Any:
        """JSON from the sink's read API at `path`, or `local(store)` over the engine
        itself when no sink runs (or with a ClickHouse server)."""
        if self._through_sink():
            try:
                return self.sink.get(path, params)
            except urllib.error.URLError:
                self._sink_must_be_down()
        return local(self._open())

    def settled_call(self, call_id: str, timeout: float = 10.0) -> dict[str, Any] | None:
        """The entry once it reaches a final status (or as it is at `timeout`); None when
        it never became readable (the history trails Kafka by the sink's flush interval)."""
        seen: list[dict[str, Any]] = []

        def settled() -> dict[str, Any] | None:
            entry = self.show_call(call_id)
            seen.append(entry)
            return entry if entry.get("status") in FINAL_STATUSES else None

        try:
            return procs.wait_until(
                settled, timeout, f"call {call_id} to end", interval=0.3, retry_on=(StackError,)
            )
        except procs.WaitTimeout:
            return seen[-1] if seen else None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _through_sink(self) -> bool:
        return self.settings.is_embedded_clickhouse and self._store is None

    def _sink_must_be_down(self) -> None:
        if procs.running_pid(self.settings.state_dir, "sink") is not None:
            raise StackError(f"the sink runs but does not answer at {self.settings.sink_url}")

    def _open(self, schema: bool = True) -> ClickHouseStore:
        if self._store is None:
            try:
                self._store = ClickHouseStore(self.settings.clickhouse_dsn)
            except ClickHouseUnavailable as exc:
                raise StackError(str(exc)) from exc
            if schema:
                self._store.ensure_schema()
        return self._store
