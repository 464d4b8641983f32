"""Table generations (trunkline/core/generations.py) and `replay rebuild --swap`'s
promotion of the machine tables (trunkline/stack/replay.py `promote`), the broker
replaced by recorders: the record codec, the effective app ids, the changelog bytes
against Faust's own serializer, the partition each key is written to, and the order of
the steps (the generation record last)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from faust.serializers import codecs

from streams.rebuild import Table
from trunkline.core import generations
from trunkline.core.generations import GenerationError, GenerationRecord
from trunkline.core.kafka import Outgoing, PartitionRange
from trunkline.core.settings import Settings
from trunkline.core.topics import billing_internal_topics, generation_app_id, internal_topics
from trunkline.stack import replay
from trunkline.stack.base import BadInput

S = Settings.from_env({"TRUNKLINE_TOPIC_PREFIX": "x.", "TRUNKLINE_APP_ID": "tl"})


# -- the record -----------------------------------------------------------------------
def test_a_record_round_trips_and_names_its_app_id():
    record = GenerationRecord("tl", 3, 2, 1_780_000_000_000)
    key, value = record.encode()
    assert key == b"tl"
    assert orjson.loads(value) == {"generation": 3, "previous": 2, "promoted_at": 1_780_000_000_000}
    assert generations.decode(key, value) == record


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"{", "'tl': not JSON"),
        (b"[1]", "'tl': not a JSON object"),
        (b'{"generation": -1, "previous": 0, "promoted_at": 1}', "generation must be an integer"),
        (b'{"generation": true, "previous": 0, "promoted_at": 1}', "generation must be an integer"),
        (b'{"generation": "2", "previous": 0, "promoted_at": 1}', "generation must be an integer"),
        (b'{"generation": 2, "promoted_at": 1}', "previous must be an integer >= 0, got None"),
        (b'{"generation": 2, "previous": 1, "promoted_at": 1, "x": 0}', "unknown fields x"),
    ],
)
def test_a_malformed_record_is_refused_naming_what_is_wrong(value, message):
    with pytest.raises(GenerationError, match=message):
        generations.decode(b"tl", value)


def test_the_active_generation_is_0_without_a_record_or_after_a_tombstone():
    _, value = GenerationRecord("tl", 4, 3, 1).encode()
    assert generations.active({}, "tl") == 0
    assert generations.active({b"tl": None}, "tl") == 0
    assert generations.active({b"other": value}, "tl") == 0
    assert generations.active({b"tl": value}, "tl") == 4


# -- the effective ids and names ----------------------------------------------------------
def test_generation_0_is_todays_app_id_and_later_ones_carry_their_number():
    assert generation_app_id("tl", 0) == "tl"
    assert generation_app_id("tl", 2) == "tl-g2"
    assert generations.worker_ids("tl", 0) == ("tl", "tl-billing")
    assert generations.worker_ids("tl", 7) == ("tl-g7", "tl-billing-g7")
    with pytest.raises(ValueError, match="negative"):
        generation_app_id("tl", -1)
    # the topics of generation 0 are the ones `topics apply` has always made
    assert [t.suffix for t in internal_topics("tl", 2)] + [
        t.suffix for t in billing_internal_topics("tl")
    ] == generations.generation_topics("tl", 0, 2)
    assert generations.generation_topics("tl", 3, 2) == [
        "tl-g3-admission-slots-changelog",
        "tl-g3-routing-reservations-changelog",
        "tl-g3-routing-heartbeats-changelog",
        "tl-g3-routing-ticks-changelog",
        "tl-g3-__assignor-__leader",
        "tl-billing-g3-billing-calls-changelog",
        "tl-billing-g3-__assignor-__leader",
    ]


def test_the_generations_found_among_topic_and_group_names():
    names = [
        "tl", "tl-billing", "tl-admission-slots-changelog",  # generation 0: not numbered
        "tl-g2", "tl-g3-routing-ticks-changelog", "tl-billing-g5-billing-calls-changelog",
        "tl-billing-g6",
        "tl2-g9-routing-ticks-changelog", "xtl-g8", "tl-g0", "tl-gx", "tl-clickhouse-sink",
    ]  # fmt: skip
    assert generations.generations_named("tl", names) == {2, 3, 5, 6}


# -- the changelog bytes ------------------------------------------------------------------
VALUES: list[Any] = [
    {"call_id": "c-1", "business_id": "b-é", "state": "Admitted", "at": 1_780_000_000_000},
    {"nested": {"list": [1, 2, {"x": None}], "flag": True}, "amount": "0.0085"},
    ["a", 1, None],
    7,
    "text",
    None,
]


@pytest.mark.parametrize("value", VALUES)
def test_a_value_is_the_bytes_fausts_json_codec_writes(value):
    assert generations.table_value(value) == codecs.dumps("json", value)
    assert codecs.loads("json", generations.table_value(value)) == value


@pytest.mark.parametrize("key", ["c-1", "us-east-1", "b-é/ü", 'quote"d'])
def test_a_key_is_the_bytes_fausts_json_codec_writes_and_reads_back(key):
    assert generations.table_key(key) == codecs.dumps("json", key)
    assert codecs.loads("json", generations.table_key(key)) == key
    assert replay._table_key(generations.table_key(key)) == key  # what --verify reads


def test_a_shadow_value_with_decimals_and_tuples_is_written_as_it_reads_back():
    t = Table()
    t.set("c-1", {"amount": Decimal("0.0085"), "pair": (1, 2)}, 1)
    (value,) = t.live().values()
    assert orjson.loads(generations.table_value(value)) == {"amount": "0.0085", "pair": [1, 2]}


# -- promote: what is written where, and in which order -----------------------------------
class Broker:
    """Stands in for the broker calls `promote` makes, in the order made."""

    def __init__(self, topics: set[str], groups: set[str]) -> None:
        self.topics, self.groups = topics, groups
        self.steps: list[tuple[str, Any]] = []

    def _publish(self, msgs: list[Outgoing]) -> int:
        self.steps.append(("publish", msgs))
        return len(msgs)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(replay, "_existing", lambda s: (self.topics, self.groups))
        monkeypatch.setattr(
            replay.admin, "apply_topics",
            lambda boot, prefix, specs: self.steps.append(("topics", [x.suffix for x in specs])),
        )  # fmt: skip
        monkeypatch.setattr(replay.kafka, "make_producer", lambda boot: object())
        monkeypatch.setattr(
            replay.kafka, "publish_all",
            lambda producer, msgs, timeout=30.0: self._publish(list(msgs)),
        )  # fmt: skip
        monkeypatch.setattr(
            replay.kafka, "set_group_offsets",
            lambda boot, group, offsets: self.steps.append(("offsets", (group, dict(offsets)))),
        )  # fmt: skip


def _tables() -> dict[str, Table]:
    slots, ticks, calls = Table(), Table(), Table()
    slots.set("c-1", {"business_id": "b-1"}, 1)
    slots.set("c-2", {"business_id": "b-2"}, 0)
    slots.delete("c-3", 1)  # deleted: not written (a new changelog has nothing to delete)
    ticks.set("us-east-1", {"last": 5}, 0)
    calls.set("c-1", {"state": "Rated"}, 4)
    return {"admission-slots": slots, "routing-ticks": ticks, "billing-calls": calls}


RANGES = [
    PartitionRange("x.admission", 0, 0, 10),
    PartitionRange("x.admission", 1, 3, 7),
    PartitionRange("x.routing", 0, 0, 4),
    PartitionRange("x.routing", 1, 0, 0),
    PartitionRange("x.backend-heartbeats", 0, 0, 99),
    PartitionRange("x.call-events", 5, 0, 12),
]


def test_promote_writes_the_next_generation_and_records_it_last(monkeypatch):
    broker = Broker({"tl-admission-slots-changelog", "tl-g1-routing-ticks-changelog"}, {"tl"})
    broker.install(monkeypatch)
    result = replay.promote(S, _tables(), RANGES, "x.call-events", active=1, now_ms=42)
    assert result == {
        "active": 2, "previous": 1, "groups": ["tl-g2", "tl-billing-g2"],
        "topics": {"tl-g2-admission-slots-changelog": 2, "tl-g2-routing-ticks-changelog": 1,
                   "tl-billing-g2-billing-calls-changelog": 1},
    }  # fmt: skip
    assert [kind for kind, _ in broker.steps] == [
        "topics", "publish", "publish", "publish", "offsets", "offsets", "publish",
    ]  # fmt: skip
    assert broker.steps[0][1] == generations.generation_topics("tl", 2, S.decision_partitions)
    written = {
        (m.topic, m.key, m.partition): m.value for _, msgs in broker.steps[1:4] for m in msgs
    }
    assert written == {
        ("tl-g2-admission-slots-changelog", b'"c-1"', 1): b'{"business_id":"b-1"}',
        ("tl-g2-admission-slots-changelog", b'"c-2"', 0): b'{"business_id":"b-2"}',
        ("tl-g2-routing-ticks-changelog", b'"us-east-1"', 0): b'{"last":5}',
        ("tl-billing-g2-billing-calls-changelog", b'"c-1"', 4): b'{"state":"Rated"}',
    }
    assert broker.steps[4][1] == (
        "tl-g2",
        {("x.admission", 0): 10, ("x.admission", 1): 7, ("x.routing", 0): 4,
         ("x.routing", 1): 0, ("x.backend-heartbeats", 0): 99},
    )  # fmt: skip
    assert broker.steps[5][1] == ("tl-billing-g2", {("x.call-events", 5): 12})
    (record,) = broker.steps[6][1]
    assert record == Outgoing("x.table-generations", *GenerationRecord("tl", 2, 1, 42).encode())


def test_a_half_written_generation_is_never_reused(monkeypatch):
    # generation 3 was being written when a swap crashed (its record never written)
    broker = Broker({"tl-billing-g3-billing-calls-changelog"}, {"tl-g2", "tl-g3"})
    broker.install(monkeypatch)
    assert replay.promote(S, _tables(), RANGES, "x.call-events", active=2)["active"] == 4


def test_a_swap_is_refused_while_workers_run_the_live_generation(monkeypatch):
    asked: list[list[str]] = []

    def members(boot: str, groups: Any) -> dict[str, int]:
        asked.append(list(groups))
        return {"tl-g2": 1, "tl-billing-g2": 0}

    monkeypatch.setattr(replay.kafka, "group_members", members)
    with pytest.raises(BadInput, match=r"running table generation 2: tl-g2 \(1 member\)"):
        replay._refuse_running(S, 2)
    assert asked == [["tl-g2", "tl-billing-g2"]]
    nobody = lambda boot, groups: dict.fromkeys(groups, 0)  # noqa: E731
    monkeypatch.setattr(replay.kafka, "group_members", nobody)
    replay._refuse_running(S, 2)  # nobody: allowed


def test_force_without_swap_is_refused_before_any_broker_call(capsys):
    from trunkline import cli

    assert cli.main(["--bootstrap", "127.0.0.1:1", "replay", "rebuild", "--force"]) == 2
    assert "--force goes with --swap" in capsys.readouterr().err


def test_the_report_says_which_generation_and_to_restart_the_workers(capsys):
    from trunkline.cli.replay import _show

    report = replay.RebuildReport(
        ranges={}, records=10, rows={}, undecodable=0, machine_tables={"admission-slots": 2},
        skipped=0, seconds=1.0, via="the sink",
        generation={"active": 3, "previous": 2, "groups": ["tl-g3", "tl-billing-g3"],
                    "topics": {"tl-g3-admission-slots-changelog": 2}},
    )  # fmt: skip
    _show(report)
    text = capsys.readouterr().out
    assert "promoted the machine tables as table generation 3" in text
    assert "tl-g3-admission-slots-changelog 2" in text
    assert "restart the workers to use generation 3" in text
    report.generation = {"active": 3}
    _show(report)
    assert "table generation: 3" in capsys.readouterr().out


def test_the_generation_is_read_once_a_new_control_topic_has_a_leader(monkeypatch):
    from confluent_kafka import KafkaError, KafkaException

    from trunkline.core import admin

    _, value = GenerationRecord("tl", 2, 1, 1).encode()
    answers: list[Any] = [KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))] * 2
    answers.append({b"tl": value})

    def read(boot: str, topic: str) -> Any:
        assert topic == "x.table-generations"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(admin.kafka, "topic_exists", lambda boot, topic, timeout: True)
    monkeypatch.setattr(admin.kafka, "read_compacted", read)
    assert admin.active_generation("b", "x.", "tl") == 2
    assert answers == []

    # anything else is the broker's answer, said as such
    def down(boot: str, topic: str) -> Any:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    monkeypatch.setattr(admin.kafka, "read_compacted", down)
    with pytest.raises(admin.BrokerUnavailable, match=r"reading x\.table-generations"):
        admin.active_generation("b", "x.", "tl")
