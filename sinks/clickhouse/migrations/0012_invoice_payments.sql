-- Each payment outcome Stripe reported for an invoice (`invoice.paid`, `invoice.payment_failed`),
-- one row per event: the billing review's payment success rate reads an invoice's latest.
CREATE TABLE IF NOT EXISTS stripe_invoice_payments
(
    event_id        String,
    invoice_id      String,
    stripe_customer String,
    outcome         LowCardinality(String),
    amount_due      Int64,
    amount_paid     Int64,
    currency        LowCardinality(String),
    attempt_count   UInt32,
    period_start    DateTime('UTC'),
    period_end      DateTime('UTC'),
    event_created   DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;
