"""Reads of `usage_events`, the accepted raw events the ClickHouse sink keeps for audit and
disputes (`clickhouse.raw_events`, for `clickhouse.raw_events_ttl_days`). One home for the table's
SQL; its writer is sinks.clickhouse.sink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from meterline.sinks.clickhouse.queries import in_span

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


class RawEvent(NamedTuple):
    event_id: str
    timestamp: int  # epoch ms
    quantity: int
    source: str


BILLABLE = (
    "FROM usage_events FINAL WHERE customer_id = %(customer)s AND meter = %(meter)s AND billable "
    f"AND {in_span('timestamp')}"
)
"""A customer's billable events of one meter in [start, end)."""


def peak_events(
    client: Client, customer: str, meter: str, start_ms: int, end_ms: int, most: int = 10
) -> list[RawEvent]:
    """The billable events of [start, end) that reported the highest quantity of a customer's meter:
    what made its peak, earliest first (a retried event once)."""
    return _raw_events(
        client,
        f"AND quantity = (SELECT max(quantity) {BILLABLE}) "
        "ORDER BY timestamp, event_id LIMIT 1 BY event_id LIMIT %(most)s",
        {"customer": customer, "meter": meter, "start": start_ms, "end": end_ms, "most": most},
    )


def latest_event(client: Client, customer: str, meter: str, start_ms: int, end_ms: int) -> list[RawEvent]:
    """The billable event of [start, end) a `last` meter's answer is the quantity of: the latest by
    time, the event id deciding a tie, as the stream decides (streams.windows.later); none or one."""
    return _raw_events(
        client,
        "ORDER BY timestamp DESC, event_id DESC LIMIT 1",
        {"customer": customer, "meter": meter, "start": start_ms, "end": end_ms},
    )


def level_changes(client: Client, customer: str, meter: str, start_ms: int, end_ms: int) -> list[RawEvent]:
    """A `time_weighted` meter's level history over [start, end): the latest event before it (the
    level carried in), then each billable event of it that changed the level, in the order the
    stream holds them (time, then event id: streams.accrual); a retried event once."""
    parameters = {"customer": customer, "meter": meter, "start": start_ms, "end": end_ms}
    carried = latest_event(client, customer, meter, 0, start_ms)
    history = _raw_events(client, "ORDER BY timestamp, event_id LIMIT 1 BY event_id", parameters)
    changes, level = carried, carried[0].quantity if carried else 0
    for event in history:
        if event.quantity != level:
            changes.append(event)
            level = event.quantity
    return changes


def _raw_events(client: Client, narrowing: str, parameters: dict[str, object]) -> list[RawEvent]:
    """The BILLABLE events `narrowing` (a condition, an order, a limit) picks."""
    rows = client.query(
        f"SELECT event_id, toUnixTimestamp64Milli(timestamp), quantity, source {BILLABLE} {narrowing}",
        parameters=parameters,
    ).result_rows
    return [RawEvent(str(e), int(t), int(q), str(s)) for e, t, q, s in rows]


class FirstSighting(NamedTuple):
    value: str
    event_id: str
    timestamp: int  # epoch ms
    source: str


def first_sightings(
    client: Client, customer: str, meter: str, attribute: str, start_ms: int, end_ms: int
) -> list[FirstSighting]:
    """Each distinct value of `attribute` among a `unique_count` meter's billable events of [start,
    end), with the earliest event that carried it in each UTC month (the meter's reset): what its
    windows count, in time order. The stream counts a value in the window of the first event it
    met, which is the earliest unless that one came late."""
    rows = client.query(
        "SELECT attributes[%(attribute)s] AS value, event_id, toUnixTimestamp64Milli(timestamp), source "
        f"{BILLABLE} ORDER BY timestamp, event_id LIMIT 1 BY toStartOfMonth(timestamp), value",
        parameters={
            "customer": customer,
            "meter": meter,
            "attribute": attribute,
            "start": start_ms,
            "end": end_ms,
        },
    ).result_rows
    return [FirstSighting(str(v), str(e), int(t), str(s)) for v, e, t, s in rows]
