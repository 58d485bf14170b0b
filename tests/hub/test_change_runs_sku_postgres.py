"""A PostgreSQL hub's change feed read by SKU (``hub.storage.postgres.feed``, schema 19). The changes are kept as runs
(a statement's changes of one location in one row of arrays) and a run holding a SKU is found through a GIN index of
its ``skus``. A SKU's page gives exactly what the whole feed filtered by SKU gives; it reads each run it finds from
the run's own row, not from the TOAST table; a SKU the feed does not hold is looked up in that index, not in every
run, however the hub got its schema and however often the read is repeated; and the index's pending list is merged
before the statement that appends changes takes the feed's counter row, not while it holds it.

Every test works in a fresh schema of the test server (tests.harness.pg).
"""

from __future__ import annotations

import asyncio
import itertools
import random

import asyncpg

from hub.storage.base import ChangeRow
from hub.storage.ingest import NewChange
from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres.feed import MERGE_EVERY, append_changes, changes
from hub.storage.postgres.schema import MIGRATIONS
from protocol import CountSnapshot

BATCH = 430  # a store's batch of 1,000 events changes ~430 keys: one run


def _batch(rng: random.Random, location: str, skus: list[str]) -> list[NewChange]:
    return [
        NewChange(
            CountSnapshot(location, sku, rng.randint(-5, 50), rng.randint(0, 3), rng.randint(0, 40), rng.randint(0, 9)),
            tuple(rng.randbytes(16) for _ in range(rng.choice((0, 1, 1, 2, 3)))),
        )
        for sku in skus
    ]


async def _append(conn: asyncpg.Connection, batches: list[list[NewChange]]) -> None:
    for i, batch in enumerate(batches):
        async with conn.transaction():
            await append_changes(conn, batch, 1_000 + i)


