"""Usage events for the codec and serde tests: one fixed, and a strategy of any valid one."""

from __future__ import annotations

from hypothesis import strategies as st

from meterline.schemas.records import UsageEvent

texts = st.text(min_size=1, max_size=40)
EVENT = UsageEvent("e-1", "cust-1", "api_calls", 12_345, "call", 1_775_000_000_000, "api", {"status": "200"})


events = st.builds(
    UsageEvent,
    event_id=texts,
    customer_id=texts,
    meter=texts,
    quantity=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    unit=texts,
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    source=texts,
    attributes=st.dictionaries(texts, st.text(max_size=20), max_size=4),
)
