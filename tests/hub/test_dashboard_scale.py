"""The dashboard's reads at retail scale: each reads what it shows, never a whole table.

A hub on a real SQLite file, seeded through the store's ingest and read over real HTTP on 127.0.0.1 as the
dashboard reads it. Instead of timing (the tests assert no times), every statement a read runs is recorded
and asked for its query plan on the same file: a plan that scans a whole table (``SCAN events``) reads work
that grows with the ledger, whatever the page shows.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.storage.base import AgentIdentity, Observation
from hub.storage.db import SqliteDb
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.harness.inprocess import ServedHub, hub_in_process

STORES = 6
SKUS = 40


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[tuple[ServedHub, str]]:
    """A hub with STORES stores, a count and a sale of each of SKUS SKUs at each, and a reader's token."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        store = served.store
        _, reader = await store.add_agent([], role="reader")
        now = wall_ms_now() - 3_600_000
        for s in range(STORES):
            loc = f"S{s + 1:03d}"
            agent_id, _ = await store.add_agent([loc])
            seq = itertools.count(1)
            events = []
            for k in range(SKUS):
                for kind, qty in ((Kind.COUNT, 20), (Kind.SALE, -1)):
                    n = next(seq)
                    events.append(StockEvent(new_event_id(), agent_id, 1, n, loc, f"SKU-{k:03d}", kind, qty,
                                             pack_hlc(now + n, 0), now + n, "pos:test"))  # fmt: skip
            await store.ingest(AgentIdentity(agent_id, frozenset({loc})), 1, events)
        yield served, reader


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every SELECT the hub's SQLite connections run from now on, with its parameters."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    fetch = SqliteDb.fetch

    async def recorded(self: SqliteDb, sql: str, params: Any = ()) -> Any:
        seen.append((sql, tuple(params)))
        return await fetch(self, sql, params)

    monkeypatch.setattr(SqliteDb, "fetch", recorded)
    return seen


def full_scans(db: Path, statements: list[tuple[str, tuple[Any, ...]]], table: str) -> list[str]:
    """The statements whose plan on ``db`` reads all of ``table`` (a SCAN, with or without an index)."""
    conn = sqlite3.connect(db)
    try:
        out = []
        for sql, params in statements:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            if any(step.startswith(f"SCAN {table}") for step in plan):
                out.append(f"{sql} -> {plan}")
        return out
    finally:
        conn.close()


