"""The SQLite hub's writer thread, its stock cache and its checkpointer, against real files.

``hub.storage.sqlite.writer`` (``run_inline``, ``ConnectionThread``, ``Checkpointer``),
``hub.storage.sqlite.ingest.StockCache`` and how ``hub.storage.sqlite`` keeps that
cache true to the committed file: another connection's commit, a rolled-back
write and a new safety stock must each be seen by the next ingest.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hub.storage import AgentIdentity, SqliteHubStore, StoreError
from hub.storage.ingest import StockRow
from hub.storage.sqlite.ingest import ROWS_PER_STATEMENT, SqliteIngest, StockCache, insert_rows
from hub.storage.sqlite.schema import migrate
from hub.storage.sqlite.store import _commit_group, _Write
from hub.storage.sqlite.writer import (
    CHECKPOINT_PAUSE_S,
    CHECKPOINT_ROWS,
    WAL_VALVE_PAGES,
    Checkpointer,
    ConnectionThread,
    InlineConnection,
    run_inline,
)
from protocol import Kind
from tests.hub.event_factory import EventFactory

DB_NAME = "hub.db"
KEY = ("S1", "A")
WAIT_S = 5.0  # the longest any poll below waits


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout} s: {what}")
        await asyncio.sleep(0.01)


def committed_stock(db: Path, key: tuple[str, str] = KEY) -> tuple[int, int] | None:
    """(on_hand, safety_stock) of ``key`` as committed in the file, read by a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT on_hand, safety_stock FROM stock WHERE location = ? AND sku = ?", key).fetchone()
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


async def stored_on_hand(store: SqliteHubStore, key: tuple[str, str] = KEY) -> int:
    rows = [r for r in await store.counts(location=key[0]) if r.sku == key[1]]
    assert len(rows) == 1
    return rows[0].on_hand


async def an_agent(store: SqliteHubStore, locations: list[str] | None = None) -> tuple[AgentIdentity, EventFactory]:
    agent_id, token = await store.add_agent(locations or ["S1"])
    who = await store.authenticate(token)
    assert who is not None
    return who, EventFactory(agent_id)


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


# --- run_inline -----------------------------------------------------------------------------------


def test_run_inline_returns_what_a_write_over_an_inline_connection_returns(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    try:
        db = InlineConnection(conn)

        async def write() -> tuple[int, list[Any]]:
            await db.executescript("CREATE TABLE t (x INTEGER); CREATE TABLE u (y INTEGER);")
            await db.executemany("INSERT INTO t (x) VALUES (?)", [(1,), (2,), (4,)])
            cur = await db.execute("INSERT INTO u (y) VALUES (?)", (7,))
            assert cur.rowcount == 1
            total = await db.execute_fetchall("SELECT sum(x) FROM t")
            return total[0][0], await db.execute_fetchall("SELECT y FROM u")

        assert run_inline(write()) == (7, [(7,)])
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)  # really written, on this connection
    finally:
        conn.close()


@pytest.mark.parametrize("n", [1, ROWS_PER_STATEMENT - 1, ROWS_PER_STATEMENT, 2 * ROWS_PER_STATEMENT + 3])
def test_insert_rows_writes_every_row_once_whatever_the_count(tmp_path: Path, n: int) -> None:
    # full statements of ROWS_PER_STATEMENT rows, then one for the rest: no row left out or written twice
    conn = sqlite3.connect(tmp_path / "rows.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        rows = [(i, f"v{i}") for i in range(n)]
        assert run_inline(insert_rows(InlineConnection(conn), "INSERT INTO t (k, v)", "", 2, rows)) == n
        assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == rows
        changed = run_inline(insert_rows(
            InlineConnection(conn), "INSERT INTO t (k, v)", "ON CONFLICT (k) DO UPDATE SET v = excluded.v || '!'", 2, rows
        ))  # fmt: skip
        assert changed == n
        assert conn.execute("SELECT count(*) FROM t WHERE v LIKE '%!'").fetchone() == (n,)
    finally:
        conn.close()


def test_run_inline_passes_a_write_error_through_unchanged(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    try:
        db = InlineConnection(conn)

        async def bad_sql() -> None:
            await db.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            run_inline(bad_sql())
    finally:
        conn.close()


def test_run_inline_refuses_a_write_that_suspends_and_closes_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    steps: list[str] = []
    try:
        db = InlineConnection(conn)

        async def suspends() -> int:
            try:
                await db.execute("CREATE TABLE t (x INTEGER)")
                steps.append("before")
                await asyncio.sleep(0)
                steps.append("after")  # never: run_inline does not resume it
                return 1
            finally:
                steps.append("finally")

        coro = suspends()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="writer") as raised:
                run_inline(coro)
            assert "may not suspend" in str(raised.value)
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert steps == ["before", "finally"]  # closed: its finally ran, the rest did not
            del coro, raised
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]
    finally:
        conn.close()


