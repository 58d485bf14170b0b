"""Upgrading a hub of schema 19 to 20, on SQLite and on PostgreSQL: its transfers, kept per (ref, sku) until then,
are rebuilt per (destination, ref, sku) from the events it stored, and each location's in transit follows.

The schema-19 hub holds what the old key made of two stores' "T-1" (S001 shipped 6 of A to S003, which received
5 with a final receipt; S002 shipped 4 of A to S004, not received yet): one transfer of 10, closed by S003's
receipt, 5 written off at S003 and nothing in transit to S004. Upgraded, S003's transfer wrote off 1, S004 has
S002's 4 in transit, as the resolver says of the same events, and the hub goes on working: S004 receives them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from hub import HubStore, open_store
from hub.resolver import order_key, resolve
from hub.storage.ingest import event_row
from hub.storage.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from hub.storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from protocol import Kind, StockEvent
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory

OLD = 19  # the schema before transfers were keyed by destination
RECEIVED_MS = 1_700_000_100_000


def _events() -> list[StockEvent]:
    a = EventFactory("agent-s001", location="S001")
    b = EventFactory("agent-s002", location="S002")
    c = EventFactory("agent-s003", location="S003")
    return [
        a(Kind.TRANSFER_OUT, -6, at_ms=1, ref="T-1", attrs={"to": "S003"}),
        b(Kind.TRANSFER_OUT, -4, at_ms=2, ref="T-1", attrs={"to": "S004"}),
        c(Kind.TRANSFER_IN, 5, at_ms=3, ref="T-1", attrs={"final": True, "from": "S001"}),
        c(Kind.RECEIVE, 2, at_ms=4, ref="PO-7"),  # not a transfer: left as it is
    ]


def _old_rows(events: list[StockEvent]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of schema 19 a hub stored for ``events``: the events, their counts, and the one transfer the old
    key (ref, sku) made of both T-1 (its destination the smaller code, closed by S003's final receipt)."""
    out, _, final, _ = events
    rows = [(ev.event_id, *event_row(ev), "applied", None, RECEIVED_MS) for ev in events]
    newest = {ev.location: ev for ev in events}
    stock = []
    for location, on_hand, in_transit in (("S001", -6, 0), ("S002", -4, 0), ("S003", 7, 0), ("S004", 0, 0)):
        ev = newest.get(location)
        key = (ev.occurred_at, ev.agent_id, ev.seq, ev.event_id) if ev else (None, None, None, None)
        stock.append((location, "A", on_hand, 0, in_transit, 0, None, None, None, None, *key, RECEIVED_MS))
    transfer = ("T-1", "A", 10, 5, "S001", "S003", "S003", "S001", out.wall_ms, final.occurred_at, RECEIVED_MS)
    return {"events": rows, "stock": stock, "transfers": [transfer]}


EVENT_COLUMNS = (
    "event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs, "
    "effect, variance, received_at_ms"
)
STOCK_COLUMNS = (
    "location, sku, on_hand, reserved, in_transit, safety_stock, last_count_at, last_count_agent, last_count_seq, "
    "last_count_id, max_at, max_agent, max_seq, max_id, updated_at_ms"
)
OLD_TRANSFER_COLUMNS = (
    "ref, sku, shipped, received, out_from, out_to, in_to, in_from, shipped_at_ms, closed_at, updated_at_ms"
)
COLUMNS = {"events": EVENT_COLUMNS, "stock": STOCK_COLUMNS, "transfers": OLD_TRANSFER_COLUMNS}


