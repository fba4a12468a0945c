"""The deploy files as data: compose, the Kubernetes manifests and their containers, and the
metric families meterline exports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from meterline.core import metrics

DEPLOY = Path(__file__).parents[2] / "deploy"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            yield path.name, document


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest.get("spec", {})
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec")
    return [*pod.get("initContainers", []), *pod["containers"]] if pod else []


def exported_families() -> set[str]:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    snapshot = {
        "records": 0,
        "accepted": 0,
        "counted": 0,
        "duplicates": 0,
        "non_billable": 0,
        "rejected": {"malformed": 1},
        "corrections": 0,
        "windows_closed": 0,
        "aggregates_sent": 0,
        "open_windows": 0,
        "watermark_lag_ms": {0: 1},
    }
    metrics.register_stream(lambda: snapshot, registry)
    names = {family.name for family in registry.collect()}
    names |= {
        m._name  # the family name prometheus_client keeps for each metric object
        for m in vars(metrics).values()
        if hasattr(m, "_name") and hasattr(m, "_type")
    }
    return names
