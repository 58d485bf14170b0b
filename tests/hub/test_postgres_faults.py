"""A PostgreSQL hub when its database fails under it: sessions ended mid-request, a session that stalls in a
transaction holding locks every ingest needs. The hub answers 503 (never 500, never not at all) and recovers.

These tests end sessions with pg_terminate_backend, so each has a database of its own (``pg_database``).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.storage import HubStore
from hub.storage.postgres import store as postgres_store
from hub.storage.postgres.store import SESSION_DEFAULTS
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from tests.harness.inprocess import hub_in_process

WAIT_S = 30.0  # the bound on every wait of these tests
WAITING_ON_STOCK_SQL = "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND relation = 'stock'::regclass"


class Agent:
    """One agent sending one event per batch, the same batch again until it is answered 200."""

    def __init__(self, agent_id: str, token: str, location: str) -> None:
        self.agent_id, self.token, self.location = agent_id, token, location
        self.seq = 0
        self.pending: StockEvent | None = None

    def next_event(self) -> StockEvent:
        """The agent's next event: one unit received."""
        self.seq += 1
        at = pack_hlc(int(time.time() * 1000), 0)
        return StockEvent(
            new_event_id(), self.agent_id, 1, self.seq, self.location, f"SKU-{self.seq % 7}", Kind.RECEIVE, 1,
            at, at >> 16, "api:test",
        )  # fmt: skip

    def body(self) -> bytes:
        if self.pending is None:
            self.pending = self.next_event()
        return encode_sync_request(SyncRequest(self.agent_id, 1, (self.pending,)))

    async def sync(self, session: aiohttp.ClientSession, url: str) -> int:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
        async with session.post(f"{url}/v1/sync", data=self.body(), headers=headers) as resp:
            await resp.read()
            if resp.status == 200:
                self.pending = None
            return resp.status


async def _agent(store: HubStore, location: str) -> Agent:
    agent_id, token = await store.add_agent([location])
    return Agent(agent_id, token, location)


async def _get(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json(content_type=None)


def with_search_path(url: str) -> dict[str, str]:
    """The search_path a store URL of ``tests.harness.pg`` sets, as a connection's server settings."""
    return dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))


async def _terminate_sessions(db_url: str) -> int:
    """End every session of the test's database but the one asking (as a failover or restart would)."""
    conn = await asyncpg.connect(db_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"  # the test role's own: not a
                " WHERE datname = current_database() AND usename = current_user"  # superuser's psql beside it
                " AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def test_sessions_ended_under_load_are_answered_503_and_the_hub_recovers(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_in_process(pg_database, rate_limit_per_s=0) as hub:
        agents = [await _agent(hub.store, f"L{i}") for i in range(8)]
        statuses: Counter[int] = Counter()
        answered = asyncio.Event()
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
            paths = itertools.cycle(["/v1/counts?limit=2", "/v1/changes?cursor=0&limit=3", "/v1/agents"])

            async def sending(agent: Agent) -> None:
                while not stop.is_set():
                    statuses[await agent.sync(session, hub.url)] += 1
                    answered.set()

            async def reading(agent: Agent) -> None:
                while not stop.is_set():
                    statuses[(await _get(session, hub.url + next(paths), agent.token))[0]] += 1
                    answered.set()

            async def a_feed_waiter() -> list[Any]:  # waits on the change feed's reader across the failure
                cursor = await hub.store.latest_change_id()
                status, body = await _get(session, f"{hub.url}/v1/changes?cursor={cursor}&wait=20", agents[0].token)
                assert status == 200, body
                return list(body["changes"])

            load = [asyncio.ensure_future(f(a)) for a in agents for f in (sending, reading)]
            try:
                for _ in range(3):  # sessions end while requests are in flight, three times over
                    answered.clear()
                    await asyncio.wait_for(answered.wait(), WAIT_S)
                    assert await _terminate_sessions(pg_database) > 0
                    before = sum(statuses.values())
                    async with asyncio.timeout(WAIT_S):
                        while sum(statuses.values()) < before + 50:
                            await asyncio.sleep(0.01)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*load), WAIT_S)
            finally:
                for task in load:
                    task.cancel()
            assert statuses[500] == 0, statuses
            assert set(statuses) <= {200, 503}, statuses
            assert statuses[503] > 0, statuses  # the sessions did end under requests

            # It recovers: every agent's next batch is stored, and a waiter on the change feed hears of it.
            waiter = asyncio.ensure_future(a_feed_waiter())
            async with asyncio.timeout(WAIT_S):
                for agent in agents:
                    while await agent.sync(session, hub.url) != 200:
                        await asyncio.sleep(0.05)
                    assert agent.pending is None
                assert await waiter
    # Nothing of it reached the log as an unhandled error (the driver's orphaned futures among them).
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR], caplog.text


