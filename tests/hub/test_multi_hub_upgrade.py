"""Several hubs on one PostgreSQL during an upgrade (docs/scaling.md): one hub of the new version migrates the
database while hubs of the old version still run. From that moment an old hub must not ingest — a newer schema may
keep something every ingest has to maintain that the old code does not know of (version 7 added
``agent_locations``, by which a resend is found) — and its ``/healthz`` must fail, so a load balancer takes it out
until it is replaced.

A real ``python -m hub serve`` process of this version plays the old hub; the newer shelfsync's migration is a
transaction that, under the migration lock, adds a table and records version SCHEMA_VERSION + 1, as ``migrate`` does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from hub.storage import open_store
from hub.storage.postgres.ingest import MIGRATION_LOCK_SHARED
from hub.storage.postgres.schema import MIGRATION_LOCK_SQL, SCHEMA_VERSION
from protocol import MSGPACK_CONTENT_TYPE, Kind, StockEvent, SyncRequest, encode_sync_request, new_event_id, pack_hlc
from tests.harness.commands import hub_env, run_hub
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

WAIT_S = 30.0


def _batch(agent_id: str, seq: int) -> bytes:
    at = pack_hlc(int(time.time() * 1000), 0)
    event = StockEvent(new_event_id(), agent_id, 1, seq, "L1", "SKU-1", Kind.RECEIVE, 1, at, at >> 16, "api:test")
    return encode_sync_request(SyncRequest(agent_id, 1, (event,)))


async def _newer_shelfsync_migrates(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(MIGRATION_LOCK_SQL)
            await conn.execute("CREATE TABLE newer_bookkeeping (agent_id text PRIMARY KEY)")
            await conn.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, 0)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()


async def test_a_running_hub_stops_writing_and_fails_its_health_check_once_a_newer_hub_migrated(
    pg_url: str, tmp_path: Path
) -> None:
    async with open_store(pg_url) as store:
        agent_id, token = await store.add_agent(["L1"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    with HubProcess(tmp_path / "old-hub.log", db=pg_url, port=free_port(), env=hub_env()) as old_hub:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
            async with session.post(f"{old_hub.url}/v1/sync", data=_batch(agent_id, 1), headers=headers) as resp:
                assert resp.status == 200, await resp.text()

            await _newer_shelfsync_migrates(pg_url)

            async with session.get(f"{old_hub.url}/healthz") as resp:
                health = await resp.json()
                assert resp.status == 503, health
            assert f"schema version {SCHEMA_VERSION + 1}" in health["detail"], health
            assert "replace this hub" in health["detail"], health
            async with session.post(f"{old_hub.url}/v1/sync", data=_batch(agent_id, 2), headers=headers) as resp:
                refusal = await resp.json()
                assert resp.status == 503, refusal
                assert resp.headers.get("Retry-After"), resp.headers  # the agent resends, to a hub of the new version
            assert f"schema version {SCHEMA_VERSION + 1}" in refusal["detail"], refusal
            event = {"id": "web-1", "location": "L1", "sku": "SKU-1", "kind": "receive", "qty": 1}
            posted = {"events": [{**event, "occurred_at": int(time.time() * 1000)}]}
            auth = {"Authorization": f"Bearer {token}"}
            async with session.post(f"{old_hub.url}/v1/events", json=posted, headers=auth) as resp:
                assert resp.status == 503, await resp.text()  # an event post is a batch too
    assert "replace this hub" in old_hub.log, old_hub.log
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 1  # the second batch was not stored
    finally:
        await conn.close()


def test_a_hub_starting_behind_a_held_schema_lock_says_it_waits_then_starts(pg_url: str, tmp_path: Path) -> None:
    """An operator's psql holds schema_migrations in an open transaction (or a hub is in a long migration): a hub
    starting then waits for it — and used to wait in silence, neither serving nor logging a line."""

    async def hold_then_start() -> None:
        async with open_store(pg_url):
            pass
        operator = await asyncpg.connect(pg_url)
        try:
            async with operator.transaction():
                await operator.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
                hub.spawn()
                async with asyncio.timeout(WAIT_S):
                    while "still waiting" not in hub.run_log:
                        assert hub.running, hub.log
                        await asyncio.sleep(0.1)
            await asyncio.to_thread(hub.wait_ready)  # the lock gone, it starts
        finally:
            await operator.close()

    hub = HubProcess(tmp_path / "hub.log", db=pg_url, port=free_port(), env=hub_env())
    try:
        asyncio.run(hold_then_start())
    finally:
        hub.close()
    assert "another session holds its schema's lock" in hub.log, hub.log


def test_a_hub_started_while_its_postgresql_is_down_exits_for_a_restart_not_as_misconfigured(
    pg_server: str, pg_url: str
) -> None:
    """The hub's unit restarts it on failure but not on exit status 2, a configuration error. A hub started while
    PostgreSQL is down (a reboot that starts the hub first, a restart or failover of the server under way) exited 2
    and stayed down for good. It exits 1 now, in one sentence, and the service starts it again; a wrong password
    is still a configuration error."""
    with socket.socket() as s:  # a port nothing listens on: the server is down
        s.bind(("127.0.0.1", 0))
        down = pg_server.replace(urlsplit(pg_server).netloc.split("@")[1], f"127.0.0.1:{s.getsockname()[1]}")
        result = run_hub("serve", "--db", down, "--port", "0", env=hub_env())
    assert result.returncode == 1, result.stderr
    assert "cannot reach the hub database" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    wrong_password = pg_url.replace(f":{urlsplit(pg_url).password}@", ":not-the-password@")
    result = run_hub("serve", "--db", wrong_password, "--port", "0", env=hub_env())
    assert result.returncode == 2, result.stderr
    assert "password" in result.stderr, result.stderr


async def test_a_hub_starting_on_a_current_schema_does_not_wait_for_the_batches_in_flight(pg_url: str) -> None:
    """Every batch holds the migration lock shared until it commits, so that a migration waits for it. A hub
    starting on a schema already current has nothing to migrate: it must not queue for that lock alone, which
    would also hold up every batch that arrives after it, on every hub, until the slowest one in flight ended."""
    async with open_store(pg_url):
        pass
    in_flight = await asyncpg.connect(pg_url)  # a batch of another hub, holding the lock shared
    try:
        async with in_flight.transaction():
            await in_flight.execute(MIGRATION_LOCK_SHARED)
            async with asyncio.timeout(WAIT_S), open_store(pg_url) as store:
                assert (await store.health())["schema_version"] == SCHEMA_VERSION
    finally:
        await in_flight.close()


async def test_a_hub_waits_for_another_hubs_migration_whatever_statement_timeout_the_dba_set(
    pg_database: str,
) -> None:
    """A DBA set ``statement_timeout`` on the database (say 30 s against runaway queries). Hubs started together wait
    for the one migrating (docs/scaling.md), as they wait without ``lock_timeout``; the timeout cancelled that wait,
    and then any migration step running longer than it (here 200 ms: creating the partitioned ledger), so the hub
    exited 2, as misconfigured, and its unit did not start it again."""
    admin = await asyncpg.connect(pg_database)
    try:
        await admin.execute(f'ALTER DATABASE "{urlsplit(pg_database).path[1:]}" SET statement_timeout = 200')
    finally:
        await admin.close()
    migrating = await asyncpg.connect(pg_database)  # the other hub, in the middle of its migration
    try:
        async with migrating.transaction():
            await migrating.execute("SET LOCAL statement_timeout = 0")
            await migrating.execute(MIGRATION_LOCK_SQL)
            init = asyncio.ensure_future(asyncio.to_thread(run_hub, "init", "--db", pg_database))
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            async with asyncio.timeout(WAIT_S):  # the starting hub waits on the lock, past the timeout
                while not await migrating.fetchval(waiting):
                    assert not init.done(), init.result()
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert not init.done(), init.result()
        done = await asyncio.wait_for(init, WAIT_S)
    finally:
        await migrating.close()
    assert done.returncode == 0, done.stderr
    assert f"(schema version {SCHEMA_VERSION})" in done.stdout, done.stdout
