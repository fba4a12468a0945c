"""Reconcile, replay, dispute report and invoice preview (rate card math)."""