async def test_a_hub_stalled_in_a_transaction_delays_the_others_ingest_boundedly(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small bounds for the test; a real hub has the defaults of SESSION_DEFAULTS (or what its URL says).
    defaults = {**SESSION_DEFAULTS, "lock_timeout": "500ms", "idle_in_transaction_session_timeout": "2s"}
    monkeypatch.setattr(postgres_store, "SESSION_DEFAULTS", defaults)
    async with hub_in_process(pg_url, rate_limit_per_s=0) as hub:
        agent = await _agent(hub.store, "L1")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
            assert await agent.sync(session, hub.url) == 200
            # Another hub stalled (SIGSTOP, a VM pause) between its closing statement and COMMIT: its session sits
            # idle in a transaction holding the change counter's row lock, which every ingest takes last.
            stalled = await asyncpg.connect(  # a session of that other hub: the same settings as this one's
                pg_url.split("?")[0],
                server_settings={**postgres_store.session_settings(pg_url, "requests"), **with_search_path(pg_url)},
            )
            try:
                await stalled.execute("BEGIN; UPDATE change_counter SET last_id = last_id")
                headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
                async with session.post(f"{hub.url}/v1/sync", data=agent.body(), headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status == 503, body
                    assert body["type"].endswith("unavailable"), body
                    assert resp.headers["Retry-After"] == "1"
                # The server ends the stalled session; the next try is stored.
                async with asyncio.timeout(WAIT_S):
                    while await agent.sync(session, hub.url) != 200:
                        await asyncio.sleep(0.2)
                # The server ended that session (its client may see it as any of asyncpg's errors, so ask the server).
                watcher = await asyncpg.connect(pg_url.split("?")[0])
                try:
                    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
                    async with asyncio.timeout(WAIT_S):  # its locks go before its process has quite exited
                        while await watcher.fetchval(alive, stalled.get_server_pid()):
                            await asyncio.sleep(0.05)
                finally:
                    await watcher.close()
            finally:
                stalled.terminate()


async def test_a_driver_future_failed_by_a_session_end_is_one_info_line(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg leaves a COPY's waiter unawaited when the session ended just before it (see
    ``hub.storage.postgres.store._OrphanedWaiterFilter``); the loop's report of it is one INFO line, while every other
    unretrieved error — a task of the hub's own among them — still reaches the handler before."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        async with postgres_store.PostgresHubStore.open(pg_url):
            caplog.set_level(logging.INFO, logger=postgres_store.__name__)

            def unretrieved(err: BaseException) -> None:
                future = loop.create_future()
                future.set_exception(err)
                del future
                gc.collect()

            unretrieved(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
            assert seen == []
            assert "A database session ended under an operation the driver had begun" in caplog.text

            unretrieved(RuntimeError("a fault of the hub's own"))

            async def failing() -> None:
                raise asyncpg.ConnectionDoesNotExistError("a task of the hub's own")

            task = loop.create_task(failing())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert task.done()
            del task
            gc.collect()
            assert [type(c["exception"]) for c in seen] == [RuntimeError, asyncpg.ConnectionDoesNotExistError]
    finally:
        loop.set_exception_handler(None)


async def test_requests_beyond_the_pool_are_answered_503_not_queued_behind_an_operators_lock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's psql holds ``LOCK TABLE stock`` in an open transaction: every sync waits on it until
    lock_timeout, and with more syncs than the pool's connections the rest used to queue for a connection
    behind them — a queue one lock_timeout deep per round of POOL_MAX_SIZE, so a busy hub answered its agents
    (30 s timeout) and its load balancer's /healthz with nothing at all. A request that finds no free connection
    within POOL_ACQUIRE_TIMEOUT_S is answered 503 with Retry-After, saying why. (Syncs alone no longer take every
    connection, INGEST_TX_MAX stops them first: here they may, as other writes still can.)"""
    monkeypatch.setattr(postgres_store, "POOL_ACQUIRE_TIMEOUT_S", 0.5, raising=False)  # small bounds for the test
    monkeypatch.setattr(postgres_store, "INGEST_TX_MAX", postgres_store.POOL_MAX_SIZE + 5)
    monkeypatch.setattr(postgres_store, "SESSION_DEFAULTS", {**SESSION_DEFAULTS, "lock_timeout": "20s"})
    async with hub_in_process(pg_url, rate_limit_per_s=0) as hub:
        agents = [await _agent(hub.store, f"L{i}") for i in range(postgres_store.POOL_MAX_SIZE + 5)]
        operator = await asyncpg.connect(pg_url.split("?")[0], server_settings=with_search_path(pg_url))
        watcher = await asyncpg.connect(pg_url.split("?")[0], server_settings=with_search_path(pg_url))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
                headers = {"Content-Type": MSGPACK_CONTENT_TYPE}
                lock = operator.transaction()
                await lock.start()
                await operator.execute("LOCK TABLE stock IN ACCESS EXCLUSIVE MODE")

                async def sync(agent: Agent) -> tuple[int, str, str | None]:
                    auth = {**headers, "Authorization": f"Bearer {agent.token}"}
                    async with session.post(f"{hub.url}/v1/sync", data=agent.body(), headers=auth) as resp:
                        return resp.status, await resp.text(), resp.headers.get("Retry-After")

                syncs = [asyncio.ensure_future(sync(a)) for a in agents]
                try:
                    async with asyncio.timeout(WAIT_S):  # every connection of the hub waits on the lock
                        while await watcher.fetchval(WAITING_ON_STOCK_SQL) < postgres_store.POOL_MAX_SIZE:
                            await asyncio.sleep(0.05)
                    async with session.get(f"{hub.url}/healthz") as resp:  # answered while the lock is still held
                        health = await resp.json()
                    assert resp.status == 503, health
                    assert "connections" in health["detail"], health
                    answers = []
                    for done in asyncio.as_completed(syncs):
                        answers.append(await done)
                        if any(a[0] == 503 and "connections" in a[1] for a in answers):
                            break
                    busy = [a for a in answers if a[0] == 503 and "connections" in a[1]]
                    assert busy, answers
                    assert busy[0][2], busy  # Retry-After
                finally:
                    await lock.rollback()
                    await asyncio.gather(*syncs, return_exceptions=True)
                async with asyncio.timeout(WAIT_S):  # the lock gone, every agent's batch is stored
                    for agent in agents:
                        while await agent.sync(session, hub.url) != 200:
                            await asyncio.sleep(0.05)
        finally:
            await operator.close()
            await watcher.close()


async def test_a_session_ended_under_a_request_is_answered_with_the_servers_reason(pg_database: str) -> None:
    """The server ends the session a sync waits on (a failover, a restart, pg_terminate_backend): the 503 says what
    ended it. The driver hands a session the server closed back to its pool by itself, and the store's own
    ``terminate()`` of it then raised "cannot call Connection.terminate(): connection has been released back to the
    pool" — the sentence the operator read in the 503 and the log instead of the server's reason."""
    async with hub_in_process(pg_database, rate_limit_per_s=0) as hub:
        agent = await _agent(hub.store, "L1")
        operator = await asyncpg.connect(pg_database)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
                lock = operator.transaction()
                await lock.start()
                await operator.execute("LOCK TABLE stock IN ACCESS EXCLUSIVE MODE")  # the sync waits on it
                headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
                sync = asyncio.ensure_future(session.post(f"{hub.url}/v1/sync", data=agent.body(), headers=headers))
                try:
                    async with asyncio.timeout(WAIT_S):
                        while not (pids := await operator.fetch(
                            "SELECT DISTINCT pid FROM pg_locks WHERE NOT granted AND relation = 'stock'::regclass"
                        )):  # fmt: skip
                            await asyncio.sleep(0.05)
                    assert await operator.fetchval("SELECT pg_terminate_backend($1)", pids[0]["pid"])
                    async with await sync as resp:
                        body = await resp.json(content_type=None)
                finally:
                    sync.cancel()
                    await lock.rollback()
                assert resp.status == 503, body
                assert "released back to the pool" not in body["detail"], body
                assert "terminating connection due to administrator command" in body["detail"], body
                async with asyncio.timeout(WAIT_S):  # and the next try is stored
                    while await agent.sync(session, hub.url) != 200:
                        await asyncio.sleep(0.05)
        finally:
            await operator.close()


async def test_a_read_only_server_is_named_in_the_hub_s_words_before_the_server_s(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a failover the URL may still lead to the old primary, a standby now: every sync was answered 503 with
    "cannot execute INSERT in a read-only transaction", the server's words, which an operator did not read as "this
    server takes no writes". The 503 and the log name the cause first, the server's text after it."""
    caplog.set_level(logging.WARNING)
    async with hub_in_process(pg_database, rate_limit_per_s=0) as hub:
        agent = await _agent(hub.store, "L1")
        operator = await asyncpg.connect(pg_database)
        try:
            name = await operator.fetchval("SELECT current_database()")
            await operator.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await _terminate_sessions(pg_database)  # the hub's new sessions are read-only, as on a standby
            headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
                async with asyncio.timeout(WAIT_S):
                    while True:  # the first may meet a session just ended
                        async with session.post(f"{hub.url}/v1/sync", data=agent.body(), headers=headers) as resp:
                            body = await resp.json(content_type=None)
                        assert resp.status == 503, body
                        if "read-only transaction" in body["detail"]:
                            break
                        await asyncio.sleep(0.05)
            said = "the database server is read-only (a standby?)"
            assert said in body["detail"], body
            assert body["detail"].index(said) < body["detail"].index("read-only transaction"), body
        finally:
            await operator.close()
    assert f"POST /v1/sync: {said}" in caplog.text  # the log's one line per request keeps its first 120 characters


WAITING_ON_MIGRATION_LOCK_SQL = (  # the shared migration lock every ingest takes first (hub.storage.postgres.ingest)
    "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'"
)


async def test_a_hub_runs_at_most_its_ingest_turns_at_once_and_reads_keep_their_connections(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub runs at most INGEST_TX_MAX ingest transactions at once: more only queue in the database behind the
    change feed's counter. The others wait in the hub, their connections left to reads, and one that waits past
    POOL_ACQUIRE_TIMEOUT_S is answered 503 with Retry-After, naming the busy turns; nothing of it is stored, so
    its agent sends it again. Here a migration holds the lock every ingest takes first."""
    monkeypatch.setattr(postgres_store, "INGEST_TX_MAX", 3)
    monkeypatch.setattr(postgres_store, "POOL_ACQUIRE_TIMEOUT_S", 1.0, raising=False)
    async with hub_in_process(pg_url, rate_limit_per_s=0) as hub:
        agents = [await _agent(hub.store, f"L{i}") for i in range(8)]
        migrating = await asyncpg.connect(pg_url.split("?")[0], server_settings=with_search_path(pg_url))
        watcher = await asyncpg.connect(pg_url.split("?")[0])
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
                await migrating.execute("SELECT pg_advisory_lock(hashtext('shelfsync.migrate.' || current_schema()))")
                syncs = [asyncio.ensure_future(agent.sync(session, hub.url)) for agent in agents]
                try:
                    async with asyncio.timeout(WAIT_S):  # three ingest transactions wait on the lock
                        while await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) < 3:
                            await asyncio.sleep(0.05)
                    status, health = await _get(session, f"{hub.url}/healthz", agents[0].token)
                    assert status == 200, health  # a read finds a free connection meanwhile
                    status, counts = await _get(session, f"{hub.url}/v1/counts?limit=5", agents[0].token)
                    assert status == 200, counts
                    assert await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) == 3  # never a fourth
                    headers = {"Authorization": f"Bearer {agents[0].token}", "Content-Type": MSGPACK_CONTENT_TYPE}
                    waiting = Agent(agents[0].agent_id, agents[0].token, agents[0].location)  # a ninth batch
                    async with session.post(f"{hub.url}/v1/sync", data=waiting.body(), headers=headers) as resp:
                        body = await resp.json(content_type=None)
                        assert resp.status == 503, body
                        assert "ingest turns" in body["detail"], body
                        assert resp.headers["Retry-After"], resp.headers
                    assert await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) == 3
                finally:
                    await migrating.execute("SELECT pg_advisory_unlock_all()")
                    answered = await asyncio.gather(*syncs, return_exceptions=True)
                assert set(answered) <= {200, 503}, answered
                assert answered.count(200) >= 3, answered  # those in their turns when the lock went
                async with asyncio.timeout(WAIT_S):  # the rest are stored when sent again
                    for agent in agents:
                        while agent.pending is not None and await agent.sync(session, hub.url) != 200:
                            await asyncio.sleep(0.05)
                stored = await watcher.fetchval(
                    f"SELECT count(*) FROM {with_search_path(pg_url)['search_path']}.events"
                )
                assert stored == 8, stored  # one event per agent; the refused ninth was never stored
        finally:
            await migrating.close()
            await watcher.close()


async def test_big_batches_leave_one_ingest_turn_to_live_sales(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catch-up batches (more than LIVE_BATCH_EVENTS_MAX events) take at most all turns but one between them: with
    every big batch's transaction waiting on a lock, a store's live sale still gets a turn, not a 503 five seconds
    later. Here a big batch is two events and a live one one, and a migration holds the lock ingest takes first."""
    monkeypatch.setattr(postgres_store, "INGEST_TX_MAX", 3)
    monkeypatch.setattr(postgres_store, "LIVE_BATCH_EVENTS_MAX", 1)
    async with hub_in_process(pg_url, rate_limit_per_s=0) as hub:
        stores = [await _agent(hub.store, f"L{i}") for i in range(4)]
        live = await _agent(hub.store, "LIVE")
        migrating = await asyncpg.connect(pg_url.split("?")[0], server_settings=with_search_path(pg_url))
        watcher = await asyncpg.connect(pg_url.split("?")[0])
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:

                async def big(agent: Agent) -> int:  # two events: a catch-up batch here
                    first, second = agent.next_event(), agent.next_event()
                    body = encode_sync_request(SyncRequest(agent.agent_id, 1, (first, second)))
                    headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
                    async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers) as resp:
                        await resp.read()
                        return resp.status

                await migrating.execute("SELECT pg_advisory_lock(hashtext('shelfsync.migrate.' || current_schema()))")
                bigs = [asyncio.ensure_future(big(agent)) for agent in stores]
                try:
                    async with asyncio.timeout(WAIT_S):  # two big batches wait on the lock; the other two in the hub
                        while await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) < 2:
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(0.3)  # time for a third big batch to reach the lock, were it let through
                    assert await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) == 2
                    sale = asyncio.ensure_future(live.sync(session, hub.url))
                    async with asyncio.timeout(WAIT_S):  # the live sale takes the turn no big batch may hold
                        while await watcher.fetchval(WAITING_ON_MIGRATION_LOCK_SQL) < 3:
                            await asyncio.sleep(0.05)
                    assert not sale.done()
                finally:
                    await migrating.execute("SELECT pg_advisory_unlock_all()")
                assert await asyncio.wait_for(sale, WAIT_S) == 200
                assert await asyncio.wait_for(asyncio.gather(*bigs), WAIT_S) == [200] * 4
                stored = await watcher.fetchval(
                    f"SELECT count(*) FROM {with_search_path(pg_url)['search_path']}.events"
                )
                assert stored == 4 * 2 + 1
        finally:
            await migrating.close()
            await watcher.close()
