"""Avro bodies read by code generated from each writer schema (pure).

fastavro's reader walks the parsed schema for every value it reads (a dispatch on the
type's name, a dict lookup per field), which is most of its cost on our small records:
about 0.5 us a field, 6-14 us a call event. This module turns a schema once into the
straight-line Python that reads exactly that schema (`compile_reader`): one local
variable per step, each record inlined, unions as an `if` on the branch index. It returns
what fastavro returns for the same bytes (dicts in field order, enums as their symbol,
decimals as `Decimal` with the schema's scale, floats and doubles unpacked little-endian,
arrays as lists, maps as dicts), so the codec may use either; `tests/unit/test_codec.py`
holds the two equal over every record type and refuses the same corrupt bodies.

    reader = compile_reader(schema.expanded)   # once per writer schema
    record, end = reader(data, start)          # end: the offset after the body

Errors are `AvroBodyError` (the codec wraps them with the record type): a body cut short,
a negative length, a union or enum index out of range, invalid UTF-8. The caller checks
that `end` is the end of its bytes (a longer body, or a cut one read past its end by a
slice, is caught there).

Supported: every Avro type and the decimal logical type (the ones our schemas use);
`compile_reader` raises `Unsupported` for other logical types, and the codec keeps
fastavro for those schemas.
"""

from __future__ import annotations

import decimal
import hashlib
import inspect
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class AvroBodyError(ValueError):
    """Bytes that do not read as the schema says."""


class Unsupported(ValueError):
    """A schema this generator does not handle (the codec uses fastavro for it)."""


