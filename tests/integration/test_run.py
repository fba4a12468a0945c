"""`meterline run`: every role in one process against the broker, the embedded ClickHouse and the
Stripe fake (SIGKILLed mid-run in tests/crash/test_run_sigkill.py). While it holds the embedded
ClickHouse, `sql`, `reconcile`, `invoice preview` and `dispute` started beside it run inside it;
its /metrics, /healthz and /readyz answer with the pipeline's real counts; the dashboard is drawn
in Chromium, behind its credentials and its policy; its command API refuses what a browser sends."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterline.core.config import Config
from meterline.produce import produce_workload
from meterline.reconciler.billing.pricing import invoice
from meterline.streams.windows import period_answer
from meterline.workload import Expected, WorkloadSpec, customer_ids
from tests.conftest import TEST_PARTITIONS, isolated_config
from tests.support.browser import launch, needs_chromium
from tests.support.pipeline import (
    HOUR_MS,
    RunProcess,
    Workers,
    free_port,
    http_get,
    small_workload,
    start_meterline,
)
from tests.support.run import (
    BASIC,
    PLANTED,
    assert_no_secret_in,
    clickhouse_windows,
    run_environment,
    wait_until_settled,
)
from tests.support.stripe import serve_fake, set_up_stripe


def test_a_standalone_role_serves_its_own_metrics_and_health(workers: Workers, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sink.log"
    # Its own group: the run tests' sinks use the default groups.
    args = [
        "sink",
        "clickhouse",
        "--group",
        f"test-sink-{port}",
        "--http-port",
        str(port),
        "--log-format",
        "json",
    ]
    role = start_meterline(args, workers.env, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert role.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                status, body = http_get(f"http://127.0.0.1:{port}/readyz")
            except (urllib.error.URLError, OSError):  # not listening yet
                status, body = 0, ""
            if status == 200:
                assert json.loads(body) == {"ok": True, "roles": {"sink-clickhouse": "ready"}}
                break
            time.sleep(0.5)
        # Until its group has assigned it its partitions: stopping a member while its
        # join is pending leaves the group stuck on tansu, for whoever joins it next.
        held = ("meterline_sink_partitions", (("sink", "clickhouse"),))
        while True:
            samples = metric_samples(http_get(f"http://127.0.0.1:{port}/metrics")[1])
            if samples.get(held):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert samples[held] == 3 * TEST_PARTITIONS  # usage.aggregates, the DLQ, raw usage.events
        assert samples[("meterline_sink_lag_seconds", (("sink", "clickhouse"),))] == 0
    finally:
        role.terminate()
        assert role.wait(timeout=60) == 0
    # Every line is a JSON object, librdkafka's own among them (core.kafka.settings).
    logged = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert any(entry["logger"] == "meterline.sink.clickhouse" for entry in logged)


# -- one settled run, looked at from outside --------------------------------------------------------


class Settled:
    def __init__(
        self, run: RunProcess, url: str, spec: WorkloadSpec, expected: Expected, config: Config
    ) -> None:
        self.run, self.url, self.spec, self.expected, self.config = run, url, spec, expected, config

    @property
    def period(self) -> str:
        return datetime.fromtimestamp(self.spec.start_ms / 1000, UTC).strftime("%Y-%m")

    def get(self, path: str) -> tuple[int, str]:
        """With the dashboard's credentials (health and metrics need none)."""
        return http_get(f"{self.url}{path}", {"Authorization": BASIC})


@pytest.fixture(scope="module")
def settled(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settled]:
    """A `meterline run` that has taken a small workload (3 customers, 2 hours) into ClickHouse and
    Stripe exactly, for the tests below to question."""
    tmp_path = tmp_path_factory.mktemp("settled-run")
    config = isolated_config(kafka_bootstrap, tmp_path)
    _, server, base = serve_fake(seed=2)
    spec = small_workload(seed=72)
    meters = set_up_stripe(config, base, customer_ids(spec))
    run = RunProcess(run_environment(Workers(config, tmp_path), base), tmp_path, "--log-format", "json")
    try:
        run.start()
        url = run.url()
        _, expected = produce_workload(config, kafka_bootstrap, spec)
        wait_until_settled(run, base, meters, spec, expected, timeout=240)
        yield Settled(run, url, spec, expected, config)
        assert run.stop() == 0, run.logs()
        logged = run.logs(whole=True)
        assert '"logger": "meterline.run"' in logged  # JSON lines, as asked
        assert_no_secret_in(logged)
    finally:
        run.kill_if_running()
        server.shutdown()


def usage_in(settled: Settled, customer: str) -> dict[str, int]:
    from meterline.reconciler.billing.periods import period_bounds

    start, end = period_bounds(settled.period)
    windows: dict[str, dict[int, int]] = {}
    for (c, meter, window), (value, _) in settled.expected.totals.items():
        if c == customer and start <= window < end:
            windows.setdefault(meter, {})[window] = value
    return {m: period_answer(settled.config.meters[m].aggregation, w) for m, w in windows.items()}


