"""The Faust worker: config tables, the decision agents (admission, routing), web views.

The ClickHouse sink runs in its own process (streams/sink_service.py). The app is tuned
for a decision path that crosses Kafka several times: aiokafka's fetches are bounded
(streams/patches.py), offsets are committed every second (every handler is idempotent by
event id, so a crash re-delivers at most a second of events), a crashed worker's
partitions move after a 10 s session timeout (Faust's default is 60 s), and a new consumer
group replays from the earliest offset (the projections are rebuilt from the topics).
Measurements behind each setting: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.serializers import codecs
from faust.web import Request, Response, View

from schemas.codec import Codec, make_codec
from streams import agents, billing_agent, patches, routing
from streams.readiness import WorkerState, waiting_for
from trunkline.core import logs, metrics
from trunkline.core.admin import active_generation, check_partitions
from trunkline.core.aio import tune_gc
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    BILLING_CONFIG_SECTIONS,
    CONFIG_TOPICS,
    WORKER_CONFIG_SECTIONS,
    billing_app_id,
    generation_app_id,
)

log = logging.getLogger("trunkline.worker")


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
    socket writes). The emitter holds the same record (same topic, the partition of the
    event being processed, the same JSON key and value) until the flush before the next
    offset commit has seen every output queued before it acknowledged, then writes it
    through librdkafka and waits for it (streams/emitter.py): the changelog never gets
    ahead of the outputs of the events that changed the table, and a committed offset
    still implies a stored changelog. The memory store keeps no persisted offsets, so
    nothing reads the send futures Faust would have returned.
    """

    emitter: Any = None  # set by streams.agents.register before the worker starts

    def _changelog(self, key: Any, value: bytes | None) -> None:
        self.emitter.changelog(
            self.changelog_topic.get_topic_name(),
            codecs.dumps(self.key_serializer, key),
            value,
            self.partition_for_key(key),
        )

    def on_key_set(self, key: Any, value: Any) -> None:
        self._changelog(key, codecs.dumps(self.value_serializer, value))

    def on_key_del(self, key: Any) -> None:
        self._changelog(key, None)  # a tombstone: compaction drops the key


#: what a worker runs: the decision path, or billing (its own process and app id, so the
#: history's partitions and the rating work stay off the decision path's fetches and GIL)
ROLES = ("decisions", "billing")


