"""The floor every component stands on (DESIGN §1): it imports nothing else of meterline."""
