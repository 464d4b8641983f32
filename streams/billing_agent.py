"""The billing worker's agent: `call-events` -> the billing machine -> CallRated on `billing`.

A Faust app of its own (`trunkline billing-worker`, app id `<app id>-billing`): it reads
every record of the history (six partitions, about eight records a call), which the
decision path's worker should not fetch, decode or hold the GIL for. The agent decodes a
record, calls `streams.billing.handle` with the call's state from its table (keyed by call
id, co-partitioned with call-events), writes the new state and sends what the machine
emitted through the same `Emitter` the decision agents use, so the same at-least-once rule
holds: a committed offset implies its CallRated was acknowledged, and a changelog never
runs ahead of the outputs of the events that changed the table (streams/emitter.py).

Rated calls are forgotten `TRUNKLINE_BILLING_RETENTION_MS` (1 day) after they were rated,
by event time: after each event the agent deletes the rated entries of that event's
partition whose rating is older than the newest event time seen there, so replays forget
the same entries (streams/retention.py). A duplicate end later than that is a new call to
the machine; its CallRated has the same event id (it derives from the end's id) and
ClickHouse keeps one row per call and run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import Counter

from schemas.codec import Codec
from streams import billing, retention
from streams.emitter import Emitter
from streams.patches import flush_with_faust
from trunkline.core import logs
from trunkline.core.settings import Settings
from trunkline.core.topics import BILLING, CALL_EVENTS

log = logging.getLogger("trunkline.billing")
SWEEP_LIMIT = 100  # deletions per event: spread out, never a pause

#: the billing worker's /metrics (its web port): CallRated records sent
RATED = Counter(
    "trunkline_billing_rated_total",
    "CallRated records the billing worker sent, by direction, currency and run (first: "
    "the call's rating; reissued: a later run, e.g. the provider's cost arrived)",
    ["direction", "currency", "run"],
)

Gauges = dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]


@dataclass
class Registered:
    emitter: Emitter
    state_tables: dict[str, Any]
    #: the billing table's size (worker /metrics), taken on the worker's loop
    gauges: Any = None


class _View:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def items(self) -> Any:
        return self.fn().items()


def register(
    app: faust.App, settings: Settings, codec: Codec, config_tables: dict[str, Any]
) -> Registered:
    prefix = settings.topic_prefix
    history = app.topic(
        CALL_EVENTS.name(prefix),
        key_serializer="tl-str",
        value_serializer="tl-avro",
        partitions=CALL_EVENTS.partitions,
    )
    emitter = Emitter(settings.kafka_bootstrap, codec, {"billing": BILLING.name(prefix)})
    flush_with_faust(emitter)
    calls = app.Table(
        "billing-calls",
        default=None,
        partitions=CALL_EVENTS.partitions,
        schema=faust.Schema(key_serializer="tl-str", value_serializer="json"),
    )
    calls.emitter = emitter  # streams.app.EmittedTable: changelogs leave through it
    rated = retention.Retention(settings.billing_retention_ms)
    newest: dict[int, int] = {}  # partition -> newest event time seen
    config = billing.RatingConfig(config_tables)
    counts = {"rated": 0, "reissued": 0}

    @calls.on_recover
    async def _rebuild() -> None:
        rated.rebuild(calls.items())
        log.info("billing table recovered: %d calls, %d rated", len(calls), len(rated))

    @app.agent(history, name="billing")
    async def billing_agent(stream: Any) -> None:
        async for value in stream:
            name = value.pop("_type")
            if billing.input_for(name) is None:
                continue
            call_id = value["envelope"]["call_id"]
            if not call_id:
                continue
            at = int(value["envelope"]["occurred_at"])
            event = faust.current_event()
            partition = event.message.partition if event is not None else 0
            old_value = calls.get(call_id)
            call = billing.Call.from_json(old_value)
            try:
                result = billing.handle(name, value, call, config)
            except billing.TransitionError as exc:
                log.error("billing: call %s: %s (event skipped)", call_id, exc)
                continue
            if result.call is not None and result.call != call:
                new_value = result.call.to_json()
                if result.call.state is billing.CallState.RATED:
                    new_value = retention.mark_done(new_value, old_value, partition, at)
                calls[call_id] = new_value
                rated.note(call_id, new_value)
                if call is None or call.state != result.call.state:
                    log.debug(
                        "call %s: billing %s -> %s (%s)",
                        call_id,
                        call.state.value if call else "(none)",
                        result.call.state.value,
                        name,
                        extra=logs.call(call_id),
                    )
            for emit in result.emits:
                first = emit.record["rating_run"] == 1
                counts["rated" if first else "reissued"] += 1
                RATED.labels(
                    str(emit.record["direction"]),
                    str(emit.record["currency"]),
                    "first" if first else "reissued",
                ).inc()
            emitter.emit(result.emits)
            now = newest[partition] = max(newest.get(partition, at), at)
            for key in rated.due(partition, now, SWEEP_LIMIT):
                del calls[key]  # a tombstone in this (the entry's own) partition
                rated.forget(key)

    def gauges() -> Gauges:
        held = sum(1 for v in calls.values() if v)
        return {
            "trunkline_billing_calls": (
                "Calls the billing table holds: open (not rated yet) and rated (kept "
                "until TRUNKLINE_BILLING_RETENTION_MS for late duplicates and costs)",
                ("state",),
                {("open",): float(held - len(rated)), ("rated",): float(len(rated))},
            )
        }

    return Registered(
        emitter,
        {
            "sizes": _View(
                lambda: {"calls": sum(1 for v in calls.values() if v), "rated": len(rated)}
            ),
            "counts": _View(lambda: dict(counts)),
        },
        gauges,
    )
