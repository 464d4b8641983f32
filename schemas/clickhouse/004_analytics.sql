-- Analytics: what an analytics team opens first. Pure views over `call_events` (the
-- deduplicated event log), so they hold no state of their own: a rebuild of
-- `call_events_log` from the topic rebuilds every figure here. docs/analytics.md has
-- an example query for each; docs/design.md says why each figure is computed this way.
--
-- They compute over the whole history at query time: a filter on a view's time column
-- is applied after its aggregation, which is fine for days to months of calls on one
-- machine. Past that, a materialized rollup fed from `call_events_log` would be the next
-- step (it would then need rebuilding along with the log).

-- One row per call: the figures the other views aggregate, one place that says what
-- "answered", "PDD" or "the decision" means.
--   attempted_at   the call's first event (the offer, or the API's request)
--   provider       the offer's provider (SIP, TWILIO...); for an outbound call the
--                  provider of its last attempt, the one that carried it
--   answered       a CallAnswered was seen (media flowed)
--   pdd_ms         post-dial delay: the offer to the first ringing (a provider's
--                  ringing progress report) or answer (the backend's 200 OK / stream start),
--                  NULL when neither came; across producers' wall clocks
--   effective      counts for NER (ITU-T E.425): answered, or ended by the caller or
--                  callee's side (cancelled, busy, no answer, a 4xx refusal such as a
--                  plan's 486 or an ACL's 403); 5xx refusals and system ends
--                  (timeouts, lost backends, failures) are the network's
--   decision_ms    the offer to the first decision (CallRouted or CallRejected) as
--                  published: the decision record's Kafka timestamp (`published_at`),
--                  since decisions carry the offer's time as their `occurred_at`
--   admitted_at .. released_at   the plan slot's life (admission to the first end or
--                  rejection); routed_at .. ended_at the backend slot's
CREATE OR REPLACE VIEW {db}.call_facts AS
SELECT
    call_id,
    attempted_at,
    business_id,
    provider,
    region_id,
    direction,
    final_status                                                     AS status,
    final_code                                                       AS status_code,
    end_reason,
    answered,
    first_response_at,
    toUnixTimestamp64Milli(first_response_at) - toUnixTimestamp64Milli(attempted_at) AS pdd_ms,
    answered
        OR final_status = 'Cancelled'
        OR end_reason IN ('cancelled', 'busy', 'no_answer', 'rejected')
        OR (final_status = 'Rejected' AND final_code BETWEEN 400 AND 499) AS effective,
    talk_s,
    decided_at,
    toUnixTimestamp64Milli(decided_at) - toUnixTimestamp64Milli(attempted_at) AS decision_ms,
    decision,
    admitted_at,
    released_at,
    plan_id,
    plan_limit,
    backend_id,
    routed_at,
    ended_at,
    codec,
    packets_sent,
    packets_received,
    packets_lost,
    jitter_ms,
    mos_reported
FROM (
    -- aggregate aliases must not be the names of the columns they read (ClickHouse
    -- would substitute one aggregate into another), hence the inner names
    SELECT
        call_id,
        min(occurred_at)                                                    AS attempted_at,
        anyIf(business_id, business_id != '')                               AS business_id,
        multiIf(
            countIf(event_type = 'OutboundAttempt') > 0,
            argMaxIf(provider, (occurred_at, event_id), event_type = 'OutboundAttempt'),
            countIf(event_type IN ('CallOffered', 'OutboundCallRequested') AND provider != '') > 0,
            anyIf(provider, event_type IN ('CallOffered', 'OutboundCallRequested') AND provider != ''),
            anyIf(provider, provider != ''))                                AS provider,
        anyIf(region_id, region_id != '')                                   AS region_id,
        ifNull(nullIf(anyIf(direction, direction != ''), ''), 'INBOUND')    AS direction,
        argMax(status, (status_rank, occurred_at))                          AS final_status,
        argMaxIf(status_code, (status_rank, occurred_at), status_code != 0) AS final_code,
        argMaxIf(reason, occurred_at, event_type = 'CallEnded')             AS end_reason,
        countIf(event_type = 'CallAnswered') > 0                            AS answered,
        minIfOrNull(occurred_at,
            event_type IN ('CallAccepted', 'CallAnswered')
            OR (event_type = 'CallProgress'
                AND positionCaseInsensitive(JSONExtractString(payload, 'provider_status'), 'ring') > 0))
                                                                            AS first_response_at,
        if(maxIf(talk_ms, event_type = 'CallEnded') > 0,
            maxIf(talk_ms, event_type = 'CallEnded'),
            maxIf(provider_duration_ms, event_type = 'CallEnded')) / 1000  AS talk_s,
        minIfOrNull(published_at, event_type IN ('CallRouted', 'CallRejected')) AS decided_at,
        argMinIf(
            if(event_type = 'CallRouted', 'routed', concat('rejected ', toString(status_code))),
            (published_at, event_id),
            event_type IN ('CallRouted', 'CallRejected'))                   AS decision,
        minIfOrNull(occurred_at, event_type = 'CallAdmitted')               AS admitted_at,
        minIfOrNull(occurred_at, event_type IN ('CallEnded', 'CallRejected')) AS released_at,
        anyIf(plan_id, event_type = 'CallAdmitted')                         AS plan_id,
        maxIf(plan_limit, event_type = 'CallAdmitted')                      AS plan_limit,
        argMaxIf(backend_id, (status_rank, occurred_at), backend_id != '')  AS backend_id,
        minIfOrNull(occurred_at, event_type = 'CallRouted')                 AS routed_at,
        minIfOrNull(occurred_at, event_type = 'CallEnded')                  AS ended_at,
        anyIf(codec, codec != '')                                           AS codec,
        maxIf(packets_sent, event_type = 'CallEnded')                       AS packets_sent,
        maxIf(packets_received, event_type = 'CallEnded')                   AS packets_received,
        maxIf(packets_lost, event_type = 'CallEnded')                       AS packets_lost,
        maxIf(jitter_ms, event_type = 'CallEnded')                          AS jitter_ms,
        nullIf(maxIf(mos, event_type = 'CallEnded'), 0)                     AS mos_reported
    FROM {db}.call_events
    GROUP BY call_id
);

