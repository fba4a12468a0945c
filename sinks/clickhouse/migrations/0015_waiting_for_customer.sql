-- A revision whose Stripe customer is not known yet waits in the ledger (status
-- waiting_for_customer), holding the aggregate record it came as (base64 of its Avro bytes, and
-- where on usage.aggregates it was), so that the sink sends it once the customer is known; a later
-- row of the same revision carries no record.
ALTER TABLE stripe_reports MODIFY COLUMN status Enum8('pending' = 1, 'sent' = 2, 'confirmed' = 3, 'failed' = 4, 'waiting_for_customer' = 5);

ALTER TABLE stripe_reports ADD COLUMN IF NOT EXISTS held_record String DEFAULT '';

ALTER TABLE stripe_reports ADD COLUMN IF NOT EXISTS held_partition Int32 DEFAULT -1;

ALTER TABLE stripe_reports ADD COLUMN IF NOT EXISTS held_offset Int64 DEFAULT -1;

-- Stripe customers meterline knows without searching (Stripe's search lags writes by up to an
-- hour): from the customer.created/updated/deleted webhooks and `meterline stripe customers
-- --import`. One row per Stripe customer, its latest state wins; customer_id is its
-- meterline id (the metadata key), empty when it has none or was deleted.
CREATE TABLE IF NOT EXISTS stripe_customers
(
    stripe_customer String,
    customer_id     String,
    source          LowCardinality(String),
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY stripe_customer;
