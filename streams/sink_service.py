"""The ClickHouse sink as its own process: `trunkline sink`.

It owns the ClickHouse handle (with the embedded chDB engine, the only process that may
open the data path), runs the batch sink (streams/sink.py) and answers reads over HTTP:

    GET /health/                      sink stats
    GET /calls/?business=&since=&limit=   recent calls (streams/queries.py)
    GET /calls/{id}/[?events=1]       one call's queue entry
    GET /events/counts/               events per type
    GET /billing/?business=&since=&limit=          rated calls (billing_records)
    GET /billing/summary/?business=&month=         totals per direction and provider
    GET /webhooks/deliveries/?subscription=&failed=&since=&limit=   one row per delivery
    GET /webhooks/attempts/?subscription=&webhook_id=                one delivery's attempts
    GET /webhooks/redeliverable/?subscription=&event=&call=&since=  what redeliver sends
    POST /sql/ {"query", "limit"}     one read-only query (`trunkline sql`, `trunkline report`)
    GET /metrics                      Prometheus: rows, inserts, dead letters, consumer lag
    POST /replay/...                  `trunkline replay`'s shadow tables (add_replay_routes)

Kept apart from the Faust worker so that batch decoding and inserts never hold the GIL
the decision path needs (docs/benchmarks.md, 2026-11-26 04:34).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.codec import make_codec
from streams import queries, shadow
from streams.arrow_blocks import ARROW_STREAM
from streams.clickhouse import ClickHouseStore, QueryRefused
from streams.sink import ClickHouseSink
from trunkline.core import logs, metrics
from trunkline.core.aio import set_cpu_priority, tune_gc
from trunkline.core.memory import keep_freed_memory
from trunkline.core.settings import Settings
from trunkline.core.topics import BILLING, CALL_EVENTS, DEAD_LETTERS, WEBHOOK_DELIVERIES

log = logging.getLogger("trunkline.sink")
#: how long the sink's chDB and Arrow allocators keep freed pages (a replay's inserts come
#: seconds apart; a server gives memory back a minute after the last one)
SINK_KEEP_FREED_MS = 60_000


class SinkCollector(Collector):
    """The sink's counts (SinkStats), read at scrape time."""

    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        st = self.sink.stats
        for name, doc, value in (
            ("trunkline_sink_rows", "Rows stored in ClickHouse (committed)", st.inserted),
            ("trunkline_sink_batches", "Batches stored and committed", st.batches),
            ("trunkline_sink_dead_letters", "Records parked in dead-letters", st.dead_lettered),
            ("trunkline_sink_insert_errors", "Inserts ClickHouse refused (retried)", st.errors),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "trunkline_sink_up",
            "1 while the sink's consumer thread runs",
            value=float(self.sink.alive),
        )
        yield GaugeMetricFamily(
            "trunkline_sink_last_commit_timestamp_seconds",
            "When the sink last committed (Unix time; 0 before the first batch)",
            value=st.last_commit_at,
        )


