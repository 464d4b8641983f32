"""streams/arrow_blocks.py: rows -> Arrow record batches (typed up front, a fallback
column by column) and the replay's blocks of batches (trunkline/stack/replay._Blocks)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from streams import arrow_blocks
from streams.projection import COLUMNS, DELIVERY_COLUMNS, TABLE_COLUMNS, CallStatus


def _event_row(i: int, **changes: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {c: f"{c}-{i}" for c in COLUMNS}
    values.update({c: i for c in COLUMNS if c in arrow_blocks.INT_COLUMNS})
    values.update({c: i / 4 for c in COLUMNS if c in arrow_blocks.FLOAT_COLUMNS})
    values.update(occurred_at=f"{1_780_000_000 + i}.{i % 1000:03d}", status=CallStatus.QUEUED,
                  reason="", payload='{"ü": "€ \\n"}')  # fmt: skip
    values.update(changes)
    return tuple(values[c] for c in COLUMNS)


def _read(stream: Any) -> pa.Table:
    return pa.ipc.open_stream(stream).read_all()


def test_a_batch_holds_the_rows_typed_up_front():
    rows = [_event_row(i) for i in range(300)]
    batch = arrow_blocks.record_batch(COLUMNS, rows)
    assert batch.schema.names == list(COLUMNS)
    for name, column in zip(COLUMNS, batch.columns, strict=True):
        expected = (
            pa.int64() if name in arrow_blocks.INT_COLUMNS
            else pa.float64() if name in arrow_blocks.FLOAT_COLUMNS
            else pa.string()
        )  # fmt: skip
        assert column.type == expected, name
    assert [tuple(r.values()) for r in batch.to_pylist()] == rows
    assert batch.column("status")[0].as_py() == "Queued"  # a StrEnum is its text


def test_none_is_null_and_an_empty_string_stays_empty():
    rows = [
        ("s", "w", 1, "e", "src", "CallEnded", "c", "", "u", 0, "", 0, "ok", None,
         "1780000000.000", "{}", 0, 0),
        ("s", "w", 2, "e", "src", "CallEnded", "c", "", "u", 0, "", 0, "ok", "1780000000.001",
         "1780000000.000", "{}", 0, 0),
    ]  # fmt: skip
    batch = arrow_blocks.record_batch(DELIVERY_COLUMNS, rows)
    assert batch.column("next_attempt_at").to_pylist() == [None, "1780000000.001"]
    assert batch.column("error").to_pylist() == ["", ""]
    assert batch.column("next_attempt_at").type == pa.string()


def test_a_block_whose_values_do_not_fit_is_built_column_by_column():
    """A value of another type (not expected of the row functions) is no error: its
    column is inferred, every other column keeps its type."""
    rows = [_event_row(i, status_code=str(i)) for i in range(2)] + [
        _event_row(2, setup_ms=None, status_code="2")
    ]
    batch = arrow_blocks.record_batch(COLUMNS, rows)
    assert batch.column("status_code").to_pylist() == ["0", "1", "2"]
    assert batch.column("setup_ms").type == pa.int64()
    assert batch.column("setup_ms").to_pylist() == [0, 1, None]
    assert batch.column("payload").type == pa.string()


def test_decimal_text_goes_as_text():
    from streams.projection import BILLING_COLUMNS

    row = dict.fromkeys(BILLING_COLUMNS, "x") | dict.fromkeys(
        ("rating_run", "connected", "talk_seconds", "billable_seconds", "rate_plan_version",
         "kafka_partition", "kafka_offset"), 1,
    )  # fmt: skip
    row |= {"amount": str(Decimal("-0.000001")), "provider_cost": None}
    batch = arrow_blocks.record_batch(BILLING_COLUMNS, [tuple(row[c] for c in BILLING_COLUMNS)])
    assert batch.column("amount").to_pylist() == ["-0.000001"]
    assert batch.column("provider_cost").to_pylist() == [None]


def test_an_ipc_stream_of_several_batches_reads_back_in_order():
    rows = [_event_row(i) for i in range(250)]
    batches = [arrow_blocks.record_batch(COLUMNS, rows[i : i + 100]) for i in (0, 100, 200)]
    stream = arrow_blocks.ipc_stream(batches)
    assert [tuple(r.values()) for r in _read(memoryview(stream)).to_pylist()] == rows
    assert bytes(stream) == bytes(arrow_blocks.ipc_stream(batches))
    assert _read(arrow_blocks.arrow_stream(COLUMNS, [])).num_rows == 0


class _Target:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, list[tuple[Any, ...]]]] = []

    def insert_batches(self, table: str, batches: list[Any]) -> None:
        rows = [tuple(r.values()) for r in pa.Table.from_batches(batches).to_pylist()]
        self.blocks.append((table, rows))


def test_replay_blocks_insert_every_insert_rows_and_the_rest_on_flush(monkeypatch):
    from trunkline.stack import replay

    monkeypatch.setattr(replay, "BLOCK_ROWS", 20)
    monkeypatch.setattr(replay, "INSERT_ROWS", 40)
    target = _Target()
    blocks = replay._Blocks(target)  # type: ignore[arg-type]
    rows = [_event_row(i) for i in range(87)]
    for row in rows[:47]:
        blocks.add("call_events_log", row)
    assert [len(b) for _, b in target.blocks] == [40]  # two batches of 20, one insert
    assert blocks.written == {"call_events_log": 40, "billing_records_log": 0,
                              "webhook_deliveries_log": 0}  # fmt: skip
    for row in rows[47:]:
        blocks.add("call_events_log", row)
    assert [len(b) for _, b in target.blocks] == [40, 40]
    blocks.flush()
    assert [len(b) for _, b in target.blocks] == [40, 40, 7]
    assert [r for _, b in target.blocks for r in b] == rows
    assert {t for t, _ in target.blocks} == {"call_events_log"}
    assert blocks.written["call_events_log"] == 87
    blocks.flush()  # nothing left: no empty insert
    assert len(target.blocks) == 3


def test_replay_blocks_insert_early_when_the_batches_reach_insert_bytes(monkeypatch):
    from trunkline.stack import replay

    monkeypatch.setattr(replay, "BLOCK_ROWS", 20)
    monkeypatch.setattr(replay, "INSERT_ROWS", 1_000)
    monkeypatch.setattr(replay, "INSERT_BYTES", 1)  # any batch is enough
    target = _Target()
    blocks = replay._Blocks(target)  # type: ignore[arg-type]
    for i in range(45):
        blocks.add("call_events_log", _event_row(i))
    assert [len(b) for _, b in target.blocks] == [20, 20]
    blocks.flush()
    assert [len(b) for _, b in target.blocks] == [20, 20, 5]


@pytest.mark.parametrize("table", sorted(TABLE_COLUMNS))
def test_every_table_has_a_struct_type(table):
    batch = arrow_blocks.record_batch(TABLE_COLUMNS[table], [])
    assert batch.num_rows == 0 and batch.schema.names == list(TABLE_COLUMNS[table])
