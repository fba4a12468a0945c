-- The Stripe sink's ledger: one row per window revision reported (latest state wins). `pending` is
-- written before the call, then `sent` (Stripe accepted it; meter events are processed
-- asynchronously), `confirmed` (seen in Stripe's own totals, or a synchronous legacy usage record)
-- or `failed` (refused for good; the aggregate is also on usage.stripe.dlq with the reason).
CREATE TABLE IF NOT EXISTS stripe_reports
(
    customer_id       String,
    meter             LowCardinality(String),
    window_start      DateTime64(3, 'UTC'),
    source_partition  UInt16,
    revision          UInt32,
    identifier        String,
    mode              LowCardinality(String),
    stripe_customer   String,
    stripe_event_name String,
    value             Int64,
    status            Enum8('pending' = 1, 'sent' = 2, 'confirmed' = 3, 'failed' = 4),
    attempts          UInt32,
    error_code        LowCardinality(String),
    last_error        String,
    stripe_request_id String,
    updated_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (customer_id, meter, window_start, source_partition, revision);
