"""Reporting window revisions to Stripe, and the Stripe fake the local stack and tests use."""
