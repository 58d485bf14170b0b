"""The exceptions list reads each source through an index in the list's order and stops at a page: the query
plan of each statement ``hub.storage.exceptions`` builds, on a hub seeded with every source's rows.

A chain's transfers (every one it ever made), its stock and its import issues grow without end; a statement that
scans one of them, or sorts all of its rows for the page, reads a whole table on every page the dashboard asks
for (every 15 s), with a filter or without. The plans are SQLite's own words (EXPLAIN QUERY PLAN) and
PostgreSQL's (EXPLAIN, told to avoid a sort or a table scan wherever an index can answer), not times.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub import HubStore, open_store
from hub.channels import Divergence, LevelKey, Refusal
from hub.channels.runner import open_channel_state
from hub.resolver import Transfer
from hub.storage import exceptions
from hub.storage.db import PostgresDb, Row, numbered
from hub.storage.keys import ExceptionFilter, ExceptionKey
from protocol import BOOK_OUT_REASON, Kind
from tests.harness.pg import fresh_schema
from tests.hub.test_exception_filters import copies
from tests.hub.test_paging import NOW_MS, agent, exception_burst, move

FILTERS = (
    ExceptionFilter(),
    ExceptionFilter(location="S002"),
    ExceptionFilter(kind="transfer_short"),
    ExceptionFilter(kind="transfer_shared_ref", location="S003"),
    ExceptionFilter(since_ms=NOW_MS - 3_600_000),
    ExceptionFilter(location="S001", since_ms=NOW_MS - 3_600_000),
    ExceptionFilter(kind="import_quarantine", location="S001"),
    ExceptionFilter(kind="unknown_barcode"),
)
AFTER = (
    None,
    ExceptionKey(NOW_MS, "transfer", ("S002", "T3", "SKU-T003")),
    ExceptionKey(NOW_MS, "import_quarantine", ("a", "i1")),
)


class Statements:
    """A ``Db`` that keeps each statement it is asked to run and answers none."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Sequence[Any]]] = []

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.seen.append((sql, params))
        return []


@pytest.fixture
async def seeded(tmp_path: Path) -> Path:
    async with open_store(tmp_path / "hub.db") as store:
        await exception_burst(store)
    return tmp_path / "hub.db"


async def plans(db: Path, only: ExceptionFilter, after: ExceptionKey | None) -> list[tuple[str, list[str]]]:
    """Each statement of one exceptions page, with its plan's lines."""
    statements = Statements()
    await exceptions.exceptions(statements, only, 50, 3_600_000, after, NOW_MS)  # type: ignore[arg-type]
    with sqlite3.connect(db) as conn:
        return [
            (sql, [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))])
            for sql, params in statements.seen
        ]


async def test_the_transfer_unknown_barcode_and_import_issue_sources_read_no_whole_table(seeded: Path) -> None:
    read = {"transfer": 0, "unknown_barcode": 0, "import_quarantine": 0}
    for only in FILTERS:
        for after in AFTER:
            for sql, plan in await plans(seeded, only, after):
                where = (only, after, sql, plan)
                if "FROM transfers" in sql and exceptions.TRANSFER_FINDING in sql:
                    read["transfer"] += 1
                    # walked in the list's order through an index of transfers with a finding, never sorted whole
                    assert "SCAN transfers" not in plan and not any("TEMP B-TREE" in line for line in plan), where
                    assert any("transfers_finding" in line or "transfers_shared" in line for line in plan), where
                elif "FROM stock s" in sql:
                    read["unknown_barcode"] += 1
                    # a range of the SKUs stock_sku or the primary key holds in order: the unknown barcodes' rows only
                    assert "SCAN s" not in plan and any(line.startswith("SEARCH s ") for line in plan), where
                elif "FROM import_issues" in sql:
                    read["import_quarantine"] += 1
                    # walked in the list's order, ties and all, through the chain's index or the store's
                    assert not any("TEMP B-TREE" in line for line in plan), where
                    if only.location is not None:  # one store's, not the chain's walked for it
                        assert any(line.startswith("SEARCH import_issues") for line in plan), where
    assert all(read.values()), read


# --- the open transfers', held events' and sales channels' sources, on both backends ---------------------------

