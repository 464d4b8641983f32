import json

import orjson
import pytest

from streams.projection import COLUMNS, ProjectionError, event_row, json_compact_each_row
from tests.samples import sample


def row(name, **changes):
    record = sample(name, at_ms=1_700_000_000_000)
    record.update(changes)
    values = event_row(name, record, 3, 42)
    assert len(values) == len(COLUMNS)
    return dict(zip(COLUMNS, values, strict=True)), record


def test_offered_row():
    r, record = row("CallOffered")
    assert r["event_type"] == "CallOffered"
    assert r["call_id"] == "q-1"
    assert r["occurred_at"] == "1700000000.000"
    assert r["status"] == "Queued" and r["status_rank"] == 10
    assert r["provider_call_id"] == record["provider_call_id"]
    assert r["log_message"] == (
        "Call offered by edge-1 from 203.0.113.10 (SIP UDP) to +15551234567"
    )
    assert (r["kafka_partition"], r["kafka_offset"]) == (3, 42)
    assert json.loads(r["payload"])["envelope"]["event_id"] == record["envelope"]["event_id"]


def test_routed_row_is_processed_proxy_with_seed_log_line():
    r, _ = row("CallRouted")
    assert r["status"] == "ProcessedProxy"
    assert r["backend_id"] == "backend-2"
    assert (r["log_type"], r["log_message"]) == ("Info", "Call routed to backend-2")
    r, _ = row("CallRouted", bypass=True)
    assert r["log_message"] == "Call routed to backend-2 (bypass rule)"


def test_rejected_row_carries_code_and_reason():
    r, _ = row("CallRejected")
    assert (r["status"], r["status_code"]) == ("Rejected", 403)
    assert r["log_type"] == "Warning"
    assert r["log_message"] == (
        "Call rejected by admission: 403 source IP 198.51.100.7 not in allowedSourceIps"
    )


@pytest.mark.parametrize(
    ("reason", "status", "level"),
    [
        ("completed", "Completed", "Info"),
        ("cancelled", "Cancelled", "Info"),
        ("backend_lost", "Failed", "Error"),
        ("edge_timeout", "Failed", "Error"),
    ],
)
def test_ended_status_follows_reason(reason, status, level):
    r, _ = row("CallEnded", reason=reason)
    assert r["status"] == status and r["status_rank"] == 70
    assert r["log_type"] == level
    assert (r["talk_ms"], r["packets_lost"], r["jitter_ms"]) == (12_300, 5, 1.5)


def test_ended_without_media():
    r, _ = row("CallEnded", media=None, talk_ms=None, hangup_side=None)
    assert (r["packets_sent"], r["talk_ms"]) == (0, 0)
    assert r["log_message"] == "Call ended: completed"


def test_config_records_are_not_lifecycle_events():
    with pytest.raises(ProjectionError, match="Plan is not a call lifecycle event"):
        event_row("Plan", sample("Plan"))


def test_event_without_call_id_is_refused():
    record = sample("CallAnswered")
    record["envelope"]["call_id"] = ""
    with pytest.raises(ProjectionError, match="has no call_id"):
        event_row("CallAnswered", record)


def test_direction_is_written_on_the_events_that_start_a_call():
    r, _ = row("CallOffered")
    assert r["direction"] == "INBOUND"
    r, _ = row("CallOffered", direction="OUTBOUND")
    assert r["direction"] == "OUTBOUND"
    for name in ("CallAdmitted", "CallRouted", "CallAnswered", "CallEnded"):
        assert row(name)[0]["direction"] == ""  # the views take the call's from its start


def test_published_at_is_the_record_timestamp_or_else_the_event_time():
    record = sample("CallRouted", at_ms=1_700_000_000_000)
    values = dict(
        zip(COLUMNS, event_row("CallRouted", record, 0, 0, 1_700_000_000_250), strict=True)
    )
    assert (values["occurred_at"], values["published_at"]) == ("1700000000.000", "1700000000.250")
    for missing in (None, 0, -1):  # no timestamp on the record: the event's own time
        values = dict(zip(COLUMNS, event_row("CallRouted", record, 0, 0, missing), strict=True))
        assert values["published_at"] == "1700000000.000"


def test_admissions_carry_the_plan_they_were_judged_against():
    r, _ = row("CallAdmitted")
    assert (r["plan_id"], r["plan_limit"]) == ("starter", 2)
    r, _ = row("CallOffered")
    assert (r["plan_id"], r["plan_limit"]) == ("", 0)


def test_an_outbound_request_starts_an_outbound_call():
    record = sample("OutboundCallRequested", at_ms=1_700_000_000_000)
    record["envelope"]["call_id"] = "out-1"
    values = dict(zip(COLUMNS, event_row("OutboundCallRequested", record), strict=True))
    assert (values["direction"], values["status"]) == ("OUTBOUND", "Queued")


def test_json_compact_each_row_is_one_dumps_per_row_joined_by_newlines():
    rows = [
        event_row("CallOffered", sample("CallOffered", "c1", 1_700_000_000_000), 0, 1),
        ("a\nb", ",\n,", "],[", 1, 2.5, None, ["x", "y"], {"k": "v\n"}),
        (),
        ("last",),
    ]
    block = json_compact_each_row(rows)
    assert block == b"\n".join(orjson.dumps(r) for r in rows)
    assert [json.loads(line) for line in block.split(b"\n")][1][0] == "a\nb"
    assert json_compact_each_row(rows[:1]) == orjson.dumps(rows[0])
    assert json_compact_each_row([]) == b""
