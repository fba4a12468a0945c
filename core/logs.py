"""Logs that carry the billing context: customer, meter, window, identifier, invoice.

Code logs context as `extra=` fields (`log.warning("...", extra=context(customer=..., window=...))`);
`text` prints them as `key=value` after the message, `json` as one object per line for a log
pipeline. Every role configures logging through `config_dict`, the Faust worker included.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FIELDS = ("customer", "meter", "window", "identifier", "invoice", "event_id", "run_id", "role")
FORMATS = ("text", "json")


def context(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call; None values are left out."""
    return {k: v for k, v in fields.items() if v is not None}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _fields(record)
        return line + "".join(f" {k}={v}" for k, v in extra.items()) if extra else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def config_dict(level: str, fmt: str) -> dict[str, Any]:
    """A logging.config.dictConfig document: one stderr handler in the chosen format."""
    formatter = {"text": TextFormatter, "json": JsonFormatter}[fmt]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"meterline": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "meterline"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # stripe logs every request at INFO; chatty libraries stay at WARNING.
        "loggers": {name: {"level": "WARNING"} for name in ("stripe", "urllib3", "httpx")},
    }


def setup(level: str, fmt: str) -> None:
    import logging.config

    logging.config.dictConfig(config_dict(level, fmt))
