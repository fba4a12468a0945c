"""Usage alerts: which thresholds a customer crossed (rules, pure), and the role raising each once
(role)."""
