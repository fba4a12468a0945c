"""Every Prometheus metric meterline exports, in one place (deploy/grafana reads these names).

The sinks, the Stripe caller, reconcile and the webhook consumer count into the metrics below as
they work: once per batch, flush or call, never per event. The stream app's counters sit on its
hot path as plain integers, so they are read only when Prometheus scrapes (`StreamCollector`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# -- sinks (label sink: clickhouse | stripe) -------------------------------------------------------

SINK_RECORDS = Counter("meterline_sink_records", "Records consumed by a sink.", ["sink"])
SINK_FLUSH_SECONDS = Histogram(
    "meterline_sink_flush_seconds",
    "One flush: the write (ClickHouse insert, or Stripe calls and ledger) and the offset commit.",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SINK_LAG_SECONDS = Gauge(
    "meterline_sink_lag_seconds",
    "Age of the oldest record a sink has consumed but not yet committed (0 when caught up).",
    ["sink"],
)
SINK_PARTITIONS = Gauge(
    "meterline_sink_partitions", "Partitions a sink's consumer holds (0: assigned none: stuck).", ["sink"]
)
SINK_RETRIES = Counter(
    "meterline_sink_retries", "ClickHouse writes retried while it was unavailable.", ["sink"]
)
CLICKHOUSE_ROWS = Counter("meterline_clickhouse_rows", "Rows inserted into ClickHouse.", ["table"])

# -- Stripe ----------------------------------------------------------------------------------------

STRIPE_CALLS = Counter("meterline_stripe_calls", "HTTP calls made to Stripe, retries included.")
STRIPE_ERRORS = Counter(
    "meterline_stripe_errors", "Stripe calls that failed, by error (retried or not).", ["error"]
)
STRIPE_RETRIES = Counter("meterline_stripe_retries", "Stripe calls retried with the same idempotency key.")
STRIPE_REPORTS = Counter(
    "meterline_stripe_reports", "Window revisions settled with Stripe, by ledger status.", ["status"]
)
STRIPE_WAITING = Gauge(
    "meterline_stripe_waiting_for_customer",
    "Window revisions held until Stripe knows their customer (the sink's last look at its ledger).",
)
STRIPE_REPORT_LATENCY = Histogram(
    "meterline_stripe_report_latency_seconds",
    "From a window's close (its aggregate on usage.aggregates) to Stripe's answer.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

# -- reconcile and webhooks ------------------------------------------------------------------------

# Exported only by the process that reconciles (register_reconcile): a role that never ran
# reconcile would otherwise report drift 0, and a max() over roles would never show drift.
RECONCILE_RUNS = Counter(
    "meterline_reconcile_runs", "Reconciliation runs, by result.", ["result"], registry=None
)
RECONCILE_DRIFT_UNITS = Gauge(
    "meterline_reconcile_drift_units",
    "Sum of |Stripe - ours| over all pairs in the last run.",
    registry=None,
)
RECONCILE_DRIFTING_PAIRS = Gauge(
    "meterline_reconcile_drifting_pairs",
    "Customer/meter pairs beyond the threshold in the last run.",
    registry=None,
)
RECONCILE_LAST_RUN = Gauge(
    "meterline_reconcile_last_run_timestamp_seconds",
    "When the last reconciliation finished.",
    registry=None,
)
_RECONCILE = (RECONCILE_RUNS, RECONCILE_DRIFT_UNITS, RECONCILE_DRIFTING_PAIRS, RECONCILE_LAST_RUN)


def register_reconcile(registry: CollectorRegistry = REGISTRY) -> None:
    """Export the reconcile metrics from this process (the reconcile role, `run`). Idempotent."""
    for metric in _RECONCILE:
        with contextlib.suppress(ValueError):  # registered already
            registry.register(metric)


WEBHOOK_EVENTS = Counter(
    "meterline_webhook_events", "Stripe webhook events, by type and outcome.", ["type", "outcome"]
)
INGEST_REQUESTS = Counter("meterline_ingest_requests", "HTTP ingest requests, by status.", ["status"])
INGEST_EVENTS = Counter(
    "meterline_ingest_events", "HTTP ingest events, by outcome and refusal reason.", ["outcome", "reason"]
)
INGEST_LATENCY = Histogram(
    "meterline_ingest_request_seconds", "An HTTP ingest request, received to answered (broker included)."
)
USAGE_ALERTS = Counter("meterline_usage_alerts", "Usage alerts raised (each once), by meter.", ["meter"])


class StreamCollector(Collector):
    """The stream app's counters, read from its snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield _counter("meterline_stream_records", "Records read from usage.events.", s["records"])
        events = CounterMetricFamily(
            "meterline_stream_events",
            "Usage events by outcome: accepted (valid, duplicates included); counted (billable, folded "
            "into a window once); duplicate (a billable event_id seen before); non_billable (never "
            "billed, so never deduplicated: copies included).",
            labels=["outcome"],
        )
        for outcome, key in (
            ("accepted", "accepted"),
            ("counted", "counted"),
            ("duplicate", "duplicates"),
            ("non_billable", "non_billable"),
        ):
            events.add_metric([outcome], s[key])
        yield events
        rejected = CounterMetricFamily(
            "meterline_stream_rejected", "Events dead-lettered, by reason.", labels=["reason"]
        )
        for reason, count in sorted(s["rejected"].items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield _counter(
            "meterline_stream_late_corrections",
            "Revisions > 0: late events for closed windows.",
            s["corrections"],
        )
        yield _counter("meterline_stream_windows_closed", "Windows closed.", s["windows_closed"])
        yield _counter(
            "meterline_stream_aggregates_sent", "Aggregates sent to usage.aggregates.", s["aggregates_sent"]
        )
        yield GaugeMetricFamily("meterline_stream_open_windows", "Windows open now.", value=s["open_windows"])
        lag = GaugeMetricFamily(
            "meterline_stream_watermark_lag_seconds",
            "Wall clock minus the partition's event-time watermark.",
            labels=["partition"],
        )
        for partition, ms in s["watermark_lag_ms"].items():
            lag.add_metric([str(partition)], ms / 1000)
        yield lag


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def register_stream(
    snapshot: Callable[[], Mapping[str, Any]], registry: CollectorRegistry = REGISTRY
) -> None:
    registry.register(StreamCollector(snapshot))
