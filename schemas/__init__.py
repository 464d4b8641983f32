"""The contract: Avro schemas for every event and config record, their codec, the DDL."""

from schemas.codec import (
    Codec,
    CodecError,
    ConfluentCodec,
    SingleObjectCodec,
    make_codec,
)
from schemas.registry import SchemaSet, load_schemas

__all__ = [
    "Codec",
    "CodecError",
    "ConfluentCodec",
    "SchemaSet",
    "SingleObjectCodec",
    "load_schemas",
    "make_codec",
]
