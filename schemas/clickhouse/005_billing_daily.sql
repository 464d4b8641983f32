-- Billing per day (of the call's start, UTC), business, direction, provider and currency:
-- a pure view over `billing_records` (003_billing_webhooks.sql: one row per call, its
-- latest rating run), so a re-rated call counts once, at its latest amount. Money stays
-- Decimal: sums of Decimal(18, 6) are exact. `provider_cost` adds up the providers' own
-- cost reports where there were any (`costed_calls` says how many calls had one), in
-- the provider's currency, which is the row's for every provider today (USD); compare
-- it with `amount` for the margin only where `costed_calls` = `calls`.
CREATE OR REPLACE VIEW {db}.billing_daily AS
SELECT
    toDate(started_at)                                                  AS day,
    business_id,
    direction,
    provider,
    currency,
    count()                                                             AS calls,
    countIf(connected = 1)                                              AS connected_calls,
    sum(talk_seconds)                                                   AS talk_seconds,
    sum(billable_seconds)                                               AS billable_seconds,
    sum(amount)                                                         AS amount,
    countIf(reported_cost IS NOT NULL)                                  AS costed_calls,
    sum(ifNull(reported_cost, toDecimal64(0, 6)))                       AS provider_cost
-- the column renamed: an alias named like a column shadows it in ClickHouse, and
-- countIf(provider_cost ...) would then read the sum
FROM (SELECT *, provider_cost AS reported_cost FROM {db}.billing_records)
GROUP BY day, business_id, direction, provider, currency;
