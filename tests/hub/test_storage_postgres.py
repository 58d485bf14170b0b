"""The PostgreSQL hub store: the storage contract, plus what only PostgreSQL has —
migrations, the partitioned ledger, byte-order text, and several stores (as
several hub processes would) writing one database at once.

Every test works in a fresh schema of the test server (see tests.harness.pg); the
tests skip where no server is reachable, and fail in CI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.resolver import resolve
from hub.storage import AgentIdentity, HubStore, StoreError, StoreOpener, open_store
from hub.storage.base import DatabaseUnreachable, Effect
from hub.storage.ingest import prepare_batch
from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres.ingest import (
    PRELOAD_SQL,
    STOCK_LOCK_BUCKETS,
    batch_locks,
    lock_key,
    sender_lockable,
    text_list,
    text_list_sql,
)
from hub.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION, schema_version
from protocol import MAX_BATCH_EVENTS, Kind, StockEvent
from tests.harness.pg import fresh_schema, schema_tables
from tests.hub.convergence import SAFETY_STOCK, deliver, delivery, event_sets, expected_state, observe
from tests.hub.event_factory import EventFactory
from tests.hub.storage_contract import StorageContract
from tests.hub.storage_contract_bundles import BundleContract


async def _dump(url: str) -> bytes:
    """Every row of every table of the store's schema, as text."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
        out = []
        for (table,) in tables:
            out += [r[0] for r in await conn.fetch(f"SELECT t::text FROM {table} t")]
        return "\n".join(out).encode()
    finally:
        await conn.close()


class TestPostgresHubStore(StorageContract, BundleContract):
    url: str

    @pytest.fixture(autouse=True)
    async def _schema(self, pg_url: str) -> AsyncIterator[None]:
        self.url = pg_url
        yield

    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        return PostgresHubStore.open(self.url)

    def stored_bytes(self, tmp_path: Path) -> bytes:
        # the contract asks synchronously from inside its event loop: read on a thread of its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, _dump(self.url)).result()


async def _agent(store: HubStore, *locations: str) -> AgentIdentity:
    _, token = await store.add_agent(list(locations))
    who = await store.authenticate(token)
    assert who is not None
    return who


# --- opening and migrations -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_store_picks_postgresql_by_url(pg_url: str, scheme: str) -> None:
    async with open_store(pg_url.replace("postgresql://", f"{scheme}://", 1)) as store:
        assert isinstance(store, PostgresHubStore)
        health = await store.health()
    assert (health["ok"], health["backend"], health["schema_version"]) == (True, "postgresql", SCHEMA_VERSION)
    assert ":shelfsync@" not in health["database"] and ":***@" in health["database"]  # no password shown


async def test_an_unreachable_server_is_one_clear_error(pg_server: str) -> None:
    with pytest.raises(
        DatabaseUnreachable, match=r"cannot reach the hub database postgresql://hub:\*\*\*@127.0.0.1:1/hub"
    ):
        await PostgresHubStore.open("postgresql://hub:secret@127.0.0.1:1/hub")


async def test_a_long_host_name_leaves_the_sessions_process_id_and_pool_whole(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL shows at most 63 bytes of an application_name, and any byte not printable ASCII as "?": a hub on a
    host with a long name would have had the end of its sessions' names, its process id and pool, cut off."""
    monkeypatch.setattr(
        socket, "gethostname", lambda: "warehouse-hub-with-a-very-long-name-é.eu-west-3.compute.example"
    )
    async with PostgresHubStore.open(pg_url):
        conn = await asyncpg.connect(pg_url)
        try:
            shown = await conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1", f"%:{os.getpid()} %"
            )
        finally:
            await conn.close()
    (name,) = [r[0] for r in shown]  # the pool's one connection (POOL_MIN_SIZE)
    assert name.startswith("shelfsync-hub warehouse-hub-with-a-") and name.endswith(f":{os.getpid()} requests")
    assert "?" not in name and "." not in name, name  # the domain gone, then the name's end
    assert len(name) == 63 - len("locks-webhooks") + len("requests")  # the longest pool's name would fit too


async def test_every_migration_is_recorded_and_an_old_schema_is_brought_forward(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():  # a database a version-1 hub left behind
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)"
            )
            await conn.execute(MIGRATIONS[1].read())
            await conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
            await conn.execute(
                "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms) "
                "VALUES ('agent-00000001', 'x', 'agent', '[\"S1\"]', 0)"
            )
        async with PostgresHubStore.open(pg_url) as store:
            assert (await store.health())["schema_version"] == SCHEMA_VERSION
            assert [s.agent_id for s in await store.agent_status()] == ["agent-00000001"]
            assert await store.latest_change_id() == 0  # a version-2 table
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await conn.close()