class TrunklineApp:
    """Builds the Faust app for one Settings; holds the pieces views and tests reach."""

    def __init__(
        self, settings: Settings, role: str = "decisions", generation: int | None = None
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown worker role {role!r}; one of {', '.join(ROLES)}")
        patches.apply()
        self.settings = settings
        self.role = role
        # the table generation (docs/design.md): read once, at start; a worker keeps its
        # generation until it is restarted
        if generation is None:
            generation = active_generation(
                settings.kafka_bootstrap, settings.topic_prefix, settings.app_id
            )
        self.generation = generation
        self.codec = make_codec(settings.schema_registry_url)
        codecs.register("tl-avro", AvroRecordCodec(self.codec))
        codecs.register("tl-str", Utf8Codec())
        billing = role == "billing"
        self.app = faust.App(
            generation_app_id(
                billing_app_id(settings.app_id) if billing else settings.app_id, generation
            ),
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            key_serializer="tl-str",
            value_serializer="tl-avro",
            web_enabled=True,
            web_host=settings.worker_web_host,
            web_port=settings.billing_web_port if billing else settings.worker_web_port,
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
        for section in BILLING_CONFIG_SECTIONS if billing else WORKER_CONFIG_SECTIONS:
            spec = CONFIG_TOPICS[section]
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
        if billing:
            registered = billing_agent.register(self.app, settings, self.codec, self.tables)
        else:
            registered = agents.register(
                self.app,
                settings,
                self.codec,
                self.tables,
                routing.Settings(
                    redirect_timeout_ms=settings.redirect_timeout_ms,
                    heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
                ),
            )
        self.emitter = registered.emitter
        self.state_tables = registered.state_tables
        self.gauges = registered.gauges
        self.state_metrics = metrics.install("worker-state", metrics.Snapshot())
        self.lag_metrics = metrics.install(
            "worker-lag", metrics.ConsumerLag(settings.kafka_bootstrap, [self.app.conf.id])
        )
        self._register_views()

    def worker_state(self) -> WorkerState:
        """Faust's view of this worker's membership and recovery, for readiness."""
        app = self.app
        recovery = app.tables.recovery
        recovering = bool(getattr(app, "in_recovery", False))
        remaining = 0
        if recovering:
            try:
                remaining = int(recovery.active_remaining_total())
            except Exception:  # the highwaters are being rebuilt
                remaining = 0
        return WorkerState(
            generation=int(app.consumer_generation_id or 0),
            rebalancing=bool(app.rebalancing),
            recovering=recovering,
            recovered=recovery.completed.is_set(),
            remaining=remaining,
        )

    # -- web views -----------------------------------------------------------------
    def _register_views(self) -> None:
        outer = self
        app = self.app

        @app.page("/health/")
        class Health(View):
            """200 once the worker can decide calls (group joined, tables recovered),
            else 503 with what it waits for (streams/readiness.py)."""

            async def get(self, request: Request) -> Response:
                waiting = waiting_for(outer.worker_state())
                return self.json(
                    {
                        "app_id": outer.app.conf.id,
                        "generation": outer.generation,
                        "ready": not waiting,
                        "waiting_for": waiting,
                        "tables": {k: len(v) for k, v in outer.tables.items()},
                        "agents": sorted(outer.app.agents),
                    },
                    status=503 if waiting else 200,
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

        @app.page("/metrics")
        class Metrics(View):
            """Prometheus text format: the agents' counters, the live state's gauges
            (snapshot here, on the worker's loop), the group's consumer lag (asked of the
            broker off the loop)."""

            async def get(self, request: Request) -> Response:
                for name, (documentation, labels, samples) in outer.gauges().items():
                    outer.state_metrics.update(name, documentation, labels, samples)
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(None, metrics.exposition)
                return self.bytes(body, headers={"Content-Type": metrics.CONTENT_TYPE})

        @app.page("/state/{name}/")
        class StateView(View):
            """Decision state this worker holds: admission-active (business -> admitted
            calls), routing-held (backend -> calls holding a slot), routing-heartbeats,
            routing-open (region -> reservations awaiting their backend), admitted-routing
            (each call holding a plan slot -> routing's state of it)."""

            async def get(self, request: Request, name: str) -> Response:
                table = outer.state_tables.get(name)
                if table is None:
                    return self.json(
                        {"error": f"unknown state {name!r}", "names": sorted(outer.state_tables)},
                        status=404,
                    )
                return self.json({k: v for k, v in table.items() if v is not None})


def create_app(
    settings: Settings | None = None, role: str = "decisions", generation: int | None = None
) -> TrunklineApp:
    return TrunklineApp(settings or Settings.from_env(), role, generation)


def run_worker(settings: Settings, loglevel: str = "info", role: str = "decisions") -> None:
    """Run the worker (or, with role "billing", the billing worker) in the foreground
    until SIGINT/SIGTERM."""
    from faust.worker import Worker

    # our handler (TRUNKLINE_LOG_FORMAT), not mode's: the worker logs like every service
    logs.setup(loglevel, settings.log_format, "billing-worker" if role == "billing" else "worker")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    generation = active_generation(settings.kafka_bootstrap, settings.topic_prefix, settings.app_id)
    if role == "decisions":
        # decision topics made with another partition count would re-key the calls in
        # progress: refuse to start instead (PartitionMismatch names them)
        check_partitions(
            settings.kafka_bootstrap, settings.topic_prefix,
            generation_app_id(settings.app_id, generation), settings.decision_partitions,
        )  # fmt: skip
    log.info("table generation %d", generation)
    built = create_app(settings, role, generation)
    # Long-lived tables make the cyclic GC's full collections slow (they walk every object);
    # freeze what start-up allocated and collect young objects less often.
    tune_gc()
    worker = Worker(built.app, loglevel=loglevel, quiet=True, override_logging=False)
    # Faust's terminal spinner writes control characters to stdout (mode's logging setup,
    # which we skip, is what turned it off): no spinner, a "Ready" log line instead
    worker.spinner = None
    worker.execute_from_commandline()
