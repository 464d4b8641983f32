"""The decision path as Faust agents. Each agent decodes a record, calls its pure machine
(streams/admission.py, streams/routing.py), writes the machine's state changes to its
table and sends what the machine emitted. Counts per business and per backend are
indexes derived from those tables in memory (rebuilt after every recovery), so a table
write stays O(1) whatever the number of calls in progress."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import Counter

from schemas.codec import Codec
from streams import admission, retention, routing
from streams.config_view import ConfigView
from streams.emitter import Emitter
from streams.patches import flush_with_faust
from trunkline.core import logs
from trunkline.core.events import envelope
from trunkline.core.kafka import partition_for
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    ADMISSION,
    ASSIGNMENTS,
    CALL_EVENTS,
    DECISIONS,
    HEARTBEATS,
    ROUTING,
)

log = logging.getLogger("trunkline.agents")

#: what the decision path decided and handled, for the worker's /metrics
DECIDED = Counter(
    "trunkline_decisions_total",
    "Decisions the worker sent: admitted (admission to routing), routed or rejected (to the "
    "edge), by stage and SIP code; a duplicate offer's repeated answer counts again",
    ["stage", "outcome", "code"],
)
EVENTS = Counter(
    "trunkline_worker_events_total",
    "Records the agents handled, by agent and type",
    ["agent", "type"],
)


def count_decisions(emits: list[Any]) -> None:
    """Count the decisions among a machine's emits (history copies are not decisions)."""
    for e in emits:
        if e.dest == "decisions":
            if e.name == "CallRouted":
                DECIDED.labels("routing", "routed", "302").inc()
            elif e.name == "CallRejected":
                r = e.record
                DECIDED.labels(str(r["stage"]).lower(), "rejected", str(r["status_code"])).inc()
        elif e.dest == "routing" and e.name == "CallAdmitted":
            DECIDED.labels("admission", "admitted", "").inc()


TICK_INTERVAL_S = 0.05
SWEEP_INTERVAL_S = 1.0  # PartitionTicks: finished calls past the retention are deleted
EXPIRE_PER_TICK = 32  # up to 640 expirations/s per region


class _View:
    """A read-only mapping view for the state web page."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def items(self) -> Any:
        return self.fn().items()


@dataclass
class Registered:
    """What the agents leave for the worker's web views and its shutdown."""

    emitter: Emitter
    state_tables: dict[str, Any]
    #: the live state's gauges (worker /metrics), taken on the worker's loop
    gauges: Any = None


