"""Meters, meter events and their summaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meterline.sinks.stripe.fake.errors import invalid, missing, new_id
from meterline.sinks.stripe.fake.objects import (
    DAY_S,
    IDENTIFIER_WINDOW_S,
    MAX_FUTURE_S,
    MAX_PAST_S,
    MAX_VALUE_DIGITS,
    MeterEvent,
    Objects,
)


class Meters(Objects):
    def create_meter(self, params: Mapping[str, Any]) -> dict[str, Any]:
        for name in ("display_name", "event_name", "default_aggregation"):
            if not params.get(name):
                raise invalid(f"Missing required param: {name}.", "parameter_missing", name)
        formula = params["default_aggregation"].get("formula")
        if formula not in ("sum", "count", "last"):
            raise invalid(
                f"Invalid default_aggregation[formula]: {formula}", param="default_aggregation[formula]"
            )
        with self.lock:
            if any(
                m["event_name"] == params["event_name"] and m["status"] == "active"
                for m in self.meters.values()
            ):
                raise invalid(
                    f"An active meter with event_name `{params['event_name']}` already exists.",
                    param="event_name",
                )
            meter = {
                "id": new_id("mtr"),
                "object": "billing.meter",
                "display_name": params["display_name"],
                "event_name": params["event_name"],
                "status": "active",
                "default_aggregation": {"formula": formula},
                # Stripe's defaults, or the payload keys asked for ("Payload key overrides",
                # https://docs.stripe.com/billing/subscriptions/usage-based/meters/configure)
                "customer_mapping": {
                    "event_payload_key": (params.get("customer_mapping") or {}).get(
                        "event_payload_key", "stripe_customer_id"
                    ),
                    "type": "by_id",
                },
                "value_settings": {
                    "event_payload_key": (params.get("value_settings") or {}).get(
                        "event_payload_key", "value"
                    )
                },
                "event_time_window": None,
                "created": self.now(),
                "updated": self.now(),
                "status_transitions": {"deactivated_at": None},
                "livemode": False,
            }
            self.meters[meter["id"]] = meter
        return meter

    def meter(self, meter_id: str) -> dict[str, Any]:
        with self.lock:
            found = self.meters.get(meter_id)
        if found is None:
            raise missing("billing.meter", meter_id)
        return found

    def record_meter_event(self, params: Mapping[str, Any], timestamp: int | None) -> dict[str, Any]:
        """POST /v1/billing/meter_events and each event of a v2 stream (whose errors Stripe reports
        asynchronously; the v2 handler turns them into error reports)."""
        event_name = params.get("event_name")
        payload = params.get("payload")
        if not event_name:
            raise invalid("Missing required param: event_name.", "parameter_missing", "event_name")
        if not isinstance(payload, Mapping):
            raise invalid("Missing required param: payload.", "parameter_missing", "payload")
        now = self.now()
        when = now if timestamp is None else timestamp
        if when < now - MAX_PAST_S:
            raise invalid(
                "Timestamp must be within the past 35 calendar days.",
                "timestamp_too_far_in_past",
                "timestamp",
            )
        if when > now + MAX_FUTURE_S:
            raise invalid(
                "Timestamp must be at most 5 minutes in the future.", "timestamp_in_future", "timestamp"
            )
        with self.lock:
            active = [
                m for m in self.meters.values() if m["event_name"] == event_name and m["status"] == "active"
            ]
        # the meter's payload keys (one meter per event name); Stripe's defaults without one
        customer_key = active[0]["customer_mapping"]["event_payload_key"] if active else "stripe_customer_id"
        value_key = active[0]["value_settings"]["event_payload_key"] if active else "value"
        raw_value = str(payload.get(value_key, ""))
        if value_key in payload and not raw_value.lstrip("-").isdigit():
            raise invalid(
                f"Invalid value `{raw_value}` for payload[{value_key}]: must be a whole number.",
                "meter_event_invalid_value",
                f"payload[{value_key}]",
            )
        if value_key in payload and len(raw_value.lstrip("-").lstrip("0")) > MAX_VALUE_DIGITS:
            raise invalid(
                f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. "
                f"Received `{raw_value}`.",
                "meter_event_value_too_many_digits",
                f"payload[{value_key}]",
            )
        identifier = str(params.get("identifier") or new_id("mev"))
        with self.lock:
            first = self.identifiers.get(identifier)
            if first is not None and now - first < IDENTIFIER_WINDOW_S:
                raise invalid(
                    f"An event with identifier `{identifier}` was already reported in the last 24 hours.",
                    "duplicate_meter_event",
                    "identifier",
                )
            self.identifiers[identifier] = now
            customer = str(payload.get(customer_key, ""))
            problem = None
            if not active:
                problem = ("no_meter", f"No active meter for event_name `{event_name}`.")
            elif not customer:
                problem = (
                    "meter_event_no_customer_defined",
                    f"Customer mapping key {customer_key} not found in payload.",
                )
            elif value_key not in payload:
                problem = ("meter_event_value_not_found", f"Value key {value_key} not found in payload.")
            elif customer not in self.customers:
                problem = ("meter_event_customer_not_found", f"No such customer: '{customer}'")
            if problem is not None:
                self.error_reports.append(
                    {
                        "code": problem[0],
                        "message": problem[1],
                        "identifier": identifier,
                        "event_name": event_name,
                    }
                )
            else:
                self.meter_events.append(
                    MeterEvent(event_name, identifier, customer, int(raw_value), when, now)
                )
        return {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": {k: str(v) for k, v in payload.items()},
            "timestamp": when,
        }

    def event_summaries(
        self, meter_id: str, customer: str, start: int, end: int, grouping: str | None
    ) -> list[dict[str, Any]]:
        meter = self.meter(meter_id)
        if start % 60 or end % 60:
            raise invalid(
                "start_time and end_time must be aligned with minute boundaries.", param="start_time"
            )
        if end <= start:
            raise invalid("end_time must be after start_time.", param="end_time")
        if grouping not in (None, "hour", "day"):
            raise invalid(f"Invalid value_grouping_window: {grouping}", param="value_grouping_window")
        size = {"hour": 3_600, "day": DAY_S}.get(grouping or "", end - start)
        if grouping and (start % size or end % size):
            # "For hourly granularity, start and end times must align with hour boundaries ... For
            # daily granularity, start and end times must align with UTC day boundaries."
            raise invalid(
                f"start_time and end_time must be aligned with {grouping} boundaries for "
                f"value_grouping_window={grouping}.",
                param="start_time",
            )
        formula = meter["default_aggregation"]["formula"]
        buckets: dict[int, list[MeterEvent]] = {}
        with self.lock:
            for event in self.meter_events:
                if (
                    event.event_name == meter["event_name"]
                    and event.customer == customer
                    and start <= event.timestamp < end
                ):
                    bucket = start if grouping is None else event.timestamp - event.timestamp % size
                    buckets.setdefault(bucket, []).append(event)
        summaries = []
        for bucket_start in sorted(buckets):
            events = buckets[bucket_start]
            if formula == "sum":
                value = sum(e.value for e in events)
            elif formula == "count":
                value = len(events)
            else:
                value = max(events, key=lambda e: (e.timestamp, e.created)).value
            summaries.append(
                {
                    "id": f"mtrusg_{meter_id}_{customer}_{bucket_start}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "start_time": max(bucket_start, start),
                    "end_time": min(bucket_start + size, end),
                    "meter": meter_id,
                    "livemode": False,
                }
            )
        return summaries
