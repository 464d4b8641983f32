"""Shared fixtures. chDB allows one embedded engine (one data path) per process, so every
in-process ClickHouse test shares one path and isolates itself by database name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        action="store_true",
        help="run the integration tests against compose.yaml's services (needs Docker)",
    )


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def ch_store(chdb_dsn: str) -> Iterator[object]:
    from streams.clickhouse import ClickHouseStore

    store = ClickHouseStore(chdb_dsn, database=f"t_{uuid.uuid4().hex[:10]}")
    store.ensure_schema()
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {store.database}")
