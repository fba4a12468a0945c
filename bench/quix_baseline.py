"""Quix Streams 3.x doing the same 1-minute tumbling sum, for bench/stream.py: the peer a team
would pick instead of Faust. Needs a Python with quixstreams installed (it pins its own
confluent-kafka, so it gets its own virtualenv, not meterline's), and the repository on PYTHONPATH.

Run by bench/stream.py --quix-python PATH: PATH bench/quix_baseline.py BOOTSTRAP TOPIC GROUP STATE_DIR
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application  # type: ignore[import-not-found]
from quixstreams.models import TopicConfig  # type: ignore[import-not-found]
from quixstreams.models.serializers import (  # type: ignore[import-not-found]
    Deserializer,
    IgnoreMessage,
)

from meterline.schemas.serde import AvroSerde


class UsageDeserializer(Deserializer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._serde = AvroSerde()

    def __call__(self, value: bytes, ctx: Any) -> Any:
        events = self._serde.decode_usage(value).events
        if not events:  # a tick: the empty batch meterline's stream app sends into a quiet partition
            raise IgnoreMessage
        [event] = events
        return {"quantity": event.quantity, "ts": event.timestamp}


def main() -> None:
    bootstrap, topic_name, group, state_dir = sys.argv[1:5]
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=0.5,
        state_dir=state_dir,
        use_changelog_topics=True,
    )
    # tansu does not report retention.ms, which Quix reads to configure its changelog: supply it.
    config = TopicConfig(num_partitions=4, replication_factor=1, extra_config={"retention.ms": "-1"})
    topic = app.topic(
        topic_name,
        value_deserializer=UsageDeserializer(),
        config=config,
        timestamp_extractor=lambda value, headers, timestamp, kind: value["ts"],
    )
    topic.broker_config = config
    # Summed per message key, the customer: splitting by meter too would take a group_by, which
    # repartitions through another topic and costs Quix more, not less.
    frame = app.dataframe(topic)
    frame = frame.apply(lambda value: value["quantity"])
    frame = frame.tumbling_window(duration_ms=60_000, grace_ms=10_000).sum().final()
    app.run()


if __name__ == "__main__":
    main()
