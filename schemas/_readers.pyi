from meterline.schemas.records import UsageEvent, WindowAggregate
from meterline.schemas.validation import BillableRule

def read_events(data: bytes, pos: int, batch: bool) -> list[UsageEvent]: ...
def read_aggregate(data: bytes, pos: int) -> tuple[str, str, int, int, int, int, int, int, int, int]: ...
def read_aggregate_row_binary(data: bytes, pos: int) -> bytes: ...
def new_aggregate(
    customer_id: str,
    meter: str,
    window_start: int,
    window_end: int,
    source_partition: int,
    value: int,
    delta: int,
    event_count: int,
    revision: int,
    closed_at: int,
) -> WindowAggregate: ...
def triage(
    events: list[UsageEvent],
    meter_units: dict[str, str],
    filters: dict[str, BillableRule | None],
    earliest: int,
    latest: int,
    billable: list[UsageEvent],
    non_billable: list[UsageEvent],
) -> list[int]: ...