def register(
    app: faust.App,
    settings: Settings,
    codec: Codec,
    config_tables: dict[str, Any],
    routing_settings: routing.Settings,
) -> Registered:
    prefix = settings.topic_prefix

    partitions = settings.decision_partitions  # admission, routing, heartbeats, changelogs

    def topic(spec: Any, *more: Any) -> Any:
        names = [spec.name(prefix), *(m.name(prefix) for m in more)]
        return app.topic(
            *names, key_serializer="tl-str", value_serializer="tl-avro", partitions=partitions
        )

    admission_topic = topic(ADMISSION)
    routing_in = topic(ROUTING, HEARTBEATS)
    # where the machines' emits go (written by the emitter, not through Faust topics)
    out_topics = {
        "admission": ADMISSION.name(prefix),
        "routing": ROUTING.name(prefix),
        "decisions": DECISIONS.name(prefix),
        "assignments": ASSIGNMENTS.name(prefix),
        "call-events": CALL_EVENTS.name(prefix),
    }

    def table(name: str, partitions: int) -> Any:
        t = app.Table(
            name,
            default=None,
            partitions=partitions,
            schema=faust.Schema(key_serializer="tl-str", value_serializer="json"),
        )
        t.emitter = emitter  # streams.app.EmittedTable: changelogs leave through it
        return t

    emitter = Emitter(settings.kafka_bootstrap, codec, out_topics)
    flush_with_faust(emitter)

    slots = table("admission-slots", partitions)
    reservations = table("routing-reservations", partitions)
    heartbeats = table("routing-heartbeats", partitions)
    ticks = table("routing-ticks", partitions)  # region -> routing.Watch
    watches: dict[str, routing.Watch] = {}  # the ticks table, parsed
    slot_index = admission.SlotIndex()
    load_index = routing.LoadIndex()
    slots_done = retention.Retention(settings.state_retention_ms)
    reservations_done = retention.Retention(settings.state_retention_ms)

    def stored(value: dict[str, Any], old: Any, done: bool, now_ms: int) -> dict[str, Any]:
        """A table value; a finished entry is stamped with its partition and end time."""
        if not done:
            return value
        event = faust.current_event()
        assert event is not None  # table writes happen inside the agents only
        return retention.mark_done(value, old, event.message.partition, now_ms)

    def sweeper(table: Any, done: retention.Retention, index: Any, parse: Any) -> Any:
        """Handles a PartitionTick for `table`: deletes the finished entries of the tick's
        partition that are past retention, and takes them out of the table's `index`."""

        def sweep(tick: dict[str, Any]) -> None:
            now_ms = int(tick["envelope"]["occurred_at"])
            for call_id in done.due(int(tick["partition"]), now_ms):
                index.apply(call_id, parse(table.get(call_id)), None)
                del table[call_id]  # a tombstone in this (the entry's own) partition
                done.forget(call_id)

        return sweep

    sweep_slots = sweeper(slots, slots_done, slot_index, admission.Slot.from_json)
    sweep_reservations = sweeper(
        reservations, reservations_done, load_index, routing.Reservation.from_json
    )

    def active_partitions(topic_name: str) -> set[int]:
        """This worker's active partitions of `topic_name` (its current assignment)."""
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic_name}

    def owned(key: str, active: set[int]) -> bool:
        """Whether `key` (a business or region id: the input topic's key) lives in one of
        `active`: edges and admission key by it with the murmur2 partitioner."""
        return partition_for(key.encode(), partitions) in active

    # The tables' stores hold every partition this worker ever read, standby replicas and
    # partitions a rebalance took away included (Faust's memory store never drops them).
    # The counts are rebuilt from the active partitions only, so with several workers
    # each one's /state views hold exactly the calls it decides, and their union is the
    # whole: a standby's copy would go stale here (nothing but the agents updates them).
    @slots.on_recover
    async def _rebuild_slots() -> None:
        active = active_partitions(ADMISSION.name(prefix))
        parsed = ((k, admission.Slot.from_json(v)) for k, v in slots.items())
        slot_index.rebuild((k, s) for k, s in parsed if s and owned(s.business_id, active))
        slots_done.rebuild(slots.items())
        log.info(
            "admission index rebuilt (partitions %s): %s",
            sorted(active),
            {b: len(c) for b, c in slot_index.as_dict().items()},
        )

    @ticks.on_recover
    async def _rebuild_watches() -> None:
        watches.clear()
        watches.update((region, routing.Watch.from_json(v)) for region, v in ticks.items() if v)
        log.info("routing ticks recovered: %s", {r: w.to_json() for r, w in watches.items()})

    @reservations.on_recover
    async def _rebuild_reservations() -> None:
        active = active_partitions(ROUTING.name(prefix))
        parsed = ((k, routing.Reservation.from_json(v)) for k, v in reservations.items())
        load_index.rebuild((k, r) for k, r in parsed if r and owned(r.region_id, active))
        reservations_done.rebuild(reservations.items())
        log.info("routing index rebuilt (partitions %s): load %s", sorted(active), load_index.load)

    state_tables = {
        "admission-active": _View(slot_index.as_dict),
        "routing-held": _View(lambda: dict(load_index.load)),
        "routing-open": _View(load_index.open_calls),
        "routing-heartbeats": heartbeats,
        "routing-ticks": _View(lambda: {r: w.to_json() for r, w in watches.items()}),
        # per-call entries held (live and finished-but-retained); finished ones are
        # deleted after TRUNKLINE_STATE_RETENTION_MS (streams/retention.py)
        "sizes": _View(
            lambda: {
                "admission-slots": sum(1 for v in slots.values() if v),
                "admission-finished": len(slots_done),
                "routing-reservations": sum(1 for v in reservations.values() if v),
                "routing-finished": len(reservations_done),
            }
        ),
    }
    config = ConfigView(config_tables)

    def as_received(record: dict[str, Any]) -> dict[int, bytes]:
        """The bytes the record being handled arrived as, for the emitter: an input passed
        on unchanged (the offer copied to call-events) is not encoded again."""
        event = faust.current_event()
        raw = event.message.value if event is not None else None
        return {id(record): raw} if isinstance(raw, bytes) else {}

    @app.agent(admission_topic, name="admission")
    async def admission_agent(stream: Any) -> None:
        async for value in stream:
            name = value.pop("_type")
            EVENTS.labels("admission", name).inc()
            if name == "PartitionTick":
                sweep_slots(value)
                continue
            call_id = value["envelope"]["call_id"]
            old_value = slots.get(call_id)
            slot = admission.Slot.from_json(old_value)
            business_id = value.get("business_id") or (slot.business_id if slot else "")
            try:
                result = admission.handle(name, value, slot, slot_index.count(business_id), config)
            except admission.TransitionError as exc:
                log.error(
                    "admission: call %s: %s (event skipped)", call_id, exc, extra=logs.call(call_id)
                )
                continue
            if result.slot != slot:
                new_value = None
                if result.slot is not None:
                    new_value = stored(
                        result.slot.to_json(),
                        old_value,
                        result.slot.state in admission.FINISHED,
                        int(value["envelope"]["occurred_at"]),
                    )
                slots[call_id] = new_value
                slots_done.note(call_id, new_value)
                slot_index.apply(call_id, slot, result.slot)
                if result.slot and (slot is None or slot.state != result.slot.state):
                    log.debug(
                        "call %s: admission %s -> %s (%s)",
                        call_id,
                        slot.state.value if slot else "(none)",
                        result.slot.state.value,
                        name,
                        extra=logs.call(call_id),
                    )
            count_decisions(result.emits)
            emitter.emit(result.emits, as_received(value))

    def apply(changes: routing.Changes, now_ms: int) -> None:
        for call_id, new in changes.reservations.items():
            old_value = reservations.get(call_id)
            old = routing.Reservation.from_json(old_value)
            new_value = stored(new.to_json(), old_value, new.state in routing.FINISHED, now_ms)
            reservations[call_id] = new_value
            reservations_done.note(call_id, new_value)
            load_index.apply(call_id, old, new)
            if old is None or old.state != new.state:
                log.debug(
                    "call %s: routing %s -> %s%s",
                    call_id,
                    old.state.value if old else "(none)",
                    new.state.value,
                    f" ({new.backend_id})" if new.backend_id else "",
                    extra=logs.call(call_id),
                )

    @app.agent(routing_in, name="routing")
    async def routing_agent(stream: Any) -> None:
        async for value in stream:
            name = value.pop("_type")
            EVENTS.labels("routing", name).inc()
            if name == "BackendHeartbeat":
                backend_id = value["backend_id"]
                previous = heartbeats.get(backend_id)
                heartbeats[backend_id] = value
                changes = routing.backend_restarted(
                    previous,
                    value,
                    load_index.calls_on,
                    lambda c: routing.Reservation.from_json(reservations.get(c)),
                )
                if changes.reservations:
                    log.warning(
                        "backend %s restarted: ending %d calls it had accepted before",
                        backend_id,
                        len(changes.reservations),
                    )
                    apply(changes, int(value["envelope"]["occurred_at"]))
                    emitter.emit(changes.emits)
                continue
            if name == "PartitionTick":
                sweep_reservations(value)
                continue
            if name == "RoutingTick":
                region = value["region_id"]
                now_ms = int(value["envelope"]["occurred_at"])
                watch, changes = routing.tick(
                    region,
                    now_ms,
                    watches.get(region, routing.NO_TICKS),
                    lambda c: routing.Reservation.from_json(reservations.get(c)),
                    load_index,
                    heartbeats,
                    routing_settings,
                    EXPIRE_PER_TICK,
                )
                if watch != watches.get(region):
                    if watch.up_ms and watch.up_ms == now_ms:
                        log.warning(
                            "region %s: no RoutingTick for %d ms (broker or worker away): "
                            "liveness and deadlines judged as of %d for %d ms",
                            region,
                            watch.up_ms - watch.down_ms,
                            watch.down_ms,
                            routing_settings.heartbeat_timeout_ms,
                        )
                    watches[region] = watch
                    ticks[region] = watch.to_json()
                apply(changes, now_ms)
                count_decisions(changes.emits)
                emitter.emit(changes.emits)
                continue
            call_id = value["envelope"]["call_id"]
            res = routing.Reservation.from_json(reservations.get(call_id))
            region = value.get("region_id") or (res.region_id if res else "")
            try:
                changes = routing.handle(
                    name,
                    value,
                    res,
                    config,
                    heartbeats,
                    load_index.load,
                    routing_settings,
                    watches.get(region, routing.NO_TICKS),
                )
            except routing.TransitionError as exc:
                log.error(
                    "routing: call %s: %s (event skipped)", call_id, exc, extra=logs.call(call_id)
                )
                continue
            apply(changes, int(value["envelope"]["occurred_at"]))
            count_decisions(changes.emits)
            emitter.emit(changes.emits)

    @app.timer(interval=TICK_INTERVAL_S, on_leader=True)
    async def tick() -> None:
        """A RoutingTick per region, unless the last ones are not acknowledged yet: ticks
        sent into an outage would arrive after it with times that hide it (routing.Watch)."""
        regions = sorted({b["region_id"] for b in config_tables["backends"].values() if b})
        now_ms = int(time.time() * 1000)
        topic_name = ROUTING.name(prefix)
        emitter.emit_ticks(
            (
                topic_name,
                region.encode(),
                codec.encode(
                    "RoutingTick",
                    {
                        "envelope": envelope("", "routing-timer", now_ms, str(uuid.uuid4())),
                        "region_id": region,
                    },
                ),
            )
            for region in regions
        )

    @app.timer(interval=SWEEP_INTERVAL_S, on_leader=True)
    async def sweep_tick() -> None:
        now_ms = int(time.time() * 1000)
        for spec in (ADMISSION, ROUTING):
            topic_name = spec.name(prefix)
            for partition in range(partitions):
                record = {
                    "envelope": envelope("", "retention-timer", now_ms, str(uuid.uuid4())),
                    "partition": partition,
                }
                emitter.send_raw(
                    topic_name,
                    str(partition).encode(),
                    codec.encode("PartitionTick", record),
                    partition,
                )

    def gauges() -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        """Calls holding a slot per business and per backend (every configured one, 0
        included), each business's plan limit and utilisation, each backend's capacity."""
        active = {b: len(calls) for b, calls in slot_index.as_dict().items()}
        held = dict(load_index.load)
        calls: dict[tuple[str, ...], float] = {}
        limits: dict[tuple[str, ...], float] = {}
        used: dict[tuple[str, ...], float] = {}
        capacity: dict[tuple[str, ...], float] = {}
        for business_id, business in config_tables["businesses"].items():
            if business is None:
                continue
            calls[("business", business_id)] = active.get(business_id, 0)
            plan = config.plan(business.get("plan_id", ""))
            if plan is not None and int(plan["max_concurrent_calls"]) > 0:
                limit = int(plan["max_concurrent_calls"])
                limits[(business_id,)] = limit
                used[(business_id,)] = active.get(business_id, 0) / limit
        for business_id, n in active.items():
            calls.setdefault(("business", business_id), n)
        for backend_id, backend in config_tables["backends"].items():
            if backend is None:
                continue
            calls[("backend", backend_id)] = held.get(backend_id, 0)
            capacity[(backend_id,)] = int(backend.get("max_concurrent_calls") or 0)
        for backend_id, n in held.items():
            calls.setdefault(("backend", backend_id), n)
        return {
            "trunkline_active_calls": (
                "Calls holding a plan slot (scope business) or a backend slot (scope backend)",
                ("scope", "id"),
                calls,
            ),
            "trunkline_plan_limit": (
                "The concurrent calls a business's plan allows",
                ("business",),
                limits,
            ),
            "trunkline_plan_utilisation": (
                "A business's active calls / its plan limit",
                ("business",),
                used,
            ),
            "trunkline_backend_capacity": (
                "A backend's configured concurrent calls (maxConcurrentCalls)",
                ("backend",),
                capacity,
            ),
        }

    return Registered(emitter, state_tables, gauges)
