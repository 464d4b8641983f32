import io
import json
import struct
from pathlib import Path

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


@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-a-good-one"])
def test_trailing_bytes_are_refused(warm):
    codec = SingleObjectCodec(SCHEMAS)
    if warm:
        codec.decode(codec.encode("Plan", sample("Plan")))
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


# -- the generated body readers (schemas/avro_reader.py) ------------------------------------
def _fastavro_read(name, body):
    from fastavro import schemaless_reader

    return schemaless_reader(io.BytesIO(body), SCHEMAS[name].parsed, None)


def _body(name, record):
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMAS[name].parsed, record)
    return buf.getvalue()


def _typed_module(tmp_path_factory):
    """schemas/avro_compiled.py as the build writes it, imported from its source."""
    import importlib.util

    from schemas.avro_reader import write_module

    path = tmp_path_factory.mktemp("typed") / "tl_avro_typed.py"
    write_module(path)
    spec = importlib.util.spec_from_file_location("tl_avro_typed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    return _typed_module(tmp_path_factory)


def _reader(kind, name, typed):
    """The reader of `name`: generated at run time, the typed module's from its source,
    or the one the codec uses (the mypyc build when `native build` made one)."""
    from schemas import codec
    from schemas.avro_reader import compile_reader

    fp = SCHEMAS[name].fingerprint
    if kind == "runtime":
        return compile_reader(SCHEMAS[name].expanded)
    if kind == "typed":
        return typed.READERS[fp]
    read = codec._generated(SCHEMAS[name])
    assert read is not None
    return read


READER_KINDS = ["runtime", "typed", "codec"]


def test_the_codec_uses_the_built_readers_when_the_build_is_current():
    from schemas import avro_compiled, codec
    from schemas.avro_reader import generator_digest
    from trunkline.core import native

    source = Path(codec.__file__).with_name("avro_compiled.py")
    built = native.state(source) == "compiled"
    assert avro_compiled.__file__.endswith(".py") != built  # the build is imported when made
    assert generator_digest() == avro_compiled.GENERATOR
    for name in TOPLEVEL_RECORDS:
        assert (
            codec._READERS[SCHEMAS[name].fingerprint]
            is avro_compiled.READERS[SCHEMAS[name].fingerprint]
        )


def test_readers_of_another_generator_are_not_used(monkeypatch):
    from schemas import avro_compiled, codec

    monkeypatch.setattr(avro_compiled, "GENERATOR", "0" * 64)
    assert codec._built_readers() == {}
    monkeypatch.setattr(avro_compiled, "GENERATOR", codec.generator_digest())
    assert codec._built_readers() == avro_compiled.READERS


@pytest.mark.parametrize("kind", READER_KINDS)
@pytest.mark.parametrize("name", TOPLEVEL_RECORDS)
def test_generated_reader_gives_what_fastavro_gives(name, kind, typed):
    """Every record type, random records (fastavro's generator: every union branch, maps,
    arrays, decimals, enums) and the sample: equal values, of the same types, keys in the
    same order (the sink writes the record as JSON: the order is in the bytes)."""
    from fastavro.utils import generate_many

    read = _reader(kind, name, typed)
    records = [sample(name), *generate_many(SCHEMAS[name].parsed, 200)]
    for record in records:
        body = _body(name, record)
        want = _fastavro_read(name, body)
        got, end = read(body, 0)
        assert end == len(body)
        assert got == want
        assert orjson_bytes(got) == orjson_bytes(want)  # order and types, nested too


def orjson_bytes(value):
    import orjson

    return orjson.dumps(value, default=lambda v: f"{type(v).__name__}:{v}")


def test_generated_reader_reads_decimals_with_their_scale():
    from decimal import Decimal

    codec = SingleObjectCodec(SCHEMAS)
    record = sample("CallRated")
    record.update(per_minute=Decimal("0.008500"), amount=Decimal("-12.000001"))
    _, got = codec.decode(codec.encode("CallRated", record))
    assert str(got["per_minute"]) == "0.008500"
    assert str(got["amount"]) == "-12.000001"
    assert got == _fastavro_read("CallRated", codec.encode("CallRated", record)[10:])


@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-a-good-one"])
@pytest.mark.parametrize("name", ["CallOffered", "CallEnded", "CallRated", "BackendHeartbeat"])
def test_generated_reader_refuses_every_cut_body(name, warm):
    """A body cut anywhere is a CodecError (never a record read from part of it), also
    once the codec knows the header (its short path)."""
    codec = SingleObjectCodec(SCHEMAS)
    data = codec.encode(name, sample(name))
    if warm:
        assert codec.decode(data) == (name, _fastavro_read(name, data[10:]))
    for cut in range(10, len(data)):
        with pytest.raises(CodecError, match=f"{name}: truncated or corrupt Avro body"):
            codec.decode(data[:cut])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x01", "negative string length"),  # the envelope's event id, length -1
        (b"\x00" * 5 + b"\x04", "union index 2 out of range"),  # CallEnded.hangup_side
        (b"\x02\xff", "invalid start byte"),  # a one-byte event id that is not UTF-8
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-a-good-one"])
def test_generated_reader_corrupt_bodies(body, message, warm):
    codec = SingleObjectCodec(SCHEMAS)
    if warm:
        codec.decode(codec.encode("CallEnded", sample("CallEnded")))
    data = b"\xc3\x01" + SCHEMAS["CallEnded"].fingerprint + body + b"\x00" * 4
    with pytest.raises(CodecError, match=message):
        codec.decode(data)


def test_generated_reader_takes_a_bytearray():
    codec = SingleObjectCodec(SCHEMAS)
    data = codec.encode("CallOffered", sample("CallOffered"))
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == codec.decode(data)


def test_unsupported_logical_type_is_left_to_fastavro():
    from schemas.avro_reader import Unsupported, compile_reader

    schema = {"type": "record", "name": "T", "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}  # fmt: skip
    with pytest.raises(Unsupported, match="timestamp-millis"):
        compile_reader(schema)
