"""Avro schemas (every version kept), the wire formats, the records and the producer SDK."""
