"""What a customer is billed: the rate card's arithmetic (pricing, pure), plan changes within a
period (plan_history), which period a command means (periods), the invoice as text (invoice_text)."""
