"""A PostgreSQL hub keeps its change feed as runs (schema 17, ``hub.storage.postgres.feed``): a statement's
changes of one location in one row. The feed must read back exactly what a row per change gave: every change in
id order, each with its own counts and event ids, in pages that start and stop inside runs, filtered by location
or SKU; and a hub upgraded from schema 16 keeps its changes, their ids and its feed's history.

Every test works in a fresh schema of the test server (tests.harness.pg).
"""

from __future__ import annotations

import itertools
import os

import asyncpg

from hub.storage.base import ChangeRow
from hub.storage.feed import FEED_HISTORY_KEY, FEED_HOME_KEY
from hub.storage.ingest import NewChange
from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres.feed import append_changes, changes
from hub.storage.postgres.schema import MIGRATIONS
from protocol import CountSnapshot


def _change(location: str, sku: str, on_hand: int, ids: int) -> NewChange:
    return NewChange(
        CountSnapshot(location, sku, on_hand, 1, on_hand - 1, 2), tuple(os.urandom(16) for _ in range(ids))
    )


def _expected(first_id: int, changes: list[NewChange], at_ms: int) -> list[ChangeRow]:
    return [
        ChangeRow(first_id + i, *c.snapshot, c.event_ids, at_ms)  # type: ignore[call-arg]
        for i, c in enumerate(changes)
    ]


async def test_runs_split_by_location_and_by_a_sku_again_and_read_back_in_every_page(pg_url: str) -> None:
    first = [  # one statement: S1's two keys, S2's key twice (two runs), S1 again (a run of its own)
        _change("S1", "A", 5, 0),
        _change("S1", "B", 6, 1),
        _change("S2", "A", 7, 16),
        _change("S2", "A", 8, 2),
        _change("S1", "A", 9, 3),
    ]
    second = [_change("S2", "B", 10, 1), _change("S2", "A", 11, 0)]  # the next statement: one run
    async with PostgresHubStore.open(pg_url) as store:
        conn = await asyncpg.connect(pg_url)
        try:
            async with conn.transaction():
                assert await append_changes(conn, first, 1_000) == 5
            async with conn.transaction():
                assert await append_changes(conn, second, 2_000) == 7
            runs = await conn.fetch("SELECT first_id, last_id, location, skus FROM change_runs ORDER BY last_id")
        finally:
            await conn.close()
        assert [tuple(r) for r in runs] == [
            (1, 2, "S1", ["A", "B"]),
            (3, 3, "S2", ["A"]),
            (4, 4, "S2", ["A"]),
            (5, 5, "S1", ["A"]),
            (6, 7, "S2", ["B", "A"]),
        ]
        everything = _expected(1, first, 1_000) + _expected(6, second, 2_000)
        assert await store.changes(0, 100) == everything
        for location, sku in itertools.product((None, "S1", "S2"), (None, "A", "B")):
            wanted = [c for c in everything if location in (None, c.location) and sku in (None, c.sku)]
            for after, limit in itertools.product(range(8), range(1, 8)):
                page = await store.changes(after, limit, location, sku)
                assert page == [c for c in wanted if c.change_id > after][:limit], (location, sku, after, limit)


async def test_a_feed_read_walks_many_small_runs_and_big_ones(pg_url: str) -> None:
    """Runs of one change (each a channel's booking, say) and of hundreds; a page of 5,000 takes them in order."""
    singles = [_change("S1", f"K{i:03d}", i, 1) for i in range(300)]
    big = [_change("S2", f"K{i:04d}", i, 2) for i in range(2_000)]
    async with PostgresHubStore.open(pg_url) as store:
        conn = await asyncpg.connect(pg_url)
        try:
            for c in singles[:150]:
                async with conn.transaction():
                    await append_changes(conn, [c], 1)
            for _ in range(3):
                async with conn.transaction():
                    await append_changes(conn, big, 2)
            for c in singles[150:]:
                async with conn.transaction():
                    await append_changes(conn, [c], 3)
        finally:
            await conn.close()
        expected = (
            _expected(1, singles[:150], 1)
            + _expected(151, big, 2)
            + _expected(2_151, big, 2)
            + _expected(4_151, big, 2)
            + _expected(6_151, singles[150:], 3)
        )
        read: list[ChangeRow] = []
        while page := await store.changes(read[-1].change_id if read else 0, 997):
            read += page
        assert read == expected
        assert await store.changes(0, 5_000) == expected[:5_000]
        assert await store.changes(140, 5_000, "S1") == [c for c in expected if c.location == "S1"][140:]
        assert await store.changes(0, 5_000, sku="K0007") == [c for c in expected if c.sku == "K0007"]
        # one change alone, as a feed cursor's is read (cut out of its run): first, inside and last of a run
        for c in [*expected[:3], expected[150], expected[151], expected[1_000], expected[2_150], *expected[-3:]]:
            assert await store.changes(c.change_id - 1, 1) == [c]
        assert await store.changes(expected[-1].change_id, 1) == []


