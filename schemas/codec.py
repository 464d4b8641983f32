"""Avro framing for Kafka values.

Two wire formats, chosen by configuration:

* **Single-object encoding** (Avro spec, default, no registry needed):
  ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema + body.
  The fingerprint names the record type, so one topic can carry several event types.
* **Confluent wire format** (when a schema registry URL is configured):
  ``00`` + 4-byte big-endian schema id + body. Schemas are registered under the
  record-name subject strategy (subject = ``trunkline.CallOffered``), so several
  record types share a topic the same way.

Both decode to ``(record_name, dict)``. Errors are :class:`CodecError` with a message that
says what was wrong with the bytes.

Bodies are read by a reader generated from the writer schema (`schemas.avro_reader`,
compiled once per schema; 2-3x fastavro's on our records), which gives what fastavro
gives; fastavro reads a schema the generator does not handle, and resolves an older
writer schema into the reader's (Confluent).
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.avro_reader import (
    AvroBodyError,
    Reader,
    Unsupported,
    compile_reader,
    generator_digest,
)
from schemas.registry import LoadedSchema, SchemaSet, default_schemas

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SO_HEADER = 10
_CF_HEADER = 5


class CodecError(ValueError):
    """Bytes that are not a record we can read, or a record that does not fit its schema."""


class Codec(Protocol):
    schemas: SchemaSet

    def encode(self, name: str, record: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]: ...


def _write_body(schema: LoadedSchema, record: dict[str, Any], out: io.BytesIO) -> None:
    try:
        schemaless_writer(out, schema.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CodecError(f"{schema.name}: record does not fit the schema: {exc}") from exc


def _built_readers() -> dict[bytes, Reader]:
    """The readers of schemas/avro_compiled.py (generated and compiled with mypyc by
    `python -m trunkline.core.native build`), when made by this very generator; none
    when it is absent or older (then each reader is generated at run time)."""
    try:
        from schemas import avro_compiled  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return {}
    if getattr(avro_compiled, "GENERATOR", None) != generator_digest():
        return {}
    return dict(avro_compiled.READERS)


#: writer schema fingerprint -> its reader (None: fastavro reads it); a fingerprint names
#: one exact schema, so a built reader serves only the schema it was generated from
_READERS: dict[bytes, Reader | None] = {**_built_readers()}


def _generated(schema: LoadedSchema) -> Reader | None:
    try:
        return _READERS[schema.fingerprint]
    except KeyError:
        pass
    try:
        reader: Reader | None = compile_reader(schema.expanded)
    except Unsupported:
        reader = None
    _READERS[schema.fingerprint] = reader
    return reader


def _read_body(schema: LoadedSchema, data: bytes, start: int) -> dict[str, Any]:
    """The Avro body of `data` from `start` (after the header), read in place (not from a
    copy of the body) by the schema's generated reader, else fastavro's."""
    read = _generated(schema)
    if type(data) is not bytes:  # a bytearray or memoryview: the reader slices bytes
        data = bytes(data)
    if read is None:
        return _fastavro_body(schema, data, start)
    try:
        record, end = read(data, start)
    except (AvroBodyError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CodecError(f"{schema.name}: truncated or corrupt Avro body: {exc}") from exc
    if end != len(data):
        if end > len(data):  # a string or bytes value sliced past the end
            raise CodecError(f"{schema.name}: truncated or corrupt Avro body: "
                             f"{end - len(data)} bytes missing")  # fmt: skip
        raise CodecError(f"{schema.name}: {len(data) - end} trailing bytes after the Avro body")
    return record


def _fastavro_body(schema: LoadedSchema, data: bytes, start: int) -> dict[str, Any]:
    try:
        buf = io.BytesIO(data)
        buf.seek(start)
        record = schemaless_reader(buf, schema.parsed, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CodecError(f"{schema.name}: truncated or corrupt Avro body: {exc}") from exc
    if buf.tell() != len(data):
        raise CodecError(
            f"{schema.name}: {len(data) - buf.tell()} trailing bytes after the Avro body"
        )
    assert isinstance(record, dict)
    return record


class SingleObjectCodec:
    """Avro single-object encoding over the project's schema set."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas or default_schemas()
        #: magic + fingerprint (the whole header) -> (record name, generated reader), for
        #: the schemas already met that a generated reader reads: one lookup checks both
        self._known: dict[bytes, tuple[str, Reader]] = {}

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        schema = self.schemas[name]
        out = io.BytesIO()
        out.write(SINGLE_OBJECT_MAGIC)
        out.write(schema.fingerprint)
        _write_body(schema, record, out)
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if type(data) is bytes:
            hit = self._known.get(data[:_SO_HEADER])
            if hit is not None:  # the common case: what `_decode` does, inline
                name, read = hit
                try:
                    record, end = read(data, _SO_HEADER)
                except (AvroBodyError, IndexError, UnicodeDecodeError, struct.error) as exc:
                    raise CodecError(f"{name}: truncated or corrupt Avro body: {exc}") from exc
                if end == len(data):
                    return name, record
        return self._decode(data)

    def _decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < _SO_HEADER:
            raise CodecError(f"single-object message too short: {len(data)} bytes, need >= 10")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise CodecError(
                f"not Avro single-object encoding: starts with {data[:2].hex()}, expected c301"
            )
        fp = bytes(data[2:_SO_HEADER])
        schema = self.schemas.by_fingerprint.get(fp)
        if schema is None:
            raise CodecError(f"unknown writer schema fingerprint {fp.hex()}")
        read = _generated(schema)
        if read is not None and type(data) is bytes:
            self._known[data[:_SO_HEADER]] = (schema.name, read)
        return schema.name, _read_body(schema, data, _SO_HEADER)