OPEN_FILTERS = (
    *FILTERS,
    ExceptionFilter(kind="transfer_overdue"),
    ExceptionFilter(kind="transfer_overdue", location="S003"),
    ExceptionFilter(kind="transfer_unknown_destination"),
    ExceptionFilter(kind="transfer_unknown_destination", location="S001", since_ms=NOW_MS - 3_600_000),
    ExceptionFilter(kind="clock_quarantine", location="S001"),
    ExceptionFilter(kind="channel_refused", location="S002"),
    ExceptionFilter(kind="channel_divergence", location="S002"),
    ExceptionFilter(kind="book_out_without_ref", location="S003"),
    ExceptionFilter(kind="channel_refused"),
    ExceptionFilter(kind="channel_order_refused"),
)
OPEN_AFTER = (
    *AFTER,
    ExceptionKey(NOW_MS, "transfer_overdue", ("S002", "O3", "SKU-O003")),
    ExceptionKey(NOW_MS, "transfer_unknown_destination", ("S771", "X1", "SKU-X001")),
    ExceptionKey(NOW_MS, "clock_quarantine", (5,)),
    ExceptionKey(NOW_MS, "channel_refused", ("web", "i3\tL1")),
)


@pytest.fixture
async def every_source(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A hub's database holding rows of every source: the paging burst, transfers shipped to two locations the hub
    does not know, and a sales channel's refused and diverging levels."""
    url = str(tmp_path / "hub.db")
    async with fresh_schema() if backend == "postgres" else contextlib.nullcontext(url) as url:
        async with open_store(url) as store:
            await exception_burst(store)
            await _unknown_destinations(store)
            await _book_outs_naming_no_transfer(store)
        async with open_channel_state(url) as state:
            await state.refuse("web", {LevelKey(f"i{i}", "L1"): Refusal(f"SKU-N{i:03d}", f"S00{i % 3 + 1}", 4, "no.", NOW_MS)
                                       for i in range(20)})  # fmt: skip
            await state.add_divergences("web", [Divergence(LevelKey(f"i{i}", "L1"), f"SKU-N{i:03d}", f"S00{i % 3 + 1}",
                                                           5, 4, 3, NOW_MS) for i in range(20)])  # fmt: skip
            for i in range(20):
                await state.refuse_order("pos", f"O{i}", "no.", NOW_MS - i)
        yield url


async def _unknown_destinations(store: HubStore) -> None:
    a, _ = await agent(store, ["S001"])
    batch = [
        move(a, i + 1, NOW_MS, Kind.TRANSFER_OUT, -1, sku=f"SKU-X{i:03d}", ref=f"X{i}", attrs={"to": f"S77{i % 2}"})
        for i in range(6)
    ]
    assert not (await store.ingest(a, 1, batch)).rejected


async def _book_outs_naming_no_transfer(store: HubStore) -> None:
    """S003 receives what nothing was shipped to it under, and books each out naming no transfer, beside sales."""
    a, _ = await agent(store, ["S003"])
    batch: list[Any] = []
    for i in range(12):
        sku = f"SKU-B{i:03d}"
        batch.append(move(a, len(batch) + 1, NOW_MS, Kind.TRANSFER_IN, 2, sku=sku, location="S003", ref=f"B{i}"))
        batch.append(move(a, len(batch) + 1, NOW_MS, Kind.ADJUST, -2, sku=sku, location="S003", reason=BOOK_OUT_REASON))
        batch.append(move(a, len(batch) + 1, NOW_MS, Kind.SALE, -1, sku=sku, location="S003", ref=f"R{i}"))
    assert not (await store.ingest(a, 1, batch)).rejected


async def test_the_book_outs_naming_no_transfer_are_walked_in_the_lists_order(backend: str, every_source: str) -> None:
    """The ledger grows without end; the book-outs naming no transfer (schema 26) are a few of its rows, walked by
    their partial index (events_book_out_unnamed) in the list's order, one store's too, each looking its store's
    unmatched receipts of the SKU up by key: no sort, no scan of the ledger."""
    read = 0
    for only, sql, plan in await open_source_plans(backend, every_source):
        if exceptions.BOOK_OUT_UNNAMED not in sql:
            continue
        read += 1
        where = (only, sql, plan)
        # PostgreSQL merges the partitions' walks in order (Merge Append's "Sort Key"): no Sort of its own
        for table in ("events", "transfers"):
            assert not [line for line in sorted_or_scanned(backend, table, plan) if "Sort Key" not in line], where
        walked = ("events_book_out_unnamed", "received_at_ms_agent_id_event_id")
        assert any(name in line for line in plan for name in walked), where
    assert read > 0


class Recorded:
    """A ``Db`` that keeps each statement it runs, answered by the real database."""

    def __init__(self, fetch: Any) -> None:
        self.run = fetch
        self.seen: list[tuple[str, Sequence[Any]]] = []

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.seen.append((sql, params))
        return list(await self.run(sql, params))


async def open_source_plans(backend: str, url: str) -> list[tuple[ExceptionFilter, str, list[str]]]:
    """Each statement of every page of ``OPEN_FILTERS`` after each of ``OPEN_AFTER``, with its plan's lines."""
    out: list[tuple[ExceptionFilter, str, list[str]]] = []
    if backend == "sqlite":
        with sqlite3.connect(url) as conn:

            async def lite(sql: str, params: Sequence[Any]) -> list[Row]:
                return conn.execute(sql, tuple(params)).fetchall()

            for only in OPEN_FILTERS:
                for after in OPEN_AFTER:
                    db = Recorded(lite)
                    await exceptions.exceptions(db, only, 50, 3_600_000, after, NOW_MS)  # type: ignore[arg-type]
                    for sql, params in db.seen:
                        plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))]
                        out.append((only, sql, plan))
        return out
    conn = await asyncpg.connect(url)
    try:
        pg = PostgresDb(conn)
        # where an index answers a statement in its order, PostgreSQL must take it: a Sort left is no index's
        await conn.execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; SET jit = off"
        )
        for only in OPEN_FILTERS:
            for after in OPEN_AFTER:
                db = Recorded(pg.fetch)
                await exceptions.exceptions(db, only, 50, 3_600_000, after, NOW_MS)  # type: ignore[arg-type]
                for sql, params in db.seen:
                    plan = [r[0] for r in await conn.fetch(f"EXPLAIN {numbered(sql)}", *params)]
                    out.append((only, sql, plan))
    finally:
        await conn.close()
    return out


