"""`meterline stripe sync`: the Stripe meters, products and prices the rate card needs (sync.py),
each rate card price as Stripe's terms (prices.py, pure)."""
