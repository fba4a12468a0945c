"""`meterline webhooks`: Stripe's events received and processed once (role.py); the pure readers of
their contents (events.py)."""