def _sqlite_19(db: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    conn = sqlite3.connect(db)
    try:
        for step in range(1, OLD + 1):
            conn.executescript(f"BEGIN;\n{SQLITE_MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
        for table, values in rows.items():
            marks = ", ".join("?" * len(values[0]))
            conn.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", values)
        conn.commit()
    finally:
        conn.close()


async def _postgres_19(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, OLD + 1):
            async with conn.transaction():
                await conn.execute(PG_MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
        for table, values in rows.items():
            marks = ", ".join(f"${i}" for i in range(1, len(values[0]) + 1))
            await conn.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", values)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _hub_of_schema_19(
    backend: str, tmp_path: Path, events: list[StockEvent], rows: dict[str, list[tuple[Any, ...]]] | None = None
) -> AsyncIterator[str]:
    rows = rows or _old_rows(events)
    if backend == "sqlite":
        _sqlite_19(tmp_path / "hub.db", rows)
        yield str(tmp_path / "hub.db")
        return
    async with fresh_schema("xfer") as url:
        await _postgres_19(url, rows)
        yield url


async def _at(store: HubStore, location: str) -> tuple[int, int]:
    [row] = await store.counts(location=location, sku="A")
    return row.on_hand, row.in_transit


async def test_a_schema_19_hub_rebuilds_its_transfers_by_destination(backend: str, tmp_path: Path) -> None:
    events = _events()
    async with _hub_of_schema_19(backend, tmp_path, events) as url, open_store(url) as store:
        res = resolve(events)
        for location in ("S001", "S002", "S003", "S004"):
            state = res.stock[(location, "A")]
            assert await _at(store, location) == (state.on_hand, state.in_transit), location
        assert await _at(store, "S004") == (0, 4)
        offs = [(r.location, r.qty, r.attrs["from"]) for r in await store.ledger() if r.kind == "transfer_writeoff"]
        assert offs == [("S003", -1, "S001")]
        listed = sorted(
            (e.kind, e.location, e.detail)
            for e in await store.exceptions()
            if e.kind.startswith("transfer") and e.kind != "transfer_unknown_destination"  # S004 has no agent yet
        )
        assert listed == sorted((f.kind, f.location, f.detail) for f in res.findings if f.kind.startswith("transfer"))
        assert [e.kind for e in await store.exceptions(location="S004") if e.kind.startswith("transfer")] == []

        _, token = await store.add_agent(["S004"])  # the upgraded hub goes on: S004 receives S002's T-1 in full
        who = await store.authenticate(token)
        assert who is not None
        d = EventFactory(who.agent_id, location="S004")
        receipt = d(Kind.TRANSFER_IN, 4, at_ms=5, ref="T-1", attrs={"final": True})
        assert (await store.ingest(who, 1, [receipt])).rejected == ()
        assert await _at(store, "S004") == (4, 0)
        assert [r.location for r in await store.ledger() if r.kind == "transfer_writeoff"] == ["S003"]


async def test_the_upgrade_puts_every_corrected_in_transit_on_the_change_feed(backend: str, tmp_path: Path) -> None:
    """Found: step 20 corrected S004's in transit (0 → 4, S002's T-1) in the stock table alone, so a channel
    connector following GET /v1/changes never learned of it. Upgraded, the feed's newest row of each transfer's
    destination and SKU holds the counts the hub now has."""
    events = _events()
    async with _hub_of_schema_19(backend, tmp_path, events) as url, open_store(url) as store:
        newest = {(c.location, c.sku): c for c in await store.changes(0, 1000)}
        for location in ("S003", "S004"):
            [row] = await store.counts(location=location, sku="A")
            change = newest[(location, "A")]
            assert (change.on_hand, change.reserved, change.available, change.in_transit) == (
                row.on_hand, row.reserved, row.available, row.in_transit
            ), location  # fmt: skip
        assert newest[("S004", "A")].in_transit == 4


def _events_and_counts(events: list[StockEvent]) -> dict[str, list[tuple[Any, ...]]]:
    """The events and the stock rows (their on_hand, nothing in transit) a hub of schema 19 stored for ``events``,
    no transfer: step 20 rebuilds the transfers from the events, and the in transit from them."""
    rows = [(ev.event_id, *event_row(ev), "applied", None, RECEIVED_MS) for ev in events]
    newest = {(ev.location, ev.sku): ev for ev in sorted(events, key=order_key)}
    stock = [
        (loc, sku, state.on_hand, 0, 0, 0, None, None, None, None, *order_key(newest[(loc, sku)]), RECEIVED_MS)
        for (loc, sku), state in resolve(events).stock.items()
        if (loc, sku) in newest
    ]
    return {"events": rows, "stock": stock}


async def test_the_upgrade_counts_receipts_back_and_book_outs_as_ingest_does(backend: str, tmp_path: Path) -> None:
    """Step 25 derives from the stored events what ingest derives as they come: S001's receipt of its own T-5
    (cancelled, 6 of A to S002) counts against it and closes it; S003's receipt of T-1 meant for S002 is booked out
    by S003's adjust carrying T-1; S004 receives back 2 of the 3 of T-7 it shipped to S002 (closed short, 1 written
    off at S002); S005's receipt of T-9 naming S006 is no receipt back of S005's T-9 to S002. The upgraded hub's
    counts, exceptions and write-offs are the resolver's, and the feed's newest rows hold the counts."""
    f = {loc: EventFactory(f"agent-{loc.lower()}", location=loc) for loc in ("S001", "S002", "S003", "S004", "S005")}
    events = [
        f["S001"](Kind.TRANSFER_OUT, -6, at_ms=1, ref="T-5", attrs={"to": "S002"}),
        f["S001"](Kind.TRANSFER_IN, 6, at_ms=2, ref="T-5", attrs={"final": True}),
        f["S001"](Kind.TRANSFER_OUT, -5, at_ms=3, ref="T-1", attrs={"to": "S002"}),
        f["S003"](Kind.TRANSFER_IN, 5, at_ms=4, ref="T-1"),
        f["S003"](Kind.ADJUST, -5, at_ms=5, ref="T-1"),
        f["S002"](Kind.TRANSFER_IN, 5, at_ms=6, ref="T-1", attrs={"final": True}),
        f["S004"](Kind.TRANSFER_OUT, -3, at_ms=7, ref="T-7", attrs={"to": "S002"}),
        f["S004"](Kind.TRANSFER_IN, 2, at_ms=8, ref="T-7", attrs={"final": True, "from": "S002"}),
        f["S005"](Kind.TRANSFER_OUT, -4, at_ms=9, ref="T-9", attrs={"to": "S002"}),
        f["S005"](Kind.TRANSFER_IN, 1, at_ms=10, ref="T-9", attrs={"from": "S006"}),
    ]
    rows = _events_and_counts(events)
    async with _hub_of_schema_19(backend, tmp_path, events, rows) as url, open_store(url) as store:
        res = resolve(events)
        counts = {(r.location, r.sku): (r.on_hand, r.in_transit) for r in await store.counts(limit=100)}
        assert counts == {k: (s.on_hand, s.in_transit) for k, s in res.stock.items()}
        assert counts[("S002", "A")] == (5, 4)  # S005's T-9 alone is in transit
        listed = sorted((e.kind, e.location, e.detail, sorted(e.data.items())) for e in await store.exceptions()
                        if e.kind.startswith("transfer") and e.kind != "transfer_unknown_destination")  # fmt: skip
        assert listed == sorted(
            (f.kind, f.location, f.detail, sorted(f.data.items()))
            for f in res.findings
            if f.kind.startswith("transfer")
        )
        assert [e[:2] for e in listed] == [("transfer_short", "S002"), ("transfer_unmatched", "S005")]
        offs = [(r.location, r.ref, r.qty) for r in await store.ledger() if r.kind == "transfer_writeoff"]
        assert offs == [("S002", "T-7", -1)]
        newest = {(c.location, c.sku): c for c in await store.changes(0, 1000)}
        assert {k: (c.on_hand, c.in_transit) for k, c in newest.items()} == counts  # each is a transfer's destination


async def test_the_upgrade_words_the_book_out_reason_as_the_hub_and_books_no_adjust_up(
    backend: str, tmp_path: Path
) -> None:
    """Step 28: a book-out naming no transfer stored as a POS export spelled its reason ("Received by mistake,  sent
    on") is worded as the hub does and listed as book_out_without_ref, as ingest now stores it; and an adjust up
    carrying a receipt's ref (+2, nothing booked out) no longer lists 7 of the 5 received as unmatched."""
    f = {loc: EventFactory(f"agent-{loc.lower()}", location=loc) for loc in ("S001", "S003")}
    events = [
        f["S001"](Kind.TRANSFER_OUT, -5, at_ms=1, ref="T-1", attrs={"to": "S002"}),
        f["S003"](Kind.TRANSFER_IN, 5, at_ms=2, ref="T-1"),
        f["S003"](Kind.ADJUST, 2, at_ms=3, ref="T-1", reason="stock-take"),
        f["S003"](Kind.ADJUST, -1, at_ms=4, reason="Received by mistake,  sent on"),
        f["S003"](Kind.ADJUST, -1, at_ms=5, reason=" RECEIVED BY   MISTAKE, SENT ON "),
        f["S003"](Kind.ADJUST, -1, at_ms=6, reason="received by mistake, sent on later"),  # another reason
    ]
    rows = _events_and_counts(events)
    reason_at = 1 + EVENT_COLUMNS.split(", ").index("reason")  # a schema-19 hub stored the reason as it came
    rows["events"] = [(*r[:reason_at], ev.reason, *r[reason_at + 1 :]) for r, ev in zip(rows["events"], events)]
    assert rows["events"][3][reason_at] == "Received by mistake,  sent on"
    async with _hub_of_schema_19(backend, tmp_path, events, rows) as url, open_store(url) as store:
        reasons = [r.reason for r in sorted(await store.ledger(location="S003"), key=lambda r: r.occurred_at)]
        assert reasons == [None, "stock-take", *["received by mistake, sent on"] * 2, events[-1].reason]
        unnamed = [e.data["qty"] for e in await store.exceptions(kind="book_out_without_ref")]
        assert unnamed == [-1, -1]
        [left] = [e for e in await store.exceptions(location="S003") if e.kind.startswith("transfer")]
        assert (left.kind, left.data["received"], left.data.get("booked_out")) == ("transfer_unmatched", 5, None)
        assert left.detail.startswith("Transfer T-1: 5 of A were received at S003 but"), left.detail
