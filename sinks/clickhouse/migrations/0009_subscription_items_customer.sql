-- The meterline customer a subscription item bills (from the Stripe customer's metadata or the
-- configured mapping), so that a customer's billing periods are found without calling Stripe.

ALTER TABLE stripe_subscription_items ADD COLUMN IF NOT EXISTS customer_id String DEFAULT '';