async def test_a_schema_16_feed_becomes_runs_under_the_same_ids_and_history(pg_url: str) -> None:
    """A statement's changes of one location (consecutive ids, one time) become one run; ones that hold a SKU twice,
    runs of one; the same location and time apart from them, a run of its own. Runs of one each made a page of an
    upgraded hub's history read ~3 times slower (found by an attack on the upgrade)."""
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():  # a hub of schema 16 with five changes and a feed history
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)"
            )
            for step in range(1, 17):
                await conn.execute(MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
            ids = [os.urandom(16) for _ in range(8)]
            await conn.executemany(
                "INSERT INTO changes (change_id, location, sku, on_hand, reserved, available, in_transit, event_ids, "
                "at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [
                    (1, "S1", "A", 3, 0, 3, 0, b"", 10),
                    (2, "S1", "B", 4, 1, 3, 0, ids[0], 10),
                    (3, "S2", "A", 5, 0, 5, 2, b"".join(ids[1:4]), 11),
                    (4, "S2", "A", 6, 0, 6, 2, ids[4], 11),  # A again in the same statement
                    (5, "S1", "C", 7, 0, 7, 0, b"".join(ids[5:]), 10),  # S1 at time 10 again, after S2's
                ],
            )
            await conn.execute("UPDATE change_counter SET last_id = 5")
            database = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
            try:
                async with conn.transaction():
                    cluster = str(await conn.fetchval("SELECT system_identifier FROM pg_control_system()"))
            except asyncpg.PostgresError:
                cluster = ""
            table = await conn.fetchval("SELECT 'changes'::regclass::oid")
            await conn.executemany(
                "INSERT INTO meta (key, value) VALUES ($1, $2)",
                [(FEED_HISTORY_KEY, "0123456789ab"), (FEED_HOME_KEY, f"postgresql:{cluster}:{database}:{table}")],
            )
        async with PostgresHubStore.open(pg_url) as store:
            everything = [
                ChangeRow(1, "S1", "A", 3, 0, 3, 0, (), 10),
                ChangeRow(2, "S1", "B", 4, 1, 3, 0, (ids[0],), 10),
                ChangeRow(3, "S2", "A", 5, 0, 5, 2, tuple(ids[1:4]), 11),
                ChangeRow(4, "S2", "A", 6, 0, 6, 2, (ids[4],), 11),
                ChangeRow(5, "S1", "C", 7, 0, 7, 0, tuple(ids[5:]), 10),
            ]
            assert await store.changes(0, 10) == everything
            for after in range(6):
                for location, sku in itertools.product((None, "S1", "S2"), (None, "A", "B", "C")):
                    wanted = [c for c in everything if location in (None, c.location) and sku in (None, c.sku)]
                    page = await store.changes(after, 10, location, sku)
                    assert page == [c for c in wanted if c.change_id > after], (after, location, sku)
            assert await store.latest_change_id() == 5
            assert store.feed_history == "0123456789ab"  # cursors the readers hold are still this history's
        runs = await conn.fetch("SELECT first_id, last_id, location, skus, id_ends FROM change_runs ORDER BY last_id")
        assert [tuple(r) for r in runs] == [
            (1, 2, "S1", ["A", "B"], [0, 1]),
            (3, 3, "S2", ["A"], [3]),
            (4, 4, "S2", ["A"], [1]),
            (5, 5, "S1", ["C"], [3]),
        ]
        assert await conn.fetchval("SELECT to_regclass('changes')") is None
    finally:
        await conn.close()


class _Received:
    """A connection that counts the changes PostgreSQL sends back to the feed's reads: a run's arrays count a
    change each, a row cut out of its run (a SKU's, one alone) one."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.changes = 0

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        rows = await self.conn.fetch(sql, *args)
        self.changes += sum(len(r[2]) if isinstance(r[2], list) else 1 for r in rows)
        return rows


async def test_a_small_page_inside_a_big_run_takes_only_its_changes_from_postgresql(pg_url: str) -> None:
    """A catch-up batch of 10,000 events is one run of as many changes. A reader paging through it two at a time
    (a stream's page is 100, a webhook's its batch_max) was sent the whole run and the three after it each page:
    22 ms a page of 2, 0.11 as rows of schema 16, and its read budget, counted in the changes it was given, never
    saw the other 39,998. A page takes from PostgreSQL only the changes it gives out."""
    batches = [[_change("S1", f"K{b}-{i:05d}", i, 1 + i % 2) for i in range(10_000)] for b in range(5)]
    async with PostgresHubStore.open(pg_url):
        conn = await asyncpg.connect(pg_url)
        try:
            for batch in batches:
                async with conn.transaction():
                    await append_changes(conn, batch, 7)
            expected = [row for b, batch in enumerate(batches) for row in _expected(1 + b * 10_000, batch, 7)]
            received = _Received(conn)
            for after, limit, location in [(0, 2, None), (4_321, 2, None), (9_999, 2, None), (5_000, 100, "S1"),
                                           (12_345, 1_000, None), (19_000, 5_000, "S1")]:  # fmt: skip
                received.changes = 0
                page = await changes(received, after, limit, location, None)  # type: ignore[arg-type]
                assert page == expected[after : after + limit]
                assert received.changes == len(page), (after, limit, received.changes)
            received.changes = 0
            read: list[ChangeRow] = []
            while page := await changes(received, read[-1].change_id if read else 0, 3_333, None, None):  # type: ignore[arg-type]
                read += page
            assert read == expected
            assert received.changes == len(expected)
        finally:
            await conn.close()