async def test_hubs_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(PostgresHubStore.open(pg_url) for _ in range(3)))
    try:
        assert len({s.hub_id for s in stores}) == 1  # one database, one hub id
        assert {(await s.health())["schema_version"] for s in stores} == {SCHEMA_VERSION}
    finally:
        for s in stores:
            await s.close()


async def test_a_hub_that_waited_for_another_hubs_first_step_sees_it_done(pg_url: str) -> None:
    """Hubs starting together on an empty database: one that found no schema, then waited for the migration lock
    while another ran the first step, must read the version that one left. Its session had looked the version table
    up by name and found none, and PostgreSQL keeps that answer in the session's catalog cache, inside a
    transaction, until something makes it read the invalidations (a table lock; not a wait for an advisory lock):
    the hub ran the first step again and failed on "relation meta already exists" (seen once under load)."""
    first, second = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    try:
        assert await schema_version(second) == 0  # found no schema: the name's absence is now in its cache
        async with second.transaction():  # as a migration step's transaction, started before the other's commit
            await first.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL); "
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (1, 0)"
            )
            assert await schema_version(second) == 1
    finally:
        await first.close()
        await second.close()


async def test_a_database_from_a_newer_shelfsync_is_refused(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url):
        pass
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this shelfsync"):
        await PostgresHubStore.open(pg_url)


async def test_a_schema_migrations_table_of_another_program_is_not_taken_for_the_hubs(pg_url: str) -> None:
    """Another migration tool's schema_migrations (golang-migrate's: version, dirty) at version 3 was read as the
    hub's schema version 3: steps 1 to 3 skipped, step 4 run against tables that were never made."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);"
            " INSERT INTO schema_migrations VALUES (3, false); CREATE TABLE accounts (id bigint PRIMARY KEY)"
        )
    finally:
        await conn.close()
    with pytest.raises(StoreError) as refused:
        await open_store(pg_url)
    assert "(it holds the tables accounts, schema_migrations and not the hub's schema_migrations)" in str(
        refused.value
    ), refused.value
    assert await schema_tables(pg_url) == ["accounts", "schema_migrations"]


# --- layout --------------------------------------------------------------------------


async def test_the_ledger_is_hash_partitioned_by_location(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, *(f"S{i}" for i in range(40)))
        ev = EventFactory(who.agent_id)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=i, location=f"S{i}") for i in range(40)])
    conn = await asyncpg.connect(pg_url)
    try:
        strategy = await conn.fetchval(
            "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = to_regclass('events')"
        )
        assert strategy == "h"
        placed = await conn.fetch("SELECT tableoid::regclass::text AS part, location FROM events")
        by_location: dict[str, set[str]] = {}
        for r in placed:
            by_location.setdefault(r["location"], set()).add(r["part"])
        assert len(by_location) == 40 and all(len(parts) == 1 for parts in by_location.values())
        assert len({r["part"] for r in placed}) > 8  # 40 locations spread over most of the 16 partitions
        located = await conn.fetch("SELECT agent_id, location FROM agent_locations")
        assert sorted(located) == sorted((who.agent_id, f"S{i}") for i in range(40))  # where its resends are looked up
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN SELECT * FROM events WHERE location = 'S7' AND sku = 'A'")
        )
        assert len(set(re.findall(r" on (events_p\d+)", plan))) == 1  # one location's reads touch one partition
    finally:
        await conn.close()


async def test_text_sorts_by_bytes_like_sqlite(pg_url: str) -> None:
    skus = ["b", "B", "a", "Z", "é", "_x", "10", "9"]
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, "S1")
        ev = EventFactory(who.agent_id)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=i, sku=s) for i, s in enumerate(skus)])
        rows = await store.counts(location="S1")
    assert [r.sku for r in rows] == sorted(skus, key=str.encode)


@pytest.mark.parametrize(
    "values",
    [["S1", "S1", "S2"], ["é", "a b", "'\"{},\\"], ["only"], [], [""], ["a", ""], ["a\x1fb", "c"], ["\x1f"]],
)
async def test_a_text_list_parameter_reaches_the_server_whole(pg_url: str, values: list[str]) -> None:
    """The batch's keys go as joined texts (``text_list``); a list that cannot go so goes as an array."""
    joined, array = text_list(values)
    assert (joined is None) == (not values or not all(values) or any("\x1f" in v for v in values))
    conn = await asyncpg.connect(pg_url.split("?")[0])
    try:
        assert await conn.fetchval(f"SELECT {text_list_sql('$1', '$2')}", joined, array) == values
    finally:
        await conn.close()


