"""The real ClickHouse engine (chDB, embedded): DDL, deduplication, the calls projection."""

import json

import pytest

from streams import queries
from streams.clickhouse import ddl_statements
from streams.projection import event_row
from tests.samples import sample

T0 = 1_700_000_000_000


def lifecycle(call_id, t0=T0):
    names = [
        "CallOffered",
        "CallAdmitted",
        "CallRouted",
        "CallAccepted",
        "CallAnswered",
        "CallEnded",
    ]
    return [(n, sample(n, call_id=call_id, at_ms=t0 + i * 100)) for i, n in enumerate(names)]


def insert(store, events):
    store.insert_events([event_row(n, r) for n, r in events])


def test_ddl_is_idempotent(ch_store):
    ch_store.ensure_schema()
    tables = {
        r["name"]
        for r in ch_store.query(
            f"SELECT name FROM system.tables WHERE database = '{ch_store.database}'"
        )
    }
    assert tables == {
        "call_events_log",
        "call_events",
        "calls",
        "billing_records_log",
        "billing_records",
        "webhook_deliveries_log",
        "webhook_deliveries",
        # analytics (004_analytics.sql, 005_billing_daily.sql)
        "call_facts",
        "calls_hourly",
        "concurrency_minutely",
        "call_quality",
        "call_quality_hourly",
        "billing_daily",
    }
    assert len(ddl_statements("x")) == 16


def _wide_part_settings(store):
    (row,) = store.query(f"SHOW CREATE TABLE {store.database}.call_events_log")
    text = next(iter(row.values()))
    return [
        s for s in ("min_bytes_for_wide_part = 1073741824", "min_rows_for_wide_part") if s in text
    ]


def test_parts_stay_compact_in_new_and_older_tables(ch_store):
    """Merged parts stay compact (one data file, not two or three per column) up to
    1 GiB; a table created before that setting existed gets it at the next start."""
    assert len(_wide_part_settings(ch_store)) == 2
    db = ch_store.database
    ch_store.client.command(f"DROP TABLE {db}.calls")
    ch_store.client.command(f"DROP TABLE {db}.call_events")
    ch_store.client.command(f"DROP TABLE {db}.call_events_log")
    create = ddl_statements(db)[0]
    ch_store.client.command(create[: create.index("SETTINGS")])  # the table as it was
    assert _wide_part_settings(ch_store) == []
    ch_store.ensure_schema()
    assert len(_wide_part_settings(ch_store)) == 2
    insert(ch_store, lifecycle("q-compact"))  # the altered table still takes rows
    assert queries.event_counts(ch_store)["CallEnded"] == 1


def test_event_delivered_twice_counts_once(ch_store):
    events = lifecycle("q-dup")
    insert(ch_store, events)
    insert(ch_store, events[:3])  # re-delivery of the first three, in a separate insert
    assert queries.event_counts(ch_store) == {
        "CallOffered": 1,
        "CallAdmitted": 1,
        "CallRouted": 1,
        "CallAccepted": 1,
        "CallAnswered": 1,
        "CallEnded": 1,
    }
    raw = ch_store.query(f"SELECT count() AS n FROM {ch_store.database}.call_events_log")
    assert raw[0]["n"] in (6, 9)  # the storage may still hold the copies until a merge
    entry = queries.show_call(ch_store, "q-dup")
    assert len(entry["logs"]) == 6


def test_queue_entry_matches_the_seed_shape(ch_store):
    insert(ch_store, lifecycle("q-123")[:3])
    entry = queries.show_call(ch_store, "q-123")
    assert entry == {
        "id": "q-123",
        "status": "ProcessedProxy",
        "provider": "SIP",
        "providerCallId": "a84b4c76e66710@pc33.atlanta.example.com",
        "businessId": "123",
        "routeNumberId": "abc",
        "routeId": "route-abc123",
        "regionId": "us-east-1",
        "processingProxyServerId": "edge-1",
        "processingBackendServerId": "backend-2",
        "enqueuedAt": "2023-11-14T22:13:20.000Z",
        "logs": [
            {
                "at": "2023-11-14T22:13:20.000Z",
                "type": "Info",
                "message": "Call offered by edge-1 from 203.0.113.10 (SIP UDP) to +15551234567",
            },
            {
                "at": "2023-11-14T22:13:20.100Z",
                "type": "Info",
                "message": "Call admitted for business 123 (1/2 calls on plan starter)",
            },
            {
                "at": "2023-11-14T22:13:20.200Z",
                "type": "Info",
                "message": "Call routed to backend-2",
            },
        ],
    }


