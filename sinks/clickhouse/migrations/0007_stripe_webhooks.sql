-- Stripe webhook events processed (each event id once), and what they told us. Subscriptions and
-- invoices keep the state of their latest event (by Stripe's `created`), whatever order they
-- arrived in.
CREATE TABLE IF NOT EXISTS stripe_webhook_events
(
    event_id     String,
    type         LowCardinality(String),
    created      DateTime('UTC'),
    processed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS stripe_subscriptions
(
    subscription_id      String,
    stripe_customer      String,
    status               LowCardinality(String),
    current_period_start DateTime('UTC'),
    current_period_end   DateTime('UTC'),
    event_created        DateTime('UTC')
)
ENGINE = ReplacingMergeTree(event_created)
ORDER BY subscription_id;

CREATE TABLE IF NOT EXISTS stripe_invoices
(
    invoice_id      String,
    stripe_customer String,
    status          LowCardinality(String),
    period_start    DateTime('UTC'),
    period_end      DateTime('UTC'),
    lines           String,
    event_created   DateTime('UTC')
)
ENGINE = ReplacingMergeTree(event_created)
ORDER BY invoice_id;