# --- several stores on one database -----------------------------------------------------


async def test_the_same_batch_to_two_stores_at_once_is_counted_once(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url) as one, PostgresHubStore.open(pg_url) as two:
        who = await _agent(one, "S1")
        ev = EventFactory(who.agent_id)
        batch = [ev(Kind.RECEIVE, 5, at_ms=i, sku=f"K{i % 3}") for i in range(30)]
        batch += [ev(Kind.COUNT, 4, at_ms=40, sku="K0"), ev(Kind.SALE, -1, at_ms=41, sku="K0")]
        results = await asyncio.gather(*(store.ingest(who, 1, batch) for store in (one, two, one, two)))
        assert sorted(r.applied for r in results) == [0, 0, 0, len(batch)]
        assert sum(r.duplicates for r in results) == 3 * len(batch)
        assert {r.counts for r in results} == {results[0].counts}  # every answer reads the committed state
        counts = {r.sku: r.on_hand for r in await two.counts()}
        assert counts == {"K0": 3, "K1": 50, "K2": 50}
        ledger = await one.ledger()
        assert len(ledger) == len(batch)
        assert sum(r.duplicates for r in ledger) == 3 * len(batch)


async def test_a_conflict_racing_at_another_location_is_caught(pg_url: str) -> None:
    """The same event id sent with other content for another location at the same
    moment, to two stores: their stock locks differ, but both batches take their
    sender's lock, so the second finds the first's event under its location."""
    async with PostgresHubStore.open(pg_url) as one, PostgresHubStore.open(pg_url) as two:
        who = await _agent(one, "S1", "S2")
        ev = EventFactory(who.agent_id)
        for round_ in range(10):
            first = ev(Kind.RECEIVE, 1, at_ms=round_, location="S1")
            forged = ev(Kind.RECEIVE, 1, at_ms=round_, location="S2", event_id=first.event_id)
            a, b = await asyncio.gather(one.ingest(who, 1, [first]), two.ingest(who, 1, [forged]))
            assert sorted((a.applied, b.applied)) == [0, 1]
            assert [r.code for r in a.rejected + b.rejected] == ["conflict"]
        total = sum(r.on_hand for r in await one.counts())
        assert total == 10


async def test_an_id_is_found_under_every_location_its_agent_stored_events_in(pg_url: str) -> None:
    """The ledger has no global index on the event id: a resend is looked up in the partitions of the
    locations its agent stored events in, the new location's included once its first event is stored."""
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, *(f"S{i}" for i in range(5)))
        ev = EventFactory(who.agent_id)
        stored = [ev(Kind.RECEIVE, 1 + i, at_ms=i, location=f"S{i}") for i in range(4)]
        for one in stored:  # one batch per location: each adds a location to look in
            assert (await store.ingest(who, 1, [one])).applied == 1
        for one in stored:
            forged = ev(Kind.RECEIVE, 7, at_ms=50, location="S4", event_id=one.event_id)
            again = await store.ingest(who, 1, [one, forged])
            assert (again.applied, again.duplicates, [r.code for r in again.rejected]) == (0, 1, ["conflict"])
        assert {r.location: r.on_hand for r in await store.counts()} == {f"S{i}": 1 + i for i in range(4)}
        assert sorted((r.location, r.duplicates) for r in await store.ledger() if r.effect == Effect.APPLIED) == [
            (f"S{i}", 1) for i in range(4)
        ]


