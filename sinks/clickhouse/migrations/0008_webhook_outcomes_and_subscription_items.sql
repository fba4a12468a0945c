-- What became of each webhook event (processed, skipped: a type meterline does not handle,
-- malformed: logged and never retried), and the subscription items with their billing periods,
-- one row per item per subscription event, so that a plan's history stays readable.

ALTER TABLE stripe_webhook_events ADD COLUMN IF NOT EXISTS outcome LowCardinality(String) DEFAULT 'processed';

ALTER TABLE stripe_webhook_events ADD COLUMN IF NOT EXISTS detail String DEFAULT '';

CREATE TABLE IF NOT EXISTS stripe_subscription_items
(
    subscription_id      String,
    item_id              String,
    stripe_customer      String,
    status               LowCardinality(String),
    price_id             String,
    price_lookup_key     String,
    current_period_start DateTime('UTC'),
    current_period_end   DateTime('UTC'),
    event_created        DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (subscription_id, event_created, item_id);