def test_completed_call_has_talk_time_and_media_stats(ch_store):
    insert(ch_store, lifecycle("q-done"))
    entry = queries.show_call(ch_store, "q-done")
    assert entry["status"] == "Completed"
    assert entry["talkMs"] == 12_300 and entry["hangupSide"] == "caller"
    assert entry["media"] == {
        "packetsSent": 615,
        "packetsReceived": 610,
        "packetsLost": 5,
        "jitterMs": 1.5,
    }


def test_status_follows_lifecycle_not_clock_skew(ch_store):
    events = lifecycle("q-skew")[:3]
    events[2][1]["envelope"]["occurred_at"] = T0 - 5_000  # routing's clock is behind
    insert(ch_store, events)
    assert queries.show_call(ch_store, "q-skew")["status"] == "ProcessedProxy"


def test_list_filters_by_business_and_time(ch_store):
    import time

    now = int(time.time() * 1000)
    insert(ch_store, lifecycle("q-new", t0=now)[:1])
    insert(ch_store, lifecycle("q-old", t0=now - 3 * 3600 * 1000)[:1])
    other = sample("CallOffered", call_id="q-other", at_ms=now)
    other["business_id"] = "456"
    insert(ch_store, [("CallOffered", other)])
    rejected = sample("CallRejected", call_id="q-new", at_ms=now + 10)
    insert(ch_store, [("CallRejected", rejected)])

    assert {r["id"] for r in queries.list_calls(ch_store)} == {"q-new", "q-old", "q-other"}
    assert {r["id"] for r in queries.list_calls(ch_store, business="123")} == {"q-new", "q-old"}
    recent = queries.list_calls(ch_store, business="123", since_s=3600)
    assert [(r["id"], r["status"], r["status_code"]) for r in recent] == [
        ("q-new", "Rejected", 403)
    ]
    assert recent[0]["reason"] == "source IP 198.51.100.7 not in allowedSourceIps"


def test_unknown_call(ch_store):
    assert queries.show_call(ch_store, "nope") is None


def test_payload_keeps_the_whole_event(ch_store):
    events = lifecycle("q-payload")[:1]
    insert(ch_store, events)
    rows = ch_store.query(
        f"SELECT payload FROM {ch_store.database}.call_events WHERE call_id = 'q-payload'"
    )
    assert json.loads(rows[0]["payload"]) == events[0][1]


# -- billing and webhook deliveries -------------------------------------------------------
def rated(call_id, run=1, amount="0.017000", at=T0, business="123", cost=None):
    from decimal import Decimal

    r = sample("CallRated", call_id=call_id, at_ms=at)
    r.update(
        rating_run=run, amount=Decimal(amount), business_id=business, started_at=at,
        provider_cost=None if cost is None else Decimal(cost),
    )  # fmt: skip
    return r


def test_billing_records_count_each_call_once_with_exact_decimals(ch_store):
    from streams.projection import billing_row

    first = rated("q1")
    rows = [billing_row(first), billing_row(first), billing_row(rated("q2", amount="0.000992"))]
    ch_store.insert_rows("billing_records_log", rows)
    ch_store.insert_rows("billing_records_log", [billing_row(first)])  # re-delivered later
    # the provider's cost arrives: run 2 replaces run 1 of q1
    ch_store.insert_rows("billing_records_log", [billing_row(rated("q1", run=2, cost="0.0042"))])
    listed = queries.list_billing(ch_store, "123")
    assert sorted((r["call_id"], r["rating_run"], r["amount"]) for r in listed) == [
        ("q1", 2, "0.017000"), ("q2", 1, "0.000992"),
    ]  # fmt: skip
    (summary,) = queries.billing_summary(ch_store, "123", queries.parse_month("2023-11"))
    assert summary["calls"] == 2 and summary["amount"] == "0.017992"
    assert summary["provider_cost"] == "0.004200"
    assert queries.billing_summary(ch_store, "123", queries.parse_month("2023-12")) == []