async def test_concurrent_stores_keep_one_gapless_change_feed(pg_url: str) -> None:
    """Four stores ingest at once while a reader follows the feed: it sees every
    change id exactly once, in order, never one before the ones below it."""
    stores = [await PostgresHubStore.open(pg_url) for _ in range(4)]
    try:
        agents = [await _agent(stores[0], f"S{i % 2}") for i in range(8)]
        done = asyncio.Event()
        seen: list[int] = []

        async def follow() -> None:
            cursor = 0
            while True:
                finished = done.is_set()
                rows = await stores[0].changes(cursor, 1000)
                seen.extend(r.change_id for r in rows)
                cursor = rows[-1].change_id if rows else cursor
                if finished and not rows:
                    return
                await asyncio.sleep(0)

        async def send(i: int, who: AgentIdentity) -> None:
            ev = EventFactory(who.agent_id, location=next(iter(who.locations)))
            for b in range(10):
                batch = [ev(Kind.RECEIVE, 1, at_ms=b * 20 + k, sku=f"K{(i + k) % 5}") for k in range(20)]
                await stores[(i + b) % 4].ingest(who, 1, batch)

        reader = asyncio.create_task(follow())
        await asyncio.gather(*(send(i, who) for i, who in enumerate(agents)))
        done.set()
        await asyncio.wait_for(reader, 60)
        latest = await stores[1].latest_change_id()
        assert seen == list(range(1, latest + 1))
        assert sum(r.on_hand for r in await stores[2].counts()) == 8 * 10 * 20
        last = {}
        for row in await stores[3].changes(0, 100_000):
            last[(row.location, row.sku)] = row.on_hand
        assert last == {(r.location, r.sku): r.on_hand for r in await stores[3].counts()}
    finally:
        for s in stores:
            await s.close()


async def test_safety_stock_set_during_ingest_is_not_lost(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url) as one, PostgresHubStore.open(pg_url) as two:
        who = await _agent(one, "S1")
        ev = EventFactory(who.agent_id)
        for i in range(20):
            await asyncio.gather(
                one.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=i)]), two.set_safety_stock("S1", "A", i + 1)
            )
        (row,) = await one.counts()
        assert (row.on_hand, row.safety_stock) == (20, 20)


async def test_a_cancelled_caller_does_not_cancel_its_write(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, "S1")
        ingest = asyncio.create_task(store.ingest(who, 1, [EventFactory(who.agent_id)(Kind.RECEIVE, 4, at_ms=1)]))
        await asyncio.sleep(0)  # let it start its transaction
        ingest.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ingest
    async with PostgresHubStore.open(pg_url) as store:  # close() waited for it
        assert [(r.sku, r.on_hand) for r in await store.counts()] == [("A", 4)]


async def test_a_connection_goes_back_to_the_pool_without_a_reset_round_trip(pg_url: str) -> None:
    """Its connections hold no session state, so releasing one sends nothing: the last statement its backend
    ran is the transaction's COMMIT, and it is idle, not inside a transaction."""
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, "S1")
        await store.ingest(who, 1, [EventFactory(who.agent_id)(Kind.RECEIVE, 4, at_ms=1)])
        assert store._pool.get_size() == 1  # the pool's one connection (min_size 1) took the batch
        async with store._pool.acquire() as conn:
            pid = conn.get_server_pid()
        watcher = await asyncpg.connect(pg_url.split("?")[0])
        try:
            row = await watcher.fetchrow("SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await watcher.close()
        assert row is not None and (row["state"], row["query"].strip()) == ("idle", "COMMIT;"), row


async def test_a_batch_of_new_events_takes_one_read_and_one_closing_statement(pg_url: str) -> None:
    """Besides BEGIN, its locks, COMMIT and the COPY of its events (not logged here), a batch of new events
    reads once (PRELOAD_SQL) and writes its stock rows, mark, sync note and change rows in one statement."""
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, "S1")
        ev = EventFactory(who.agent_id)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1, sku="A")])
        sent: list[str] = []
        async with store._pool.acquire() as conn:  # the pool's one connection: min_size 1, nothing else runs
            conn.add_query_logger(lambda record: sent.append(record.query))
        result = await store.ingest(
            who, 1, [ev(Kind.SALE, -1, at_ms=10 + i, sku=sku) for i, sku in enumerate(["A", "B", "A", "C"])]
        )
        assert result.hwm == 5 and result.change_id is not None
        assert [q.split()[0] for q in sent] == ["BEGIN;", "SELECT", "SELECT", "WITH", "COMMIT;"], sent
        assert sent[2] == PRELOAD_SQL
        assert "mark AS" in sent[3] and "stock_written AS" in sent[3] and "counter AS" in sent[3]
        assert sorted((r.sku, r.on_hand) for r in await store.counts()) == [("A", 3), ("B", -1), ("C", -1)]


