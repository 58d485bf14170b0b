"""Fixtures every test folder may use (helpers are imported from tests.harness):

* ``pg_server`` — the PostgreSQL test server's URL; skips where it cannot be reached (fails in CI);
* ``pg_url`` — a store URL over a fresh schema of it, dropped after the test;
* ``pg_database`` — the URL of a fresh database of it (for tests that end its sessions), dropped after the test;
* ``backend`` — each hub backend in turn, "sqlite" then "postgres" (a parametrised fixture);
* ``store`` — a hub store on a real SQLite file in tmp_path;
* ``make_client`` — ``await make_client(**settings)``: the hub app over ``store`` served on 127.0.0.1, its client;
* ``client`` — ``make_client()`` with the default settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, open_store
from tests.harness.agent_process import kill_leftovers
from tests.harness.inprocess import ClientFactory, client_factory
from tests.harness.pg import backend, pg_database, pg_server, pg_url  # noqa: F401  (fixtures for every folder)
from tests.harness.small_disk import mounts, small_disk  # noqa: F401  (fixtures for every folder)


@pytest.fixture(autouse=True)
def _no_agent_left_running() -> Iterator[None]:
    """An agent process a failed test left running is killed with the test (found: three agents of a timed-out
    wait ran on for the rest of the session)."""
    yield
    kill_leftovers()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HubStore]:
    async with open_store(tmp_path / "hub.db") as s:
        yield s


@pytest.fixture
async def make_client(store: HubStore) -> AsyncIterator[ClientFactory]:
    async with client_factory(store) as make:
        yield make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()