def test_deliveries_one_row_per_delivery_with_its_attempts(ch_store):
    from streams.projection import delivery_row

    def attempt(n, outcome, status, webhook_id="msg_1"):
        r = sample("WebhookAttempt", call_id="q1")
        r["envelope"].update(event_id=f"{webhook_id}-{n}", call_id="q1")
        retry_at = T0 if outcome == "retrying" else None
        r.update(attempt=n, outcome=outcome, status_code=status, webhook_id=webhook_id,
                 attempted_at=T0 + n * 1000, next_attempt_at=retry_at)  # fmt: skip
        return delivery_row(r)

    rows = [attempt(1, "retrying", 500), attempt(2, "retrying", None), attempt(3, "delivered", 200),
            attempt(1, "dead", 503, "msg_2"), attempt(3, "delivered", 200)]  # fmt: skip
    ch_store.insert_rows("webhook_deliveries_log", rows)
    listed = {r["webhook_id"]: r for r in queries.list_deliveries(ch_store, "crm")}
    assert (listed["msg_1"]["attempts"], listed["msg_1"]["outcome"]) == (3, "delivered")
    assert listed["msg_2"]["outcome"] == "dead"
    assert [r["webhook_id"] for r in queries.list_deliveries(ch_store, "crm", failed=True)] == [
        "msg_2"
    ]
    attempts = queries.delivery_attempts(ch_store, "crm", "msg_1")
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 0), (3, 200)]
    again = queries.redeliverable(ch_store, "crm", call_id="q1")
    assert {r["webhook_id"] for r in again} == {"msg_1", "msg_2"}
    assert again[0]["body"] == '{"type":"call.ended"}'


def _random_rows(seed: int = 7) -> dict[str, list[tuple]]:
    """Rows of every table from random records of every type the sink projects (fastavro's
    generator: unicode text, empty and null values, every union branch), with the fields
    a projection requires kept in range (a call id, a time, counters that are unsigned)."""
    import random
    from decimal import Decimal

    from fastavro.utils import generate_many

    from schemas.registry import LIFECYCLE_EVENTS, default_schemas
    from streams.projection import ProjectionError, table_row

    rnd = random.Random(seed)
    schemas = default_schemas()
    out: dict[str, list[tuple]] = {}
    for name in (*LIFECYCLE_EVENTS, "CallRated", "WebhookAttempt"):
        for i, r in enumerate(generate_many(schemas[name].parsed, 60)):
            r["envelope"].update(call_id=f"c{i}-{r['envelope']['call_id']}",
                                 occurred_at=T0 + rnd.randrange(10**9))  # fmt: skip
            for key, value in list(r.items()):
                if isinstance(value, int) and not isinstance(value, bool):
                    r[key] = rnd.randrange(60_000)
                if key.endswith("_at") and value is not None:
                    r[key] = T0 + rnd.randrange(10**9)
            for key in ("per_minute", "connect_fee", "amount", "provider_cost"):
                if key in r and (r[key] is not None or key != "provider_cost"):
                    r[key] = Decimal(rnd.randrange(-(10**9), 10**9)).scaleb(-6)
            if isinstance(r.get("media"), dict):
                counters = ("packets_sent", "packets_received", "packets_lost")
                r["media"].update({k: rnd.randrange(10**6) for k in counters})
            try:
                table, row = table_row(name, r, rnd.randrange(6), i, T0 + i)
            except (ProjectionError, KeyError, TypeError, ValueError):
                continue
            out.setdefault(table, []).append(row)
    return out