def sorted_or_scanned(backend: str, table: str, plan: list[str]) -> list[str]:
    """The lines of ``plan`` that sort rows or read ``table`` whole (not walking an index of it)."""
    if backend == "sqlite":
        return [line for line in plan if "TEMP B-TREE" in line or line == f"SCAN {table}"]
    return [line for line in plan if "Sort" in line or f"Seq Scan on {table}" in line]


async def test_open_transfers_held_events_and_channel_levels_are_walked_in_the_lists_order(
    backend: str, every_source: str
) -> None:
    """The overdue and unknown-destination sources walk the open transfers in the list's order, one store's through
    either end, and look no transfer's destination up in the ledger (on PostgreSQL 16 partitions each): only each
    destination once, the open transfers' few hundred. Held events and a channel's refused and diverging levels
    walk an index of their own in the list's order, one store's too (they sorted all their rows)."""
    read = {"overdue": 0, "nowhere": 0, "destinations": 0, "quarantine": 0, "channel_refusals": 0,
            "channel_divergences": 0, "channel_orders_refused": 0, "refusals_together": 0}  # fmt: skip
    for only, sql, plan in await open_source_plans(backend, every_source):
        where = (only, sql, plan)
        if "FROM channel_orders_refused" in sql:
            # a channel's refused orders: a couple of days of them, no index of their time, sorted for the page; with
            # its refused levels (of the chain or of one store: schema 15 names its hub location), one statement,
            # their UNION ALL (each read alone by its kind)
            if "FROM channel_refusals" in sql:
                read["refusals_together"] += 1
                assert " UNION ALL " in sql and only.kind is None, where
            else:
                read["channel_orders_refused"] += 1
                assert only.kind == "channel_order_refused", where
            continue
        if sql.startswith("WITH RECURSIVE"):
            read["destinations"] += 1  # each destination found by a seek of an index of the open transfers
            assert not sorted_or_scanned(backend, "transfers", plan), where
            continue
        if "FROM transfers" in sql and "shipped_at_ms < ?" in sql:
            source = "overdue"
        elif "FROM transfers" in sql and "in_to IS NULL" in sql:
            source = "nowhere"
        elif (table := sql.split(" FROM ", 1)[1].split(" ", 1)[0]) in read:
            source = table
        else:
            continue
        read[source] += 1
        table = "transfers" if source in ("overdue", "nowhere") else source
        assert not sorted_or_scanned(backend, table, plan), where
        if source == "nowhere":  # its destinations were looked up already, once each
            assert "events" not in sql and not any("events" in line for line in plan), where
        if only.location is not None and source in ("quarantine", "channel_refusals", "channel_divergences"):
            # one store's rows, not the chain's walked for them
            assert not any(line.startswith(f"SCAN {table}") for line in plan), where
            assert not any("Filter:" in line and "location" in line for line in plan), where
    assert all(read.values()), read


