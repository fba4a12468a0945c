"""Compressed record batches, as producers in other languages send them (franz-go compresses with
snappy by default; Java services are often set to lz4 or zstd): the stream worker's consumer
(aiokafka, under Faust) decompresses every codec Kafka has, with cramjam. Without it, the first
snappy batch stopped the worker (UnsupportedCodecError), found by the Go recipe's test."""

from __future__ import annotations

from pathlib import Path

from meterline.core.config import Config
from meterline.core.kafka import Brokers
from meterline.produce import make_producer, send
from meterline.workload import Expected, generate
from tests.support.apache_kafka import on_apache_kafka  # noqa: F401  (this module runs on Apache Kafka)
from tests.support.pipeline import counted_by_one_worker, workload

CODECS = ("gzip", "snappy", "lz4", "zstd")


def test_batches_of_every_compression_codec_are_counted_exactly(config: Config, tmp_path: Path) -> None:
    spec = workload(events=4_000, seed=79, customers=8, hours=2)
    expected = Expected(config.windows.size_ms)
    emissions = list(generate(spec, config.meters, config.windows.size_ms, expected))
    # One producer per codec; each customer's events go through one of them, in their order.
    producers = {
        codec: make_producer(
            config, Brokers(config.kafka.bootstrap, {"compression.type": codec}), packing=False
        )
        for codec in CODECS
    }
    customers = sorted({e.key for e in emissions})
    sent = dict.fromkeys(CODECS, 0)
    for emission in emissions:
        codec = CODECS[customers.index(emission.key) % len(CODECS)]
        send(producers[codec], emission)
        sent[codec] += 1
    for producer in producers.values():
        producer.close()
    assert all(sent.values()), sent  # every codec carried records

    result = counted_by_one_worker(config, expected.to_json(spec), tmp_path)
    assert result.windows_matching == result.windows_expected > 0