@pytest.mark.parametrize("way", ["batches", "stream", "stream-file"])
def test_arrow_blocks_store_what_json_blocks_store(ch_store, monkeypatch, way):
    """The replay sends its rows as Arrow (streams/arrow_blocks.py: record batches of a
    block, into a shadow): every column of every table reads back as the sink's
    JSONCompactEachRow insert stores it, whichever way the batches go: read in place by
    chDB (`Python()`: the batches themselves, or an IPC stream the sink received) or as
    an ArrowStream insert (a ClickHouse server's way). The random rows cover DateTime64
    millis, Float32, NULL and empty next_attempt_at, decimal text of billing money,
    unicode and empty strings."""
    from streams import arrow_blocks, shadow
    from streams.clickhouse import ClickHouseStore
    from streams.projection import TABLE_COLUMNS

    assert ch_store.reads_arrow_in_place
    if way == "stream-file":
        monkeypatch.setattr(ClickHouseStore, "reads_arrow_in_place", False)
    rows = _random_rows()
    assert set(rows) == set(TABLE_COLUMNS)
    shadow.create(ch_store, tuple(TABLE_COLUMNS))
    for table, table_rows in rows.items():
        assert len(table_rows) > 50
        ch_store.insert_rows(table, table_rows)  # the sink's insert, into the live table
        columns = TABLE_COLUMNS[table]
        batches = [
            arrow_blocks.record_batch(columns, table_rows[i : i + 17])
            for i in range(0, len(table_rows), 17)
        ]
        if way == "batches":
            shadow.insert_batches(ch_store, table, batches)
        else:
            shadow.insert(ch_store, table, bytes(arrow_blocks.ipc_stream(batches)))
        digest = f"count() AS n, groupBitXor(cityHash64(tuple({', '.join(columns)}))) AS x"
        digests = [
            ch_store.query(f"SELECT {digest} FROM {ch_store.database}.{name}")[0]
            for name in (table, f"{table}__shadow")
        ]
        assert digests[0] == digests[1] and digests[0]["n"] == len(table_rows), table
    if "webhook_deliveries_log" in rows:
        kinds = ch_store.query(
            "SELECT countIf(next_attempt_at IS NULL) AS nulls, countIf(isNotNull("
            f"next_attempt_at)) AS set FROM {ch_store.database}.webhook_deliveries_log__shadow"
        )[0]
        assert kinds["nulls"] > 0 and kinds["set"] > 0


def test_a_shadow_block_keeps_copies_that_final_and_the_digest_fold(ch_store):
    """A shadow insert does not fold a block's duplicate keys (optimize_on_insert=0):
    the copies are separate rows, as the sink's copies in separate inserts are, and FINAL
    (the views, the digest, the swap) reads one. Which copy differs only in its position."""
    from streams import arrow_blocks, shadow
    from streams.projection import COLUMNS, event_row

    db = ch_store.database
    shadow.create(ch_store, ("call_events_log",))
    rows = [
        event_row("CallOffered", sample("CallOffered", f"d{i}", T0 + i), 0, i) for i in range(3)
    ]
    at = COLUMNS.index("kafka_partition")
    assert COLUMNS[at + 1] == "kafka_offset"
    copies = [(*r[:at], 1, 100 + i, *r[at + 2 :]) for i, r in enumerate(rows)]  # redelivered
    ch_store.insert_rows("call_events_log", rows)
    block = arrow_blocks.arrow_stream(COLUMNS, rows + copies)
    shadow.insert(ch_store, "call_events_log", memoryview(block))
    stored = f"SELECT count() AS n FROM {db}.call_events_log__shadow"
    assert ch_store.query(stored)[0]["n"] == 6
    assert ch_store.query(f"{stored} FINAL")[0]["n"] == 3
    result = shadow.compare(ch_store, "call_events_log", {0: (0, 3), 1: (100, 103)})
    assert result["equal"], result


def test_a_block_that_is_not_arrow_or_not_the_tables_columns_is_refused(ch_store):
    from streams import arrow_blocks, shadow
    from streams.projection import COLUMNS

    shadow.create(ch_store, ("call_events_log",))
    with pytest.raises(shadow.ShadowError, match="not an Arrow IPC stream"):
        shadow.insert(ch_store, "call_events_log", b"not arrow")
    row = event_row("CallOffered", sample("CallOffered", "x1", T0))
    backwards = arrow_blocks.record_batch(COLUMNS[::-1], [row[::-1]])
    with pytest.raises(shadow.ShadowError, match="columns"):
        shadow.insert_batches(ch_store, "call_events_log", [backwards])
    count = f"SELECT count() AS n FROM {ch_store.database}.call_events_log__shadow"
    assert ch_store.query(count)[0]["n"] == 0


def test_unknown_block_format_is_refused(ch_store):
    from streams import shadow

    with pytest.raises(shadow.ShadowError, match="unknown row block format 'CSV'"):
        shadow.insert(ch_store, "call_events_log", b"", "CSV")
