"""Upgrading a PostgreSQL hub database from the first schema to this one: the scenario of
upgrade_scenario.py (three credentials, a mark, events, counts, a refusal) that test_upgrade_sqlite.py runs on
SQLite, written as a version-1 PostgreSQL hub left it, then opened by this shelfsync.

Every test works in a fresh schema of the test server (tests.harness.pg); skipped where no server is reachable,
failed in CI.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from tests.harness.pg import fresh_schema
from tests.hub.upgrade_scenario import LOCATION, V1Hub, check_upgraded, v1_hub, v1_rows


async def _write_v1(conn: asyncpg.Connection, h: V1Hub, version: int = 1) -> None:
    """The tables of ``version`` with the version-1 rows in them, recorded as a hub of that version records them."""
    async with conn.transaction():
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        await conn.execute(MIGRATIONS[1].read())
        await conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
        rows = v1_rows(h)
        for table, (columns, values) in rows.items():
            marks = ", ".join(f"${i}" for i in range(1, len(values[0]) + 1))
            await conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
        _, events = rows["events"]
        await conn.executemany(  # version 1's global dedupe key: event id -> its partition
            "INSERT INTO event_ids (event_id, location) VALUES ($1, $2)", [(row[0], row[4]) for row in events]
        )
    for step in range(2, version + 1):
        async with conn.transaction():
            await conn.execute(MIGRATIONS[step].read())
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)


async def _versions(conn: asyncpg.Connection) -> list[Any]:
    return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]


async def test_a_version_1_postgres_hub_upgrades_to_the_current_schema_and_keeps_working(pg_url: str) -> None:
    h = v1_hub()
    conn = await asyncpg.connect(pg_url)
    try:
        await _write_v1(conn, h)
        assert await _versions(conn) == [1]
        async with PostgresHubStore.open(pg_url) as store:
            await check_upgraded(store, h, SCHEMA_VERSION)
        assert await _versions(conn) == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION == max(MIGRATIONS)
        async with PostgresHubStore.open(pg_url) as store:  # opened again: nothing left to migrate
            (row,) = await store.counts(location=LOCATION)
            assert row.on_hand == 1
        assert await _versions(conn) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await conn.close()


async def test_each_intermediate_postgres_version_upgrades_too(pg_server: str) -> None:
    """A hub stopped at any version in between (2 … current − 1) is brought forward the same way."""
    h = v1_hub()
    for version in range(2, SCHEMA_VERSION):
        async with fresh_schema("up") as url:
            conn = await asyncpg.connect(url)
            try:
                await _write_v1(conn, h, version)
                assert await _versions(conn) == list(range(1, version + 1))
                async with PostgresHubStore.open(url) as store:
                    await check_upgraded(store, h, SCHEMA_VERSION)
                assert await _versions(conn) == list(range(1, SCHEMA_VERSION + 1))
            finally:
                await conn.close()
