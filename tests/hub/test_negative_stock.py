"""The negative-stock source of the exceptions list on PostgreSQL walks the stock rows below zero in a side table
(``stock_negative``: their keys and times, schema 16), never the whole stock table: a chain's stock is a row per
location and SKU (500 stores × 20,000 SKUs: 10 million), and the dashboard reads the list every 15 s. The stock
table has no index of ``on_hand`` on purpose (each batch's stock updates stay heap-only), so the side table is kept
by every write of stock: an agent's batch, an operator's held event applied, a safety stock set, a migration of an
existing database.

Every test works in a fresh schema of the test server (tests.harness.pg); skipped where no server is reachable,
failed in CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from hub import HubStore, open_store
from hub.storage import exceptions
from hub.storage.base import AgentIdentity
from hub.storage.db import PostgresDb, numbered
from hub.storage.keys import ExceptionFilter, ExceptionKey
from hub.storage.postgres import PostgresHubStore
from protocol import Kind, wall_ms_now
from tests.harness.pg import fresh_schema
from tests.hub.test_exception_plans import Recorded
from tests.hub.test_paging import NOW_MS, agent, move
from tests.hub.test_upgrade_postgres import _write_v1
from tests.hub.upgrade_scenario import v1_hub

HOUR_MS = 3_600_000


async def negative(store: HubStore, location: str | None = None) -> set[tuple[str, str, int]]:
    """The negative-stock exceptions listed: (location, sku, on_hand)."""
    rows = await store.exceptions(kind="negative_on_hand", location=location)
    return {(r.location, r.sku, r.data["on_hand"]) for r in rows}


async def side_table_matches_stock(url: str) -> None:
    """The side table holds exactly the stock rows below zero, with their times (none left behind to walk)."""
    conn = await asyncpg.connect(url)
    try:
        below = await conn.fetch("SELECT location, sku, updated_at_ms FROM stock WHERE on_hand < 0 ORDER BY 1, 2")
        kept = await conn.fetch("SELECT location, sku, updated_at_ms FROM stock_negative ORDER BY 1, 2")
    finally:
        await conn.close()
    assert [tuple(r) for r in kept] == [tuple(r) for r in below]


async def test_a_key_enters_and_leaves_the_list_as_its_stock_crosses_zero(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        a, _ = await agent(store, ["S001", "S002"])
        seq = 0

        async def book(kind: Kind, qty: int, sku: str, location: str = "S001", at_ms: int = NOW_MS,
                       who: AgentIdentity = a) -> None:  # fmt: skip
            nonlocal seq
            seq += 1
            result = await store.ingest(who, 1, [move(who, seq, at_ms + seq, kind, qty, sku=sku, location=location)],
                                        clock_window_ms=24 * HOUR_MS)  # fmt: skip
            assert not result.rejected or result.rejected[0].code == "quarantined", result.rejected

        # an agent's batches (their stock written with the batch's mark, in one statement)
        await book(Kind.RECEIVE, 2, "SKU-A")
        await book(Kind.SALE, -5, "SKU-A")
        await book(Kind.SALE, -1, "SKU-B", "S002")
        assert await negative(store) == {("S001", "SKU-A", -3), ("S002", "SKU-B", -1)}
        assert await negative(store, "S001") == {("S001", "SKU-A", -3)}
        await side_table_matches_stock(pg_url)
        await book(Kind.SALE, -1, "SKU-A")  # stays below zero: still listed, once, at its new time
        assert await negative(store, "S001") == {("S001", "SKU-A", -4)}
        await side_table_matches_stock(pg_url)
        await store.set_safety_stock("S002", "SKU-B", 2)  # a new time for its stock row, and for its exception
        (row,) = await store.exceptions(kind="negative_on_hand", location="S002")
        await side_table_matches_stock(pg_url)
        assert await store.exceptions(kind="negative_on_hand", since_ms=row.at_ms) == [row]
        await book(Kind.RECEIVE, 5, "SKU-A")  # back to 1: gone
        assert await negative(store) == {("S002", "SKU-B", -1)}
        await book(Kind.COUNT, 0, "SKU-B", "S002")  # counted at 0: gone
        assert await negative(store) == set()
        await side_table_matches_stock(pg_url)
        await book(Kind.SALE, -3, "SKU-A")  # below again: listed again
        assert await negative(store) == {("S001", "SKU-A", -2)}

        # an operator's held events applied (their stock written at once, not with a mark)
        await book(Kind.SALE, -4, "SKU-C", at_ms=NOW_MS + 72 * HOUR_MS)
        await book(Kind.RECEIVE, 10, "SKU-A", at_ms=NOW_MS + 72 * HOUR_MS)
        held = {r.sku: r.quarantine_id for r in await store.quarantine()}
        await store.resolve_quarantine(held["SKU-C"], "apply_at_receipt", "admin-1")
        assert await negative(store) == {("S001", "SKU-A", -2), ("S001", "SKU-C", -4)}
        await store.resolve_quarantine(held["SKU-A"], "apply_at_receipt", "admin-1")
        assert await negative(store) == {("S001", "SKU-C", -4)}
        await side_table_matches_stock(pg_url)


async def test_a_migrated_database_lists_the_negative_stock_it_held(pg_server: str) -> None:
    """A database of the version before the side table, holding negative stock, lists it once migrated."""
    async with fresh_schema("neg") as url:
        conn = await asyncpg.connect(url)
        try:
            await _write_v1(conn, v1_hub(), 15)  # the version before schema 16, the side table
            await conn.execute(
                "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
                "VALUES ('S1', 'SKU-M', -6, 0, 0, 0, $1), ('S1', 'SKU-P', 6, 0, 0, 0, $1)",
                NOW_MS,
            )
        finally:
            await conn.close()
        async with PostgresHubStore.open(url) as store:
            assert await negative(store) == {("S1", "SKU-M", -6)}
        await side_table_matches_stock(url)


async def test_the_chains_negative_stock_is_read_without_scanning_the_stock_table(pg_url: str) -> None:
    """The chain's page, one store's, and the page after a row: the plan walks the side table in the list's order
    (no sort: it stops at the page) and looks each row's on_hand up in the stock table by its key; no plan reads
    the stock table through (Seq Scan, or a walk of a whole index filtered by on_hand)."""
    async with open_store(pg_url) as store:
        a, _ = await agent(store, ["S001", "S002"])
        batch = [move(a, i + 1, NOW_MS, *((Kind.SALE, -1) if i % 50 == 0 else (Kind.RECEIVE, 1)), sku=f"SKU-{i:04d}",
                      location=f"S00{i % 2 + 1}") for i in range(2_000)]  # fmt: skip
        assert not (await store.ingest(a, 1, batch)).rejected
        negative_from = store.NEGATIVE_STOCK  # type: ignore[attr-defined]
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("ANALYZE")
        # where an index answers a statement, PostgreSQL must take it (as test_exception_plans tells it)
        await conn.execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; SET jit = off"
        )
        pg = PostgresDb(conn)
        # the last page starts an hour past now (not past the module's NOW_MS), so a row listed now comes after it
        # however long the run has lasted
        pages = [(ExceptionFilter(kind="negative_on_hand"), None), (ExceptionFilter(), None),
                 (ExceptionFilter(location="S001"), None),
                 (ExceptionFilter(), ExceptionKey(wall_ms_now() + HOUR_MS, "negative_on_hand", ("S001", "SKU-0100")))]  # fmt: skip
        read = 0
        for only, after in pages:
            db = Recorded(pg.fetch)
            listed = await exceptions.exceptions(db, only, 10, None, after, NOW_MS, negative_from=negative_from)  # type: ignore[arg-type]
            assert any(r.kind == "negative_on_hand" for r in listed), (only, after)
            statements: list[tuple[str, Sequence[Any]]] = [(s, p) for s, p in db.seen if "on_hand < 0" in s]
            assert len(statements) == 1, statements
            for sql, params in statements:
                read += 1
                plan = [r[0] for r in await conn.fetch(f"EXPLAIN {numbered(sql)}", *params)]
                where = (only, after, sql, plan)
                text = "\n".join(plan)
                walked = "stock_negative_at" if only.location is not None else "stock_negative_time"
                assert f"Scan using {walked} on stock_negative n" in text and "Sort" not in text, where
                assert "Seq Scan on stock " not in text and not text.endswith("Seq Scan on stock"), where
                # each stock row looked up by its key (either index holds it), not a walk of an index of stock
                # filtered by on_hand
                scans = [i for i, line in enumerate(plan) if " on stock " in line or line.endswith(" on stock")]
                assert scans, where
                for i in scans:
                    cond = plan[i + 1]
                    assert "Index Cond:" in cond and "location = n.location" in cond and "sku = n.sku" in cond, where
    finally:
        await conn.close()
    assert read == len(pages)
