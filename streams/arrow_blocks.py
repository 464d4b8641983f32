"""Rows -> Arrow record batches and IPC streams for ClickHouse's `ArrowStream` input
(pure: the replay's shadow blocks, streams/shadow.py).

ClickHouse reads an Arrow column in one piece, so Python only pays for building the
arrays. A block's rows (tuples, values in the table's column order, as
`streams.projection`'s row functions make them) become one Arrow struct array in a
single C++ pass over the tuples (`pa.array(rows, type=struct)`), which is then viewed as
a record batch: no per-column transposition (`zip(*rows)`) and no per-column call.

Each column gets its type up front, so pyarrow infers nothing: integers int64, floats
float64 (ClickHouse narrows them to the column's UInt*/Int*, Float32 as it does the JSON
numbers of the sink's JSONCompactEachRow), every other column text (strings,
DateTime64(3) as "seconds.millis", decimals as their exact text, all parsed by ClickHouse
as in JSON); None is null. A block whose values do not fit (not expected of the row
functions) is built a column at a time, each typed when its values fit and inferred when
not, so a block is never refused for its types here.

DateTime64 columns go as the rows' text, not as Arrow timestamps: turning the text into
epoch ms with Arrow's string kernels costs what ClickHouse's parsing saves, and the text
is parsed by the same code as the sink's (docs/benchmarks.md).

tests/integration/test_clickhouse.py holds a table filled from these batches equal to
one filled by the sink's JSONCompactEachRow, column by column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the media type of an Arrow IPC stream (the replay's row blocks to the sink)
ARROW_STREAM = "application/vnd.apache.arrow.stream"

#: columns whose values are integers or floats (ClickHouse's UInt*/Int*, Float32)
INT_COLUMNS = frozenset({
    "status_rank", "status_code", "setup_ms", "talk_ms", "packets_sent", "packets_received",
    "packets_lost", "kafka_partition", "kafka_offset", "provider_duration_ms", "plan_limit",
    "rating_run", "connected", "talk_seconds", "billable_seconds", "rate_plan_version",
    "attempt", "latency_ms",
})  # fmt: skip
FLOAT_COLUMNS = frozenset({"jitter_ms", "mos"})

#: columns -> the struct type their rows convert to (built once per column tuple)
_STRUCTS: dict[tuple[str, ...], Any] = {}


def _struct(columns: tuple[str, ...]) -> Any:
    struct = _STRUCTS.get(columns)
    if struct is None:
        import pyarrow as pa

        struct = _STRUCTS[columns] = pa.struct([pa.field(c, _row_type(c)) for c in columns])
    return struct


def _row_type(column: str) -> Any:
    """The Arrow type a column's row values convert to (before TIME_COLUMNS' view)."""
    import pyarrow as pa

    if column in INT_COLUMNS:
        return pa.int64()
    if column in FLOAT_COLUMNS:
        return pa.float64()
    return pa.string()


def record_batch(columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> Any:
    """`rows` (values in `columns` order) as one `pyarrow.RecordBatch`."""
    import pyarrow as pa

    try:
        return pa.RecordBatch.from_struct_array(pa.array(rows, type=_struct(columns)))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.RecordBatch.from_arrays(_by_column(columns, rows), names=list(columns))


def _by_column(columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """One array per column, each typed when its values fit, inferred when not."""
    import pyarrow as pa

    values = zip(*rows, strict=True) if rows else [()] * len(columns)
    arrays = []
    for column, column_values in zip(columns, values, strict=True):
        try:
            arrays.append(pa.array(column_values, type=_row_type(column)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            arrays.append(pa.array(column_values))
    return arrays


def ipc_stream(batches: Sequence[Any]) -> Any:
    """Record batches (one schema) as one Arrow IPC stream: a `pyarrow.Buffer`, which
    is bytes-like (write it, send it or `bytes()` it; no copy is made here)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def read_stream(block: bytes | memoryview) -> list[Any]:
    """The record batches of an Arrow IPC stream (read in place: no copy); ValueError
    when `block` is not one."""
    import pyarrow as pa

    try:
        return list(pa.ipc.open_stream(block))
    except (pa.ArrowInvalid, OSError) as exc:  # ArrowInvalid is a ValueError
        raise ValueError(str(exc)) from exc


def arrow_stream(columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> Any:
    """`rows` as an Arrow IPC stream of one record batch (`record_batch`, `ipc_stream`)."""
    return ipc_stream([record_batch(columns, rows)])