# --- StockCache -----------------------------------------------------------------------------------


def row(sku: str, on_hand: int = 0, location: str = "S1") -> StockRow:
    return StockRow(location, sku, on_hand)


def test_the_stock_cache_returns_what_was_put_and_the_latest_save_of_a_key() -> None:
    cache = StockCache()
    assert cache.get(KEY) is None
    cache.put([row("A", 1), row("B", 2), row("A", 3, location="S2")])
    assert len(cache) == 3
    assert cache.get(("S1", "A")) == row("A", 1)
    assert cache.get(("S2", "A")) == row("A", 3, location="S2")
    cache.put([row("A", 5)])
    assert cache.get(("S1", "A")) == row("A", 5)
    assert len(cache) == 3


def test_the_stock_cache_lets_the_least_recently_saved_row_go_first() -> None:
    cache = StockCache(max_rows=3)
    cache.put([row("A"), row("B"), row("C")])
    cache.put([row("D")])
    assert (cache.get(("S1", "A")), len(cache)) == (None, 3)  # the oldest left
    cache.put([row("B", 9)])  # saved again: now the newest
    cache.put([row("E")])
    assert cache.get(("S1", "C")) is None  # so C, not B, was the oldest
    assert cache.get(("S1", "B")) == row("B", 9)
    assert [cache.get(("S1", s)) is not None for s in "BDE"] == [True, True, True]
    cache.put([row(s) for s in "VWXYZ"])  # more in one put than it holds: the last ones stay
    assert len(cache) == 3
    assert [s for s in "BDEVWXYZ" if cache.get(("S1", s)) is not None] == ["X", "Y", "Z"]


def test_the_stock_cache_discards_one_key() -> None:
    cache = StockCache()
    cache.put([row("A", 1), row("B", 2)])
    cache.discard(("S1", "A"))
    cache.discard(("S9", "nothing"))  # not there: fine
    assert cache.get(("S1", "A")) is None
    assert cache.get(("S1", "B")) == row("B", 2)
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_the_stock_cache_forgets_everything_only_when_the_data_version_moves() -> None:
    cache = StockCache()
    cache.check_version(5)  # the first look: nothing to keep anyway
    cache.put([row("A", 1), row("B", 2)])
    cache.check_version(5)
    cache.check_version(5)
    assert len(cache) == 2 and cache.get(("S1", "A")) == row("A", 1)
    cache.check_version(6)
    assert len(cache) == 0 and cache.data_version == 6
    cache.put([row("C", 3)])
    cache.check_version(6)
    assert cache.get(("S1", "C")) == row("C", 3)
    cache.check_version(5)  # any move, also back
    assert len(cache) == 0


# --- the cache, end to end --------------------------------------------------------------------------


async def test_a_commit_by_another_connection_reaches_the_next_ingest(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1)])
        before = await stored_on_hand(store)
        assert before == 5
        assert store._stock_cache.get(KEY) is not None  # the writer holds the row now

        other = sqlite3.connect(db, timeout=WAIT_S)
        try:
            other.execute("UPDATE stock SET on_hand = on_hand + 100 WHERE location = ? AND sku = ?", KEY)
            other.commit()
        finally:
            other.close()
        assert await stored_on_hand(store) == before + 100

        result = await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=2)])
        assert [(c.sku, c.on_hand) for c in result.counts] == [("A", before + 100 + 3)]
        assert await stored_on_hand(store) == before + 100 + 3
        assert committed_stock(db) == (before + 100 + 3, 0)


