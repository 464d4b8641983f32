"""The Faust worker: config tables, the decision agents (admission, routing), web views.

The ClickHouse sink runs in its own process (streams/sink_service.py).

Latency settings (the decision path crosses Kafka several times, DESIGN.md):
- ``producer_linger=0.002``: aiokafka alone measured 2.6 ms produce->consume with linger 0,
  4.8 ms with 2 ms; but in the worker linger 0 sends one request per record and the
  queue behind aiokafka's single in-flight request per broker made p99 worse under load.
- ``broker_commit_interval=1.0``: offsets are committed every second; commits are not on
  the decision path (a crash re-delivers at most a second of events, and every handler is
  idempotent by event id).
- ``stream_wait_empty=False``: do not wait for the stream buffer to drain on rebalance.
- aiokafka fetches: ``fetch_max_wait_ms`` 3 with ``fetch_min_bytes`` 1024 (Faust hard-codes
  1500 ms and 1 byte) and prefetch backoff 5 ms (aiokafka's 100 ms is not exposed); see
  ``_tune_aiokafka_fetcher``. aiokafka keeps one fetch in flight per broker, and a
  partition whose records were just handed to an agent is not in it: its next record
  waits until that fetch returns. A short wait bounds that; the 1 KiB minimum stops the
  broker answering each record on its own, so at 300 calls/s the consumer thread fell
  from ~32% to ~17% of a core and the broker from ~45% to ~38%. Measured per hop at
  300 calls/s (3 runs, fresh broker each): p50 10 -> 6-7 ms, p90 33 -> 11 ms. A quiet
  worker long-polls instead of fetching every 3 ms (``fetch_limits``).
- aiokafka's ``fetcher_timeout`` (0.2 s, not exposed by Faust either): when every partition
  was waiting for the consumer or in flight, the fetch loop slept up to 200 ms before it
  looked again. At 300 calls/s that showed as 200-250 ms pauses with the event loop idle
  (p99 448 ms); at 10 ms the same run had p99 80-160 ms.
- ``broker_session_timeout=10``: a crashed worker's partitions are reassigned after 10 s
  (Faust's default is 60 s).
- ``consumer_auto_offset_reset="earliest"``: a new consumer group replays from the start
  (the projections are rebuilt from the topics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import faust
from faust.serializers import codecs
from faust.web import Request, Response, View

from schemas.codec import Codec, make_codec
from streams import agents, routing
from trunkline.aio import tune_gc
from trunkline.settings import Settings
from trunkline.topics import CONFIG_TOPICS

log = logging.getLogger("trunkline.worker")

#: aiokafka sends one fetch at a time per broker, for the partitions that have no records
#: waiting to be consumed; a partition whose records were just consumed is not in the
#: in-flight fetch and waits for it to come back. Faust creates its consumer with
#: fetch_max_wait_ms=1500 (hard-coded), so on a quiet broker a decision could wait up to
#: 1.5 s per hop, and aiokafka's prefetch_backoff (0.1 s, not exposed either) adds up to
#: 100 ms. Short long-polls bound both; a minimum of 1 KiB per answer keeps the broker
#: from answering every record on its own under load.
FETCH_MAX_WAIT_MS = 3
FETCH_MIN_BYTES = 1024
PREFETCH_BACKOFF_S = 0.005
FETCHER_TIMEOUT_S = 0.01
#: After a fetch that brought nothing, the next one asks for a single byte and may wait
#: 100 ms: the broker answers the moment a record arrives, and a quiet worker fetches a
#: few times per tick instead of ~330 times a second. Only when no partition has records
#: waiting for the agents: such a partition is left out of the fetch, and its next
#: records would wait for the long poll. Records older than STUCK_AFTER_S are not
#: waiting for anyone: Faust leaves its own tables' changelog partitions assigned after
#: recovery but never reads them again, so the first records fetched there stay.
IDLE_FETCH_MAX_WAIT_MS = 100
STUCK_AFTER_S = 1.0


def fetch_limits(
    last_was_empty: bool, buffered_since: Iterable[float], now: float
) -> tuple[int, int]:
    """(fetch_min_bytes, fetch_max_wait_ms) for the next fetch: a long poll for one byte
    after an empty fetch while no partition has records waiting for the agents (records
    buffered for STUCK_AFTER_S or more wait for no one), else the short 1 KiB poll."""
    waiting = any(now - t < STUCK_AFTER_S for t in buffered_since)
    if last_was_empty and not waiting:
        return 1, IDLE_FETCH_MAX_WAIT_MS
    return FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS


def _tune_aiokafka_fetcher() -> None:
    from aiokafka.consumer import fetcher

    init = fetcher.Fetcher.__init__
    if getattr(init, "_trunkline", False):
        return

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["prefetch_backoff"] = PREFETCH_BACKOFF_S
        kwargs["fetcher_timeout"] = FETCHER_TIMEOUT_S
        kwargs["fetch_min_bytes"] = FETCH_MIN_BYTES
        kwargs["fetch_max_wait_ms"] = min(
            int(kwargs.get("fetch_max_wait_ms", 500)), FETCH_MAX_WAIT_MS
        )
        init(self, *args, **kwargs)

    patched._trunkline = True  # type: ignore[attr-defined]
    fetcher.Fetcher.__init__ = patched  # type: ignore[method-assign]

    proc = fetcher.Fetcher._proc_fetch_request
    plan = fetcher.Fetcher._get_actions_per_node

    async def proc_fetch(self: Any, assignment: Any, node_id: int, request: Any) -> Any:
        got = await proc(self, assignment, node_id, request)
        self._tl_idle = not got  # False when the fetch put records in the buffer
        return got

    def plan_fetches(self: Any, assignment: Any) -> Any:
        now = time.monotonic()
        self._fetch_min_bytes, self._fetch_max_wait_ms = fetch_limits(
            getattr(self, "_tl_idle", False),
            (getattr(r, "_created", now) for r in self._records.values()),
            now,
        )
        return plan(self, assignment)

    fetcher.Fetcher._proc_fetch_request = proc_fetch  # type: ignore[method-assign]
    fetcher.Fetcher._get_actions_per_node = plan_fetches  # type: ignore[method-assign]


class AvroRecordCodec(codecs.Codec):
    """Faust codec: our Avro framing <-> dict with a ``_type`` key naming the record."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.avro = codec

    def _loads(self, s: bytes) -> Any:
        name, record = self.avro.decode(s)
        record["_type"] = name
        return record

    def _dumps(self, s: Any) -> bytes:
        record = dict(s)
        name = record.pop("_type")
        return self.avro.encode(name, record)


