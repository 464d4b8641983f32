"""`trunkline replay`'s pure parts: times, targets, filters and the report's rendering."""

from __future__ import annotations

import pytest

from trunkline.cli.replay import _show
from trunkline.core.settings import Settings
from trunkline.stack.base import BadInput
from trunkline.stack.replay import (
    EventFilter,
    RebuildReport,
    TableCheck,
    check_filter,
    parse_time,
    target_topic,
)

NOW = 1_780_000_000_000
S = Settings.from_env({"TRUNKLINE_TOPIC_PREFIX": "x.", "TRUNKLINE_APP_ID": "tl"})


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("now", NOW),
        ("15m", NOW - 15 * 60_000),
        ("2h", NOW - 2 * 3_600_000),
        ("1780000000123", 1_780_000_000_123),
        ("2026-11-30T19:00:00Z", 1_796_065_200_000),
        ("2026-11-30T19:00:00", 1_796_065_200_000),  # UTC unless it says otherwise
        ("2026-11-30T20:00:00+01:00", 1_796_065_200_000),
    ],
)
def test_times(text, ms):
    assert parse_time(text, "--from", NOW) == ms


@pytest.mark.parametrize("text", ["yesterday", "15 minutes", "2026-13-01", "", "12"])
def test_a_bad_time_names_the_flag(text):
    with pytest.raises(BadInput, match=r"--to: .* is not a time"):
        parse_time(text, "--to", NOW)


def test_targets():
    assert target_topic(S, "copy-1", False) == "copy-1"
    assert target_topic(S, "decisions", True) == "x.decisions"  # ours: prefixed
    assert target_topic(S, "dead-letters", False) == "x.dead-letters"  # read by people only
    for live in (
        "admission",
        "x.admission",
        "call-events",
        "config.plans",
        "tl-admission-slots-changelog",
    ):
        with pytest.raises(BadInput, match="live input"):
            target_topic(S, live, False)
    with pytest.raises(BadInput, match="not a valid Kafka topic"):
        target_topic(S, "a b", False)


def test_filters():
    rec = {"envelope": {"call_id": "c1"}, "business_id": "b1"}
    assert EventFilter().matches("CallEnded", rec)
    assert EventFilter("c1", "b1", "CallEnded").matches("CallEnded", rec)
    assert not EventFilter(call_id="c2").matches("CallEnded", rec)
    assert not EventFilter(business_id="b2").matches("CallEnded", rec)
    assert not EventFilter(type="CallOffered").matches("CallEnded", rec)
    check_filter(EventFilter(type="CallRated"))
    with pytest.raises(BadInput, match="unknown record type 'CallEndd'"):
        check_filter(EventFilter(type="CallEndd"))


def test_the_report_names_each_table_and_the_differing_calls(capsys):
    report = RebuildReport(
        ranges={}, records=1000, rows={"call_events_log": 900}, undecodable=0,
        machine_tables={"admission-slots": 12}, skipped=0, seconds=2.0, via="the sink",
        checks=[
            TableCheck("call_events_log", "clickhouse", {"count": 900}, {"count": 900}, False,
                       ["c-7"]),
            TableCheck("admission-slots", "faust", {"count": 12}, {"count": 12}, True),
        ],
        swapped=[{"table": "call_events_log", "rows": 900, "kept_as": "call_events_log__old"}],
    )  # fmt: skip
    _show(report)
    text = capsys.readouterr().out
    assert "1,000 records in 2.0 s (500 ev/s) through the sink" in text
    assert "call_events_log" in text and "different" in text and "c-7" in text
    assert "admission-slots" in text and "equal" in text
    assert "old kept as call_events_log__old" in text
