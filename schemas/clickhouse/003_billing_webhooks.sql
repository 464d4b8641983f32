-- Billing: one row per call and rating run (the Kafka topic `billing`, CallRated).
-- ReplacingMergeTree(rating_run) keyed by call_id keeps the latest run of each call, so
-- a re-delivered CallRated (same call, same run) or a provider's later cost report (the
-- next run) never counts a call twice; the `billing_records` view reads FINAL.
-- Money is Decimal(18, 6): exact, never a float.
CREATE TABLE IF NOT EXISTS {db}.billing_records_log
(
    call_id                String,
    event_id               String,
    rating_run             UInt32,
    business_id            String,
    direction              LowCardinality(String),
    provider               LowCardinality(String),
    provider_account_id    String,
    provider_call_id       String,
    started_at             DateTime64(3, 'UTC'),
    ended_at               DateTime64(3, 'UTC'),
    connected              UInt8,
    talk_seconds           UInt32,
    billable_seconds       UInt32,
    rate_plan_id           LowCardinality(String),
    rate_plan_version      UInt32,
    increment              LowCardinality(String),
    currency               LowCardinality(String),
    per_minute             Decimal(18, 6),
    connect_fee            Decimal(18, 6),
    amount                 Decimal(18, 6),
    provider_cost          Nullable(Decimal(18, 6)),
    provider_cost_currency LowCardinality(String),
    reason                 String,
    rated_event_id         String,
    kafka_partition        UInt32,
    kafka_offset           UInt64,
    ingested_at            DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(rating_run)
PARTITION BY toYYYYMM(started_at)
ORDER BY call_id
SETTINGS min_bytes_for_wide_part = 1073741824, min_rows_for_wide_part = 100000000;

CREATE OR REPLACE VIEW {db}.billing_records AS
SELECT * FROM {db}.billing_records_log FINAL;

-- Lifecycle webhooks: one row per delivery attempt (the topic `webhook-deliveries`,
-- WebhookAttempt), keyed by (subscription, webhook-id, attempt): a re-delivered record
-- is the same row. `body` is the exact JSON sent, for `trunkline webhooks redeliver`.
CREATE TABLE IF NOT EXISTS {db}.webhook_deliveries_log
(
    subscription_id  String,
    webhook_id       String,
    attempt          UInt32,
    event_id         String,
    source_event_id  String,
    event_type       LowCardinality(String),
    call_id          String,
    business_id      String,
    url              String,
    status_code      UInt16,
    error            String,
    latency_ms       UInt32,
    outcome          LowCardinality(String),
    next_attempt_at  Nullable(DateTime64(3, 'UTC')),
    attempted_at     DateTime64(3, 'UTC'),
    body             String,
    kafka_partition  UInt32,
    kafka_offset     UInt64,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (subscription_id, webhook_id, attempt)
SETTINGS min_bytes_for_wide_part = 1073741824, min_rows_for_wide_part = 100000000;

CREATE OR REPLACE VIEW {db}.webhook_deliveries AS
SELECT * FROM {db}.webhook_deliveries_log FINAL;
