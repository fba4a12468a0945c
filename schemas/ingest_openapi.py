"""The HTTP ingest's OpenAPI document (GET /openapi.json): the events it takes, said precisely
enough that schemathesis, generating requests from it, finds the server answering as it says."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meterline.core.config import Config, MeterConfig
from meterline.core.dimensions import declared_of
from meterline.schemas.cloudevents import BATCH, QUANTITY_MAX, STRUCTURED
from meterline.schemas.validation import MAX_LEVEL


def _meter(meter: MeterConfig) -> list[dict[str, Any]]:
    """The two ways an event names `meter` (its data.meter; or its type's last part, without a
    data.meter), each in the meter's unit and, for a `unique_count` meter, with the attribute it
    counts, for a `time_weighted` meter with a level it can report (schemas.validation.MeterRules):
    the catalog's rules, said in JSON Schema. A meter with dimensions: each attribute with one of its
    declared values."""
    in_unit: dict[str, Any] = {"unit": {"const": meter.unit}}
    if meter.aggregation == "time_weighted":
        in_unit["quantity"] = {"maximum": MAX_LEVEL}
    carried: dict[str, Any] = {}  # what the data must hold besides
    required: dict[str, Any] = {name: {"enum": list(values)} for name, values in meter.dimensions.items()}
    if meter.unique_by:
        required[meter.unique_by] = {"minLength": 1}
    if required:
        in_unit["attributes"] = {"required": list(required), "properties": required}
        carried["required"] = ["attributes"]
    by_type = {"pattern": f"(^|\\.){re.escape(meter.name)}$"}
    return [
        {
            "properties": {
                "data": {
                    "required": ["meter", *carried.get("required", [])],
                    "properties": {"meter": {"const": meter.name}, **in_unit},
                }
            }
        },
        {
            "properties": {
                "type": by_type,
                "data": {"not": {"required": ["meter"]}, **carried, "properties": in_unit},
            }
        },
    ]


def event_schema(config: Config) -> dict[str, Any]:
    """One CloudEvent of usage as JSON Schema: the mapping's fields and the catalog's rules."""
    return {
        "type": "object",
        "required": ["specversion", "id", "source", "type", "subject", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1, "description": "the event id: the dedup key"},
            "source": {"type": "string", "minLength": 1},
            "type": {
                "type": "string",
                "minLength": 1,
                "description": "its last dot-separated part is the meter",
            },
            "subject": {"type": "string", "minLength": 1, "description": "the customer id"},
            # Usage before 1971 is no one's: the year is said as a pattern (a format has no bounds).
            "time": {
                "type": "string",
                "format": "date-time",
                "pattern": "^(19(7[1-9]|[89][0-9])|[2-9][0-9]{3})-",
                "description": (
                    f"the event's time: at most {config.windows.max_lateness_days} days before the "
                    f"server's clock (else refused too_late) and at most "
                    f"{config.windows.max_clock_skew_seconds} s after it (too_far_future), as the "
                    "stream judges it"
                ),
            },
            "datacontenttype": {"const": "application/json"},
            "data": {
                "type": "object",
                "required": ["quantity"],
                "properties": {
                    "quantity": {"type": "integer", "minimum": 0, "maximum": QUANTITY_MAX},
                    "unit": {"type": "string"},
                    "meter": {"type": "string"},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
        "anyOf": [
            alternative
            for _, meter in sorted(declared_of(config.meters).items())
            for alternative in _meter(meter)
        ],
    }


def openapi(config: Config, path: str) -> Mapping[str, Any]:
    """The API as OpenAPI 3.1, served at /openapi.json."""
    event = event_schema(config)
    result = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"]},
            "status": {"enum": ["accepted", "refused", "retry"]},
            "field": {"type": "string"},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
        },
    }
    answer = {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "refused": {"type": "integer"},
            "retry": {"type": "integer"},
            "results": {"type": "array", "items": result},
        },
    }
    error = {"type": "object", "properties": {"error": {"type": "string"}}}

    def answers(*statuses: int) -> dict[str, Any]:
        return {
            str(s): {
                "description": str(s),
                "content": {"application/json": {"schema": answer if s in (200, 400, 503) else error}},
            }
            for s in statuses
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "meterline ingest", "version": "1"},
        "components": {"securitySchemes": {"key": {"type": "http", "scheme": "bearer"}}},
        "security": [{"key": []}],
        "paths": {
            path: {
                "post": {
                    "summary": "usage as CloudEvents: one, or a batch, each event answered",
                    "requestBody": {
                        "required": True,
                        "content": {
                            STRUCTURED: {"schema": event},
                            BATCH: {
                                "schema": {
                                    "type": "array",
                                    "items": event,
                                    "maxItems": config.ingest.max_events_per_request,
                                }
                            },
                        },
                    },
                    "responses": answers(200, 400, 401, 413, 415, 429, 503),
                }
            }
        },
    }
