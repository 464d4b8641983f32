"""Thin confluent-kafka helpers shared by the CLI, edges and tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


class PublishError(RuntimeError):
    pass


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    """Idempotent, acks=all, murmur2 keys (so keys land where Faust/aiokafka put them)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "compression.type": "lz4",
    }
    conf.update(extra)
    return Producer(conf)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None  # None: tombstone


def publish_all(producer: Producer, messages: Iterable[Outgoing], timeout: float = 30.0) -> int:
    """Produce every message and wait for all acknowledgements; raise on any failure."""
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()} key={msg.key()!r}: {err}")

    count = 0
    for m in messages:
        while True:
            try:
                producer.produce(m.topic, key=m.key, value=m.value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
            except KafkaException as exc:
                raise PublishError(f"cannot produce to {m.topic}: {exc}") from exc
        count += 1
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining:
        raise PublishError(f"{remaining} message(s) not acknowledged within {timeout:.0f}s")
    if errors:
        raise PublishError("delivery failed:\n  " + "\n  ".join(errors[:20]))
    return count


def read_compacted(bootstrap: str, topic: str, timeout: float = 15.0) -> dict[bytes, bytes | None]:
    """Latest value per key of a topic, start to current end (None for tombstones)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "trunkline-cli-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise PublishError(f"topic {topic} does not exist: run `trunkline topics apply`")
        parts: list[TopicPartition] = []
        ends: dict[int, int] = {}
        for p in tmeta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                parts.append(TopicPartition(topic, p, low))
        out: dict[bytes, bytes | None] = {}
        if not parts:
            return out
        consumer.assign(parts)
        done: set[int] = set()
        while len(done) < len(ends):
            msg = consumer.poll(timeout)
            if msg is None:
                raise PublishError(f"timed out reading {topic}")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                    continue
                raise PublishError(f"reading {topic}: {msg.error()}")
            out[msg.key() or b""] = msg.value()
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        return out
    finally:
        consumer.close()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and librdkafka's `murmur2` partitioner)."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a murmur2-partitioned producer (Faust, Java, librdkafka) picks."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def key_partition_consumer(
    bootstrap: str, group_id: str, topic: str, key: str, lookback: int = 0, **extra: Any
) -> Consumer:
    """A consumer assigned to the one partition `key` hashes to (edges read their decisions,
    media nodes their assignments this way), starting `lookback` records before its end."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 50,
        "log_level": 4,
    }
    conf.update(extra)
    consumer = Consumer(conf)
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        consumer.close()
        raise PublishError(f"topic {topic} is missing: run `trunkline topics apply`")
    partition = partition_for(key.encode(), len(meta.partitions))
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    consumer.assign([TopicPartition(topic, partition, max(low, high - lookback))])
    return consumer
