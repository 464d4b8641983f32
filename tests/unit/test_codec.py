import io
import json
import struct

import avro.schema
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_writer

from schemas import CodecError, ConfluentCodec, SingleObjectCodec, load_schemas
from schemas.registry import TOPLEVEL_RECORDS
from tests.samples import sample

SCHEMAS = load_schemas()


def test_every_declared_record_has_a_schema_file():
    assert sorted(SCHEMAS.names()) == sorted(TOPLEVEL_RECORDS)


@pytest.mark.parametrize("name", TOPLEVEL_RECORDS)
def test_single_object_round_trip(name):
    codec = SingleObjectCodec(SCHEMAS)
    record = sample(name)
    data = codec.encode(name, record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == SCHEMAS[name].fingerprint
    got_name, got = codec.decode(data)
    assert got_name == name
    assert got == {**record, **{k: got[k] for k in got if k not in record}}
    assert codec.encode(name, got) == data  # byte-identical round trip


@pytest.mark.parametrize("name", TOPLEVEL_RECORDS)
def test_fingerprint_matches_apache_avro(name):
    """fastavro's CRC-64-AVRO, as we write it, equals the Apache Avro library's."""
    parsed = avro.schema.parse(json.dumps(SCHEMAS[name].expanded))
    if '"logicalType": "decimal"' not in json.dumps(SCHEMAS[name].expanded):
        assert parsed.fingerprint("CRC-64-AVRO") == SCHEMAS[name].fingerprint
        return
    # Apache Avro's Python library leaves a logical type's primitive as {"type":"bytes"}
    # in the canonical form, against the spec's [PRIMITIVES] rule ("bytes", as fastavro
    # and the Java library write it): compare the canonical forms with that undone.
    apache = parsed.canonical_form.replace('{"type":"bytes"}', '"bytes"')
    assert apache == SCHEMAS[name].canonical


def test_single_object_body_is_plain_avro_binary():
    codec = SingleObjectCodec(SCHEMAS)
    record = sample("Plan")
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMAS["Plan"].parsed, record)
    assert codec.encode("Plan", record)[10:] == buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short: 0 bytes"),
        (b"\xc3\x01\x00", "too short: 3 bytes"),
        (b"\x00\x01" + b"\x00" * 12, "not Avro single-object encoding: starts with 0001"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x00", "unknown writer schema fingerprint ffffffffffffffff"),
    ],
)
def test_single_object_framing_errors(data, message):
    with pytest.raises(CodecError, match=message):
        SingleObjectCodec(SCHEMAS).decode(data)


def test_truncated_body_is_a_codec_error():
    codec = SingleObjectCodec(SCHEMAS)
    data = codec.encode("CallOffered", sample("CallOffered"))
    with pytest.raises(CodecError, match="CallOffered: truncated or corrupt Avro body"):
        codec.decode(data[:-5])


def test_trailing_bytes_are_refused():
    codec = SingleObjectCodec(SCHEMAS)
    data = codec.encode("Plan", sample("Plan")) + b"\x00\x00"
    with pytest.raises(CodecError, match="2 trailing bytes"):
        codec.decode(data)


def test_record_that_does_not_fit_is_refused():
    record = sample("Plan")
    record["max_concurrent_calls"] = "two"
    with pytest.raises(CodecError, match="Plan: record does not fit the schema"):
        SingleObjectCodec(SCHEMAS).encode("Plan", record)


def test_unknown_record_name():
    with pytest.raises(KeyError, match="unknown record type 'Nope'"):
        SingleObjectCodec(SCHEMAS).encode("Nope", {})


# -- Confluent wire format, checked against confluent-kafka's own serializer ----------------
def _registry(name):
    return SchemaRegistryClient({"url": f"mock://{name}"})


def test_confluent_round_trip_and_header():
    codec = ConfluentCodec("mock://rt", SCHEMAS)
    record = sample("CallEnded")
    data = codec.encode("CallEnded", record)
    magic, sid = struct.unpack(">bI", data[:5])
    assert magic == 0
    assert sid == codec.schema_id("CallEnded")
    name, got = codec.decode(data)
    assert name == "CallEnded"
    assert got == record


def test_confluent_interop_with_confluent_kafka_deserializer():
    """Bytes we write are read by confluent-kafka's AvroDeserializer, and vice versa."""
    codec = ConfluentCodec("mock://interop", SCHEMAS)
    ctx = SerializationContext("trunkline.call-events", MessageField.VALUE)
    record = sample("CallOffered")
    theirs = AvroDeserializer(codec.client)
    assert theirs(codec.encode("CallOffered", record), ctx) == record

    serializer = AvroSerializer(
        codec.client,
        json.dumps(SCHEMAS["CallRouted"].expanded),
        conf={"auto.register.schemas": True, "subject.name.strategy": lambda ctx, name: name},
    )
    routed = sample("CallRouted")
    name, got = codec.decode(serializer(routed, ctx))
    assert name == "CallRouted"
    assert got == routed


def test_confluent_reads_older_writer_schema_into_current_reader():
    """A record written with an older schema (fewer fields) decodes with defaults."""
    codec = ConfluentCodec("mock://evolve", SCHEMAS)
    old = json.loads(json.dumps(SCHEMAS["Plan"].expanded))
    old["fields"] = [f for f in old["fields"] if f["name"] != "name"]
    from confluent_kafka.schema_registry import Schema

    sid = codec.client.register_schema("trunkline.Plan", Schema(json.dumps(old), "AVRO"))
    buf = io.BytesIO()
    from fastavro import parse_schema

    record = sample("Plan")
    del record["name"]
    schemaless_writer(buf, parse_schema(old), record)
    name, got = codec.decode(struct.pack(">bI", 0, sid) + buf.getvalue())
    assert name == "Plan"
    assert got["name"] is None and got["max_concurrent_calls"] == 2


def test_confluent_framing_errors():
    codec = ConfluentCodec("mock://errs", SCHEMAS)
    with pytest.raises(CodecError, match="too short"):
        codec.decode(b"\x00\x00")
    with pytest.raises(CodecError, match="magic byte 0xc3"):
        codec.decode(b"\xc3\x01\x00\x00\x00\x00")
    with pytest.raises(CodecError, match="schema id 4242 not found"):
        codec.decode(struct.pack(">bI", 0, 4242) + b"\x00")
