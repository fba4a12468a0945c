"""Against a ClickHouse server, where one is given (CLICKHOUSE_DSN=http://...): the one client
`meterline run` shares between its threads answers them all at once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from meterline.config import load_config
from meterline.sinks.clickhouse.client import connect

DSN = os.environ.get("CLICKHOUSE_DSN", "")

pytestmark = pytest.mark.skipif(
    not DSN.startswith("http"), reason="no ClickHouse server (CLICKHOUSE_DSN=http://...)"
)


def test_one_client_answers_concurrent_queries_from_many_threads() -> None:
    # With a session per client, the server refuses a query while another of the session runs.
    client = connect(load_config(None, {}), DSN)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: client.command(f"SELECT {i} + sleepEachRow(0.05)"), range(32)))
    finally:
        client.close()
    assert answers == list(range(32))
