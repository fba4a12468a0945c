-- Every `meterline reconcile` run: one row per (customer, meter) compared over the period
-- (hour_start = period start, level 'period') and one per hour that differs (level 'hour').
CREATE TABLE IF NOT EXISTS reconciliation_runs
(
    run_id      String,
    run_at      DateTime64(3, 'UTC'),
    period      String,
    level       LowCardinality(String),
    customer_id String,
    meter       LowCardinality(String),
    hour_start  DateTime64(3, 'UTC'),
    ours        Int64,
    stripe      Int64,
    drift       Int64,
    source      LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (run_at, customer_id, meter, hour_start);
