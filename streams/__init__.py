"""The stream app: decode, validate, filter, dedup, window, close, emit; and its pure window math."""