async def test_a_senders_batches_go_one_at_a_time(pg_url: str) -> None:
    """What a batch reads of its sender first (mark, held events, ids) must stay true until its commit: while
    another transaction holds the sender's lock, the sender's batch waits, and another sender's does not."""
    async with PostgresHubStore.open(pg_url) as store:
        who, other = await _agent(store, "S1"), await _agent(store, "S2")
        holder = await asyncpg.connect(pg_url)
        try:
            tr = holder.transaction()
            await tr.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key(sender_lockable(who.agent_id)))
            waiting = asyncio.create_task(store.ingest(who, 1, [EventFactory(who.agent_id)(Kind.RECEIVE, 2, at_ms=1)]))
            free = await asyncio.wait_for(
                store.ingest(other, 1, [EventFactory(other.agent_id, location="S2")(Kind.RECEIVE, 3, at_ms=1)]), 10
            )
            assert free.hwm == 1
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await tr.commit()
            assert (await asyncio.wait_for(waiting, 10)).hwm == 1
        finally:
            await holder.close()


async def test_a_resend_whose_id_range_holds_many_stored_ids_is_still_found(pg_url: str) -> None:
    """The preload reads at most 2n + 1 of the sender's ids in the batch's range; past that the exact lookup
    runs, and a resend inside a wide range is still counted once."""
    async with PostgresHubStore.open(pg_url) as store:
        who = await _agent(store, "S1")
        ev = EventFactory(who.agent_id)
        first = [ev(Kind.RECEIVE, 1, at_ms=i, sku="A") for i in range(1, 11)]
        earlier_id = bytes(16)  # below every stored id: the range of the next batch spans all ten
        late = ev(Kind.RECEIVE, 7, at_ms=20, sku="B", event_id=earlier_id)
        await store.ingest(who, 1, first)
        again = first[9]._replace(seq=12)  # the same movement sent again under a later seq
        result = await store.ingest(who, 1, [late._replace(seq=11), again])
        assert (result.applied, result.duplicates, result.rejected) == (1, 1, ())
        assert sorted((r.sku, r.on_hand) for r in await store.counts()) == [("A", 10), ("B", 7)]


async def test_schemas_in_one_database_are_separate_hubs(pg_server: str) -> None:
    async with (
        fresh_schema() as a_url,
        fresh_schema() as b_url,
        PostgresHubStore.open(a_url) as a,
        PostgresHubStore.open(b_url) as b,
    ):
        await _agent(a, "S1")
        assert await b.agent_status() == []
        assert a.hub_id != b.hub_id


# --- convergence under concurrency ---------------------------------------------------------


async def _converge(batches: list[list[StockEvent]]) -> dict[str, Any]:
    """Deliver ``batches`` through two stores at once (alternating), then observe through a third."""
    async with fresh_schema() as url:
        async with PostgresHubStore.open(url) as one, PostgresHubStore.open(url) as two:
            for (location, sku), qty in SAFETY_STOCK.items():
                await one.set_safety_stock(location, sku, qty)
            await asyncio.gather(deliver(one, batches[0::2]), deliver(two, batches[1::2]))
        async with PostgresHubStore.open(url) as store:
            return await observe(store)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), data=st.data())
def test_concurrent_deliveries_converge_on_the_resolution(
    pg_server: str, events: list[StockEvent], data: st.DataObject
) -> None:
    assert asyncio.run(_converge(delivery(data, events))) == expected_state(resolve(events, SAFETY_STOCK))


async def test_a_batch_holds_few_locks_however_many_skus_it_names(pg_url: str) -> None:
    """PostgreSQL's lock table is shared and finite (max_locks_per_transaction ×
    max_connections): several full batches of distinct SKUs at once must fit in it."""
    async with PostgresHubStore.open(pg_url) as one, PostgresHubStore.open(pg_url) as two:
        agents = [await _agent(one, f"S{i}") for i in range(4)]
        batches = []
        for who in agents:
            ev = EventFactory(who.agent_id, location=next(iter(who.locations)))
            batches.append([ev(Kind.RECEIVE, 1, at_ms=k, sku=f"K{k}") for k in range(MAX_BATCH_EVENTS)])
            assert len(batch_locks(prepare_batch(who, 1, batches[-1]))) <= STOCK_LOCK_BUCKETS
        results = await asyncio.gather(
            *(store.ingest(who, 1, batch) for store, who, batch in zip([one, two] * 2, agents, batches, strict=True))
        )
        assert [r.applied for r in results] == [MAX_BATCH_EVENTS] * 4
        rows = await one.counts(limit=4 * MAX_BATCH_EVENTS)
        assert len(rows) == 4 * MAX_BATCH_EVENTS and {r.on_hand for r in rows} == {1}
