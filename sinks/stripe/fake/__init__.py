"""The Stripe fake of the local stack (sinks.stripe.fake.server), one module per Stripe resource."""

from meterline.sinks.stripe.fake.server import FakeStripe, Faults, make_server

__all__ = ["FakeStripe", "Faults", "make_server"]
