"""The ClickHouse client meterline opens for a server is one that threads may share."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
import pytest

from meterline.config import load_config
from meterline.sinks.clickhouse.client import connect


def test_a_server_client_has_no_session_so_that_the_threads_of_run_can_share_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """clickhouse-connect: client instances are not thread-safe when using session IDs; by default a
    client has an auto-generated session ID, and concurrent queries within the same session raise
    an error (https://clickhouse.com/docs/integrations/language-clients/python/driver-api,
    "Multithreaded applications"). `meterline run` shares one client between its API, reconcile,
    alerts and notices threads. tests/integration/test_clickhouse_server.py runs the same against a
    server where one is given."""
    opened: dict[str, Any] = {}
    client = object()

    def get_client(**kwargs: Any) -> object:
        opened.update(kwargs)
        return client

    monkeypatch.setattr(clickhouse_connect, "get_client", get_client)
    assert connect(load_config(None, {}), "http://127.0.0.1:8123") is client
    assert opened["autogenerate_session_id"] is False
