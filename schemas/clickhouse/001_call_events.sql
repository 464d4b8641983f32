-- Every call lifecycle event, one row per event id (the Kafka topic `call-events`).
-- At-least-once delivery can insert an event twice; ReplacingMergeTree keyed by
-- (call_id, event_id) folds the copies, and the `call_events` view reads with FINAL so a
-- query never counts a re-delivered event twice, even before background merges run.
CREATE TABLE IF NOT EXISTS {db}.call_events_log
(
    event_id         String,
    event_type       LowCardinality(String),
    call_id          String,
    occurred_at      DateTime64(3, 'UTC'),
    producer_id      LowCardinality(String),
    provider         LowCardinality(String),
    provider_call_id String,
    business_id      String,
    phone_id         String,
    route_id         String,
    region_id        LowCardinality(String),
    edge_id          LowCardinality(String),
    backend_id       LowCardinality(String),
    status           LowCardinality(String),
    status_rank      UInt8,
    status_code      UInt16,
    reason           String,
    hangup_side      LowCardinality(String),
    setup_ms         Int64,
    talk_ms          Int64,
    codec            LowCardinality(String),
    packets_sent     UInt64,
    packets_received UInt64,
    packets_lost     UInt64,
    jitter_ms        Float32,
    log_type         LowCardinality(String),
    log_message      String,
    payload          String,
    kafka_partition  UInt32,
    kafka_offset     UInt64,
    provider_account_id String DEFAULT '',
    hangup_cause     String DEFAULT '',
    provider_duration_ms Int64 DEFAULT 0,
    mos              Float32 DEFAULT 0,
    direction        LowCardinality(String) DEFAULT '',
    published_at     DateTime64(3, 'UTC') DEFAULT occurred_at,
    plan_id          LowCardinality(String) DEFAULT '',
    plan_limit       UInt32 DEFAULT 0,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (call_id, event_id)
SETTINGS min_bytes_for_wide_part = 1073741824, min_rows_for_wide_part = 100000000;

-- Parts stay compact (all columns in one data file) up to 1 GiB: a merge into a wide part
-- writes two or three files per column, and on a disk the broker shares those bursts
-- delayed its writes. Tables created before this setting get it here.
ALTER TABLE {db}.call_events_log
    MODIFY SETTING min_bytes_for_wide_part = 1073741824, min_rows_for_wide_part = 100000000;

-- Provider calls (the webhook edge): the account, the provider's hang-up cause and
-- duration, and its MOS. Tables created before these columns get them here.
ALTER TABLE {db}.call_events_log
    ADD COLUMN IF NOT EXISTS provider_account_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS hangup_cause String DEFAULT '',
    ADD COLUMN IF NOT EXISTS provider_duration_ms Int64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS mos Float32 DEFAULT 0;

-- Analytics (004_analytics.sql): the direction a call starts with (CallOffered's, OUTBOUND
-- for OutboundCallRequested), when the record was published (its Kafka timestamp: a
-- decision carries the offer's time as `occurred_at`, so this is when it was made), and
-- the plan and its limit a CallAdmitted was judged against. AFTER keeps the columns in
-- the order a new table has them, so `SELECT *` (and a digest over it) reads the same on
-- a table created before them.
ALTER TABLE {db}.call_events_log
    ADD COLUMN IF NOT EXISTS direction LowCardinality(String) DEFAULT '' AFTER mos,
    ADD COLUMN IF NOT EXISTS published_at DateTime64(3, 'UTC') DEFAULT occurred_at AFTER direction,
    ADD COLUMN IF NOT EXISTS plan_id LowCardinality(String) DEFAULT '' AFTER published_at,
    ADD COLUMN IF NOT EXISTS plan_limit UInt32 DEFAULT 0 AFTER plan_id;