def test_commands_beside_run_execute_inside_it(settled: Settled, tmp_path: Path) -> None:
    run = settled.run
    customer = customer_ids(settled.spec)[0]

    count = run.command("sql", "--format", "json", "SELECT count() AS n FROM usage_windows FINAL")
    assert count.returncode == 0, count.stderr
    assert "inside meterline run" in count.stderr
    assert json.loads(count.stdout) == [{"n": len(clickhouse_windows(run))}]

    refused = run.command("sql", "SELECT no_such_column FROM usage_windows")
    assert refused.returncode == 1
    assert "no_such_column" in refused.stderr  # ClickHouse's own message reaches the caller

    reconciled = run.command("reconcile", "--period", settled.period, "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    document = json.loads(reconciled.stdout)
    assert document["ok"] and all(pair["drift"] == 0 for pair in document["pairs"])

    preview = run.command("invoice", "preview", "--customer", customer, "--period", settled.period, "--json")
    assert preview.returncode == 0, preview.stderr
    bill = invoice(settled.config.plan_for(customer), usage_in(settled, customer))
    assert json.loads(preview.stdout)["total"] == str(bill.total)

    # Replay re-derives the windows from usage.events, inside run, and finds nothing to repair.
    starts = [start for _, _, start in settled.expected.totals]
    replayed = run.command("replay", "--from", str(min(starts)), "--to", str(max(starts) + 60_000), "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    summary = json.loads(replayed.stdout)
    # Windows of value, as replay counts them (an active_users window where no user was new has
    # none); storage, a time_weighted meter, is not re-derived (replay says so)
    assert summary["not_rederived"].keys() == {"storage"}
    assert summary["windows"] == sum(
        1 for (_, meter, _), (value, _) in settled.expected.totals.items() if value and meter != "storage"
    )
    assert (summary["ClickHouse differs"], summary["Stripe differs"]) == (0, 0)

    # A relative --output is the caller's directory, not run's.
    dispute = run.command(
        "dispute",
        "--customer",
        customer,
        "--period",
        settled.period,
        "--format",
        "csv",
        "--output",
        "d.csv",
        cwd=tmp_path,
    )
    assert dispute.returncode == 0, dispute.stderr
    assert customer in (tmp_path / "d.csv").read_text()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_health_and_readiness_report_the_pipeline(settled: Settled) -> None:
    status, body = settled.get("/readyz")
    assert status == 200, body
    assert set(json.loads(body)["roles"]) == {
        "stream",
        "sink-clickhouse",
        "sink-stripe",
        "webhooks",
        "reconcile",
        "alerts",
    }
    assert settled.get("/healthz")[0] == 200

    status, text = settled.get("/metrics")
    assert status == 200
    samples = metric_samples(text)
    expected = settled.expected
    # The stream's counters are the generator's exact outcomes.
    assert samples[("meterline_stream_events_total", (("outcome", "accepted"),))] == expected.accepted
    assert samples[("meterline_stream_events_total", (("outcome", "counted"),))] == sum(
        count for _, count in expected.totals.values()
    )
    # Only billable events are deduplicated; a copy of a non-billable one counts as non-billable.
    duplicates = samples[("meterline_stream_events_total", (("outcome", "duplicate"),))]
    non_billable = samples[("meterline_stream_events_total", (("outcome", "non_billable"),))]
    assert duplicates + non_billable == expected.duplicates + expected.non_billable
    assert duplicates <= expected.duplicates
    for reason, count in expected.rejected.items():
        assert samples[("meterline_stream_rejected_total", (("reason", reason),))] == count
    # Every window revision was settled with Stripe once, after a flush of each sink.
    aggregates = samples[("meterline_stream_aggregates_sent_total", ())]
    assert samples[("meterline_stripe_reports_total", (("status", "sent"),))] == aggregates
    assert samples[("meterline_stripe_calls_total", ())] >= aggregates
    assert samples[("meterline_stripe_report_latency_seconds_count", ())] == aggregates
    assert samples[("meterline_clickhouse_rows_total", (("table", "usage_window_revisions"),))] == aggregates
    assert samples[("meterline_sink_flush_seconds_count", (("sink", "clickhouse"),))] > 0
    assert samples[("meterline_sink_lag_seconds", (("sink", "stripe"),))] == 0
    assert samples[("meterline_sink_partitions", (("sink", "clickhouse"),))] > 0
    assert samples[("meterline_sink_partitions", (("sink", "stripe"),))] > 0


def test_an_unknown_route_and_a_bad_grain_are_refused_clearly(settled: Settled) -> None:
    assert settled.get("/nothing-here")[0] == 404
    status, body = settled.get("/api/customers/cust-0000/usage?grain=week")
    assert status == 400 and "week" in body
    status, body = settled.get("/api/customers/cust-0000/usage?period=2026-13")
    assert status == 400 and "2026-13" in body


def test_run_serves_the_http_ingest_behind_its_own_keys(settled: Settled) -> None:
    """The dashboard's credentials are not an ingest key: POST /v1/events wants its own."""
    import urllib.error
    import urllib.request

    status, body = http_get(f"{settled.url}/openapi.json")
    assert status == 200 and "/v1/events" in json.loads(body)["paths"]
    request = urllib.request.Request(
        f"{settled.url}/v1/events",
        b"[]",
        {"Content-Type": "application/cloudevents-batch+json", "Authorization": BASIC},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


# -- the dashboard, in a real browser ---------------------------------------------------------------

# Waited for by selector: a predicate would be evaluated in the page, which its policy forbids.
READY = "body[data-ready='1']"


def signed_in_page(browser: Any) -> Any:
    """A page of a browser that has the dashboard's basic-auth credentials, as an operator's would."""
    password = PLANTED["METERLINE__RUN__DASHBOARD_PASSWORD"]
    return browser.new_context(http_credentials={"username": "operator", "password": password}).new_page()


def expected_buckets(settled: Settled, customer: str, bucket_ms: int) -> dict[str, dict[int, int]]:
    from meterline.reconciler.billing.periods import period_bounds

    start, end = period_bounds(settled.period)
    windows: dict[str, dict[int, dict[int, int]]] = {}  # meter -> bucket -> window -> value
    for (c, meter, window), (value, _) in settled.expected.totals.items():
        if c == customer and start <= window < end:  # a bucket of windows of no value (no user new) too
            windows.setdefault(meter, {}).setdefault(window // bucket_ms * bucket_ms, {})[window] = value
    return {
        meter: {t: period_answer(settled.config.meters[meter].aggregation, w) for t, w in buckets.items()}
        for meter, buckets in windows.items()
    }


@needs_chromium
def test_the_dashboard_draws_a_customers_usage_in_chromium(settled: Settled) -> None:
    from playwright.sync_api import sync_playwright

    from meterline.dashboard import allowance
    from meterline.reconciler.billing.invoice_text import quantity_text
    from meterline.reconciler.billing.periods import period_bounds, projected_usage

    customer = customer_ids(settled.spec)[1]
    plan = settled.config.plan_for(customer)
    usage = usage_in(settled, customer)
    bill = invoice(plan, usage)
    # The projection is for one instant, stated in the document: pinned, so the page and this
    # reading of the API project the same usage whatever the clock did between them.
    as_of = settled.spec.start_ms + settled.spec.span_ms
    _, body = settled.get(f"/api/customers/{customer}/usage?period={settled.period}&as_of={as_of}")
    document = json.loads(body)
    start, end = period_bounds(settled.period)
    projected_bill = invoice(plan, projected_usage(usage, start, end, as_of, settled.config.levels))
    assert (document["as_of"], document["projected"]["total"]) == (
        as_of,
        projected_bill.currency.format(projected_bill.total),
    )
    projected_total = document["projected"]["total"]
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = signed_in_page(browser)
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{settled.url}/customers/{customer}?period={settled.period}&as_of={as_of}")
            page.wait_for_selector(READY, state="attached", timeout=20_000)
            for grain, bucket_ms in (("hour", HOUR_MS), ("day", 24 * HOUR_MS)):
                if grain == "day":
                    page.click("text=by day")
                    page.wait_for_url("**grain=day**")
                    page.wait_for_selector(READY, state="attached", timeout=20_000)
                for meter, wanted in expected_buckets(settled, customer, bucket_ms).items():
                    # A peak (seats) is a level, drawn as lines at its heights; the others as bars.
                    mark = "line" if meter in settled.config.levels else "rect"
                    # A model of tokens (a meter priced per value): its bars stacked with the others'.
                    chart = "svg[data-meter='tokens'] g" if meter.startswith("tokens.") else "svg"
                    bars = page.eval_on_selector_all(
                        f"{chart}[data-meter='{meter}'] {mark}",
                        "rs => rs.map(r => [+r.dataset.t, +r.dataset.value, r.getBBox().height "
                        "+ r.getBBox().width])",
                    )
                    assert {t: v for t, v, _ in bars} == wanted, (grain, meter)
                    assert all(size >= 1 for _, _, size in bars)  # drawn, not just in the DOM
                    assert page.locator(f"{chart}[data-meter='{meter}']").is_visible()
            allowance_rows = page.eval_on_selector_all(
                "#allowance tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
            )
            api_calls = plan.prices["api_calls"]
            used, included, overage = allowance(api_calls, usage.get("api_calls", 0))
            assert [
                api_calls.label,
                quantity_text(used),
                f"{quantity_text(included)} of 1,000,000",
                quantity_text(overage),
                api_calls.billed_unit,
            ] in allowance_rows
            invoice_total = page.eval_on_selector(
                "#invoice tr:last-child td:last-child", "c => c.textContent"
            )
            assert invoice_total == bill.currency.format(bill.total)
            projected = page.eval_on_selector("#projected tr:last-child td:last-child", "c => c.textContent")
            assert projected == projected_total
        finally:
            browser.close()
    assert problems == []


HOSTILE = (
    '<script>document.body.dataset.pwned = "script"</script>'
    '<img src=x onerror="document.body.dataset.pwned = 1">'
)


@needs_chromium
def test_a_customer_id_is_text_on_the_page_never_markup(settled: Settled) -> None:
    """Customer ids are user data: one made of markup renders as its characters, and nothing in it
    runs (the page escapes it, and its policy would not run it anyway)."""
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = signed_in_page(browser)
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            response = page.goto(f"{settled.url}/customers/{quote(HOSTILE, safe='')}?period={settled.period}")
            assert response is not None and response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_selector(READY, state="attached", timeout=20_000)
            assert page.text_content("h1") == f"Usage of {HOSTILE}"
            assert page.title() == f"Usage: {HOSTILE}"
            assert page.get_attribute("body", "data-pwned") is None and dialogs == []
            assert page.locator("h1 script, h1 img").count() == 0
        finally:
            browser.close()


def test_the_dashboard_needs_its_credentials_and_its_own_host(settled: Settled) -> None:
    path = f"/customers/{customer_ids(settled.spec)[0]}"
    status, body = http_get(f"{settled.url}{path}")
    assert status == 401 and "dashboard_token" in body
    wrong = "Basic " + base64.b64encode(b"operator:not-the-password").decode()
    assert http_get(f"{settled.url}{path}", {"Authorization": wrong})[0] == 401
    token = {"Authorization": f"Bearer {PLANTED['METERLINE__RUN__DASHBOARD_TOKEN']}"}
    assert http_get(f"{settled.url}/api/customers/cust-0000/usage", token)[0] == 200
    assert http_get(f"{settled.url}{path}", {"Authorization": BASIC})[0] == 200
    # DNS rebinding: evil.example resolved to 127.0.0.1 still sends its own name.
    status, body = http_get(f"{settled.url}{path}", {"Authorization": BASIC, "Host": "evil.example:8790"})
    assert status == 421 and "evil.example" in body
    status, _ = http_get(f"{settled.url}{path}", {"Authorization": BASIC, "Origin": "http://evil.example"})
    assert status == 403
    # Probes and scrapers need no credentials: these carry no customer's data.
    assert http_get(f"{settled.url}/healthz")[0] == 200 and http_get(f"{settled.url}/metrics")[0] == 200


def test_the_command_api_runs_nothing_a_browser_or_another_user_sends(
    settled: Settled, tmp_path: Path
) -> None:
    """The attack of issue 16: a page the operator visits posts a command to run's port."""
    import stat
    import urllib.request

    secret_file = Path(settled.run.env["METERLINE__DEV__STATE_DIR"]) / "run.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text()
    target = tmp_path / "x.csv"
    customer = customer_ids(settled.spec)[0]
    argv = [
        "dispute",
        "--customer",
        customer,
        "--period",
        settled.period,
        "--format",
        "csv",
        "--output",
        str(target),
    ]
    json_type = {"Content-Type": "application/json"}
    attacks = {
        "the issue's request": (
            {"Content-Type": "text/plain", "Origin": "http://evil.example", "Host": "evil.example:8790"},
            421,
        ),
        "foreign Host": ({**json_type, "X-Meterline-Secret": secret, "Host": "evil.example:8790"}, 421),
        "foreign Origin": ({**json_type, "X-Meterline-Secret": secret, "Origin": "http://evil.example"}, 403),
        "text/plain": ({"Content-Type": "text/plain", "X-Meterline-Secret": secret}, 415),
        "no secret": (json_type, 401),
        "wrong secret": ({**json_type, "X-Meterline-Secret": secret[::-1]}, 403),
    }
    for name, (headers, wanted) in attacks.items():
        for command in (argv, ["sql", "SELECT customer_id FROM usage_windows"]):
            request = urllib.request.Request(
                f"{settled.url}/api/cli", json.dumps({"argv": command}).encode(), headers, method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            body = refused.value.read().decode()
            assert refused.value.code == wanted, (name, body)
            assert "error" in json.loads(body) and customer not in body, name
    assert not target.exists()
    # meterline itself, beside run, sends the secret: the same command runs and writes the file.
    done = settled.run.command(*argv)
    assert done.returncode == 0, done.stderr
    assert customer in target.read_text()