async def test_an_external_safety_stock_change_is_kept_by_the_next_ingest(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        other = sqlite3.connect(db, timeout=WAIT_S)
        try:
            other.execute("UPDATE stock SET safety_stock = 4 WHERE location = ? AND sku = ?", KEY)
            other.commit()
        finally:
            other.close()
        result = await store.ingest(who, 1, [ev(Kind.SALE, -1, at_ms=2)])
        assert [(c.on_hand, c.available) for c in result.counts] == [(9, 5)]
    assert committed_stock(db) == (9, 4)


async def test_the_stores_own_commits_keep_the_cache(tmp_path: Path) -> None:
    """data_version moves only for other connections: the writer's and the checkpointer's own work keep it."""
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store, ["S1", "S2"])
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1)])
        cached = store._stock_cache.get(KEY)
        assert cached is not None and cached.on_hand == 5
        await store.set_safety_stock("S2", "B", 1)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=2, location="S2", sku="Z")])
        assert store._stock_cache.get(KEY) == cached  # still there after two commits of this store


# --- a rolled-back write leaves no row in the cache ------------------------------------------------------


def poison(store: SqliteHubStore, on_hand: int) -> Callable[[InlineConnection], Coroutine[Any, Any, None]]:
    """A write that saves a stock row through the writer's cache, then fails."""

    async def work(db: InlineConnection) -> None:
        await SqliteIngest(db, store._stock_cache).save_stock([StockRow(*KEY, on_hand)], 0)
        assert store._stock_cache.get(KEY) == StockRow(*KEY, on_hand)
        raise RuntimeError("boom after saving stock")

    return work


@pytest.mark.parametrize("order", ["alone", "poison-first", "poison-last"])
async def test_a_rolled_back_write_leaves_no_stock_row_in_the_cache(tmp_path: Path, order: str) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1)])
        fails = store._write("testing a rollback", poison(store, 999))
        if order == "alone":
            with pytest.raises(RuntimeError, match="boom"):
                await fails
            expected = 5
        else:
            ingest = store.ingest(who, 1, [ev(Kind.RECEIVE, 2, at_ms=2)])
            writes = [fails, ingest] if order == "poison-first" else [ingest, fails]
            # queued together: one transaction, each write in its own savepoint
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            boom = outcomes[0] if order == "poison-first" else outcomes[1]
            assert isinstance(boom, RuntimeError)
            expected = 7
        assert store._stock_cache.get(KEY) != StockRow(*KEY, 999)
        assert committed_stock(db) == (expected, 0)
        assert await stored_on_hand(store) == expected

        result = await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=3)])
        assert [c.on_hand for c in result.counts] == [expected + 3]  # from the committed row, not 999
        assert await stored_on_hand(store) == expected + 3
    assert committed_stock(db) == (expected + 3, 0)


async def writer_thread(db: Path) -> ConnectionThread:
    """A writer like the store's, on a migrated file, with foreign keys on and a table whose
    deferred foreign key fails only at COMMIT."""
    thread = ConnectionThread(db, "test-writer")
    await thread.open(["PRAGMA journal_mode = WAL", "PRAGMA foreign_keys = ON"])
    await thread.run(lambda conn: run_inline(migrate(InlineConnection(conn), db)))
    await thread.run(
        lambda conn: conn.executescript(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
        )
    )
    return thread


def save_stock_write(cache: StockCache, on_hand: int, *, then: str | None = None) -> _Write:
    async def work(db: InlineConnection) -> str:
        await SqliteIngest(db, cache).save_stock([StockRow(*KEY, on_hand)], 0)
        if then is not None:
            await db.execute(then)
        return "saved"

    return _Write(f"saving {on_hand}", work, asyncio.get_running_loop().create_future())


def raising_write(cache: StockCache, on_hand: int) -> _Write:
    async def work(db: InlineConnection) -> None:
        await SqliteIngest(db, cache).save_stock([StockRow(*KEY, on_hand)], 0)
        raise ValueError("fails after saving stock")

    return _Write("failing", work, asyncio.get_running_loop().create_future())


