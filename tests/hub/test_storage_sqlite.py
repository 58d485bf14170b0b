"""The SQLite hub store: the storage contract, plus what only a SQLite file has."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from hub.storage import AgentIdentity, HubStore, SqliteHubStore, StoreError, StoreOpener, open_store
from hub.storage.credentials import new_token, token_hash
from hub.storage.ingest import event_row
from hub.storage.sql import EVENT_FIELDS
from hub.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from protocol import Kind, wall_ms_now
from tests.hub.event_factory import EventFactory
from tests.hub.storage_contract import StorageContract
from tests.hub.storage_contract_bundles import BundleContract

DB_NAME = "hub.db"


class TestSqliteHubStore(StorageContract, BundleContract):
    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        return SqliteHubStore.open(tmp_path / DB_NAME)

    def stored_bytes(self, tmp_path: Path) -> bytes:
        files = sorted(tmp_path.glob(DB_NAME + "*"))  # the database, and its -wal / -shm if still there
        assert files
        return b"".join(f.read_bytes() for f in files)


@pytest.mark.parametrize("form", ["path", "str", "sqlite-url"])
async def test_open_store_takes_a_path_or_a_sqlite_url(tmp_path: Path, form: str) -> None:
    db = tmp_path / DB_NAME
    target: str | Path = {"path": db, "str": str(db), "sqlite-url": f"sqlite://{db}"}[form]
    async with open_store(target) as store:
        assert isinstance(store, SqliteHubStore)
        assert (await store.health())["path"] == str(db)
    assert db.exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("mysql://127.0.0.1/hub", "unknown database URL scheme"),
        ("sqlite:///:memory:", "file path"),
        (":memory:", "file path"),
    ],
)
def test_open_store_refuses_what_it_cannot_open(target: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(target)


async def test_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the hub database"):
        await SqliteHubStore.open(tmp_path / "no" / "such" / DB_NAME)


async def test_the_file_is_wal_versioned_and_keeps_event_ids_as_16_bytes(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        ev = EventFactory("a1")
        event = ev(Kind.RECEIVE, 1, at_ms=1)
        await store.ingest(AgentIdentity("a1", frozenset({"S1"})), 1, [event])
        health = await store.health()
    assert health["schema_version"] == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT typeof(event_id), length(event_id) FROM events").fetchall() == [("blob", 16)]
        assert conn.execute("SELECT event_id FROM events").fetchone() == (event.event_id,)
    conn.close()


async def test_the_hub_id_is_stable_across_restarts(tmp_path: Path) -> None:
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:
        first = (await store.health())["hub_id"]
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:
        assert (await store.health())["hub_id"] == first
    assert len(first) == 32


async def test_the_feed_history_holds_whichever_name_a_symlink_gives_the_file(tmp_path: Path) -> None:
    """The same file opened by a symlink and by its own path is no copy: its feed history goes on."""
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "hub.db"
    (tmp_path / "hub.db").symlink_to(db)
    (tmp_path / "linked").symlink_to(tmp_path / "data", target_is_directory=True)
    histories = []
    for name in (db, tmp_path / "hub.db", tmp_path / "linked" / "hub.db", db):
        async with SqliteHubStore.open(name) as store:
            histories.append(store.feed_history)
    assert len(set(histories)) == 1, histories


async def test_a_database_from_a_newer_shelfsync_is_refused(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this shelfsync"):
        await SqliteHubStore.open(db)


async def test_a_version_1_database_is_migrated_step_by_step_and_keeps_its_data(tmp_path: Path) -> None:
    """A hub database left by the first shelfsync (schema 1) opens under this one: every migration runs in
    turn, credentials still authenticate, marks, events and counts stay, and ingest goes on from there."""
    db = tmp_path / DB_NAME
    token = new_token("store-1")
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[1].read() + "\nPRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms) VALUES (?, ?, 'agent', ?, 0)",
        ("store-1", token_hash(token), '["S1"]'),
    )
    events = EventFactory("store-1", base_ms=wall_ms_now() - 60_000)
    old = events(Kind.RECEIVE, 5, at_ms=0)
    conn.execute(
        f"INSERT INTO events ({EVENT_FIELDS}, effect, variance, received_at_ms) VALUES ({', '.join('?' * 17)})",
        (old.event_id, *event_row(old), "applied", None, 1),
    )
    conn.execute("INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms) VALUES ('store-1', ?, ?, 1)", (old.epoch, old.seq))
    conn.execute(
        "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
        "VALUES ('S1', ?, 5, 0, 0, 0, 1)",
        (old.sku,),
    )
    conn.commit()
    conn.close()
    async with SqliteHubStore.open(db) as store:
        assert (await store.health())["schema_version"] == SCHEMA_VERSION == max(MIGRATIONS)
        who = await store.authenticate(token)
        assert who is not None and who.agent_id == "store-1"
        (status,) = await store.agent_status("store-1")
        assert (status.hwm, status.backlog) == ({old.epoch: old.seq}, None)
        assert [r.event_id for r in await store.ledger(location="S1")] == [old.event_id]
        again = await store.ingest(who, old.epoch, [old], backlog=0)  # the old event resent: a duplicate
        assert (again.applied, again.duplicates) == (0, 1)
        sale = events(Kind.SALE, -2, at_ms=1_000)
        result = await store.ingest(who, old.epoch, [sale], backlog=7)
        assert result.applied == 1 and result.hwm == old.seq + 1
        (row,) = await store.counts(location="S1")
        assert row.on_hand == 3
        assert (await store.agent_status("store-1"))[0].backlog == 7
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


async def test_writes_that_share_a_transaction_fail_alone(tmp_path: Path) -> None:
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:

        async def fails_after_writing(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT INTO meta (key, value) VALUES ('half', 'done')")
            raise RuntimeError("boom")

        async def bad_sql(db: aiosqlite.Connection) -> None:
            await db.execute("INSERT INTO no_such_table VALUES (1)")

        # queued together, so the writer commits them in one transaction
        first, boom, broken, last = await asyncio.gather(
            store.add_agent(["S1"]),
            store._write("testing a failure", fails_after_writing),
            store._write("testing bad SQL", bad_sql),
            store.add_agent(["S2"]),
            return_exceptions=True,
        )
        assert isinstance(boom, RuntimeError)
        assert isinstance(broken, StoreError) and "testing bad SQL" in str(broken)
        assert isinstance(first, tuple) and isinstance(last, tuple)
        assert sorted(s.locations for s in await store.agent_status()) == [("S1",), ("S2",)]
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'half'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (2,)
    conn.close()


async def test_a_read_cancelled_at_any_point_leaves_later_reads_working(tmp_path: Path) -> None:
    """A browser reload cancels the requests in flight; a snapshot read cancelled between its BEGIN and
    its end once left the reader inside a transaction, and every later read failed with "cannot start
    a transaction within a transaction" until the hub restarted."""
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:
        who = AgentIdentity("a1", frozenset({"S1"}))
        await store.ingest(who, 1, [EventFactory("a1")(Kind.RECEIVE, 4, at_ms=1)])
        for steps in range(12):  # cancel after 0, 1, 2 … turns of the loop: before, in and after BEGIN
            read = asyncio.create_task(store.exceptions())
            for _ in range(steps):
                await asyncio.sleep(0)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            assert isinstance(await store.exceptions(), list)
            assert await store.agent_status() == []  # no credential was added
            assert len(await store.ledger(sku="A", location="S1")) == 1


async def test_a_cancelled_caller_does_not_cancel_its_write(tmp_path: Path) -> None:
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:
        who = AgentIdentity("a1", frozenset({"S1"}))
        ingest = asyncio.create_task(store.ingest(who, 1, [EventFactory("a1")(Kind.RECEIVE, 4, at_ms=1)]))
        await asyncio.sleep(0)  # let it queue its write
        ingest.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ingest
        await store.set_safety_stock("S1", "B", 1)  # queued after it: done means the ingest is done too
        assert [(r.sku, r.on_hand) for r in await store.counts(location="S1")] == [("A", 4), ("B", 0)]