class Utf8Codec(codecs.Codec):
    def _loads(self, s: bytes) -> Any:
        return s.decode("utf-8")

    def _dumps(self, s: Any) -> bytes:
        return str(s).encode("utf-8")


class ConfigTable(faust.GlobalTable):
    """A GlobalTable whose changelog is one of our compacted config topics.

    faust-streaming 0.15's partition assignor looks global tables up by
    ``_changelog_topic_name()``, which ignores a custom ``changelog_topic`` and returns
    ``<app>-<table>-changelog``; the lookup fails inside the assignor and the group join
    hangs. Naming the real topic fixes it.
    """

    def _changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())


class EmittedTable(faust.Table):  # type: ignore[misc]
    """A Table whose changelog records leave through the worker's Emitter.

    Faust sends each table write with ``Topic.send_soon`` through aiokafka's producer:
    about a tenth of the worker's thread at 300 calls/s (the pure-Python sender and its
    socket writes). The emitter queues the same record (same topic, the partition of the
    event being processed, the same JSON key and value) in librdkafka, through its
    lingering history producer (nothing on the call path waits for it), and its flush runs
    before every offset commit (streams/emitter.py), so a committed offset still implies
    a stored changelog. The memory store keeps no persisted offsets, so nothing reads the
    send futures Faust would have returned.
    """

    emitter: Any = None  # set by streams.agents.register before the worker starts

    def _changelog(self, key: Any, value: bytes | None) -> None:
        partition = self.partition_for_key(key)
        self.emitter.send_raw(
            self.changelog_topic.get_topic_name(),
            codecs.dumps(self.key_serializer, key),
            value,
            partition,
            history=True,  # nothing on the call path waits for a changelog record
        )

    def on_key_set(self, key: Any, value: Any) -> None:
        self._changelog(key, codecs.dumps(self.value_serializer, value))

    def on_key_del(self, key: Any) -> None:
        self._changelog(key, None)  # a tombstone: compaction drops the key


