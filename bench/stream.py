"""Stream worker throughput on the local stack, beside baselines measured in the same session.

Rows: one `meterline stream` worker end to end (decode, validate, dedup, window, state, emit) on
packed batch messages and on single-event messages; the raw floor (aiokafka getmany and decoding
into UsageEvents, no Faust: with fastavro, and with meterline's compiled reader); a bare Faust
agent (Faust's per-message ceiling); Faust's own tumbling Table doing the same sum. Then the
worker's memory on 1M and 5M packed events over the same span (same windows): state grows with
open windows and dedup retention, not with the number of events. The packed row runs twice: with
the default rate card (seats, a `max` meter, active_users, a `unique_count` meter, and storage, a
`time_weighted` meter, each a sixth of the events) and with the three summed.

A worker's rate is read from its committed offsets (committed every 0.5 s here), from its first
commit to the one that covers the topic, so the group join and startup are not counted. Over the
same interval, the CPU the worker (with its child processes) and the broker used, in % of one
core: on two cores shared by both, it tells a worker that waits from one that computes.

Run: .venv/bin/python bench/stream.py [--events 1000000] [--single-events 200000] [--memory-events 5000000]
     [--quix-python PATH] [--meterline-only] [--profile DIR] [--before DIR]
     [--brokers tansu,apache-kafka]
(--brokers runs every row on each broker in turn, in one run: the ratios between brokers and rows
are of one session.)
(--profile samples each meterline worker with py-spy, if installed, into DIR as collapsed stacks;
--before runs every meterline row a second time, just before, with the worker of another checkout,
e.g. `git worktree add /tmp/before <commit>` with its compiled reader built or copied in, so that
a change is measured against its baseline in the same run.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from meterline.core.config import Config
from meterline.produce import produce_workload
from meterline.schemas.serde import AvroSerde
from meterline.streams.windows import DAY_MS
from meterline.topics import isolated_topics
from meterline.workload import WorkloadSpec

from harness import broker_stack, report
from processes import cpu_between, cpu_seconds, process_tree, rss_kib

ROOT = Path(__file__).resolve().parent.parent
LIVE_SPAN_MS = 21 * 60_000


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single-events", type=int, default=200_000)
    parser.add_argument("--memory-events", type=int, default=5_000_000)
    parser.add_argument(
        "--quix-python", help="a Python with quixstreams 3.x installed (its own venv): adds the Quix row"
    )
    parser.add_argument(
        "--meterline-only", action="store_true", help="only the meterline rows (while working on the worker)"
    )
    parser.add_argument(
        "--profile", type=Path, help="sample the meterline workers with py-spy into this directory"
    )
    parser.add_argument(
        "--brokers",
        default="tansu",
        help="comma-separated, each running every row: tansu (the local stack) and/or apache-kafka "
        "(4.x from its jars, tests/support/apache_kafka.py; ./run.sh test copies them)",
    )
    parser.add_argument(
        "--before", type=Path, help="a checkout whose meterline worker runs beside each meterline row"
    )
    return parser


def main() -> None:
    args = _arguments().parse_args()
    brokers = args.brokers.split(",")
    rows: list[dict[str, object]] = []
    for broker in brokers:
        with broker_stack(broker, "stream") as (base, bootstrap, state, services):
            found = _rows(args, base, bootstrap, state, services["kafka"].pid, broker)
        for row in found:
            row["broker"] = broker
        rows += found
    report(rows)


def _rows(
    args: argparse.Namespace, base: Config, bootstrap: str, state: Path, broker: int | None, name: str
) -> list[dict[str, object]]:
    """Every row of one broker: the baselines, then the meterline worker's."""
    rows: list[dict[str, object]] = []
    packed = isolated_topics(base, bootstrap, "packed")
    single = isolated_topics(base, bootstrap, "single")
    packed_messages = _produce(packed, bootstrap, args.events, packing=True)
    single_messages = _produce(single, bootstrap, args.single_events, packing=False)
    print(
        f"{name}: produced {args.events:,} packed events ({packed_messages:,} messages), "
        f"{args.single_events:,} single",
        file=sys.stderr,
    )

    if not args.meterline_only:
        for reader in ("fastavro", "compiled reader"):
            rows.append(_floor(bootstrap, packed, args.events, packed_messages, "packed", reader))
            rows.append(
                _floor(bootstrap, single, args.single_events, single_messages, "single-event", reader)
            )
        for kind in ("faust-bare", "faust-table"):
            rows.append(_worker(state, bootstrap, broker, single, args.single_events, single_messages, kind))
    if args.quix_python and not args.meterline_only:
        rows.append(
            _worker(
                state,
                bootstrap,
                broker,
                single,
                args.single_events,
                single_messages,
                "quix",
                args.quix_python,
            )
        )
    elif not args.meterline_only:
        print("no --quix-python: the Quix Streams row is left out", file=sys.stderr)
    sources = [args.before.resolve(), ROOT] if args.before else [ROOT]

    def meterline(
        config: Config,
        events: int,
        messages: int,
        suffix: str = "",
        overrides: dict[str, str] | None = None,
    ) -> None:
        for source in sources:
            row = _worker(
                state,
                bootstrap,
                broker,
                config,
                events,
                messages,
                "meterline",
                profile=args.profile,
                source=source,
                overrides=overrides,
            )
            row["what"] = f"{row['what']}{suffix}{' [before]' if source != ROOT else ''}"
            rows.append(row)

    meterline(packed, args.events, packed_messages, ", one day")
    # The same events with the default rate card's peak meter (seats), distinct count
    # (active_users, a first-sighting lookup per event) and level held (storage, hourly windows
    # accruing level-seconds) folded as sums: what the kinds that do not add cost beside the
    # adding ones (issue 37).
    meterline(
        packed,
        args.events,
        packed_messages,
        ", one day, seats, active users and storage summed (every meter adding)",
        {
            "METERLINE__METERS__SEATS__AGGREGATION": "sum",
            "METERLINE__METERS__ACTIVE_USERS__AGGREGATION": "sum",
            "METERLINE__METERS__ACTIVE_USERS__UNIQUE_BY": '""',
            "METERLINE__METERS__STORAGE__AGGREGATION": "sum",
            "METERLINE__PLANS__TEAM__PRICES__STORAGE__UNIT": '"GB"',  # a sum's price is in its unit
        },
    )
    meterline(single, args.single_events, single_messages)
    # Live traffic: the same 1M events over 20 minutes of event time (3,000 windows, ~330
    # events each), as a worker keeping up with the present sees them.
    live = isolated_topics(base, bootstrap, "live")
    live_messages = _produce(live, bootstrap, args.events, packing=True, span_ms=LIVE_SPAN_MS)
    meterline(live, args.events, live_messages, ", 20 min of event time")
    big = isolated_topics(base, bootstrap, "memory")
    big_messages = _produce(big, bootstrap, args.memory_events, packing=True)
    meterline(big, args.memory_events, big_messages, ", one day")
    return rows


