"""Consumers of usage.aggregates: the ClickHouse sink and the Stripe sink."""
