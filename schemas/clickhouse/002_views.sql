-- Deduplicated events: what analytics queries should read. (OR REPLACE: a view keeps
-- the columns it was created with, so a new column needs the view made again.)
CREATE OR REPLACE VIEW {db}.call_events AS
SELECT * FROM {db}.call_events_log FINAL;

-- One row per call: the seed's InboundCallQueue entry, rebuilt from the events (a
-- projection, so a replay of the topic rebuilds it exactly). Status follows the
-- furthest lifecycle step reached (status_rank), not wall-clock order.
CREATE OR REPLACE VIEW {db}.calls AS
SELECT
    call_id                                                        AS id,
    argMax(status, (status_rank, occurred_at))                     AS status,
    anyIf(provider, provider != '')                                AS provider,
    -- calls offered before the column existed were all inbound
    ifNull(nullIf(anyIf(direction, direction != ''), ''), 'INBOUND') AS direction,
    anyIf(provider_call_id, provider_call_id != '')                AS provider_call_id,
    anyIf(business_id, business_id != '')                          AS business_id,
    anyIf(phone_id, phone_id != '')                                AS route_number_id,
    anyIf(route_id, route_id != '')                                AS route_id,
    anyIf(region_id, region_id != '')                              AS region_id,
    anyIf(edge_id, edge_id != '')                                  AS processing_proxy_server_id,
    argMaxIf(backend_id, (status_rank, occurred_at), backend_id != '') AS processing_backend_server_id,
    min(occurred_at)                                               AS enqueued_at,
    maxIf(occurred_at, event_type = 'CallEnded')                   AS ended_at,
    argMaxIf(status_code, (status_rank, occurred_at), status_code != 0) AS status_code,
    argMaxIf(reason, (status_rank, occurred_at), reason != '')     AS reason,
    argMaxIf(hangup_side, occurred_at, event_type = 'CallEnded')   AS hangup_side,
    maxIf(setup_ms, event_type = 'CallEnded')                      AS setup_ms,
    maxIf(talk_ms, event_type = 'CallEnded')                       AS talk_ms,
    anyIf(codec, codec != '')                                      AS codec,
    maxIf(packets_sent, event_type = 'CallEnded')                  AS packets_sent,
    maxIf(packets_received, event_type = 'CallEnded')              AS packets_received,
    maxIf(packets_lost, event_type = 'CallEnded')                  AS packets_lost,
    maxIf(jitter_ms, event_type = 'CallEnded')                     AS jitter_ms,
    anyIf(provider_account_id, provider_account_id != '')          AS provider_account_id,
    argMaxIf(hangup_cause, occurred_at, hangup_cause != '')        AS hangup_cause,
    maxIf(provider_duration_ms, event_type = 'CallEnded')          AS provider_duration_ms,
    maxIf(mos, event_type = 'CallEnded')                           AS mos,
    count()                                                        AS event_count,
    arraySort(x -> (x.1, x.2), groupArray((occurred_at, status_rank, log_type, log_message))) AS logs
FROM {db}.call_events
GROUP BY call_id;
