"""The worker's emitter on a real broker: one encoding per record, keys partitioned as
Faust partitions them, and a flush that refuses to pass (so Faust does not commit its
offsets) when the broker did not take a record."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas import SingleObjectCodec
from streams.emitter import EmitError, Emitter
from tests.samples import sample
from trunkline.core.admin import apply_topics
from trunkline.core.events import fan_out
from trunkline.core.kafka import Producers, PublishError, PublishTimeout, partition_for
from trunkline.core.topics import CALL_EVENTS, DECISIONS

pytestmark = pytest.mark.integration
CODEC = SingleObjectCodec()


def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "emitter-probe"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out = []
        for m in c.consume(100, 5):
            if not m.error():
                out.append((m.partition(), m.key(), m.value()))
        return out
    finally:
        c.close()


def test_fan_out_lands_on_each_topic_in_the_partition_of_its_key(kafka_bootstrap):
    prefix = f"em{uuid.uuid4().hex[:8]}."
    apply_topics(kafka_bootstrap, prefix)
    topics = {"decisions": DECISIONS.name(prefix), "call-events": CALL_EVENTS.name(prefix)}
    emitter = Emitter(kafka_bootstrap, CODEC, topics)
    record = sample("CallRouted", call_id="call-42")
    emitter.emit(
        fan_out(("decisions", "call-events"), {"decisions": "edge-7"}, "CallRouted", record)
    )
    emitter.flush(10)
    emitter.close()
    assert emitter.sent == 2
    ((dp, dk, dv),) = read_all(kafka_bootstrap, topics["decisions"])
    ((cp, ck, cv),) = read_all(kafka_bootstrap, topics["call-events"])
    assert (dk, ck) == (b"edge-7", b"call-42")
    assert dp == partition_for(b"edge-7", DECISIONS.partitions)
    assert cp == partition_for(b"call-42", CALL_EVENTS.partitions)
    assert dv == cv and CODEC.decode(dv) == ("CallRouted", record)


def test_history_records_linger_but_a_flush_sends_them_at_once(kafka_bootstrap):
    """call-events go through the lingering producer; the flush before an offset commit
    must not wait out its linger, and must cover that producer too."""
    prefix = f"em{uuid.uuid4().hex[:8]}."
    apply_topics(kafka_bootstrap, prefix)
    topics = {"decisions": DECISIONS.name(prefix), "call-events": CALL_EVENTS.name(prefix)}
    emitter = Emitter(kafka_bootstrap, CODEC, topics, history_linger_ms=60_000)
    record = sample("CallOffered", call_id="call-43")
    emitter.emit(fan_out(("call-events",), {}, "CallOffered", record))
    assert emitter.queued() == 1
    started = time.monotonic()
    asyncio.run(emitter.flush_async(20))
    assert time.monotonic() - started < 10 and emitter.queued() == 0
    emitter.close()
    ((_, key, value),) = read_all(kafka_bootstrap, topics["call-events"])
    assert key == b"call-43" and CODEC.decode(value) == ("CallOffered", record)


def test_bytes_at_hand_are_sent_as_they_are(kafka_bootstrap):
    prefix = f"em{uuid.uuid4().hex[:8]}."
    apply_topics(kafka_bootstrap, prefix)
    topics = {"call-events": CALL_EVENTS.name(prefix)}
    emitter = Emitter(kafka_bootstrap, CODEC, topics)
    record = sample("CallOffered", call_id="call-44")
    # bytes that differ from `record`'s own encoding: the emitter must not re-encode
    received = CODEC.encode("CallOffered", {**record, "edge_id": "edge-elsewhere"})
    emitter.emit(fan_out(("call-events",), {}, "CallOffered", record), {id(record): received})
    emitter.flush(10)
    emitter.close()
    ((_, _, value),) = read_all(kafka_bootstrap, topics["call-events"])
    assert value == received != CODEC.encode("CallOffered", record)


def test_flush_raises_when_the_broker_refuses_a_record(kafka_bootstrap):
    emitter = Emitter(
        kafka_bootstrap,
        CODEC,
        {"decisions": "no-such-topic-for-the-emitter"},
        **{"message.timeout.ms": 1500},
    )
    emitter.emit(fan_out(("decisions",), {"decisions": "e"}, "CallRouted", sample("CallRouted")))
    with pytest.raises(EmitError):
        asyncio.run(emitter.flush_async(10))
    emitter.close()


def test_changelog_records_wait_for_the_flush_and_outputs_do_not(kafka_bootstrap):
    """On a real broker: the outputs leave at once; the table's changelog record only in
    the flush before the commit, once they are acknowledged."""
    prefix = f"em{uuid.uuid4().hex[:8]}."
    apply_topics(kafka_bootstrap, prefix)
    topics = {"decisions": DECISIONS.name(prefix), "call-events": CALL_EVENTS.name(prefix)}
    changelog = CALL_EVENTS.name(prefix)  # any topic will do as the table's changelog
    emitter = Emitter(kafka_bootstrap, CODEC, {"decisions": topics["decisions"]})
    record = sample("CallRouted", call_id="call-45")
    emitter.emit(fan_out(("decisions",), {"decisions": "edge-7"}, "CallRouted", record))
    emitter.changelog(changelog, b'"call-45"', b'{"state":"RESERVED"}', 0)
    deadline = time.monotonic() + 10
    while not read_all(kafka_bootstrap, topics["decisions"]):  # the decision is out...
        assert time.monotonic() < deadline
    assert read_all(kafka_bootstrap, changelog) == []  # ...its table write is not
    asyncio.run(emitter.flush_async(20))
    assert read_all(kafka_bootstrap, changelog) == [(0, b'"call-45"', b'{"state":"RESERVED"}')]
    emitter.close()


def test_a_batch_keeps_its_order_in_the_partition_it_names_or_each_keys_partition(
    kafka_bootstrap,
):
    """Producers.produce_batch (the webhook service's records): librdkafka's batch call
    ignores a partition per record, so a batch names one (or -1: each key's murmur2)."""
    prefix = f"pb{uuid.uuid4().hex[:8]}."
    apply_topics(kafka_bootstrap, prefix)
    topic = CALL_EVENTS.name(prefix)
    out = Producers(kafka_bootstrap, ("decision",), name="batch-test")
    try:
        state = [(b"d/s/e1", b"1"), (b"d/s/e1", b"2"), (b"e/c", None)]
        out.produce_batch(topic, state, partition=4)
        keyed = [(f"call-{i}".encode(), b"v") for i in range(20)]
        out.produce_batch(topic, keyed)
        out.flush(10)
    finally:
        out.close()
    assert out.sent == 23 and out.refused == 0
    got = read_all(kafka_bootstrap, topic)
    assert [(p, k, v) for p, k, v in got if not k.startswith(b"call-")] == [
        (4, b"d/s/e1", b"1"), (4, b"d/s/e1", b"2"), (4, b"e/c", None),
    ]  # fmt: skip
    assert sorted((k, p) for p, k, _ in got if k.startswith(b"call-")) == sorted(
        (k, partition_for(k, CALL_EVENTS.partitions)) for k, _ in keyed
    )


def test_a_batch_to_a_topic_the_broker_lacks_is_raised_by_the_flush(kafka_bootstrap):
    out = Producers(
        kafka_bootstrap, ("decision",), name="batch-test", **{"message.timeout.ms": 1500}
    )
    try:
        out.produce_batch(f"pb-missing-{uuid.uuid4().hex[:8]}", [(b"k", b"v")], partition=3)
        with pytest.raises(PublishError, match="refused") as info:
            out.flush(10)
        assert not isinstance(info.value, PublishTimeout)
        assert out.refused == 1
    finally:
        out.close()