async def test_commit_group_clears_the_cache_whatever_rolls_back(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    thread = await writer_thread(db)
    cache = StockCache()
    try:
        # committed: 5
        group = [save_stock_write(cache, 5)]
        outcomes, rows = await thread.run(lambda c: _commit_group(c, group, cache))
        assert [(o[1], o[2]) for o in outcomes] == [("saved", None)] and rows == 1
        assert cache.get(KEY) == StockRow(*KEY, 5)

        # one write alone fails: the transaction rolls back and the error comes out
        group = [raising_write(cache, 111)]
        with pytest.raises(ValueError, match="fails after saving"):
            await thread.run(lambda c: _commit_group(c, group, cache))
        assert cache.get(KEY) is None
        assert committed_stock(db) == (5, 0)

        # in a group: the failing write's savepoint rolls back, the others commit
        cache.put([StockRow(*KEY, 5)])
        group = [save_stock_write(cache, 6), raising_write(cache, 222)]
        outcomes, _ = await thread.run(lambda c: _commit_group(c, group, cache))
        assert outcomes[0][1:] == ("saved", None)
        assert isinstance(outcomes[1][2], ValueError)
        assert cache.get(KEY) != StockRow(*KEY, 222)
        assert committed_stock(db) == (6, 0)

        # the whole transaction fails at COMMIT (a deferred foreign key): nothing of it stays
        cache.put([StockRow(*KEY, 6)])
        orphan = "INSERT INTO child (parent_id) VALUES (42)"
        group = [save_stock_write(cache, 333), save_stock_write(cache, 444, then=orphan)]
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await thread.run(lambda c: _commit_group(c, group, cache))
        assert len(cache) == 0
        assert committed_stock(db) == (6, 0)
        assert await thread.run(lambda c: c.in_transaction) is False  # rolled back, ready for the next

        group = [save_stock_write(cache, 7)]
        outcomes, _ = await thread.run(lambda c: _commit_group(c, group, cache))
        assert outcomes[0][1:] == ("saved", None)
        assert committed_stock(db) == (7, 0)
    finally:
        await thread.close()


# --- a new safety stock -----------------------------------------------------------------------------------


async def test_an_ingest_after_set_safety_stock_uses_the_new_safety_stock(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        assert store._stock_cache.get(KEY) is not None
        row = await store.set_safety_stock(*KEY, 4)
        assert (row.on_hand, row.safety_stock, row.available) == (10, 4, 6)
        result = await store.ingest(who, 1, [ev(Kind.SALE, -1, at_ms=2)])
        assert [(c.on_hand, c.available) for c in result.counts] == [(9, 5)]
        (count,) = await store.counts(location="S1")
        assert (count.on_hand, count.safety_stock, count.available) == (9, 4, 5)
    assert committed_stock(db) == (9, 4)


async def test_set_safety_stock_between_two_ingests_of_one_transaction_stays(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        first, safety, second = await asyncio.gather(  # queued together: one transaction
            store.ingest(who, 1, [ev(Kind.SALE, -1, at_ms=2)]),
            store.set_safety_stock(*KEY, 3),
            store.ingest(who, 1, [ev(Kind.SALE, -2, at_ms=3)]),
        )
        assert [c.available for c in first.counts] == [9]
        assert (safety.on_hand, safety.available) == (9, 6)
        assert [(c.on_hand, c.available) for c in second.counts] == [(7, 4)]
        (count,) = await store.counts(location="S1")
        assert (count.on_hand, count.safety_stock, count.available) == (7, 3, 4)
    assert committed_stock(db) == (7, 3)


# --- the checkpointer and the WAL -----------------------------------------------------------------------------


async def test_the_checkpointer_copies_the_wal_back_as_rows_commit(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    batches, per_batch = 4, 1_000
    assert batches * per_batch > 2 * CHECKPOINT_ROWS
    async with SqliteHubStore.open(db) as store:
        who, ev = await an_agent(store)
        assert await store._writer.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == (
            WAL_VALVE_PAGES
        )
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=0.5)])  # a few rows: no checkpoint for them
        await asyncio.sleep(0.05)
        assert store._checkpointer.checkpoints == 0
        size_before = db.stat().st_size

        started = time.monotonic()
        for b in range(batches):
            events = [ev(Kind.RECEIVE, 1, at_ms=1 + b * per_batch + i, sku=f"SKU-{i}") for i in range(per_batch)]
            result = await store.ingest(who, 1, events)
            assert result.applied == per_batch
        await eventually(lambda: store._checkpointer.checkpoints >= 1, "the checkpointer ran")
        elapsed = time.monotonic() - started
        assert store._checkpointer.checkpoints <= elapsed / CHECKPOINT_PAUSE_S + 1  # paced
        assert db.stat().st_size > size_before  # pages really copied back into the database file

        other = sqlite3.connect(db, timeout=WAIT_S)
        try:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0
            assert other.execute("SELECT count(*) FROM events").fetchone() == (batches * per_batch + 1,)
            assert other.execute("SELECT count(*), sum(on_hand) FROM stock").fetchone() == (per_batch + 1, 4_001)
        finally:
            other.close()
        assert await stored_on_hand(store, ("S1", "SKU-7")) == batches
        # checkpoints (the checkpointer's and that one) commit nothing: the writer keeps its cache
        cached = store._stock_cache.get(("S1", "SKU-7"))
        assert cached is not None and cached.on_hand == batches
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=10 * per_batch * batches)])
        assert store._stock_cache.get(("S1", "SKU-7")) == cached

    await store.close()  # twice: fine
    wal = db.with_name(DB_NAME + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    conn = sqlite3.connect(db)
    try:
        # every batch, the first event and the one after the checkpoints
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (batches * per_batch + 2,)
    finally:
        conn.close()


async def test_the_checkpointer_logs_a_failure_once_and_the_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / DB_NAME
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    checkpointer = Checkpointer(db)
    await checkpointer.open()
    thread = checkpointer._thread
    try:
        caplog.set_level(logging.INFO, logger="hub.storage.sqlite.writer")
        # its connection goes away under it: every checkpoint now fails with a sqlite3.Error
        await thread.run(lambda conn: conn.close())
        for _ in range(3):
            checkpointer.committed(CHECKPOINT_ROWS)
            await eventually(lambda: not checkpointer._wake.is_set(), "the checkpointer woke")
            await asyncio.sleep(CHECKPOINT_PAUSE_S + 0.05)
        assert checkpointer.checkpoints == 0
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failures) == 1 and failures[0].levelno == logging.WARNING

        def reconnect() -> None:  # on the checkpointer's own thread, as its connection must be
            thread._conn = sqlite3.connect(db, isolation_level=None)

        await thread._submit(reconnect)
        for n in (1, 2):

            def done(n: int = n) -> bool:
                return checkpointer.checkpoints >= n

            checkpointer.committed(CHECKPOINT_ROWS)
            await eventually(done, f"checkpoint {n} after the recovery")
        recoveries = [r for r in caplog.records if "works again" in r.getMessage()]
        assert len(recoveries) == 1
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    finally:
        await asyncio.wait_for(checkpointer.close(), WAIT_S)
        await asyncio.wait_for(checkpointer.close(), WAIT_S)


