"""A hub killed in the middle of a migration (kill -9, a unit's SIGTERM during a long step) and started again.

The database must be at the version before the step or after it, never in between, and the restart must finish
the step. On PostgreSQL the killed hub's session used to go on running the step's script for nobody, holding the
migration lock until its end, then roll it all back: the hub started again waited that long before doing the
step anew (twice the upgrade's time on a big ledger). Here the step is made endless by a statement added to the
end of the latest migration in the process that is killed, so only a session that ends with its hub frees the lock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg

from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[2]
SEEN_S = 60.0  # the killed hub's step is seen running on the server within this (its start under load)
RESTART_S = 30.0  # the hub started again has finished the step within this; the killed one's would run 10 minutes


async def write_postgres(url: str, version: int) -> None:
    """The schema at ``version``, recorded as a hub of that version records it."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, version + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
    finally:
        await conn.close()


def start_endless_migration(url: str, marker: str) -> subprocess.Popen[bytes]:
    """A process opening the store, whose latest migration names ``marker`` and ends in a ten-minute statement."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        from hub.storage.migrations import Migration
        from hub.storage.postgres import PostgresHubStore, schema
        latest = schema.MIGRATIONS[schema.SCHEMA_VERSION]
        script = "-- {marker}\\n" + latest.read() + "\\nSELECT pg_sleep(600);\\n"  # named first: shown whole
        schema.MIGRATIONS[latest.version] = Migration(latest.version, latest.name, lambda: script)
        async def main():
            await PostgresHubStore.open(sys.argv[1])
        asyncio.run(main())
    """)
    return subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


async def backends_running(conn: asyncpg.Connection, marker: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()", f"-- {marker}%"
    )
    return [r["pid"] for r in rows]


async def test_a_postgres_hub_killed_mid_migration_leaves_the_old_version_and_a_restart_finishes_it(
    pg_url: str,
) -> None:
    await write_postgres(pg_url, SCHEMA_VERSION - 1)
    marker = f"killed-mid-migration-{uuid.uuid4().hex}"
    watcher = await asyncpg.connect(pg_url)
    hub = start_endless_migration(pg_url, marker)
    try:
        async with asyncio.timeout(SEEN_S):
            while not await backends_running(watcher, marker):
                assert hub.poll() is None, "the hub that should be migrating has ended"
                await asyncio.sleep(0.1)
        hub.send_signal(signal.SIGKILL)
        hub.wait(timeout=10)
        versions = [r[0] for r in await watcher.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION))
        async with asyncio.timeout(RESTART_S):  # the killed hub's session must not hold the lock for its 10 minutes
            async with PostgresHubStore.open(pg_url) as store:
                assert (await store.health())["schema_version"] == SCHEMA_VERSION
        assert await watcher.fetchval("SELECT to_regclass('observations_newest') IS NOT NULL")
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        for pid in await backends_running(watcher, marker):  # a failed run's orphan, ended before the schema's drop
            await watcher.execute("SELECT pg_terminate_backend($1)", pid)
        await watcher.close()