class TrunklineApp:
    """Builds the Faust app for one Settings; holds the pieces views and tests reach."""

    def __init__(self, settings: Settings) -> None:
        _tune_aiokafka_fetcher()
        self.settings = settings
        self.codec = make_codec(settings.schema_registry_url)
        codecs.register("tl-avro", AvroRecordCodec(self.codec))
        codecs.register("tl-str", Utf8Codec())
        self.app = faust.App(
            settings.app_id,
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            key_serializer="tl-str",
            value_serializer="tl-avro",
            web_enabled=True,
            web_host=settings.worker_web_host,
            web_port=settings.worker_web_port,
            web_bind=settings.worker_web_host,
            topic_replication_factor=1,
            topic_allow_declare=True,
            producer_linger=0.002,
            producer_acks=-1,
            broker_commit_interval=1.0,
            # a crashed worker's partitions move to the survivors (or its restart) after
            # the session timeout; 10 s instead of 60 s bounds that stall
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            stream_wait_empty=False,
            consumer_auto_offset_reset="earliest",
            datadir=str(settings.state_dir / "faust"),
            GlobalTable=ConfigTable,
            Table=EmittedTable,
        )
        self.tables: dict[str, Any] = {}
        for section, spec in CONFIG_TOPICS.items():
            topic = self.app.topic(
                spec.name(settings.topic_prefix),
                key_serializer="tl-str",
                value_serializer="tl-avro",
                partitions=spec.partitions,
                compacting=True,
                deleting=False,
            )
            self.tables[section] = self.app.GlobalTable(
                f"config-{section}",
                default=None,
                changelog_topic=topic,
                partitions=spec.partitions,
                # Others (`trunkline config apply`) write these topics; keep every partition
                # as a standby too, so the table follows changes after recovery.
                synchronize_all_active_partitions=True,
                # Faust routes records of a partition that is both active and standby to
                # the *active* buffer, flushed every `recovery_buffer_size` records: with
                # the default 1000 a live change would wait for 999 more. Config is small.
                recovery_buffer_size=1,
                schema=faust.Schema(key_serializer="tl-str", value_serializer="tl-avro"),
                help=f"{section} from {topic.get_topic_name()}",
            )
        self.state_tables: dict[str, Any] = {}
        self.emitter: Any = None  # streams.emitter.Emitter, set by agents.register
        agents.register(
            self,
            routing.Settings(
                redirect_timeout_ms=settings.redirect_timeout_ms,
                heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
            ),
        )
        self._register_views()

    # -- web views -----------------------------------------------------------------
    def _register_views(self) -> None:
        outer = self
        app = self.app

        @app.page("/health/")
        class Health(View):
            async def get(self, request: Request) -> Response:
                return self.json(
                    {
                        "app_id": outer.settings.app_id,
                        "tables": {k: len(v) for k, v in outer.tables.items()},
                        "agents": sorted(outer.app.agents),
                    }
                )

        @app.page("/config/{section}/")
        class ConfigView(View):
            async def get(self, request: Request, section: str) -> Response:
                table = outer.tables.get(section)
                if table is None:
                    return self.json(
                        {"error": f"unknown section {section!r}", "sections": list(outer.tables)},
                        status=404,
                    )
                items = {}
                for key, value in table.items():
                    if value is None:
                        continue
                    record = {k: v for k, v in value.items() if k not in ("_type", "envelope")}
                    items[key] = record
                return self.json(items)

        @app.page("/state/{name}/")
        class StateView(View):
            """Decision state this worker holds: admission-active (business -> admitted
            calls), routing-held (backend -> calls holding a slot), routing-heartbeats,
            routing-open (region -> reservations awaiting their backend)."""

            async def get(self, request: Request, name: str) -> Response:
                table = outer.state_tables.get(name)
                if table is None:
                    return self.json(
                        {"error": f"unknown state {name!r}", "names": sorted(outer.state_tables)},
                        status=404,
                    )
                return self.json({k: v for k, v in table.items() if v is not None})


def create_app(settings: Settings | None = None) -> TrunklineApp:
    return TrunklineApp(settings or Settings.from_env())


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    built = create_app(settings)
    # Long-lived tables make the cyclic GC's full collections slow (they walk every object);
    # freeze what start-up allocated and collect young objects less often.
    tune_gc()
    worker = Worker(built.app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