async def test_closing_the_checkpointer_while_it_waits_to_run_again_returns(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    sqlite3.connect(db).close()
    checkpointer = Checkpointer(db)
    await checkpointer.open()
    checkpointer.committed(CHECKPOINT_ROWS)
    await eventually(lambda: checkpointer.checkpoints == 1, "one checkpoint")
    await asyncio.wait_for(checkpointer.close(), WAIT_S)  # it is in its pause now
    await eventually(lambda: not threads_named(f"hub-checkpoint:{db.name}"), "the checkpoint thread ended")


# --- ConnectionThread ------------------------------------------------------------------------------------


async def test_a_connection_thread_runs_everything_on_one_thread_of_its_own(tmp_path: Path) -> None:
    thread = ConnectionThread(tmp_path / "x.db", "test-conn-one")
    await thread.open(["PRAGMA journal_mode = WAL"])
    try:
        idents = {await thread.run(lambda conn: threading.get_ident()) for _ in range(5)}
        assert len(idents) == 1 and threading.get_ident() not in idents
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            await thread.run(lambda conn: conn.execute("SELECT * FROM no_such_table"))
        assert await thread.run(lambda conn: conn.execute("SELECT 41 + 1").fetchone()) == (42,)  # still usable
    finally:
        await thread.close()


async def test_run_after_close_raises_and_close_twice_is_fine(tmp_path: Path) -> None:
    thread = ConnectionThread(tmp_path / "x.db", "test-conn-closed")
    await thread.open([])
    await thread.close()
    await asyncio.wait_for(thread.close(), WAIT_S)
    with pytest.raises((RuntimeError, sqlite3.Error)):
        await asyncio.wait_for(thread.run(lambda conn: conn.execute("SELECT 1").fetchone()), WAIT_S)
    await eventually(lambda: not threads_named("test-conn-closed"), "the thread ended")


async def test_a_failed_open_raises_and_close_after_it_is_fine(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    thread = ConnectionThread(db, "test-conn-failed")
    with pytest.raises(sqlite3.Error, match="syntax error"):
        await thread.open(["PRAGMA journal_mode = WAL", "THIS IS NOT SQL"])
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await asyncio.wait_for(thread.run(lambda conn: None), WAIT_S)  # no connection to run on
    await asyncio.wait_for(thread.close(), WAIT_S)
    await asyncio.wait_for(thread.close(), WAIT_S)
    await eventually(lambda: not threads_named("test-conn-failed"), "the thread ended")
    conn = sqlite3.connect(db)  # the failed open left no lock behind
    try:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.commit()
    finally:
        conn.close()


async def test_a_store_that_cannot_open_leaves_no_thread_behind(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(StoreError, match="hub database .* is damaged .*restore another backup"):
        await asyncio.wait_for(SqliteHubStore.open(db), WAIT_S)
    await eventually(
        lambda: not threads_named(f"hub-writer:{DB_NAME}") and not threads_named(f"hub-checkpoint:{DB_NAME}"),
        "the store's threads ended",
    )


# --- small writes before catch-up batches ------------------------------------------------------------------


async def test_a_live_stores_sale_commits_before_catch_up_batches_queued_ahead_of_it(tmp_path: Path) -> None:
    """A regional outage ends: other stores' 2,000-event batches queue up while the writer is busy. A live
    store's one sale, queued after them, commits in the next transaction, not after them all; an agent's own
    batches still commit in the order they came, and every event is stored once."""
    async with SqliteHubStore.open(tmp_path / DB_NAME) as store:
        (a, ev_a), (b, ev_b) = await an_agent(store, ["SA"]), await an_agent(store, ["SB"])
        live, ev_live = await an_agent(store, ["LIVE"])
        release = threading.Event()

        async def busy(_: InlineConnection) -> None:  # another store's catch-up batch under way when they arrive
            release.wait(WAIT_S)

        first = asyncio.ensure_future(store._write("a long commit", busy, events=10_000, sender="elsewhere"))
        await asyncio.sleep(0.05)

        def batch(who: AgentIdentity, ev: EventFactory, location: str, n: int) -> asyncio.Future[Any]:
            events = [ev(Kind.RECEIVE, 1, at_ms=ev.seq + 1, location=location) for _ in range(n)]
            return asyncio.ensure_future(store.ingest(who, 1, events, events[0].seq - 1))

        catch_up = [batch(a, ev_a, "SA", 2_000), batch(b, ev_b, "SB", 2_000), batch(a, ev_a, "SA", 2_000)]
        a_last = batch(a, ev_a, "SA", 10)  # small, but after its own catch-up batches
        sale = batch(live, ev_live, "LIVE", 1)
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(first, WAIT_S * 4)
        results = await asyncio.wait_for(asyncio.gather(*catch_up, a_last, sale), WAIT_S * 4)
        a1, b1, a2, a3, sold = (r.change_id for r in results)
        assert sold < min(a1, b1, a2), "the sale waited for the catch-up batches queued before it"
        assert a1 < a2 < a3, "agent a's batches committed out of their order"
        totals = {loc: sum(r.on_hand for r in await store.counts(location=loc)) for loc in ("SA", "SB", "LIVE")}
        assert totals == {"SA": 4_010, "SB": 2_000, "LIVE": 1}
