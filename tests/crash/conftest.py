"""The crash lane runs on Apache Kafka (KRaft, from its jars): SIGKILLs, rebalances and faults
against the broker production runs on. The rest of the suite runs on tansu, the embedded default."""

from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (the lane's kafka_bootstrap)
