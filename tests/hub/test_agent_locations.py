"""The store PCs booking at a location, found by the location (schema 18), on both backends.

An order webhook stamps a channel's sale in the clock frame of the store PC booking at the order's location (its
skew, hub minus PC). It read every credential of every store to find it (``agent_status()``): O(stores) per order.
``store_clock_skews`` reads the credentials bound to the order's locations alone, by ``agents_at``' index.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.storage import HubStore, open_store
from hub.storage.credentials import clock_skews_sql
from protocol import Kind, wall_ms_now
from tests.channels.test_square_push import database_at
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "postgres":
        async with fresh_schema("agentloc") as url:
            yield url
    else:
        yield str(tmp_path / "hub.db")


async def synced(store: HubStore, token: str, skew_ms: int, location: str) -> None:
    """One sync of the agent of ``token`` whose PC's clock is ``skew_ms`` behind the hub's: its skew measured."""
    who = await store.authenticate(token)
    assert who is not None
    factory = EventFactory(who.agent_id, location=location, sku="A")
    now = wall_ms_now()
    event = factory(Kind.RECEIVE, 1, at_ms=now - skew_ms - factory.base_ms)
    result = await store.ingest(who, factory.epoch, [event], sent_ms=now - skew_ms)
    assert not result.rejected, result.rejected


async def test_the_skew_of_a_locations_store_pc_is_read_by_its_location_as_every_credential_said_it(
    hub_db: str,
) -> None:
    """What ``store_clock_skews`` answers is what the skews read from every credential said (the selection
    the order webhook made of ``agent_status()`` before schema 18): the active store agent synced last at each location, not a reader,
    a revoked one, one never synced, nor one of another location; a credential bound elsewhere moves with it."""
    async with open_store(hub_db) as store:
        _, first = await store.add_agent(["S1"])
        await synced(store, first, 60_000, "S1")
        both_id, both = await store.add_agent(["S1", "S2"])
        await synced(store, both, 120_000, "S2")  # synced after the first: S1's PC too
        revoked_id, revoked = await store.add_agent(["S3"])
        await synced(store, revoked, 300_000, "S3")
        await store.revoke_agent(revoked_id)
        await store.add_agent(["S3"], role="reader")
        await store.add_agent(["S4"])  # never synced: no skew measured
        for n in range(50):
            await store.add_agent([f"T{n:02d}"])  # other stores
        asked = ["S1", "S2", "S3", "S4", "S9"]
        skews = await store.store_clock_skews(asked)
        assert {k: round(v / 60_000) for k, v in skews.items()} == {"S1": 2, "S2": 2}
        await store.bind_agent(both_id, ["S4"])
        skews = await store.store_clock_skews(asked)
        assert {k: round(v / 60_000) for k, v in skews.items()} == {"S1": 1, "S4": 2}
        assert await store.store_clock_skews([]) == {}


async def test_a_hub_of_schema_17_finds_its_credentials_by_location_after_the_upgrade(
    backend: str, tmp_path: Path
) -> None:
    """The credentials a hub held before schema 18 are found by their locations after it."""
    insert = (
        "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms, last_sync_ms, clock_skew_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    rows = [
        (insert, ("agent-old", "00" * 32, "agent", '["S1", "S2"]', 1, 2, 90_000)),
        (insert, ("agent-far", "00" * 32, "agent", '["S9"]', 1, 2, 5_000)),
    ]
    async with database_at(backend, tmp_path, 17, rows) as db, open_store(db) as store:
        assert await store.store_clock_skews(["S1", "S2", "S3"]) == {"S1": 90_000, "S2": 90_000}


def test_the_read_by_location_is_a_search_of_the_index_not_a_scan_of_the_credentials(tmp_path: Path) -> None:
    """SQLite's plan of the statement: the location's rows by ``agents_at``' primary key and each credential
    by its own; no table is scanned, so the read costs the location's credentials, however many stores there are."""
    db = tmp_path / "hub.db"

    async def made() -> None:
        async with open_store(db):
            pass

    asyncio.run(made())
    conn = sqlite3.connect(db)
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + clock_skews_sql(2), ("S1", "S2"))]
    finally:
        conn.close()
    assert not [step for step in plan if step.startswith("SCAN")], plan
    assert any("agents_at" in step or step.startswith("SEARCH l ") for step in plan), plan