def build_web(store: ClickHouseStore, sink: ClickHouseSink, settings: Settings) -> web.Application:
    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "sink": {"alive": sink.alive, **sink.stats.as_dict()},
                "clickhouse": settings.clickhouse_dsn,
                "topic": CALL_EVENTS.name(settings.topic_prefix),
            }
        )

    async def calls(request: web.Request) -> web.Response:
        q = request.query
        try:
            since = queries.parse_duration(q["since"]) if q.get("since") else None
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 10_000:
                raise ValueError("limit must be 1..10000")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await run(queries.list_calls, store, q.get("business") or None, since, limit)
        return web.json_response(rows)

    async def call(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        entry = await run(queries.show_call, store, call_id)
        if entry is None:
            return web.json_response({"error": f"no call {call_id!r}"}, status=404)
        if request.query.get("events"):
            entry["events"] = await run(queries.call_events, store, call_id)
        return web.json_response(entry)

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(await run(queries.event_counts, store))

    async def sql(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("query"), str):
                raise ValueError('the body must be JSON {"query": "...", "limit": N}')
            limit = body.get("limit", queries.SQL_ROW_LIMIT)
            if not isinstance(limit, int) or not 1 <= limit <= queries.SQL_MAX_ROWS:
                raise ValueError(f"limit must be 1..{queries.SQL_MAX_ROWS}")
            statement = queries.check_read_only(body["query"])
            result = await run(store.read_only, statement, limit)
        except (ValueError, QueryRefused) as exc:  # ReadOnlyError and bad JSON included
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    async def prometheus(request: web.Request) -> web.Response:
        body = await run(metrics.exposition)  # the lag asks the broker: off the loop
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    def _since(q: Any) -> int | None:
        return queries.parse_duration(q["since"]) if q.get("since") else None

    def _limit(q: Any) -> int:
        limit = int(q.get("limit", "100"))
        if not 1 <= limit <= 100_000:
            raise ValueError("limit must be 1..100000")
        return limit

    async def billing(request: web.Request) -> web.Response:
        q = request.query
        try:
            since, limit = _since(q), _limit(q)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await run(queries.list_billing, store, q.get("business") or None, since, limit)
        return web.json_response(rows)

    async def billing_summary(request: web.Request) -> web.Response:
        q = request.query
        try:
            month = queries.parse_month(q["month"]) if q.get("month") else None
            if not q.get("business"):
                raise ValueError("business is required")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(await run(queries.billing_summary, store, q["business"], month))

    async def deliveries(request: web.Request) -> web.Response:
        q = request.query
        try:
            since, limit = _since(q), _limit(q)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await run(
            queries.list_deliveries,
            store,
            q.get("subscription") or None,
            bool(q.get("failed")),
            since,
            limit,
        )
        return web.json_response(rows)

    async def attempts(request: web.Request) -> web.Response:
        q = request.query
        rows = await run(
            queries.delivery_attempts, store, q.get("subscription", ""), q.get("webhook_id", "")
        )
        return web.json_response(rows)

    async def redeliverable(request: web.Request) -> web.Response:
        q = request.query
        try:
            since = _since(q)
            if not q.get("subscription"):
                raise ValueError("subscription is required")
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await run(
            queries.redeliverable,
            store,
            q["subscription"],
            q.get("event") or None,
            q.get("call") or None,
            since,
        )
        return web.json_response(rows)

    app = web.Application(client_max_size=512 * 1024 * 1024)  # replay blocks of rows
    app.router.add_get("/health/", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/calls/", calls)
    app.router.add_get("/calls/{call_id}/", call)
    app.router.add_get("/events/counts/", counts)
    app.router.add_post("/sql/", sql)
    app.router.add_get("/billing/", billing)
    app.router.add_get("/billing/summary/", billing_summary)
    app.router.add_get("/webhooks/deliveries/", deliveries)
    app.router.add_get("/webhooks/attempts/", attempts)
    app.router.add_get("/webhooks/redeliverable/", redeliverable)
    add_replay_routes(app, store)
    return app


def add_replay_routes(app: web.Application, store: ClickHouseStore) -> None:
    """`trunkline replay`'s shadow tables (streams/shadow.py): the sink owns the embedded
    engine, so the replay command sends its row blocks and requests here.

        POST /replay/shadow/ {"tables"}                 create (empty) shadow tables
        POST /replay/shadow/{table}/rows/ (rows)         an Arrow IPC stream (Content-Type
                                                         application/vnd.apache.arrow.stream)
                                                         or JSONCompactEachRow into a shadow
        POST /replay/compare/ {"table", "ranges"}        digests, differing call ids
        POST /replay/swap/ {"table", "ranges"}           promote a shadow (old kept)
        POST /replay/clean/                              drop old and shadow tables
        POST /replay/tables/                             which exist
    """

    async def run(fn: Any, *args: Any) -> web.Response:
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except shadow.ShadowError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json() if request.can_read_body else {}
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="a JSON object is expected")
        return data

    def ranges(data: dict[str, Any]) -> dict[int, tuple[int, int]]:
        try:
            return {int(p): (int(a), int(b)) for p, (a, b) in (data.get("ranges") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"ranges: partition -> [start, end]: {exc}") from exc

    async def create(request: web.Request) -> web.Response:
        data = await body(request)
        tables = tuple(data.get("tables") or shadow.TABLES)

        def created() -> dict[str, list[str]]:
            shadow.create(store, tables)
            return {"created": list(tables)}

        return await run(created)

    async def rows(request: web.Request) -> web.Response:
        block = await request.read()
        table = request.match_info["table"]
        fmt = "ArrowStream" if request.content_type == ARROW_STREAM else "JSONCompactEachRow"

        def inserted() -> dict[str, int]:
            shadow.insert(store, table, block, fmt)
            return {"bytes": len(block)}

        return await run(inserted)

    async def compare(request: web.Request) -> web.Response:
        data = await body(request)
        return await run(shadow.compare, store, str(data.get("table")), ranges(data))

    async def swap(request: web.Request) -> web.Response:
        data = await body(request)
        return await run(shadow.swap, store, str(data.get("table")), ranges(data))

    async def clean(request: web.Request) -> web.Response:
        return await run(shadow.clean, store)

    async def tables(request: web.Request) -> web.Response:
        return await run(shadow.existing, store)

    app.router.add_post("/replay/shadow/", create)
    app.router.add_post("/replay/shadow/{table}/rows/", rows)
    app.router.add_post("/replay/compare/", compare)
    app.router.add_post("/replay/swap/", swap)
    app.router.add_post("/replay/clean/", clean)
    app.router.add_post("/replay/tables/", tables)


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    # a replay's blocks are inserted here when the sink owns the embedded engine: their
    # memory is reused from one insert to the next instead of faulted in again
    embedded = settings.is_embedded_clickhouse
    keep_freed_memory(SINK_KEEP_FREED_MS, ("pyarrow", "chdb") if embedded else ("pyarrow",))
    store = ClickHouseStore(settings.clickhouse_dsn)
    await loop.run_in_executor(None, store.ensure_schema)
    sink = ClickHouseSink(
        bootstrap=settings.kafka_bootstrap,
        topic=[
            spec.name(settings.topic_prefix) for spec in (CALL_EVENTS, BILLING, WEBHOOK_DELIVERIES)
        ],
        dead_letter_topic=DEAD_LETTERS.name(settings.topic_prefix),
        group_id=f"{settings.app_id}-clickhouse-sink",
        codec=make_codec(settings.schema_registry_url),
        store=store,
        flush_interval=settings.sink_flush_ms / 1000,
    )
    metrics.install("sink-stats", SinkCollector(sink))
    metrics.install("sink-lag", metrics.ConsumerLag(settings.kafka_bootstrap, [sink.group_id]))
    sink.start()
    runner = web.AppRunner(build_web(store, sink, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.sink_web_host, settings.sink_web_port)
    await site.start()
    log.info(
        "ClickHouse sink: %s -> %s; web on %s:%s",
        ", ".join(sink.topics),
        settings.clickhouse_dsn,
        settings.sink_web_host,
        settings.sink_web_port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if not sink.alive:
                raise RuntimeError("the sink thread stopped; see the log above")
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await loop.run_in_executor(None, sink.stop)
        await runner.cleanup()
        store.close()


def run_sink(settings: Settings, loglevel: str = "info") -> None:
    logs.setup(loglevel, settings.log_format, "sink")
    # first, so every thread the sink and chDB start inherits it: nothing here is on the
    # call path, and its bursts must not delay the decision path (TRUNKLINE_SINK_PRIORITY)
    applied = set_cpu_priority(settings.sink_priority)
    logging.getLogger("trunkline.sink").info("CPU priority: %s", applied)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # batches of 10,000 decoded records are young objects the cyclic GC would walk over and
    # over; collect less often
    tune_gc(100_000)
    asyncio.run(serve(settings))