-- Per hour (of the attempt) and business, provider, region and direction: attempts,
-- answered, ASR = answered / attempts, NER = effective / attempts, ACD = answered
-- seconds / answered calls, PDD average and p95 (exact), rejections by SIP code. The
-- ratios hold within a row; across rows re-aggregate from the counts (sum(answered) /
-- sum(attempts), answered_seconds / answered, pdd_sum_ms / pdd_calls).
CREATE OR REPLACE VIEW {db}.calls_hourly AS
SELECT
    hour,
    business_id,
    provider,
    region_id,
    direction,
    n_attempts                                                   AS attempts,
    n_answered                                                   AS answered,
    n_effective                                                  AS effective,
    n_answered / n_attempts                                      AS asr,
    n_effective / n_attempts                                     AS ner,
    answered_seconds,
    if(n_answered > 0, answered_seconds / n_answered, NULL)      AS acd_s,
    pdd_calls,
    pdd_sum_ms,
    pdd_avg_ms,
    pdd_p95_ms,
    n_rejected                                                   AS rejected,
    rejections
FROM (
    SELECT
        toStartOfHour(attempted_at)                              AS hour,
        business_id,
        provider,
        region_id,
        direction,
        count()                                                  AS n_attempts,
        countIf(answered)                                        AS n_answered,
        countIf(effective)                                       AS n_effective,
        sumIf(talk_s, answered)                                  AS answered_seconds,
        count(pdd_ms)                                            AS pdd_calls,
        sum(pdd_ms)                                              AS pdd_sum_ms,
        avg(pdd_ms)                                              AS pdd_avg_ms,
        quantileExact(0.95)(pdd_ms)                              AS pdd_p95_ms,
        countIf(status = 'Rejected')                             AS n_rejected,
        sumMapIf(map(status_code, toUInt64(1)), status = 'Rejected') AS rejections
    FROM {db}.call_facts
    GROUP BY hour, business_id, provider, region_id, direction
);

-- Peak concurrent calls per minute, per business (plan slots: admission to release)
-- and per backend (backend slots: routing to the call's end), the product document's
-- "CallConcurrency". Each call's span is cut into the minutes it covers; a minute's
-- peak is the highest count of that minute's sweep (starts +1, ends -1, an end before a
-- start at the same instant). A business's `plan_limit` is the limit its latest call
-- in the minute was admitted under (NULL for backends); `utilisation` = peak / limit.
-- A call with no end yet counts as live until now, at most a day; minutes without
-- calls have no row.
CREATE OR REPLACE VIEW {db}.concurrency_minutely AS
WITH spans AS (
    SELECT 'business' AS scope, business_id AS id, admitted_at AS s,
           least(ifNull(released_at, now64(3)), admitted_at + INTERVAL 1 DAY) AS e,
           plan_limit AS lim
    FROM {db}.call_facts
    WHERE admitted_at IS NOT NULL AND business_id != ''
    UNION ALL
    SELECT 'backend' AS scope, backend_id AS id, routed_at AS s,
           least(ifNull(ended_at, now64(3)), routed_at + INTERVAL 1 DAY) AS e,
           toUInt32(0) AS lim
    FROM {db}.call_facts
    WHERE routed_at IS NOT NULL AND backend_id != ''
),
cut AS (
    SELECT scope, id, lim, s_ms, e_ms, m,
           greatest(s_ms, m * 60000) AS cs, least(e_ms, (m + 1) * 60000) AS ce
    FROM (
        SELECT scope, id, lim,
               toUnixTimestamp64Milli(assumeNotNull(s)) AS s_ms,
               toUnixTimestamp64Milli(assumeNotNull(e)) AS e_ms
        FROM spans
    )
    ARRAY JOIN range(intDiv(s_ms, 60000), intDiv(e_ms - 1, 60000) + 1) AS m
    WHERE e_ms > s_ms
)
SELECT
    toDateTime(m * 60, 'UTC')                                                 AS minute,
    scope,
    id,
    toUInt32(arrayMax(arrayCumSum(arrayMap(x -> x.2, arraySort(arrayConcat(
        groupArray((cs, toInt8(1))), groupArray((ce, toInt8(-1))))))))) AS peak_calls,
    if(scope = 'business', argMax(lim, s_ms), NULL)                          AS plan_limit,
    if(plan_limit > 0, peak_calls / plan_limit, NULL)                        AS utilisation
