"""Every container of deploy/ started as its manifest starts it, with no ConfigMap: the setup steps
(topics, migrations, Stripe's prices) run to success in order, and each long-running role answers
/readyz, then stops cleanly on SIGTERM.

"As its manifest starts it": the Kubernetes containers' `args` and the environment their
`envFrom` gives (the meterline-env ConfigMap and, for the Secret, test values), the compose
services' `command` and `environment`. What cannot be the cluster's on this machine is replaced,
and only that: the service addresses (Kafka, ClickHouse, the Schema Registry, Stripe) by the local
stack's, the replication factor 3 by 1 (one broker here), the listening host 0.0.0.0 by 127.0.0.1,
the ports by free ones, and the state volume by a temporary directory. No meterline.toml exists
where they run: the packaged defaults apply, as they do in a pod without the optional ConfigMap.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meterline.core.config import TopicsConfig
from tests.conftest import local_broker
from tests.support.deploy import DEPLOY, compose, containers, manifests
from tests.support.pipeline import free_port
from tests.support.stripe import KEY, serve_fake

pytestmark = pytest.mark.integration

SETUP_ORDER = (["topics", "ensure"], ["migrate"], ["stripe", "sync"])


def k8s_environment() -> dict[str, str]:
    [config_map] = [
        m for _, m in manifests() if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "meterline-env"
    ]
    return {str(k): str(v) for k, v in config_map["data"].items()}


def compose_environment() -> dict[str, str]:
    """The meterline services' environment with compose's ${VAR:-default} and ${VAR:?error}
    interpolated from the test's secrets."""
    secrets = {"STRIPE_API_KEY": KEY, "STRIPE_WEBHOOK_SECRET": "whsec_test"}
    environment = compose()["services"]["migrate"]["environment"]

    def interpolate(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, kind, fallback = match.group(1), match.group(2), match.group(3)
            if name in secrets:
                return secrets[name]
            assert kind == ":-", f"${{{name}}} must be given: {fallback}"
            return fallback

        return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", one, text)

    return {str(k): interpolate(str(v)) for k, v in environment.items()}


def k8s_commands() -> Iterator[tuple[str, list[str]]]:
    for name, manifest in manifests():
        for container in containers(manifest):
            yield f"k8s/{name}:{container['name']}", list(container["args"])


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in compose()["services"].items():
        if str(service["image"]).startswith("meterline:"):
            yield f"compose:{name}", list(service["command"])


def localized(args: list[str], state: Path) -> tuple[list[str], int | None]:
    """The command with its ports and its state volume replaced; the HTTP port it will answer on."""
    args = [str(state) if a.startswith(("/var/lib/meterline", "/home/meterline")) else a for a in args]
    http_port = None
    for flag in ("--http-port", "--port"):
        if flag in args:
            index = args.index(flag) + 1
            args[index] = str(free_port())
            if flag == "--http-port":
                http_port = int(args[index])
    return args, http_port


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own: the roles join their default consumer groups, stopped right
    after they answer, which on tansu can leave a group stuck for the next member (DESIGN §7)."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with local_broker(tmp_path_factory.mktemp("deploy-stack")) as address:
        yield address


@pytest.fixture(scope="module")
def stripe_base() -> Iterator[str]:
    _, server, base = serve_fake(seed=7)
    yield base
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("flavour", ["k8s", "compose"])
def test_every_container_configures_and_starts_as_its_manifest_gives_it(
    flavour: str, own_broker: str, stripe_base: str, tmp_path: Path
) -> None:
    given = k8s_environment() if flavour == "k8s" else compose_environment()
    assert "METERLINE_CONFIG" not in given, "a config file that may not exist: pods would crash-loop"
    assert given.get("METERLINE__STREAM__PROCESSING_GUARANTEE", "at_least_once") == "at_least_once"
    secrets = {"STRIPE_API_KEY": KEY, "STRIPE_WEBHOOK_SECRET": "whsec_test", "CLICKHOUSE_PASSWORD": ""}
    local = {
        "KAFKA_BOOTSTRAP": own_broker,
        "SCHEMA_REGISTRY_URL": "mock://deploy-test",
        "CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
        "STRIPE_API_BASE": stripe_base,
        "METERLINE__KAFKA__REPLICATION_FACTOR": "1",
        "METERLINE__RUN__HOST": "127.0.0.1",
        # Topics of this test's own, so that tests sharing the broker never see each other's.
        **{
            f"METERLINE__TOPICS__{t.upper()}": f"{t}.deploy-{flavour}"
            for t in (f.name for f in dataclasses.fields(TopicsConfig))
        },
        "METERLINE__STREAM__APP_ID": f"deploy-{flavour}-{os.getpid()}",
    }
    replaced = {k for k in local if k in given} | {"METERLINE__RUN__HOST"}
    assert {"KAFKA_BOOTSTRAP", "CLICKHOUSE_DSN"} <= replaced, "the manifest names no Kafka or ClickHouse"
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **secrets, **given, **local}
    if flavour == "compose":
        environment.pop("CLICKHOUSE_PASSWORD")  # compose gives chdb's user a password it has not
    commands = dict(k8s_commands() if flavour == "k8s" else compose_commands())
    cwd = tmp_path / "cwd"  # no ./meterline.toml here
    cwd.mkdir()

    def meterline(args: list[str]) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{'-'.join(args[:2])}.log", "ab")  # noqa: SIM115  # the child keeps it
        return subprocess.Popen(
            [sys.executable, "-m", "meterline.cli", *args], env=environment, cwd=cwd, stdout=log, stderr=log
        )

    # The setup steps first, in order, each to success.
    setup = [
        args for args in commands.values() if args[:2] in [s[:2] for s in SETUP_ORDER] or args == ["migrate"]
    ]
    assert sorted(setup) == sorted(SETUP_ORDER), f"{flavour} runs these setup steps: {setup}"
    for args in SETUP_ORDER:
        done = meterline(args).wait(timeout=120)
        assert done == 0, f"{flavour}: meterline {' '.join(args)} exited {done}: {_logs(tmp_path)}"
    # Then each role: ready, then a clean stop.
    roles = {where: args for where, args in commands.items() if args not in [list(s) for s in SETUP_ORDER]}
    assert {a[0] for a in roles.values()} == {
        "stream",
        "sink",
        "webhooks",
        "reconcile",
        "alerts",
        "ingest",
    }, roles
    for where, args in roles.items():
        command, http_port = localized(args, tmp_path / "state")
        assert http_port is not None, f"{where} serves no /readyz"
        process = meterline(command)
        deadline = time.monotonic() + 90
        while not ready(http_port):
            assert process.poll() is None, f"{where} exited {process.returncode}: {_logs(tmp_path)}"
            assert time.monotonic() < deadline, f"{where} never became ready: {_logs(tmp_path)}"
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, f"{where} did not stop cleanly: {_logs(tmp_path)}"


