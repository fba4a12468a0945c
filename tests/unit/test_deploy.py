"""deploy/, checked without a Docker engine or a cluster: the compose file against the Compose
specification's schema, the Kubernetes manifests against Kubernetes' own schemas (strict), and
both against meterline itself: every command a container runs parses as a meterline command,
every probe is a route meterline serves, every image is pinned, every container asks for
resources. The Grafana dashboard shows only metrics meterline exports, and all of them."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from meterline.cli import UsageError, _parser
from tests.support.deploy import DEPLOY, compose, containers, exported_families, manifests

KUBERNETES_VERSION = "1.33.0"

ROLES = ("stream", "sink-clickhouse", "sink-stripe", "webhooks", "reconcile", "alerts", "ingest")
"""Every long-running role compose runs, each scraped on its /metrics."""


def parses_as_meterline(args: list[str]) -> None:
    try:
        _parser().parse_args(args)
    except UsageError as exc:
        pytest.fail(f"not a meterline command: {args}: {exc}")


def compose_spec_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema (its CLI is not
    used: only the file, so the package is not imported)."""
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def test_the_compose_file_is_valid_compose() -> None:
    jsonschema.validate(compose(), compose_spec_schema())


def test_compose_pins_images_limits_resources_and_runs_real_commands() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "schema-registry",
        "clickhouse",
        "grafana",
        *ROLES,
        "topics",
        "migrate",
        "stripe-sync",
    } <= set(services)
    # KRaft: the broker is its own controller, no ZooKeeper.
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", image), (
            f"{name}: image {image!r} is not pinned to a version"
        )
        assert service["deploy"]["resources"]["limits"], name
        if image.startswith("meterline:") and "command" in service:
            parses_as_meterline(service["command"])
    for role in ROLES:
        assert "--http-port" in services[role]["command"], f"{role} serves no /metrics"
    scraped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    names = scraped["scrape_configs"][0]["dns_sd_configs"][0]["names"]
    assert set(names) == set(ROLES)


def rendered() -> Iterator[tuple[str, dict[str, Any]]]:
    """The manifests as `kubectl apply -k deploy/k8s` renders them: kustomization.yaml's namespace
    and image set on every object (the two transformations it uses; kustomize is not installed
    here, and the test below checks it uses no other)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "namespace", "resources", "images"}
    [image] = kustomization["images"]
    for name, manifest in manifests():
        manifest["metadata"]["namespace"] = kustomization["namespace"]
        for container in containers(manifest):
            if container["image"] == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"
        if manifest["kind"] == "Namespace":
            del manifest["metadata"]["namespace"]
        yield name, manifest


def test_kubernetes_manifests_validate_strictly() -> None:
    kinds = []
    for name, manifest in rendered():
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {manifest['kind']} {manifest['metadata']['name']}: {exc.message}")
        kinds.append((manifest["kind"], manifest["metadata"]["name"]))
    assert ("StatefulSet", "meterline-stream") in kinds
    assert ("Deployment", "meterline-sink-clickhouse") in kinds and (
        "Deployment",
        "meterline-sink-stripe",
    ) in kinds
    assert ("Service", "meterline-webhooks") in kinds and ("Deployment", "meterline-reconcile") in kinds
    images = {c["image"] for _, m in rendered() for c in containers(m)}
    assert images == {"registry.example.com/meterline:0.1.0"}, images
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_kubernetes_containers_run_meterline_commands_with_resources_and_real_probes() -> None:
    served = {"/healthz", "/readyz"}
    for name, manifest in manifests():
        for container in containers(manifest):
            where = f"{name}: {container['name']}"
            parses_as_meterline(container["args"])
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["path"] in served, where
            if manifest["kind"] in ("Deployment", "StatefulSet"):
                assert "--http-port" in container["args"] and "readinessProbe" in container, where


def test_the_grafana_dashboard_shows_exactly_the_metrics_meterline_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "meterline.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for expr in expressions
        for name in re.findall(r"\bmeterline_[a-z_]+", expr)
    }
    exported = exported_families()
    assert used - exported == set(), "the dashboard queries metrics meterline does not export"
    assert exported - used == set(), "metrics meterline exports that the dashboard does not show"
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    uids = {source["uid"] for source in provisioned["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} <= uids


def test_the_image_copies_everything_the_package_build_reads() -> None:
    """The build stage copies the files pyproject.toml and setup.py need, and every package."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copied = {
        source
        for line in lines
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    root = DEPLOY.parent
    assert all((root / source).exists() for source in copied), copied
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {"pyproject.toml", "setup.py", "README.md"} | {
        p.rstrip("*") for p in packages["include"]
    } <= copied
