-- The subscription's billing mode (`billing_mode.type`, since API 2025-06-30.basil): flexible bills
-- a metered price's usage up to a mid-period price change, classic does not.

ALTER TABLE stripe_subscription_items ADD COLUMN IF NOT EXISTS billing_mode LowCardinality(String) DEFAULT 'classic';
