"""Faust baselines for bench/stream.py, each a worker process over single-event messages:

- `bare`: an agent that only iterates the records: Faust's own per-message ceiling;
- `table`: Faust's tumbling windowed Table summing each event's quantity per (customer, meter),
  the way the Faust docs would have it.

Run by bench/stream.py: python bench/faust_baselines.py bare|table BOOTSTRAP TOPIC APP_ID DATA_DIR
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import faust

from meterline.schemas.serde import AvroSerde


def main() -> None:
    kind, bootstrap, topic_name, app_id, data_dir = sys.argv[1:6]
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=data_dir,
        processing_guarantee="at_least_once",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        topic_partitions=4,
    )
    schema: faust.Schema[bytes, bytes] = faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    topic = app.topic(topic_name, schema=schema)
    serde = AvroSerde()
    if kind == "bare":

        @app.agent(topic)
        async def bare(stream: Any) -> None:
            async for _ in stream.events():
                pass

    else:
        totals = app.Table("totals", default=int, partitions=4).tumbling(
            timedelta(minutes=1), expires=timedelta(hours=1)
        )

        @app.agent(topic)
        async def table(stream: Any) -> None:
            async for value in stream:
                for event in serde.decode_usage(value).events:
                    key = f"{event.customer_id}|{event.meter}"
                    totals[key] += event.quantity

    faust.Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    main()