def _spec(events: int, span_ms: int = DAY_MS) -> WorkloadSpec:
    # By default one day of usage for 50 customers ending a minute ago, whatever the number of
    # events: the windows are the same, only their contents grow.
    now = int(time.time() * 1000)
    return WorkloadSpec(
        seed=1,
        events=events,
        customers=50,
        start_ms=now - span_ms,
        span_ms=span_ms - 60_000,
        duplicate_rate=0.01,
        out_of_order_rate=0.02,
        late_rate=0.001,
    )


def _produce(config: Config, bootstrap: str, events: int, packing: bool, span_ms: int = DAY_MS) -> int:
    result, _ = produce_workload(
        config, bootstrap, _spec(events, span_ms), packing=packing, workers=os.cpu_count() or 1
    )
    return result.messages


def _floor(
    bootstrap: str, config: Config, events: int, messages: int, label: str, reader: str
) -> dict[str, object]:
    """aiokafka getmany + decoding into UsageEvents, with fastavro (what any Python consumer of these
    bytes pays) or with meterline's compiled reader (what the worker pays)."""
    from aiokafka import AIOKafkaConsumer

    serde = AvroSerde()

    decode = serde.decode_usage_with_fastavro if reader == "fastavro" else serde.decode_usage

    async def consume() -> tuple[int, float]:
        consumer = AIOKafkaConsumer(
            config.topics.events,
            bootstrap_servers=bootstrap,
            group_id=f"floor-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        decoded = seen = 0
        started = 0.0
        try:
            while seen < messages:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                if batches and not started:
                    started = time.perf_counter()
                for records in batches.values():
                    for record in records:
                        seen += 1
                        decoded += len(decode(record.value).events)
        finally:
            await consumer.stop()
        return decoded, time.perf_counter() - started

    decoded, seconds = asyncio.run(consume())
    return {
        "what": f"floor: aiokafka getmany + {reader} ({label})",
        "events": decoded,
        "messages": messages,
        "events/s": round(decoded / seconds),
        "RSS MiB": None,
        "worker CPU %": None,
        "broker CPU %": None,
    }


def _command(
    kind: str,
    bootstrap: str,
    config: Config,
    data_dir: Path,
    app_id: str,
    events: int,
    messages: int,
    python: str,
    profile: Path | None,
    env: dict[str, str],
) -> tuple[list[str], str]:
    """The worker process of `kind` and its row's label (`env` gains what the peer needs)."""
    if kind == "meterline":
        command = [
            sys.executable,
            "-m",
            "meterline.cli",
            "stream",
            "--data-dir",
            str(data_dir),
        ]
        label = f"meterline stream, 1 worker, rocksdb ({'packed' if messages < events else 'single-event'})"
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spy = Path(sys.executable).with_name("py-spy")
            command = [str(spy), "record", "-f", "raw", "-o", str(profile / f"{app_id}.txt"), "--", *command]
    elif kind == "quix":
        script = ROOT / "bench" / "quix_baseline.py"
        command = [python, str(script), bootstrap, config.topics.events, app_id, str(data_dir)]
        env["PYTHONPATH"] = str(ROOT)
        label = "Quix Streams 3 tumbling sum per customer (single-event)"
    else:
        command = [
            sys.executable,
            str(ROOT / "bench" / "faust_baselines.py"),
            kind.removeprefix("faust-"),
            bootstrap,
            config.topics.events,
            app_id,
            str(data_dir),
        ]
        label = {
            "faust-bare": "bare Faust agent, no work (single-event)",
            "faust-table": "Faust tumbling Table, same sum (single-event)",
        }[kind]
    return command, label


def _worker(
    state: Path,
    bootstrap: str,
    broker: int | None,
    config: Config,
    events: int,
    messages: int,
    kind: str,
    python: str = sys.executable,
    profile: Path | None = None,
    source: Path = ROOT,
    overrides: dict[str, str] | None = None,
) -> dict[str, object]:
    """One worker's row; a meterline worker runs the code of `source` (this checkout or --before).
    `broker`: the broker's process id, whose CPU is reported beside the worker's (None: not ours).
    `overrides`: configuration the worker gets from its environment."""
    app_id = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    data_dir = state / app_id
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "METERLINE__STREAM__APP_ID": app_id,
        "METERLINE__STREAM__COMMIT_INTERVAL_SECONDS": "0.5",
        # Only the topics the stream worker uses: an older checkout (--before) refuses keys it
        # does not know.
        **{
            f"METERLINE__TOPICS__{name.upper()}": getattr(config.topics, name)
            for name in ("events", "aggregates", "events_dlq")
        },
        **(overrides or {}),
    }
    command, label = _command(
        kind, bootstrap, config, data_dir, app_id, events, messages, python, profile, env
    )
    partitions = config.kafka.partitions
    log = open(state / f"{app_id}.log", "wb")  # noqa: SIM115  # closed below
    # `python -m` puts the working directory first on sys.path: the worker runs `source`'s code.
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=source)
    first: tuple[float, int] | None = None
    last: tuple[float, int, float] = (time.monotonic(), 0, time.time())
    peak_rss = 0
    usage: list[tuple[float, float, float, float]] = []  # (monotonic, wall, worker CPU s, broker CPU s)
    deadline = time.monotonic() + 1800
    # One reader of the group's commits for the whole row: a consumer opened per poll cost ~3 ms of
    # this process's CPU and a connection on the broker ten times a second, on the worker's cores.
    commits = Consumer({"bootstrap.servers": bootstrap, "group.id": app_id, "enable.auto.commit": False})
    try:
        # Done when the commits cover every message produced: the broker's high watermark can lag
        # the real end by a whole batch (DESIGN §7), so it is not the measure. Ticks the worker
        # adds to quiet partitions only come after.
        while time.monotonic() < deadline and last[1] < messages and process.poll() is None:
            time.sleep(0.1)
            worker = process_tree(process.pid)
            peak_rss = max(peak_rss, sum(rss_kib(pid) for pid in worker))
            usage.append(
                (
                    time.monotonic(),
                    time.time(),
                    sum(cpu_seconds(pid) for pid in worker),
                    cpu_seconds(broker) if broker else 0.0,
                )
            )
            done = _committed(commits, config.topics.events, partitions)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done != last[1]:
                last = (now, done, time.time())
                print(f"  {label}: {done:,}/{messages:,} messages committed", file=sys.stderr)
    finally:
        if profile is not None and kind == "meterline":
            process.send_signal(signal.SIGINT)  # py-spy writes its samples and stops the worker
        else:
            process.terminate()
        process.wait(timeout=60)
        log.close()
        commits.close()
    assert first is not None and last[1] >= messages, f"{label} did not finish: see {state / app_id}.log"
    started = _first_record_at(state / f"{app_id}.log") if kind == "meterline" else None
    covered: float
    if started is not None:  # from the first record processed, to the commit covering the last
        seconds, covered = last[2] - started, events
        worker_cpu, broker_cpu = cpu_between(usage, 1, started, last[2])
    else:  # from the first commit to the last: startup excluded, the first commit's work too
        seconds, covered = last[0] - first[0], (last[1] - first[1]) / messages * events
        worker_cpu, broker_cpu = cpu_between(usage, 0, first[0], last[0])
    return {
        "what": label,
        "events": events,
        "messages": messages,
        "events/s": round(covered / seconds) if seconds else None,
        "RSS MiB": round(peak_rss / 1024),
        "worker CPU %": round(100 * worker_cpu / seconds) if seconds else None,
        "broker CPU %": round(100 * broker_cpu / seconds) if seconds and broker else None,
    }


# What a fresh Apache Kafka answers while it creates and loads __consumer_offsets (librdkafka does
# not mark these retriable on committed()).
COORDINATOR_MOVING = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def _committed(commits: Consumer, topic: str, partitions: int) -> int:
    """The messages of `topic` the reader's group has committed, over all partitions (0 while
    Apache Kafka's group coordinator is still loading or moving: retriable)."""
    try:
        offsets = commits.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    except KafkaException as exc:
        if exc.args[0].code() not in COORDINATOR_MOVING:
            raise
        return 0
    return sum(max(tp.offset, 0) for tp in offsets)


def _first_record_at(log: Path) -> float | None:
    """The wall-clock time of the worker's first processed record: it logs each partition's
    recovery at its first record."""
    for line in log.read_text(errors="replace").splitlines():
        if "recovered" in line and line.startswith("["):
            stamp = line[1 : line.index("]")]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


if __name__ == "__main__":
    main()
