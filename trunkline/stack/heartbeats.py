"""BackendHeartbeat for configured backends, as a stand-in for media nodes: routing sees
them as live, so the decision path can be exercised without media nodes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from schemas.codec import make_codec
from trunkline.core.events import envelope
from trunkline.core.kafka import Outgoing, PublishError, make_producer, publish_all, read_compacted
from trunkline.core.settings import Settings
from trunkline.core.topics import BACKENDS, HEARTBEATS
from trunkline.stack.base import BadInput, StackError


def configured_backends(s: Settings) -> dict[str, dict[str, Any]]:
    """backend id -> its BackendServer record, as the config topic holds it."""
    codec = make_codec(s.schema_registry_url)
    try:
        held = read_compacted(s.kafka_bootstrap, BACKENDS.name(s.topic_prefix))
    except (PublishError, KafkaException) as exc:
        raise StackError(f"cannot read the backends config: {exc}") from exc
    return {
        key.decode(): codec.decode(value)[1] for key, value in held.items() if value is not None
    }


def publish(
    s: Settings,
    backend_ids: list[str] | None = None,
    interval: float = 1.0,
    capacity: int | None = None,
    count: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Publish a heartbeat for each backend every `interval` seconds, `count` rounds
    (0: until interrupted). Returns the rounds sent. BadInput for unknown backend ids."""
    known = configured_backends(s)
    wanted = backend_ids or sorted(known)
    missing = [b for b in wanted if b not in known]
    if missing:
        raise BadInput(
            f"unknown backend(s) {', '.join(missing)}; configured: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    codec = make_codec(s.schema_registry_url)
    producer = make_producer(s.kafka_bootstrap, log_level=3)
    topic = HEARTBEATS.name(s.topic_prefix)
    sent = 0
    while True:
        now = int(time.time() * 1000)
        out = []
        for backend_id in wanted:
            b = known[backend_id]
            record = {
                "envelope": envelope("", f"heartbeats-{backend_id}", now, str(uuid.uuid4())),
                "backend_id": backend_id,
                "region_id": b["region_id"],
                "capacity": capacity or b["max_concurrent_calls"],
                "active_calls": 0,
                "interval_ms": int(interval * 1000),
                "draining": False,
            }
            out.append(
                Outgoing(topic, b["region_id"].encode(), codec.encode("BackendHeartbeat", record))
            )
        try:
            publish_all(producer, out)
        except PublishError as exc:
            raise StackError(str(exc)) from exc
        sent += 1
        if count and sent >= count:
            return sent
        sleep(interval)  # the heartbeat's period, not a wait for a condition
