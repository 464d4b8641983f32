"""The decision path as Faust agents. Each agent decodes a record, calls its pure machine
(streams/admission.py, streams/routing.py), writes the machine's state changes to its
tables and sends what the machine emitted. Nothing else happens here."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import faust

from streams import admission, routing
from streams.config_view import ConfigView
from streams.events import Emit, envelope
from trunkline.topics import ADMISSION, CALL_EVENTS, DECISIONS, HEARTBEATS, ROUTING

if TYPE_CHECKING:
    from streams.app import TrunklineApp

log = logging.getLogger("trunkline.agents")


def register(tl: TrunklineApp, routing_settings: routing.Settings) -> None:
    app, prefix = tl.app, tl.settings.topic_prefix

    def topic(spec: Any, *more: Any) -> Any:
        names = [spec.name(prefix), *(m.name(prefix) for m in more)]
        return app.topic(
            *names, key_serializer="tl-str", value_serializer="tl-avro", partitions=spec.partitions
        )

    admission_topic = topic(ADMISSION)
    routing_in = topic(ROUTING, HEARTBEATS)
    routing_topic = topic(ROUTING)
    out_topics = {
        "admission": admission_topic,
        "routing": routing_topic,
        "decisions": topic(DECISIONS),
        "call-events": topic(CALL_EVENTS),
    }

    def table(name: str, partitions: int) -> Any:
        return app.Table(
            name,
            default=None,
            partitions=partitions,
            schema=faust.Schema(key_serializer="tl-str", value_serializer="json"),
        )

    slots = table("admission-slots", ADMISSION.partitions)
    active = table("admission-active", ADMISSION.partitions)
    reservations = table("routing-reservations", ROUTING.partitions)
    held = table("routing-held", ROUTING.partitions)
    open_by_region = table("routing-open", ROUTING.partitions)
    heartbeats = table("routing-heartbeats", ROUTING.partitions)
    tl.state_tables = {
        "admission-active": active,
        "routing-held": held,
        "routing-heartbeats": heartbeats,
        "routing-open": open_by_region,
    }
    config = ConfigView(tl.tables)

    async def send(emits: list[Emit]) -> None:
        for e in emits:
            await out_topics[e.dest].send(key=e.key, value={**e.record, "_type": e.name})

    @app.agent(admission_topic, name="admission")
    async def admission_agent(stream: Any) -> None:
        async for value in stream:
            name = value.pop("_type")
            call_id = value["envelope"]["call_id"]
            business_id = value.get("business_id") or ""
            slot = admission.Slot.from_json(slots.get(call_id))
            if not business_id and slot is not None:
                business_id = slot.business_id
            try:
                result = admission.handle(
                    name, value, slot, list(active.get(business_id) or []), config
                )
            except admission.TransitionError as exc:
                log.error("admission: call %s: %s (event skipped)", call_id, exc)
                continue
            if result.slot is not None and result.slot != slot:
                slots[call_id] = result.slot.to_json()
                if slot is None or slot.state != result.slot.state:
                    log.info(
                        "call %s: admission %s -> %s (%s)",
                        call_id,
                        slot.state.value if slot else "(none)",
                        result.slot.state.value,
                        name,
                    )
            if business_id and result.active != list(active.get(business_id) or []):
                active[business_id] = result.active
            await send(result.emits)

    @app.agent(routing_in, name="routing")
    async def routing_agent(stream: Any) -> None:
        async for value in stream:
            name = value.pop("_type")
            if name == "BackendHeartbeat":
                heartbeats[value["backend_id"]] = value
                continue
            if name == "RoutingTick":
                await _expire(value)
                continue
            call_id = value["envelope"]["call_id"]
            res = routing.Reservation.from_json(reservations.get(call_id))
            try:
                changes = routing.handle(
                    name, value, res, config, heartbeats, held, routing_settings
                )
            except routing.TransitionError as exc:
                log.error("routing: call %s: %s (event skipped)", call_id, exc)
                continue
            _apply(changes)
            await send(changes.emits)

    def _apply(changes: routing.Changes) -> None:
        for call_id, new in changes.reservations.items():
            old = routing.Reservation.from_json(reservations.get(call_id))
            reservations[call_id] = new.to_json() if new else None
            if new is None:
                continue
            region = new.region_id
            pending = dict(open_by_region.get(region) or {})
            if new.state is routing.ResState.RESERVED:
                pending[call_id] = new.deadline_ms
            else:
                pending.pop(call_id, None)
            if pending != (open_by_region.get(region) or {}):
                open_by_region[region] = pending
            if old is None or old.state != new.state:
                log.info(
                    "call %s: routing %s -> %s%s",
                    call_id,
                    old.state.value if old else "(none)",
                    new.state.value,
                    f" ({new.backend_id})" if new.backend_id else "",
                )
        for backend_id, calls in changes.held.items():
            held[backend_id] = calls

    async def _expire(tick: dict[str, Any]) -> None:
        now_ms = int(tick["envelope"]["occurred_at"])
        for call_id, deadline in sorted((open_by_region.get(tick["region_id"]) or {}).items()):
            if deadline > now_ms:
                continue
            res = routing.Reservation.from_json(reservations.get(call_id))
            if res is None:
                continue
            changes = routing.expire(call_id, res, held, now_ms)
            _apply(changes)
            await send(changes.emits)

    @app.timer(interval=0.5, on_leader=True)
    async def tick() -> None:
        regions = sorted({b["region_id"] for b in tl.tables["backends"].values() if b})
        now_ms = int(time.time() * 1000)
        for region in regions:
            await routing_topic.send(
                key=region,
                value={
                    "_type": "RoutingTick",
                    "envelope": envelope("", "routing-timer", now_ms, str(uuid.uuid4())),
                    "region_id": region,
                },
            )
