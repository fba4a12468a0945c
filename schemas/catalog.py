"""The Avro schemas meterline knows, every version, each with its fingerprint.

Files are named `<record>.v<N>.avsc` under `schemas/avro/`. A schema that embeds another record
names it and says which version in `"references"` (an attribute Avro ignores), so each version is
written once and composed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from meterline.schemas.errors import UnknownSchemaError

BUILTIN_DIR = Path(__file__).parent / "avro"
_FILE_NAME = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")

USAGE_EVENT = "meterline.UsageEvent"
USAGE_EVENT_BATCH = "meterline.UsageEventBatch"
WINDOW_AGGREGATE = "meterline.WindowAggregate"


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    definition: dict[str, Any]
    """The full schema, references inlined, logical types kept: what a registry is given."""
    parsed: dict[str, Any]
    """fastavro's parsed form with logical types removed: they only annotate (the bytes are the same)
    and meterline carries times as integer milliseconds end to end."""
    fingerprint: bytes
    """CRC-64-AVRO of the parsing canonical form, little-endian, as single-object encoding writes it."""

    @property
    def schema_json(self) -> str:
        return json.dumps(self.definition, sort_keys=True)


class SchemaCatalog:
    """Every schema version under one directory, addressable by name, version and fingerprint."""

    def __init__(self, directory: Path = BUILTIN_DIR) -> None:
        raw: dict[tuple[str, int], dict[str, Any]] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_NAME.match(path.name)
            if match is None:
                raise ValueError(f"{path}: schema files are named <record>.v<N>.avsc")
            definition = json.loads(path.read_text())
            name = f"{definition['namespace']}.{definition['name']}"
            raw[(name, int(match["version"]))] = definition
        self._versions: dict[tuple[str, int], SchemaVersion] = {}
        for key in sorted(raw):
            self._versions[key] = _build(key, raw)
        self._by_fingerprint = {v.fingerprint: v for v in self._versions.values()}
        self._latest: dict[str, SchemaVersion] = {}
        for (name, _), version in sorted(self._versions.items()):
            self._latest[name] = version  # sorted by version: the last one stays

    def get(self, name: str, version: int) -> SchemaVersion:
        try:
            return self._versions[(name, version)]
        except KeyError:
            raise UnknownSchemaError(f"no schema {name} v{version} in the catalog") from None

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of record `name` (looked up on every encode: kept in a dict)."""
        found = self._latest.get(name)
        if found is None:
            raise UnknownSchemaError(f"no schema named {name} in the catalog")
        return found

    def find(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)

    def by_fingerprint(self, fp: bytes) -> SchemaVersion:
        try:
            return self._by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown schema fingerprint {fp.hex()}: not one of the {len(self._by_fingerprint)} "
                "schema versions in schemas/avro (a writer with a newer meterline?)"
            ) from None

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._versions})

    def versions(self) -> list[SchemaVersion]:
        return list(self._versions.values())


def _build(key: tuple[str, int], raw: Mapping[tuple[str, int], dict[str, Any]]) -> SchemaVersion:
    name, version = key
    definition = _inline(raw[key], raw)
    return SchemaVersion(
        name=name,
        version=version,
        definition=definition,
        parsed=parse_for_ints(definition),
        fingerprint=fingerprint_of(definition),
    )


def fingerprint_of(definition: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, in single-object encoding's byte order."""
    canonical = to_parsing_canonical_form(parse_schema(definition, _write_hint=False))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def parse_for_ints(definition: dict[str, Any]) -> dict[str, Any]:
    """Parse with logical types removed, so that times read and write as integer milliseconds."""
    return cast(dict[str, Any], parse_schema(_without_logical_types(definition), _write_hint=False))


def _inline(definition: dict[str, Any], raw: Mapping[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Replace each referenced record name by that version's full definition (its first use)."""
    references: dict[str, int] = definition.get("references", {})
    inlined: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str) and node in references and node not in inlined:
            inlined.add(node)
            return _inline(raw[(node, references[node])], raw)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k != "references"}
        return node

    inlined_definition: dict[str, Any] = walk(definition)
    return inlined_definition


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_logical_types(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node
