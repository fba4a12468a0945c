"""Whether the totals hold: Stripe's against ours (reconcile, compare), re-derived from the raw topic
(rederive, the stream's own code; replay, comparing and repairing), and a customer's question
answered window by window (dispute)."""