def _uvarint(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte (`first`, high bit set) is read: (its
    unsigned value, still zigzag-encoded; the position after it)."""
    n = first & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _negative(what: str, n: int) -> AvroBodyError:
    return AvroBodyError(f"negative {what} {n}")


def _bad_index(what: str, n: int) -> AvroBodyError:
    return AvroBodyError(f"{what} index {n} out of range")


_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from


class _Gen:
    """Source lines of one reader; `v<n>` locals, `pos` the offset."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.open: set[int] = set()  # the records being generated (a recursive type)
        self.counter = 0
        self.types: dict[str, str] = {}  # local -> its annotation (the typed module's)
        self.const_sources: dict[str, str] = {}  # constant -> the expression making it
        self.prefix = "c"  # of the constants' names (one per function in a module)

    def var(self, kind: str = "Any") -> str:
        self.counter += 1
        name = f"v{self.counter}"
        self.types[name] = kind
        return name

    def const(self, value: Any, source: str) -> str:
        name = f"{self.prefix}{len(self.consts)}"
        self.consts[name] = value
        self.const_sources[name] = source
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def raw(self, ind: int) -> None:
        """`b` = the next varint, still zigzag-encoded (the one-byte case inline)."""
        self.emit(ind, "b = data[pos]; pos += 1")
        self.emit(ind, "if b > 127: b, pos = uvarint(data, pos, b)")

    def long(self, ind: int, target: str) -> None:
        self.raw(ind)
        self.emit(ind, f"{target} = (b >> 1) ^ -(b & 1)")

    def length(self, ind: int, target: str, what: str) -> None:
        """`target` = a length (a long that must not be negative)."""
        self.raw(ind)
        self.emit(ind, f"if b & 1: raise negative({what!r}, (b >> 1) ^ -1)")
        self.emit(ind, f"{target} = b >> 1")

    def value(self, schema: Any, ind: int, target: str) -> None:
        """Lines that read `schema` into the local `target`."""
        if isinstance(schema, list):
            self.union(schema, ind, target)
            return
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                schema = {"type": schema}
            elif schema in self.named or schema.rsplit(".", 1)[-1] in self.named:
                schema = self.named.get(schema) or self.named[schema.rsplit(".", 1)[-1]]
                if id(schema) in self.open:
                    raise Unsupported(f"recursive type {schema['name']!r}")
            else:
                raise Unsupported(f"unknown named type {schema!r}")
        kind = schema["type"]
        if isinstance(kind, (dict, list)) or (kind not in PRIMITIVES and kind in self.named):
            self.value(kind, ind, target)
            return
        logical = schema.get("logicalType")
        if logical is not None and not (logical == "decimal" and kind in ("bytes", "fixed")):
            raise Unsupported(f"logical type {logical!r}")
        if kind in ("record", "error", "enum", "fixed"):
            self.named[self._fullname(schema)] = schema
            self.named.setdefault(schema["name"], schema)
        if kind == "null":
            self.emit(ind, f"{target} = None")
        elif kind == "boolean":
            self.emit(ind, f"{target} = data[pos] != 0; pos += 1")
        elif kind in ("int", "long"):
            self.long(ind, target)
        elif kind == "float":
            self.emit(ind, f"{target} = unpack_float(data, pos)[0]; pos += 4")
        elif kind == "double":
            self.emit(ind, f"{target} = unpack_double(data, pos)[0]; pos += 8")
        elif kind in ("string", "bytes"):
            n = self.var("int")
            self.length(ind, n, f"{kind} length")
            end = f"pos + {n}"
            read = f"data[pos:{end}]" + (".decode()" if kind == "string" else "")
            self.emit(ind, f"{target} = {read}; pos += {n}")
        elif kind == "fixed":
            size = int(schema["size"])
            self.emit(ind, f"{target} = data[pos:pos + {size}]; pos += {size}")
        elif kind == "enum":
            symbols = self.const(tuple(schema["symbols"]), repr(tuple(schema["symbols"])))
            n = self.var("int")
            self.long(ind, n)
            self.emit(ind, f"if not 0 <= {n} < {len(schema['symbols'])}: "
                           f"raise bad_index('enum', {n})")  # fmt: skip
            self.emit(ind, f"{target} = {symbols}[{n}]")
        elif kind in ("record", "error"):
            self.record(schema, ind, target)
        elif kind == "array":
            self.blocks(ind, target, "[]", lambda i, item: self.value(schema["items"], i, item),
                        "append")  # fmt: skip
        elif kind == "map":
            self.blocks(ind, target, "{}", lambda i, item: self.map_item(schema, i, item), "")
        else:
            raise Unsupported(f"type {kind!r}")
        if logical == "decimal":
            prec = int(schema["precision"])
            ctx = self.const(decimal.Context(prec=prec), f"decimal.Context(prec={prec})")
            scale = int(schema.get("scale", 0))
            self.emit(ind, f"{target} = {ctx}.create_decimal(int.from_bytes({target}, "
                           f"'big', signed=True)).scaleb({-scale}, {ctx})")  # fmt: skip

    def _fullname(self, schema: dict[str, Any]) -> str:
        name = str(schema["name"])
        namespace = schema.get("namespace")
        return f"{namespace}.{name}" if namespace and "." not in name else name

    def record(self, schema: dict[str, Any], ind: int, target: str) -> None:
        self.open.add(id(schema))
        fields = []
        for f in schema["fields"]:
            v = self.var()
            self.value(f["type"], ind, v)
            fields.append(f"{f['name']!r}: {v}")
        self.emit(ind, f"{target} = {{{', '.join(fields)}}}")
        self.open.discard(id(schema))

    def map_item(self, schema: dict[str, Any], ind: int, target: str) -> None:
        key = self.var()
        self.value("string", ind, key)
        value = self.var()
        self.value(schema["values"], ind, value)
        self.emit(ind, f"{target}[{key}] = {value}")

    def blocks(self, ind: int, target: str, empty: str, item: Callable[[int, str], None],
               add: str) -> None:  # fmt: skip
        """Array or map blocks: a count (negative: then a byte size), items, until 0."""
        n = self.var("int")
        self.emit(ind, f"{target} = {empty}")
        self.emit(ind, "while True:")
        self.long(ind + 1, n)
        self.emit(ind + 1, f"if {n} == 0: break")
        self.emit(ind + 1, f"if {n} < 0:")
        self.emit(ind + 2, f"{n} = -{n}")
        size = self.var("int")
        self.long(ind + 2, size)
        self.emit(ind + 1, f"for _ in range({n}):")
        if add:
            v = self.var()
            item(ind + 2, v)
            self.emit(ind + 2, f"{target}.{add}({v})")
        else:
            item(ind + 2, target)

    def union(self, branches: list[Any], ind: int, target: str) -> None:
        self.raw(ind)  # branch i is written as the zigzag varint of i: 2 * i
        for i, branch in enumerate(branches):
            self.emit(ind, f"{'if' if i == 0 else 'elif'} b == {2 * i}:")
            self.value(branch, ind + 1, target)
        self.emit(ind, "else:")
        self.emit(ind + 1, "raise bad_index('union', (b >> 1) ^ -(b & 1))")


def reader_source(schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The generated function's source and the constants it refers to."""
    gen = _Gen()
    gen.value(schema, 1, "record")
    body = "\n".join(gen.lines)
    return f"def read(data, pos):\n{body}\n    return record, pos\n", gen.consts


def _typed_function(fn: str, schema: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """`fn`, reading one body of `schema`, with every local annotated (for mypyc: the
    varint arithmetic on native ints, `data[pos]` a native byte index); its constants'
    names and sources."""
    gen = _Gen()
    gen.prefix = f"_{fn}_c"
    gen.value(schema, 1, "record")
    decls = ["    b: int", "    record: dict[str, Any]"]
    decls += [f"    {name}: {kind}" for name, kind in gen.types.items()]
    body = "\n".join(decls + gen.lines)
    source = (
        f"def {fn}(data: bytes, pos: int) -> tuple[dict[str, Any], int]:\n"
        f"{body}\n    return record, pos\n"
    )
    return source, gen.const_sources


MODULE_HEADER = '''"""Avro readers of the schemas known at build time (generated: do not edit).

Written by `schemas.avro_reader.module_source` (`python -m trunkline.core.native build`
writes it and compiles it with mypyc); `READERS` maps each writer schema's fingerprint to
its reader, the same code `compile_reader` generates, typed. `GENERATOR` is the SHA-256
of the generator's source: the codec uses these readers only while it matches.
"""

from __future__ import annotations

import decimal
import hashlib
import struct
from collections.abc import Callable
from typing import Any, Final

from schemas.avro_reader import _bad_index as bad_index
from schemas.avro_reader import _negative as negative

GENERATOR: Final = {generator!r}

unpack_float = struct.Struct("<f").unpack_from
unpack_double = struct.Struct("<d").unpack_from


{uvarint}'''


def generator_digest() -> str:
    """The SHA-256 of this module's source (a generated module names the one it came from)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def module_source(schemas: list[tuple[str, bytes, dict[str, Any]]]) -> str:
    """The source of a module of typed readers, one per (name, fingerprint, expanded
    schema), and `READERS`: fingerprint -> reader."""
    # `_uvarint` itself, renamed: compiled with the readers (a call into the pure module
    # would cost what the build saves)
    uvarint = inspect.getsource(_uvarint).replace("def _uvarint(", "def uvarint(", 1)
    parts = [MODULE_HEADER.format(generator=generator_digest(), uvarint=uvarint)]
    consts: list[str] = []
    entries: list[str] = []
    for name, fp, schema in schemas:
        fn = f"read_{name}"
        source, const_sources = _typed_function(fn, schema)
        parts.append("\n" + source)
        consts += [f"{c}: Final = {expr}" for c, expr in const_sources.items()]
        entries.append(f"    bytes.fromhex({fp.hex()!r}): {fn},")
    parts.insert(1, "\n".join(consts) + "\n" if consts else "")
    parts.append(
        "\nREADERS: dict[bytes, Callable[[bytes, int], tuple[dict[str, Any], int]]] = {\n"
        + "\n".join(entries)
        + "\n}\n"
    )
    return "\n".join(parts)


def write_module(path: Path) -> None:
    """Write the typed readers of every schema in schemas/avro to `path`."""
    from schemas.registry import default_schemas

    known = default_schemas()
    loaded = [known[n] for n in sorted(known.names())]
    path.write_text(module_source([(s.name, s.fingerprint, s.expanded) for s in loaded]))


def compile_reader(schema: dict[str, Any]) -> Reader:
    """A function reading one body of `schema` (an expanded schema, named types inlined
    at their first use) from `data` at `pos`: (record, the offset after it)."""
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        raise Unsupported("only a record schema is compiled")
    source, consts = reader_source(schema)
    namespace: dict[str, Any] = {
        "uvarint": _uvarint,
        "negative": _negative,
        "bad_index": _bad_index,
        "unpack_float": _FLOAT,
        "unpack_double": _DOUBLE,
        **consts,
    }
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), namespace)
    read: Reader = namespace["read"]
    return read
