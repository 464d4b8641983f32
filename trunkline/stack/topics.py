"""The declared topics: their layout, and applying it to the broker topic by topic (so
the operator sees each one as it is created or reconciled)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException

from trunkline.core.admin import (
    BrokerUnavailable,
    PartitionMismatch,
    TopicResult,
    active_generation,
    apply_topics,
)
from trunkline.core.generations import GenerationError
from trunkline.core.settings import Settings
from trunkline.core.topics import (
    TopicSpec,
    all_topics,
    billing_internal_topics,
    generation_app_id,
    internal_topics,
)
from trunkline.stack.base import QUIET, BadInput, Progress, StackError


@dataclass(frozen=True)
class TopicRow:
    name: str
    partitions: int
    policy: str  # "compact" or "delete <retention> ms"
    key: str
    doc: str


def _specs(s: Settings, generation: int = 0) -> list[tuple[str, TopicSpec]]:
    """(prefix, spec) for our topics under the topic prefix and the Faust apps' own (of
    table generation `generation`)."""
    return [(s.topic_prefix, spec) for spec in all_topics(s.decision_partitions)] + [
        ("", spec) for spec in _internal(s, generation)
    ]


def _internal(s: Settings, generation: int) -> tuple[TopicSpec, ...]:
    return (
        *internal_topics(generation_app_id(s.app_id, generation), s.decision_partitions),
        *billing_internal_topics(s.app_id, generation),
    )


def generation(s: Settings, timeout: float = 30.0) -> int:
    """The workers' active table generation (0 before any `replay rebuild --swap`)."""
    try:
        return active_generation(s.kafka_bootstrap, s.topic_prefix, s.app_id, timeout)
    except GenerationError as exc:
        raise BadInput(f"{exc} (fix or delete that record)") from exc
    except BrokerUnavailable as exc:
        raise StackError(str(exc)) from exc


def declared(s: Settings, generation: int = 0) -> list[TopicRow]:
    return [
        TopicRow(
            spec.name(prefix),
            spec.partitions,
            "compact" if spec.compacted else f"delete {spec.retention_ms} ms",
            spec.key,
            spec.doc,
        )
        for prefix, spec in _specs(s, generation)
    ]


def apply(s: Settings, progress: Progress = QUIET) -> list[TopicResult]:
    """Create missing topics, raise partitions, reset drifted configs. Idempotent. The
    Faust apps' topics are those of the active table generation (read once ours exist:
    the control topic is one of them)."""
    ours = all_topics(s.decision_partitions)  # under the topic prefix
    total = len(ours) + len(_internal(s, 0))
    results: list[TopicResult] = []
    with progress.step("topics", total=total) as step:
        for workers in (False, True):
            # then the workers' own (decision and billing), of their active generation
            prefix, specs = ("", _internal(s, generation(s))) if workers else (s.topic_prefix, ours)
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
