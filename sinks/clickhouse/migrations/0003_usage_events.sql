-- Raw accepted events, for audit and disputes: each event once (a retried insert, or the same event
-- id sent twice by its producer, collapses under FINAL). Kept for a TTL that `meterline migrate`
-- sets from [clickhouse] raw_events_ttl_days.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id         String,
    customer_id      String,
    meter            LowCardinality(String),
    quantity         Int64,
    unit             LowCardinality(String),
    timestamp        DateTime64(3, 'UTC'),
    source           LowCardinality(String),
    attributes       Map(String, String),
    billable         Bool,
    source_partition UInt16,
    source_offset    UInt64,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (customer_id, meter, timestamp, event_id)
TTL toDateTime(timestamp) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000;
