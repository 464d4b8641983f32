"""Operator config (YAML) as stack steps: load and validate a file, publish it to the
compacted config topics (optionally tombstoning what left the file), read it back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from schemas.codec import make_codec
from trunkline.core.admin import BrokerUnavailable, apply_topics
from trunkline.core.config import Config, ConfigError, load_config
from trunkline.core.kafka import Outgoing, PublishError, make_producer, publish_all, read_compacted
from trunkline.core.settings import Settings
from trunkline.core.topics import CONFIG_TOPICS
from trunkline.stack.base import QUIET, BadInput, Progress, StackError

#: the config `up` applies when none is given
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


@dataclass(frozen=True)
class ConfigApplied:
    path: Path
    published: int
    counts: dict[str, int]
    pruned: list[str] = field(default_factory=list)


def load(path: Path) -> Config:
    """Read and validate a config file; BadInput lists every problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return load_config(text)
    except ConfigError as exc:
        raise BadInput(f"{path}: {exc}") from exc


def counts(config: Config) -> dict[str, int]:
    """Records per section, in the topics' order."""
    return {section: len(config.section(section)) for section in CONFIG_TOPICS}


def summary(counts_: dict[str, int]) -> str:
    return ", ".join(f"{n} {section}" for section, n in counts_.items())


def apply(
    s: Settings, path: Path, config: Config, prune: bool = False, progress: Progress = QUIET
) -> ConfigApplied:
    """Publish every record of `config`; with `prune`, tombstone the ids the topics hold
    that the file no longer has. Nothing is published unless all of it can be built."""
    with progress.step(f"config {path}", total=3 if prune else 2) as step:
        try:
            apply_topics(s.kafka_bootstrap, s.topic_prefix, tuple(CONFIG_TOPICS.values()))
        except BrokerUnavailable as exc:
            raise StackError(str(exc)) from exc
        step.advance("config topics exist")
        codec = make_codec(s.schema_registry_url)
        now_ms = int(time.time() * 1000)
        out = [
            Outgoing(
                CONFIG_TOPICS[r.section].name(s.topic_prefix),
                r.key.encode(),
                codec.encode(r.avro_name, r.to_avro(now_ms)),
            )
            for r in config.records
        ]
        pruned: list[str] = []
        if prune:
            for section, spec in CONFIG_TOPICS.items():
                topic = spec.name(s.topic_prefix)
                wanted = set(config.section(section))
                for key, value in _read(s, topic).items():
                    if value is not None and key.decode() not in wanted:
                        out.append(Outgoing(topic, key, None))
                        pruned.append(f"{section}/{key.decode()}")
            step.advance(f"{len(pruned)} record(s) to delete")
        try:
            n = publish_all(make_producer(s.kafka_bootstrap, log_level=3), out)
        except PublishError as exc:
            raise StackError(str(exc)) from exc
        step.advance(f"published {n} record(s)")
        step.update(f"published {n} record(s)" + (f", deleted {len(pruned)}" if pruned else ""))
    return ConfigApplied(path, n, counts(config), pruned)


def _read(s: Settings, topic: str) -> dict[bytes, bytes | None]:
    try:
        return read_compacted(s.kafka_bootstrap, topic)
    except (PublishError, KafkaException) as exc:
        raise StackError(f"cannot read {topic}: {exc}") from exc


def show(s: Settings, section: str | None = None) -> dict[str, dict[str, Any]]:
    """The config as the topics hold it: section -> id -> record (envelope left out)."""
    sections = [section] if section else list(CONFIG_TOPICS)
    for name in sections:
        if name not in CONFIG_TOPICS:
            raise BadInput(f"unknown section {name!r}; one of {', '.join(CONFIG_TOPICS)}")
    codec = make_codec(s.schema_registry_url)
    result: dict[str, dict[str, Any]] = {}
    for name in sections:
        items: dict[str, Any] = {}
        topic = CONFIG_TOPICS[name].name(s.topic_prefix)
        for key, value in _read(s, topic).items():
            if value is None:
                continue
            _, record = codec.decode(value)
            record.pop("envelope", None)
            items[key.decode()] = record
        result[name] = items
    return result
