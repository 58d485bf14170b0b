"""Fixtures of the security tests: a real hub (SQLite file in tmp_path, HTTP on 127.0.0.1) with one credential
of every kind (helpers in tests/security/helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.inprocess import ServedHub, hub_in_process
from tests.security.helpers import Hub, HubFactory


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """``await make_hub(**settings)``: a hub in this process (``tests.harness.inprocess``); all closed at the end."""
    made: list[ServedHub] = []
    async with AsyncExitStack() as stack:

        async def make(**settings: Any) -> Hub:
            served = await stack.enter_async_context(hub_in_process(tmp_path / f"hub-{len(made)}.db", **settings))
            made.append(served)
            store = served.store
            agent = await store.add_agent(["S001"])
            other = await store.add_agent(["S002"])
            reader = await store.add_agent([], role="reader")
            admin = await store.add_agent(["S001"], role="admin")
            revoked = await store.add_agent(["S001"])
            assert await store.revoke_agent(revoked[0])
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            stack.push_async_callback(session.close)
            return Hub(served.url, served.app, store, agent, other, reader, admin, revoked, session)

        yield make


@pytest.fixture
async def hub(make_hub: HubFactory) -> Hub:
    return await make_hub()