class ConfluentCodec:
    """Confluent wire format against a schema registry (confluent-kafka's client).

    ``url`` is the registry URL; ``mock://name`` selects confluent-kafka's in-memory
    registry (tests). Writer schemas fetched by id are resolved into the local reader
    schema of the same name, so an older producer's records still decode.
    """

    def __init__(self, url: str, schemas: SchemaSet | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.schemas = schemas or default_schemas()
        # new_client() gives the in-memory MockSchemaRegistryClient for mock:// URLs
        self.client = SchemaRegistryClient.new_client({"url": url})
        self._ids: dict[str, int] = {}
        self._writers: dict[int, tuple[LoadedSchema, Any]] = {}

    def schema_id(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is None:
            import json

            from confluent_kafka.schema_registry import Schema
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            schema = self.schemas[name]
            try:
                sid = self.client.register_schema(
                    schema.fullname, Schema(json.dumps(schema.expanded), "AVRO")
                )
            except SchemaRegistryError as exc:
                raise CodecError(f"{name}: schema registry refused the schema: {exc}") from exc
            self._ids[name] = sid
        return sid

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        schema = self.schemas[name]
        out = io.BytesIO()
        out.write(struct.pack(">bI", CONFLUENT_MAGIC, self.schema_id(name)))
        _write_body(schema, record, out)
        return out.getvalue()

    def _writer(self, sid: int) -> tuple[LoadedSchema, Any]:
        hit = self._writers.get(sid)
        if hit is None:
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            try:
                registered = self.client.get_schema(sid)
            except SchemaRegistryError as exc:
                raise CodecError(f"schema id {sid} not found in the registry: {exc}") from exc
            writer = json.loads(registered.schema_str or "{}")
            short = str(writer.get("name", "")).rsplit(".", 1)[-1]
            if short not in self.schemas:
                raise CodecError(f"schema id {sid} is {writer.get('name')!r}, not one of ours")
            reader = self.schemas[short]
            same = fingerprint(to_parsing_canonical_form(writer), "CRC-64-AVRO")
            parsed_writer = (
                reader.parsed if bytes.fromhex(same) == reader.fingerprint else parse_schema(writer)
            )
            hit = (reader, parsed_writer)
            self._writers[sid] = hit
        return hit

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < _CF_HEADER:
            raise CodecError(f"Confluent-framed message too short: {len(data)} bytes, need >= 5")
        if data[0] != CONFLUENT_MAGIC:
            raise CodecError(f"not Confluent wire format: magic byte {data[0]:#04x}, expected 0x00")
        (sid,) = struct.unpack(">I", data[1:_CF_HEADER])
        reader, writer = self._writer(sid)
        if writer is reader.parsed:
            return reader.name, _read_body(reader, data, _CF_HEADER)
        body = bytes(data[_CF_HEADER:])
        try:
            buf = io.BytesIO(body)
            record = schemaless_reader(buf, writer, reader.parsed)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
            raise CodecError(f"{reader.name}: truncated or corrupt Avro body: {exc}") from exc
        assert isinstance(record, dict)
        return reader.name, record


def make_codec(schema_registry_url: str | None = None) -> Codec:
    """Single-object encoding, or the Confluent format when a registry URL is given."""
    if schema_registry_url:
        return ConfluentCodec(schema_registry_url)
    return SingleObjectCodec()
