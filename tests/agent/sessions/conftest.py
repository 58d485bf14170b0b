"""Fixtures for the session tests: a real outbox and session store in tmp_path, a small catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.sessions import SessionManager, SessionStore
from tests.agent.sessions.sessions_helpers import catalog


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-a", location="S001") as box:
        yield box


@pytest.fixture
async def sessions(tmp_path: Path, outbox: Outbox) -> AsyncIterator[SessionManager]:
    async with SessionStore.open(tmp_path / "sessions.sqlite3") as store:
        manager = SessionManager(store, outbox, catalog=catalog())
        await manager.recover()
        yield manager