async def test_a_skus_pages_are_the_feed_filtered_by_sku_at_every_cursor_and_page_size(pg_url: str) -> None:
    """Runs of one store's batch, statements of several runs (two locations, a SKU twice), a SKU first, inside and
    last in its runs, one in no run: every page by SKU, with and without a location, is the whole feed's filtered."""
    rng = random.Random(19)
    skus = [f"K{i:02d}" for i in range(40)]
    batches = []
    for b in range(30):
        picked = rng.sample(skus, 25)
        if b % 3 == 0:  # one statement, three runs: S1's, S2's, and S2's again after a SKU came twice
            picked = picked[:10] + picked[:6]
            batch = _batch(rng, "S1", picked[:5]) + _batch(rng, "S2", picked[5:])
        else:
            batch = _batch(rng, f"S{1 + b % 2}", picked)
        batches.append(batch)
    async with PostgresHubStore.open(pg_url) as store:
        conn = await asyncpg.connect(pg_url)
        try:
            await _append(conn, batches)
        finally:
            await conn.close()
        everything = await store.changes(0, 10_000)
        assert len(everything) == sum(map(len, batches))
        last = everything[-1].change_id
        for sku, location in itertools.product(["K00", "K07", "K39", "NONE"], [None, "S1", "S2"]):
            wanted = [c for c in everything if c.sku == sku and location in (None, c.location)]
            for after, limit in itertools.product([0, 1, 24, 25, 26, 300, last // 2, last - 1, last], [1, 2, 7, 100]):
                page = await store.changes(after, limit, location, sku)
                assert page == [c for c in wanted if c.change_id > after][:limit], (sku, location, after, limit)
            read: list[ChangeRow] = []
            while page := await store.changes(read[-1].change_id if read else 0, 3, location, sku):
                read += page
            assert read == wanted


async def test_a_skus_page_far_behind_reads_each_run_from_its_own_row(pg_url: str) -> None:
    """Each run holding the SKU gives one change of its ~430. Its arrays were compressed and moved to the TOAST table,
    so taking one change took five arrays from there: 18-22 ms a page of 1,000 (3.7 as rows). Kept compressed in the
    run's row, only the slice of its event ids comes from the TOAST table: a block a change, two where it straddles
    two of the table's chunks."""
    rng = random.Random(7)
    skus = [f"SKU-{i:05d}" for i in range(2_000)]
    batches = [_batch(rng, f"S{b % 10:03d}", ["HOT", *rng.sample(skus, BATCH - 1)]) for b in range(120)]
    async with PostgresHubStore.open(pg_url) as store:
        conn = await asyncpg.connect(pg_url)
        try:
            await _append(conn, batches)
            toast = "(SELECT reltoastrelid FROM pg_class WHERE oid = 'change_runs'::regclass)"
            async with conn.transaction():  # this backend's counts, not yet reported
                before = await conn.fetchval(f"SELECT pg_stat_get_xact_blocks_fetched({toast})")
                hot = await changes(conn, 0, 1_000, None, "HOT")
                toast_blocks = await conn.fetchval(f"SELECT pg_stat_get_xact_blocks_fetched({toast})") - before
        finally:
            await conn.close()
        assert [c.change_id for c in hot] == [1 + b * BATCH for b in range(len(batches))]
        assert hot == [c for c in await store.changes(0, 100_000) if c.sku == "HOT"]
        assert toast_blocks <= 2 * len(hot), f"{toast_blocks} blocks of the TOAST table for {len(hot)} changes"


_READ_SQL = (
    "SELECT pg_stat_get_xact_tuples_returned('change_runs'::regclass) "
    "+ pg_stat_get_xact_tuples_fetched('change_runs'::regclass), "
    "pg_stat_get_xact_numscans('change_runs_skus'::regclass)"
)


async def _runs_read(conn: asyncpg.Connection, sku: str, times: int) -> tuple[int, int]:
    """Read ``sku``'s page from the feed's start ``times`` over on ``conn`` (as a hub's pooled connection does, its
    statements kept); the runs PostgreSQL read for it from the table, and the scans of the GIN index (counted in one
    transaction: this backend's counts, not yet reported)."""
    async with conn.transaction():
        before = await conn.fetchrow(_READ_SQL)
        for _ in range(times):
            assert await changes(conn, 0, 100, None, sku) == []
        after = await conn.fetchrow(_READ_SQL)
    assert before is not None and after is not None
    return after[0] - before[0], after[1] - before[1]


async def _absent_sku_read_by_the_index(conn: asyncpg.Connection) -> None:
    """A SKU in no run, read once and then twelve times on ``conn``: no run read, the GIN index scanned each time."""
    for times in (1, 12):
        read, scans = await _runs_read(conn, "NOT-SOLD-HERE", times)
        assert read == 0, f"{read} runs read for a SKU in none, {times} reads"
        assert scans == times


async def test_a_sku_in_no_run_is_looked_up_in_the_index_not_in_every_run(pg_url: str) -> None:
    """Upgraded from schema 16, the runs are made by 017 without statistics, which 019 gives them (without, a SKU in
    no run read every run, as in a new hub's feed below); read twelve times on one connection (a kept statement's
    plan was fixed after five reads: with 10,000 runs, the primary key, every run read). Each read goes to the index."""
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():  # a hub of schema 16 whose feed holds 400 statements' changes
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)"
            )
            for step in range(1, 17):
                await conn.execute(MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
            await conn.execute(
                "INSERT INTO changes (change_id, location, sku, on_hand, reserved, available, in_transit, event_ids, "
                "at_ms) SELECT s * 100 + k + 1, 'S' || (s % 10), 'SKU-' || ((s * 37 + k) % 3000), k, 0, k, 0, "
                "'\\x00112233445566778899aabbccddeeff'::bytea, s FROM generate_series(0, 399) s, "
                "generate_series(0, 99) k"
            )
            await conn.execute("UPDATE change_counter SET last_id = 40000")
        async with PostgresHubStore.open(pg_url):
            assert await conn.fetchval("SELECT count(*) FROM change_runs") == 400
            await _absent_sku_read_by_the_index(conn)
    finally:
        await conn.close()


async def test_a_new_hubs_feed_finds_a_sku_in_no_run_by_the_index(pg_url: str) -> None:
    """A new hub's feed, before PostgreSQL ever analysed it: the same."""
    rng = random.Random(3)
    async with PostgresHubStore.open(pg_url):
        conn = await asyncpg.connect(pg_url)
        try:
            await _append(conn, [_batch(rng, "S1", [f"SKU-{b}-{i}" for i in range(40)]) for b in range(300)])
            await _absent_sku_read_by_the_index(conn)
        finally:
            await conn.close()


async def test_the_index_pending_list_is_merged_before_the_counter_row_is_taken(pg_url: str) -> None:
    """New runs' SKUs wait in the GIN index's pending list until it is merged into the index: PostgreSQL did that
    inside an insert once the list outgrew 4 MB, in the statement holding the feed's counter row (up to 32 ms, every
    other ingest waiting). The statement whose changes reach a multiple of ``MERGE_EVERY`` merges it before it takes
    that row: while it waits for the row, the list holds nothing to merge."""
    rng = random.Random(5)
    async with PostgresHubStore.open(pg_url):
        holder, appender = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
        try:
            first = [f"A{i}" for i in range(MERGE_EVERY - 10)]
            await _append(holder, [_batch(rng, "S1", first[i : i + BATCH]) for i in range(0, len(first), BATCH)])
            async with holder.transaction():
                await holder.execute("UPDATE change_counter SET last_id = last_id")  # takes the row, as an ingest does
                appending = asyncio.ensure_future(_append(appender, [_batch(rng, "S2", [f"B{i}" for i in range(20)])]))
                for _ in range(500):  # until the appender waits for the row
                    await asyncio.sleep(0.01)
                    waiting = await holder.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", appender.get_server_pid()
                    )
                    if waiting:
                        break
                assert waiting, "the appending statement never waited for the counter row"
                assert not appending.done()
                merged = await holder.fetchval("SELECT gin_clean_pending_list('change_runs_skus'::regclass)")
            await asyncio.wait_for(appending, 10)
            assert merged == 0, f"{merged} pending pages were left to merge under the counter row"
            assert await holder.fetchval("SELECT last_id FROM change_counter") == MERGE_EVERY + 10
        finally:
            await holder.close()
            await appender.close()
