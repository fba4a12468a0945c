"""A Confluent Schema Registry on loopback for tests that cross processes (the `mock://` registry
of confluent-kafka lives in one process only). It answers the REST calls the Confluent clients
make (Python, Java and Go serializers alike) as the registry documents them
(https://docs.confluent.io/platform/current/schema-registry/develop/api.html):

- POST /subjects/{subject}/versions   register; the same schema gets the same id in every subject
- POST /subjects/{subject}            look a schema up in a subject (404 40401 / 40403)
- GET  /schemas/ids/{id}              the schema of an id (404 40403)
- GET  /schemas/ids/{id}/versions     the subjects and versions an id is registered as (franz-go
                                      asks after registering)
- GET  /subjects/{subject}/versions/{version or latest}, GET /subjects

A schema is the same when its JSON is, key order and whitespace aside (the registry compares a
canonical form too). No compatibility checks, modes, contexts or deletes: no test needs them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Registry:
    schemas: list[dict[str, Any]] = field(default_factory=list)  # id - 1 -> {"schema", "references"}
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version - 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            schema_id = self._id_of(body, create=True)
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return {"id": schema_id}

    def lookup(self, subject: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if subject not in self.subjects:
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            schema_id = self._id_of(body, create=False)
            if schema_id not in self.subjects[subject]:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            return 200, self._version(subject, self.subjects[subject].index(schema_id) + 1)

    def by_id(self, schema_id: int) -> tuple[int, dict[str, Any]]:
        if not 0 < schema_id <= len(self.schemas):
            return 404, {"error_code": 40403, "message": f"Schema {schema_id} not found"}
        stored = self.schemas[schema_id - 1]
        return 200, {
            "schema": stored["schema"],
            **({"references": stored["references"]} if stored["references"] else {}),
        }

    def versions_of(self, schema_id: int) -> tuple[int, Any]:
        if not 0 < schema_id <= len(self.schemas):
            return 404, {"error_code": 40403, "message": f"Schema {schema_id} not found"}
        return 200, [
            {"subject": subject, "version": ids.index(schema_id) + 1}
            for subject, ids in sorted(self.subjects.items())
            if schema_id in ids
        ]

    def version(self, subject: str, version: str) -> tuple[int, dict[str, Any]]:
        """`version` a number from 1, or "latest"."""
        if subject not in self.subjects:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        count = len(self.subjects[subject])
        number = count if version == "latest" else int(version)
        if not 0 < number <= count:
            return 404, {"error_code": 40402, "message": f"Version {version} not found."}
        return 200, self._version(subject, number)

    def _version(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject][version - 1]
        return {"subject": subject, "version": version, "id": schema_id, **self.by_id(schema_id)[1]}

    def _id_of(self, body: dict[str, Any], create: bool) -> int:
        wanted = _canonical(body)
        for n, stored in enumerate(self.schemas, start=1):
            if _canonical(stored) == wanted:
                return n
        if not create:
            return 0
        self.schemas.append({"schema": body["schema"], "references": body.get("references") or []})
        return len(self.schemas)


def _canonical(body: dict[str, Any]) -> str:
    schema = json.dumps(json.loads(body["schema"]), sort_keys=True, separators=(",", ":"))
    return schema + json.dumps(body.get("references") or [], sort_keys=True)


_SUBJECT = r"/subjects/([^/?]+)"


def _handler(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if found := re.fullmatch(_SUBJECT + "/versions", path):
                self._answer(200, registry.register(unquote(found[1]), body))
            elif found := re.fullmatch(_SUBJECT, path):
                self._answer(*registry.lookup(unquote(found[1]), body))
            else:
                self._answer(404, {"error_code": 404, "message": f"no route {path}"})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if found := re.fullmatch(r"/schemas/ids/(\d+)", path):
                self._answer(*registry.by_id(int(found[1])))
            elif found := re.fullmatch(r"/schemas/ids/(\d+)/versions", path):
                self._answer(*registry.versions_of(int(found[1])))
            elif found := re.fullmatch(_SUBJECT + r"/versions/(latest|\d+)", path):
                self._answer(*registry.version(unquote(found[1]), found[2]))
            elif path == "/subjects":
                self._answer(200, sorted(registry.subjects))
            else:
                self._answer(404, {"error_code": 404, "message": f"no route {path}"})

        def _answer(self, status: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own logs
            pass

    return Handler


@contextmanager
def serve_registry() -> Iterator[tuple[Registry, str]]:
    """A registry on 127.0.0.1 and its URL, for the duration of the block."""
    registry = Registry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield registry, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
