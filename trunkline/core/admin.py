"""Kafka admin I/O: create and reconcile the declared topics; wait for the broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from trunkline.core import generations, kafka
from trunkline.core.topics import (
    ALL_TOPICS,
    DEFAULT_DECISION_PARTITIONS,
    GENERATIONS,
    TopicSpec,
    all_topics,
    billing_internal_topics,
    internal_topics,
)


class BrokerUnavailable(RuntimeError):
    pass


class PartitionMismatch(RuntimeError):
    """Existing decision topics (or changelogs) have another partition count than the
    setting: using them would send a key's records to another partition than its state."""


def mismatches(existing: dict[str, int], prefix: str, specs: tuple[TopicSpec, ...]) -> list[str]:
    """For each keyed-state spec whose topic exists (`existing`: name -> partitions) with
    another count, a line naming it (pure: the admin calls and the worker's start use it)."""
    return [
        f"{spec.name(prefix)} has {existing[spec.name(prefix)]} partitions, "
        f"TRUNKLINE_DECISION_PARTITIONS says {spec.partitions}"
        for spec in specs
        if spec.keyed_state
        and spec.name(prefix) in existing
        and existing[spec.name(prefix)] != spec.partitions
    ]


def mismatch_error(lines: list[str]) -> PartitionMismatch:
    return PartitionMismatch(
        "; ".join(lines) + ". Changing the count moves keys between partitions (the calls "
        "in progress would be judged by state that is not theirs): set "
        "TRUNKLINE_DECISION_PARTITIONS to the topics' count, or start on fresh topics (another "
        "TRUNKLINE_TOPIC_PREFIX and TRUNKLINE_APP_ID)"
    )


def admin_client(bootstrap: str, quiet: bool = False) -> AdminClient:
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": 5000,
        # warnings and errors only: librdkafka's informational lines (e.g. "Purging 1
        # unserved events from background queue" as a client closes) reached the
        # operator's terminal in the middle of `topics apply`
        "log_level": 4,
    }
    if quiet:  # while waiting for a broker to come up, "connection refused" is expected
        conf["log_level"] = 0
    return AdminClient(conf)


def wait_for_broker(
    bootstrap: str, timeout: float = 60.0, alive: Callable[[], bool] | None = None
) -> None:
    """Return once the broker answers a metadata request; raise after `timeout` s.

    `alive`, when given, is asked between attempts; waiting stops early when it says no.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    client = admin_client(bootstrap, quiet=True)
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BrokerUnavailable(f"the broker process for {bootstrap} exited")
        try:
            client.list_topics(timeout=2)
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.3)
    raise BrokerUnavailable(
        f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last}"
    )


@dataclass
class TopicResult:
    name: str
    action: str  # created | unchanged | updated
    detail: str = ""


def apply_topics(
    bootstrap: str,
    prefix: str,
    specs: tuple[TopicSpec, ...] = ALL_TOPICS,
    timeout: float = 30.0,
    on_result: Callable[[TopicResult], None] | None = None,
) -> list[TopicResult]:
    """Create missing topics; raise partitions and reset configs that drifted. Idempotent.
    `on_result` hears each topic's result as soon as it is known (progress)."""
    client = admin_client(bootstrap)
    try:
        existing = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot list topics at {bootstrap}: {exc}") from exc
    wrong = mismatches({n: len(t.partitions) for n, t in existing.items()}, prefix, specs)
    if wrong:  # before any change
        raise mismatch_error(wrong)
    results: list[TopicResult] = []

    def done(result: TopicResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    to_create = [s for s in specs if s.name(prefix) not in existing]
    if to_create:
        futures = client.create_topics(
            [
                NewTopic(
                    s.name(prefix),
                    num_partitions=s.partitions,
                    replication_factor=1,
                    config=s.configs(),
                )
                for s in to_create
            ],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                done(TopicResult(name, "created"))
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):  # a concurrent apply won the race
                    done(TopicResult(name, "unchanged", "created concurrently"))
                else:
                    raise
    for spec in specs:
        name = spec.name(prefix)
        if name not in existing:
            continue
        changes: list[str] = []
        have = len(existing[name].partitions)
        if have < spec.partitions:
            client.create_partitions([NewPartitions(name, spec.partitions)])[name].result()
            changes.append(f"partitions {have} -> {spec.partitions}")
        elif have > spec.partitions:
            changes.append(f"has {have} partitions (declared {spec.partitions}; not reduced)")
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        current = client.describe_configs([resource])[resource].result()
        drift = {
            k: v for k, v in spec.configs().items() if k not in current or current[k].value != v
        }
        if drift:
            entries = [
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in drift.items()
            ]
            client.incremental_alter_configs(
                [ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)]
            )[ConfigResource(ConfigResource.Type.TOPIC, name)].result()
            changes.append("configs " + ", ".join(f"{k}={v}" for k, v in drift.items()))
        done(TopicResult(name, "updated" if changes else "unchanged", "; ".join(changes)))
    return results


def apply_all(
    bootstrap: str,
    prefix: str,
    app_id: str,
    decision_partitions: int = DEFAULT_DECISION_PARTITIONS,
) -> list[TopicResult]:
    """The declared topics under `prefix` and the Faust topics of `app_id`."""
    return (
        apply_topics(bootstrap, prefix, all_topics(decision_partitions))
        + apply_topics(bootstrap, "", internal_topics(app_id, decision_partitions))
        + apply_topics(bootstrap, "", billing_internal_topics(app_id))
    )


def check_partitions(
    bootstrap: str, prefix: str, app_id: str, decision_partitions: int, timeout: float = 30.0
) -> None:
    """Raise PartitionMismatch when existing decision topics or changelogs have another
    partition count than `decision_partitions` (a worker's start); missing ones are fine."""
    client = admin_client(bootstrap)
    try:
        existing = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot list topics at {bootstrap}: {exc}") from exc
    counts = {n: len(t.partitions) for n, t in existing.items()}
    wrong = mismatches(counts, prefix, all_topics(decision_partitions)) + mismatches(
        counts, "", internal_topics(app_id, decision_partitions)
    )
    if wrong:
        raise mismatch_error(wrong)


def topic_names(bootstrap: str, timeout: float = 30.0) -> set[str]:
    """Every topic on the cluster."""
    try:
        return set(admin_client(bootstrap).list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot list topics at {bootstrap}: {exc}") from exc


def delete_topics(bootstrap: str, names: list[str], timeout: float = 30.0) -> list[str]:
    """Delete topics; returns those deleted (raises on the first failure)."""
    if not names:
        return []
    client = admin_client(bootstrap)  # kept until the futures are done
    futures = client.delete_topics(names, operation_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot delete topic {name}: {exc}") from exc
    return sorted(futures)


def active_generation(bootstrap: str, prefix: str, app_id: str, timeout: float = 30.0) -> int:
    """The workers' active table generation of `app_id` (trunkline/core/generations.py):
    0 when the control topic or its record is missing. Raises GenerationError for a
    malformed record, BrokerUnavailable when the broker does not answer."""
    topic = GENERATIONS.name(prefix)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not kafka.topic_exists(bootstrap, topic, timeout=min(timeout, 15.0)):
                return 0
            return generations.active(kafka.read_compacted(bootstrap, topic), app_id)
        except kafka.PublishError as exc:
            raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
        except KafkaException as exc:
            # a topic created a moment ago (`topics apply`) has no leader yet
            code = exc.args[0].code() if exc.args else None
            if code not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
            time.sleep(0.2)


#: what a partition answers until its leader is elected (a topic just created)
_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
)
