"""Fixtures for the channel tests: a real hub store on a tmp SQLite file, its change watch, the emulators
(helpers in tests/channels/helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.channels import SqliteChannelState
from hub.feed import ChangeWatch
from hub.storage import open_store
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import Hub
from tests.hub.event_factory import EventFactory


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S1", "S2", "WH", "OTHER"])
        who = await store.authenticate(token)
        assert who is not None
        async with ChangeWatch(store, recheck_s=0.05) as watch:
            yield Hub(store, who, watch, db, EventFactory(agent_id))


@pytest.fixture
async def state(hub: Hub) -> AsyncIterator[SqliteChannelState]:
    async with await SqliteChannelState.open(hub.db_path) as s:
        yield s


@pytest.fixture
async def shopify() -> AsyncIterator[ShopifyEmulator]:
    async with ShopifyEmulator() as emu:
        yield emu


@pytest.fixture
async def square() -> AsyncIterator[SquareEmulator]:
    async with SquareEmulator() as emu:
        yield emu
