"""The declared topics: their layout, and applying it to the broker topic by topic (so
the operator sees each one as it is created or reconciled)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException

from trunkline.core.admin import BrokerUnavailable, PartitionMismatch, TopicResult, apply_topics
from trunkline.core.settings import Settings
from trunkline.core.topics import TopicSpec, all_topics, billing_internal_topics, internal_topics
from trunkline.stack.base import QUIET, BadInput, Progress, StackError


@dataclass(frozen=True)
class TopicRow:
    name: str
    partitions: int
    policy: str  # "compact" or "delete <retention> ms"
    key: str
    doc: str


def _specs(s: Settings) -> list[tuple[str, TopicSpec]]:
    """(prefix, spec) for our topics under the topic prefix and the Faust app's own."""
    return [(s.topic_prefix, spec) for spec in all_topics(s.decision_partitions)] + [
        ("", spec)
        for spec in (
            *internal_topics(s.app_id, s.decision_partitions),
            *billing_internal_topics(s.app_id),
        )
    ]


def declared(s: Settings) -> list[TopicRow]:
    return [
        TopicRow(
            spec.name(prefix),
            spec.partitions,
            "compact" if spec.compacted else f"delete {spec.retention_ms} ms",
            spec.key,
            spec.doc,
        )
        for prefix, spec in _specs(s)
    ]


def apply(s: Settings, progress: Progress = QUIET) -> list[TopicResult]:
    """Create missing topics, raise partitions, reset drifted configs. Idempotent."""
    groups = [
        (s.topic_prefix, all_topics(s.decision_partitions)),  # ours, under the topic prefix
        ("", internal_topics(s.app_id, s.decision_partitions)),  # the Faust app's own
        ("", billing_internal_topics(s.app_id)),  # the billing worker's
    ]
    results: list[TopicResult] = []
    with progress.step("topics", total=sum(len(specs) for _, specs in groups)) as step:
        for prefix, specs in groups:
            try:
                results += apply_topics(
                    s.kafka_bootstrap, prefix, specs, on_result=lambda r: step.advance(r.name)
                )
            except PartitionMismatch as exc:
                raise BadInput(f"topics: {exc}") from exc
            except (BrokerUnavailable, KafkaException) as exc:
                raise StackError(f"applying topics: {exc}") from exc
        changed = sum(r.action != "unchanged" for r in results)
        step.update(f"{len(results)} declared, {changed} created or updated")
    return results