async def test_a_skus_ledger_reads_that_skus_events_not_the_whole_ledger(
    seeded: tuple[ServedHub, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The SKU page (find one SKU across every store) reads its ledger by ?sku= alone; the hub must find that
    SKU's events by an index, not walk every event of every SKU newest first until it has a page of them."""
    served, reader = seeded
    seen = record_reads(monkeypatch)
    resp = await served.client.get("/v1/ledger?sku=SKU-007&limit=50", headers={"Authorization": f"Bearer {reader}"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert len(body["events"]) == 2 * STORES and {e["sku"] for e in body["events"]} == {"SKU-007"}
    reads = [(sql, params) for sql, params in seen if "FROM events" in sql]
    assert reads, "the ledger read no events"
    assert full_scans(tmp_path / "hub.db", reads, "events") == []


async def test_a_skus_ledger_paged_location_by_location_is_the_whole_ledgers_rows_of_that_sku(
    seeded: tuple[ServedHub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SKU's events are read location by location, several locations a statement: the pages, followed by
    their cursors, are exactly the whole ledger's rows of that SKU, newest first — with the statements cut into
    groups of two locations here, so that a page is made of several statements' rows."""
    from hub.storage import stock

    served, reader = seeded
    auth = {"Authorization": f"Bearer {reader}"}
    whole = await (await served.client.get("/v1/ledger?limit=10000", headers=auth)).json()
    expected = [e for e in whole["events"] if e["sku"] == "SKU-011"]
    assert len(expected) == 2 * STORES
    monkeypatch.setattr(stock, "SKU_PLACES_PER_QUERY", 2)
    got, cursor = [], None
    for _ in range(20):
        resp = await served.client.get(
            "/v1/ledger?sku=SKU-011&limit=5" + (f"&cursor={cursor}" if cursor else ""), headers=auth
        )
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        got += page["events"]
        cursor = page["next"]
        if cursor is None:
            break
    assert got == expected


async def test_a_page_of_exceptions_reads_the_diverging_observations_not_every_observation(
    seeded: tuple[ServedHub, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The stores' POS exports agree with the hub on every SKU but two: a page of exceptions reads those two
    from the diverging observations' index, not every observation ever received and the hub's figure of each
    (which took 28 s for 100,000 agreeing observations and held up every other read meanwhile)."""
    served, reader = seeded
    store = served.store
    now = wall_ms_now()
    for s in range(STORES):
        loc = f"S{s + 1:03d}"
        agent_id, _ = await store.add_agent([loc])
        who = AgentIdentity(agent_id, frozenset({loc}))
        off = {0: 25, 1: 3} if s == 2 else {}  # S003 counts 25 of SKU-000 and 3 of SKU-001: the hub holds 19 each
        await store.add_observations(
            who, [Observation(f"o{k}", loc, f"SKU-{k:03d}", "erp", off.get(k, 19), now) for k in range(SKUS)]
        )
    seen = record_reads(monkeypatch)
    resp = await served.client.get("/v1/exceptions?limit=5", headers={"Authorization": f"Bearer {reader}"})
    assert resp.status == 200, await resp.text()
    found = [(e["location"], e["sku"], e["data"]["hub_on_hand"]) for e in (await resp.json())["exceptions"]]
    assert sorted(found) == [("S003", "SKU-000", 19), ("S003", "SKU-001", 19)]
    assert [sql for sql, _ in seen if re.search(r"\bFROM observations\b", sql)] == []
    newest = [(sql, params) for sql, params in seen if "FROM observations_newest" in sql]
    assert newest, "the exceptions read no divergence"
    conn = sqlite3.connect(tmp_path / "hub.db")
    try:
        plans = [[r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)] for sql, params in newest]
    finally:
        conn.close()
    for plan in plans:  # the diverging rows' index in the list's order, stopped at the page: no sort of them all
        assert [step for step in plan if "observations_diverging" not in step] == [], plan
    assert len(seen) < 20, f"{len(seen)} statements for a page of exceptions"


async def test_a_page_of_exceptions_sorts_no_negative_stock_nor_rejection_it_does_not_show(
    seeded: tuple[ServedHub, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Negative stock and refused events are read newest first through an index and stopped at the page, for
    the whole chain and for one store: a sort of every such row (USE TEMP B-TREE) costs what the hub has
    raised over the years, not what the page shows."""
    served, reader = seeded
    store = served.store
    now = wall_ms_now()
    for s in range(STORES):  # each store oversells 10 SKUs and sends 10 events for a store it is not bound to
        loc, other = f"S{s + 1:03d}", f"S{(s + 1) % STORES + 1:03d}"
        agent_id, _ = await store.add_agent([loc])
        events = [StockEvent(new_event_id(), agent_id, 1, n + 1, loc if n < 10 else other, f"SKU-{n % 10:03d}",
                             Kind.SALE, -30, pack_hlc(now + n, 0), now + n, "pos:test") for n in range(20)]  # fmt: skip
        result = await store.ingest(AgentIdentity(agent_id, frozenset({loc})), 1, events)
        assert len(result.rejected) == 10
    auth = {"Authorization": f"Bearer {reader}"}
    seen = record_reads(monkeypatch)
    for query in ("limit=5", "limit=5&location=S002"):
        resp = await served.client.get(f"/v1/exceptions?{query}", headers=auth)
        assert resp.status == 200, await resp.text()
    reads = [(sql, params) for sql, params in seen if "on_hand < 0" in sql or "FROM rejections" in sql]
    assert len(reads) == 4, reads
    conn = sqlite3.connect(tmp_path / "hub.db")
    try:
        sorts = [
            (sql, plan)
            for sql, params in reads
            for plan in ([r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)],)
            if any("TEMP B-TREE" in step for step in plan)
        ]
    finally:
        conn.close()
    assert sorts == []


async def test_a_batch_after_the_observations_reads_no_events_to_keep_their_figures(
    seeded: tuple[ServedHub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SKU of a store has an observation; the store's next sales come after it, so the hub's figure as of
    each observation stands: keeping them reads their rows, never the keys' events (a sum per key, per batch,
    that cost a PostgreSQL hub three times its ingest). A sale stamped before them moves those figures."""
    served, _ = seeded
    store = served.store
    now = wall_ms_now()
    agent_id, _ = await store.add_agent(["S001"])
    who = AgentIdentity(agent_id, frozenset({"S001"}))
    await store.add_observations(who, [Observation(f"o{k}", "S001", f"SKU-{k:03d}", "erp", 19, now) for k in range(SKUS)])
    seen = record_reads(monkeypatch)
    sales = [StockEvent(new_event_id(), agent_id, 1, k + 1, "S001", f"SKU-{k:03d}", Kind.SALE, -1,
                        pack_hlc(now + 1_000 + k, 0), now + 1_000 + k, "pos:test") for k in range(SKUS)]  # fmt: skip
    await store.ingest(who, 1, sales)
    assert [sql for sql, _ in seen if "FROM events" in sql and "kind = 'count'" in sql] == []
    assert await store.divergence() == []
    late = StockEvent(new_event_id(), agent_id, 1, SKUS + 1, "S001", "SKU-005", Kind.SALE, -5,
                      pack_hlc(now - 1_000, 0), now - 1_000, "pos:test")  # fmt: skip
    await store.ingest(who, 1, [late])
    assert [(d.sku, d.hub_on_hand, d.observed) for d in await store.divergence()] == [("SKU-005", 14, 19)]