async def test_a_page_words_no_more_transfers_to_unknown_destinations_than_it_shows(
    backend: str, every_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each unknown destination's transfers are walked apart, a page's worth each: only the walks' first page in the
    list's order is worded (it cost more than the walks on a chain of five unknown destinations), the same rows."""
    worded: list[str] = []
    finding = Transfer.unknown_destination_finding

    def counted(self: Transfer) -> Any:
        worded.append(self.ref)
        return finding(self)

    only = ExceptionFilter(kind="transfer_unknown_destination")
    async with open_store(every_source) as store:
        everything = await store.exceptions(kind=only.kind, limit=1000)
        monkeypatch.setattr(Transfer, "unknown_destination_finding", counted)
        page = await store.exceptions(kind=only.kind, limit=2)
    assert len({r.data["to"] for r in everything}) == 2 and len(everything) == 6  # two destinations, three each
    assert page == everything[:2]
    assert len(worded) == 2, worded


# --- two copies of one agent (schema 13), on both backends -----------------------------------------------------

COPIES_WINDOW_MS = 3_600_000


@pytest.fixture
async def agent_copies(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A hub's database where a dozen agents each sync from two or three copies of themselves, one forked once and
    one that also sends through POST /v1/events (``test_exception_filters.copies``)."""
    url = str(tmp_path / "hub.db")
    async with fresh_schema() if backend == "postgres" else contextlib.nullcontext(url) as url:
        async with open_store(url) as store:
            await copies(store)
        yield url


async def copies_plans(backend: str, url: str) -> list[tuple[ExceptionFilter, str, list[str]]]:
    """Each statement reading ``agent_hwm`` of pages of the agent-copies source (the chain's, one store's, since a
    time, and the page after a first one), with its plan's lines."""
    now_ms = time.time_ns() // 1_000_000
    async with open_store(url) as store:
        first = await store.exceptions(kind="agent_copies", limit=3, copies_window_ms=COPIES_WINDOW_MS)
    assert len(first) == 3, first
    pages = [(only, after) for only in (ExceptionFilter(), ExceptionFilter(kind="agent_copies"),
                                        ExceptionFilter(location="S003"), ExceptionFilter(since_ms=now_ms - 60_000))
             for after in (None, ExceptionKey(first[-1].at_ms, first[-1].source, first[-1].ident))]  # fmt: skip
    out: list[tuple[ExceptionFilter, str, list[str]]] = []

    async def statements(fetch: Any) -> list[tuple[ExceptionFilter, str, Sequence[Any]]]:
        seen = []
        for only, after in pages:
            db = Recorded(fetch)
            listed = await exceptions.exceptions(db, only, 3, None, after, now_ms, COPIES_WINDOW_MS)  # type: ignore[arg-type]
            assert any(r.kind == "agent_copies" for r in listed), (only, after)
            seen += [(only, sql, params) for sql, params in db.seen if "agent_hwm" in sql]
        return seen

    if backend == "sqlite":
        with sqlite3.connect(url) as conn:

            async def lite(sql: str, params: Sequence[Any]) -> list[Row]:
                return conn.execute(sql, tuple(params)).fetchall()

            for only, sql, params in await statements(lite):
                out.append((only, sql, [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))]))
        return out
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; SET jit = off"
        )
        for only, sql, params in await statements(PostgresDb(conn).fetch):
            out.append((only, sql, [r[0] for r in await conn.fetch(f"EXPLAIN {numbered(sql)}", *params)]))
    finally:
        await conn.close()
    return out


