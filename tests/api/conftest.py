"""Fixtures of the API tests: a real SQLite hub store in tmp_path, and hub apps served over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub import HubSettings, HubStore, create_app, open_store

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HubStore]:
    async with open_store(tmp_path / "hub.db") as s:
        yield s


@pytest.fixture
async def make_client(store: HubStore) -> AsyncIterator[ClientFactory]:
    """Serve a hub app over ``store`` with the given settings; every client made is closed after the test."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**settings: Any) -> TestClient[Any, Any]:
        app = create_app(store, HubSettings(db="unused-by-create-app", **settings))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
