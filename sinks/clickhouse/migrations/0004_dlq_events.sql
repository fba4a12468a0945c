-- What the stream app rejected and why: one row per rejected record, or per rejected event of a
-- batch (source_index >= 0). Keyed by the source position, so a dead letter written twice (the
-- stream app writes them at least once) is one row under FINAL.
CREATE TABLE IF NOT EXISTS dlq_events
(
    source_topic     String,
    source_partition UInt16,
    source_offset    UInt64,
    source_index     Int32,
    error_code       LowCardinality(String),
    error_detail     String,
    customer_id      String,
    meter            String,
    key              String,
    value            String,
    dlq_partition    UInt16,
    dlq_offset       UInt64,
    received_at      DateTime64(3, 'UTC'),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, source_partition, source_offset, source_index)
SETTINGS non_replicated_deduplication_window = 10000;