async def test_the_agent_copies_source_reads_each_agents_epochs_by_its_key(backend: str, agent_copies: str) -> None:
    """The agent-copies source reads agent_hwm whole once (a row per epoch each agent ever had, no index of its time:
    every sync writes it), grouped in its primary key's order, not sorted; each epoch's other copies and the
    credential are looked up by their key, never by reading the table again for each epoch; the page's agents'
    copies are read by their key only. Only the grouped agents (those with copies) are sorted for the page."""
    read = {"agents": 0, "named": 0}
    for only, sql, plan in await copies_plans(backend, agent_copies):
        where = (only, sql, plan)
        named = " AS n FROM " in sql  # the page's copies, numbered per agent (both number an agent's epochs)
        read["named" if named else "agents"] += 1
        if backend == "sqlite":
            # the other copies of an epoch: a seek of the primary key by the agent, never a scan
            assert "SEARCH o USING PRIMARY KEY (agent_id=?)" in plan and "SCAN o" not in plan, where
            if named:  # the page's agents' epochs only
                assert "SEARCH e USING PRIMARY KEY (agent_id=?)" in plan and "SCAN e" not in plan, where
            else:  # agent_hwm whole as its primary key walks it, each agent's epochs sorted by their last sync among
                # themselves (COPIES_CHECKED_MAX: a window), never the table; each credential by its key
                assert "SCAN e" in plan and "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY" in plan, where
                assert "SEARCH g USING PRIMARY KEY (agent_id=?)" in plan and "SCAN g" not in plan, where
            continue
        assert not any(line.lstrip("-> ").startswith("Seq Scan") for line in plan), where
        text = "\n".join(plan)
        # the other copies: merged with the epochs along the primary key, or a seek of it by the agent
        # (h: the epochs that synced in the window, e: agent_hwm read for them, as the planner names them)
        assert any(
            f"Merge Cond: ({a}.agent_id = o.agent_id)" in text or f"Index Cond: (agent_id = {a}.agent_id)" in text
            for a in "he"
        ), where
        if named:
            assert "Index Cond: (agent_id = ANY " in text, where  # the page's agents' epochs only
        else:
            assert "Index Scan using agents_pkey on agents g" in text, where
            # grouped as the primary key walks the epochs; below that, each agent's epochs are sorted by their last
            # sync among themselves only (COPIES_CHECKED_MAX: a window), and the grouped agents above it
            grouped = [i for i, line in enumerate(plan) if "GroupAggregate" in line]
            assert grouped and any(f"Group Key: {a}.agent_id" in text for a in "he"), where
            assert "HashAggregate" not in text, where
            below = [line for i, line in enumerate(plan) if "Sort  (cost=" in line and i > grouped[0]]
            assert all("Incremental Sort" in line for line in below), where
            assert not below or "Presorted Key: e.agent_id" in text, where
    assert all(read.values()), read


async def test_a_pages_transfer_walks_are_read_in_two_statements(backend: str, every_source: str) -> None:
    """The transfers with a finding and the overdue ones (through one index each, or three each for one store) are
    one statement, their walks' UNION ALL, and so are the unknown destinations' walks (two here) and the look-ups of
    the transfers of the page's overdue ones' refs (``LINKED``, a third): on PostgreSQL a
    round trip each, which a busy machine makes cost more than the walks. The rows are the same (the list's tests,
    both backends)."""
    url = every_source
    conn = await asyncpg.connect(url) if backend == "postgres" else None
    lite = sqlite3.connect(url) if conn is None else None

    async def run(sql: str, params: Sequence[Any]) -> list[Row]:
        if conn is not None:
            return await PostgresDb(conn).fetch(sql, params)
        assert lite is not None
        return lite.execute(sql, tuple(params)).fetchall()

    try:
        for only in (ExceptionFilter(), ExceptionFilter(location="S001")):
            db = Recorded(run)
            listed = await exceptions.exceptions(db, only, 1000, 3_600_000, None, NOW_MS)  # type: ignore[arg-type]
            kinds = {r.kind for r in listed}
            assert {"negative_on_hand", "transfer_short", "transfer_overdue", "transfer_unknown_destination"} <= kinds
            walks = [
                sql
                for sql, _ in db.seen
                if " FROM transfers" in sql
                and not sql.startswith("WITH RECURSIVE")
                and exceptions.LINKED_WHERE not in sql
                and exceptions.BOOK_OUT_UNNAMED not in sql  # a walk of the ledger's book-outs, looking transfers up
            ]
            assert len(walks) == 2, (only, walks)  # the findings and the overdue; the unknown destinations'
            assert exceptions.TRANSFER_FINDING in walks[0] and "shipped_at_ms < ?" in walks[0], (only, walks)
            assert walks[1].count(exceptions.IN_TRANSIT) == 2, (only, walks)
            # and the page's overdue transfers' refs, one statement for them all (schema 22)
            looked_up = [sql for sql, _ in db.seen if exceptions.LINKED_WHERE in sql]
            assert len(looked_up) == 1 and looked_up[0].count(" UNION ALL ") > 0, (only, looked_up)
    finally:
        if conn is not None:
            await conn.close()
        if lite is not None:
            lite.close()


async def test_the_transfers_a_pages_unmatched_and_overdue_ones_name_are_read_by_their_ref(
    backend: str, every_source: str
) -> None:
    """The transfers of the ref and SKU of each unmatched receipt and overdue transfer on a page (``LINKED``: the
    shipment a receipt at the wrong store missed, and the receipt) are looked up by their key through
    transfers_by_ref, never the chain's transfers read whole or sorted."""
    read = 0
    for only, sql, plan in await open_source_plans(backend, every_source):
        if exceptions.LINKED_WHERE in sql:
            read += 1
            assert not sorted_or_scanned(backend, "transfers", plan), (only, sql, plan)
            assert any("transfers_by_ref" in line for line in plan), (only, sql, plan)
    assert read