def _logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(tmp_path.glob("*.log"))
    )


def test_the_alert_rules_are_the_prometheus_operator_s_rules_and_load_in_prometheus() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    operator = list(
        yaml.safe_load_all((DEPLOY / "k8s" / "prometheus-operator" / "monitoring.yaml").read_text())
    )
    [prometheus_rule] = [d for d in operator if d["kind"] == "PrometheusRule"]
    assert prometheus_rule["spec"] == rules
    scraped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scraped["rule_files"] == ["alerts.yml"]
    mounted = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounted
    [pod_monitor] = [d for d in operator if d["kind"] == "PodMonitor"]
    selected = pod_monitor["spec"]["selector"]["matchLabels"]
    scraped_ports = {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]}
    for name, manifest in manifests():
        for container in containers(manifest):
            if "--http-port" in container["args"]:
                labels = manifest["spec"]["template"]["metadata"]["labels"]
                assert selected.items() <= labels.items(), f"{name}: not scraped by the PodMonitor"
                assert {p["name"] for p in container["ports"]} & scraped_ports, name


def test_each_alert_watches_what_the_issue_names_with_metrics_meterline_exports() -> None:
    from tests.support.deploy import exported_families

    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exported = exported_families()
    for rule in rules:
        used = {
            re.sub(r"_(total|bucket|count|sum)$", "", n)
            for n in re.findall(r"\bmeterline_[a-z_]+", rule["expr"])
        }
        assert used and used <= exported, f"{rule['alert']}: {used - exported}"
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]
    watched = {name for rule in rules for name in re.findall(r"\bmeterline_[a-z_]+", rule["expr"])}
    assert {
        "meterline_reconcile_drifting_pairs",  # drift above the threshold
        "meterline_reconcile_last_run_timestamp_seconds",  # no reconcile for 2 hours
        "meterline_sink_lag_seconds",
        "meterline_stream_watermark_lag_seconds",
        "meterline_stream_rejected_total",  # the dead-letter rate
        "meterline_stripe_errors_total",
    } <= watched


def test_the_setup_job_is_named_for_the_release_it_sets_up() -> None:
    """A Job's pod template cannot change: an upgrade applies a Job of a new name, which the image
    tag gives, and a finished one is removed."""
    tag = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["images"][0]["newTag"]
    [job] = [m for _, m in manifests() if m["kind"] == "Job"]
    assert job["metadata"]["name"] == f"meterline-setup-{tag.replace('.', '-')}"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    steps = [c["args"] for c in job["spec"]["template"]["spec"]["initContainers"]] + [
        c["args"] for c in job["spec"]["template"]["spec"]["containers"]
    ]
    assert steps == [list(s) for s in SETUP_ORDER]


def test_a_disruption_budget_covers_every_long_running_role() -> None:
    budgets = [m for _, m in manifests() if m["kind"] == "PodDisruptionBudget"]
    covered = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in budgets}
    running = {
        m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for _, m in manifests()
        if m["kind"] in ("Deployment", "StatefulSet")
    }
    assert running - {"reconcile", "alerts"} <= covered  # one of each: nothing to keep while it moves
