-- Usage alerts (meterline alerts), one row per alert id: the latest write (by updated_at) says
-- how far raising it got: pending, published (no endpoint), delivered or failed.
CREATE TABLE IF NOT EXISTS usage_alerts
(
    alert_id     String,
    customer_id  String,
    meter        LowCardinality(String),
    period_start DateTime64(3, 'UTC'),
    period_end   DateTime64(3, 'UTC'),
    threshold    String,
    status       LowCardinality(String),
    attempts     UInt32,
    last_error   String,
    payload      String,
    raised_at    DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_id;
