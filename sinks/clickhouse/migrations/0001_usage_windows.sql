-- Every revision of every window, once: the audit trail of corrections. Its key is the aggregate
-- identity (DESIGN §3), so a row inserted twice (a sink retry that ClickHouse's insert
-- deduplication did not catch) collapses under FINAL.
CREATE TABLE IF NOT EXISTS usage_window_revisions
(
    customer_id      String,
    meter            LowCardinality(String),
    window_start     DateTime64(3, 'UTC'),
    window_end       DateTime64(3, 'UTC'),
    source_partition UInt16,
    revision         UInt32,
    value            Int64,
    delta            Int64,
    event_count      UInt64,
    closed_at        DateTime64(3, 'UTC'),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, meter, window_start, source_partition, revision)
-- Insert deduplication tokens need a window on tables that are not replicated.
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per window and source partition: the latest revision wins. `value` is then the window's
-- total from that partition; a window's total sums over partitions (DESIGN §3).
CREATE TABLE IF NOT EXISTS usage_windows
(
    customer_id      String,
    meter            LowCardinality(String),
    window_start     DateTime64(3, 'UTC'),
    window_end       DateTime64(3, 'UTC'),
    source_partition UInt16,
    revision         UInt32,
    value            Int64,
    event_count      UInt64,
    closed_at        DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (customer_id, meter, window_start, source_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_windows_latest TO usage_windows AS
SELECT customer_id, meter, window_start, window_end, source_partition, revision, value, event_count, closed_at
FROM usage_window_revisions;