FROM cut
GROUP BY m, scope, id;

-- Per call with media: loss (the caller's stream as we received it), interarrival
-- jitter (RFC 3550) and an estimated MOS from a simplified ITU-T G.107 E-model on the
-- narrowband R scale; the provider's own MOS (Telnyx) beside it when it gave one.
--   delay_ms  = 20 (packetization) + codec look-ahead (Opus 6.5, others 0) + 2 x jitter
--               (a jitter buffer twice the jitter); no network delay is measured
--   Id        = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)          (Cole & Rosenbluth)
--   Ie,eff    = Ie + (95 - Ie) Ppl / (Ppl + Bpl)                   (G.107, random loss)
--   R         = 93.2 - Id - Ie,eff                                 (G.107 defaults)
--   MOS       = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6, 1 below R 0, 4.5 above 100
-- Ie = 0 and Bpl = 25.1 for every codec (G.113 Appendix I: G.711 with its Appendix I
-- packet loss concealment); G.722 and Opus are rated as narrowband G.711 with PLC
-- (docs/analytics.md lists the limits).
CREATE OR REPLACE VIEW {db}.call_quality AS
SELECT
    call_id,
    ended_at,
    business_id,
    provider,
    backend_id,
    codec,
    packets_received,
    packets_lost,
    100 * packets_lost / (packets_received + packets_lost)                  AS loss_pct,
    toFloat64(jitter_ms)                                                    AS jitter_ms,
    upper(splitByChar('/', codec)[1])                                       AS codec_name,
    transform(codec_name, ['OPUS'], [6.5], 0.)                              AS lookahead_ms,
    transform(codec_name, ['PCMU', 'PCMA', 'G722', 'OPUS'], [0., 0., 0., 0.], 0.) AS ie,
    transform(codec_name, ['PCMU', 'PCMA', 'G722', 'OPUS'], [25.1, 25.1, 25.1, 25.1], 25.1) AS bpl,
    20 + lookahead_ms + 2 * jitter_ms                                       AS delay_ms,
    0.024 * delay_ms + 0.11 * greatest(delay_ms - 177.3, 0)                 AS id,
    ie + (95 - ie) * loss_pct / (loss_pct + bpl)                            AS ie_eff,
    93.2 - id - ie_eff                                                      AS r,
    multiIf(r <= 0, 1., r >= 100, 4.5,
            greatest(1., 1 + 0.035 * r + r * (r - 60) * (100 - r) * 0.000007)) AS mos,
    mos_reported
FROM {db}.call_facts
WHERE ended_at IS NOT NULL AND packets_received + packets_lost > 0;

-- Quality per hour (of the call's end), backend and provider: the estimated MOS's
-- average, median and 5th percentile (the bad tail), loss and jitter median and p95.
CREATE OR REPLACE VIEW {db}.call_quality_hourly AS
SELECT
    toStartOfHour(assumeNotNull(ended_at))   AS hour,
    backend_id,
    provider,
    count()                                  AS calls,
    avg(mos)                                 AS mos_avg,
    quantileExact(0.5)(mos)                  AS mos_p50,
    quantileExact(0.05)(mos)                 AS mos_p5,
    quantileExact(0.5)(loss_pct)             AS loss_p50_pct,
    quantileExact(0.95)(loss_pct)            AS loss_p95_pct,
    quantileExact(0.5)(jitter_ms)            AS jitter_p50_ms,
    quantileExact(0.95)(jitter_ms)           AS jitter_p95_ms
FROM {db}.call_quality
GROUP BY hour, backend_id, provider;
