-- Invoice-ready notices, one row per invoice: sent (mailed), kept (on the notices topic only: no
-- SMTP server or no customer_email) or failed (the mail refused for good).
CREATE TABLE IF NOT EXISTS invoice_notices
(
    invoice_id  String,
    customer_id String,
    email       String,
    status      LowCardinality(String),
    detail      String,
    sent_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(sent_at)
ORDER BY invoice_id;
