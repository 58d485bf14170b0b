"""Counts, the ledger and safety stock, in SQL both backends run (``hub.storage.db``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from hub.resolver import available
from hub.storage import held, keys
from hub.storage.base import CountRow, LedgerRow
from hub.storage.bundles import BundleReads
from hub.storage.db import Db, Row, Where
from hub.storage.ingest import IngestTx, NewChange, refresh_bundles
from hub.storage.keys import CountKey, LedgerKey
from hub.storage.rows import COUNT_FIELDS, count_row, expanded_ids, ledger_row, with_expansions
from hub.storage.sql import EVENT_FIELDS, NEWEST_FIRST, TRANSFER_FIELDS, ledger_events_sql
from protocol import CountSnapshot

# A SKU's ledger at every location (``_sku_events``): this many locations' reads in one statement, each a
# compound SELECT's arm (SQLite allows 500 by default).
SKU_PLACES_PER_QUERY = 100
# SKUs one statement of ``skus_counted`` asks about: a marker each, within SQLite's (32,766) and PostgreSQL's
# (32,767) bounds.
SKUS_PER_QUERY = 10_000


async def counts(
    db: Db, location: str | None, sku: str | None, limit: int, after: CountKey | None,
    skus: Sequence[str] | None = None,
) -> list[CountRow]:  # fmt: skip
    where = Where().page(keys.counts_after(after) if after is not None else None)
    where.add("location = ?", location).add("sku = ?", sku)
    if skus is not None:  # any of them (GET /v1/counts takes up to 500): one marker each, on the primary key
        if skus:
            where.add(f"sku IN ({', '.join('?' * len(skus))})", *skus)
        else:
            where.terms.append("1 = 0")
    sql = f"SELECT {COUNT_FIELDS} FROM stock{where.sql} ORDER BY location, sku LIMIT ?"
    return [count_row(r) for r in await db.fetch(sql, (*where.params, limit))]


async def skus_counted(db: Db, skus: Collection[str]) -> set[str]:
    """Those of ``skus`` with a stock row: each one looked up in the stock's SKU index (``stock_sku``) and no further
    than its first location, in one statement of ``SKUS_PER_QUERY`` at most (as many as one request of
    POST /v1/events may ask: its 1,000 SKUs' spellings, ``hub.events_api``)."""
    asked = sorted(set(skus))
    found: set[str] = set()
    for start in range(0, len(asked), SKUS_PER_QUERY):
        part = asked[start : start + SKUS_PER_QUERY]
        markers = ", ".join("(?)" for _ in part)
        sql = (
            f"SELECT v.column1 FROM (VALUES {markers}) AS v "
            "WHERE EXISTS (SELECT 1 FROM stock WHERE stock.sku = v.column1)"
        )
        found.update(r[0] for r in await db.fetch(sql, part))
    return found


async def ledger(
    db: Db, booked: BundleReads, location: str | None, sku: str | None, limit: int, before: int | None,
    after: LedgerKey | None,
) -> list[LedgerRow]:  # fmt: skip
    """Events, rejected attempts and transfer write-offs (see ``HubStore.ledger``)."""

    def where(page: tuple[str, tuple[Any, ...]] | None) -> Where:
        return Where().page(page).add("location = ?", location).add("sku = ?", sku).add("occurred_at < ?", before)

    page = keys.events_after(after) if after is not None else None
    if sku is not None and location is None:
        rows = await _sku_events(db, sku, page, before, limit)
    else:
        events = where(page)
        rows = await db.fetch(
            ledger_events_sql(f"(SELECT * FROM events{events.sql} ORDER BY {NEWEST_FIRST} LIMIT ?)"),
            (*events.params, limit),
        )
    rejections = where(keys.rejections_after(after) if after is not None else None)
    rows += await db.fetch(
        f"SELECT {EVENT_FIELDS}, 'rejected', NULL, attempts - 1, received_at_ms, detail, code, content_hash "
        f"FROM rejections{rejections.sql} ORDER BY {keys.REJECTIONS_NEWEST_FIRST} LIMIT ?",
        (*rejections.params, limit),
    )
    out = [ledger_row(r) for r in rows]
    if bundled := expanded_ids(out):  # a bundle's movement: how it was booked on its parts
        out = with_expansions(out, await booked.expansions(bundled))
    for found in await _writeoffs(db, location, sku, limit, before, after):  # a transfer closed short
        out.append(held.writeoff_ledger_row(held.transfer_row(found), found[held.TRANSFER_COLUMNS]))
    return keys.newest_first_after(out, after, limit)


async def _sku_events(
    db: Db, sku: str, page: tuple[str, tuple[Any, ...]] | None, before: int | None, limit: int
) -> list[Row]:
    """One SKU's newest events at every location, as ``ledger`` reads a location's: each location's by the
    ledger's (location, sku, order key) index, newest first and at most ``limit`` each, then the newest ``limit``
    of them all. The locations are the SKU's stock rows (every key with an event has one; ``stock_sku``). Without
    an index leading with the SKU (SQLite has none: one more index on every event written), a single query
    walked the whole ledger by time until it had a page of this SKU's; this reads what the SKU holds, with one
    statement per ``SKU_PLACES_PER_QUERY`` locations."""
    places = [r[0] for r in await db.fetch("SELECT location FROM stock WHERE sku = ? ORDER BY location", (sku,))]
    rows: list[Row] = []
    for i in range(0, len(places), SKU_PLACES_PER_QUERY):
        parts: list[str] = []
        params: list[Any] = []
        for place in places[i : i + SKU_PLACES_PER_QUERY]:
            w = Where().page(page).add("location = ?", place).add("sku = ?", sku).add("occurred_at < ?", before)
            parts.append(f"SELECT * FROM (SELECT * FROM events{w.sql} ORDER BY {NEWEST_FIRST} LIMIT ?) p{len(parts)}")
            params += [*w.params, limit]
        union = " UNION ALL ".join(parts)
        rows += await db.fetch(
            ledger_events_sql(f"(SELECT * FROM ({union}) u ORDER BY {NEWEST_FIRST} LIMIT ?)"), (*params, limit)
        )
    return rows


async def _writeoffs(
    db: Db, location: str | None, sku: str | None, limit: int, before: int | None, after: LedgerKey | None
) -> list[Row]:
    """The transfers closed short (each a ledger row of its own, ``hub.storage.held``), newest first."""

    def where() -> Where:
        return (
            Where("closed_at IS NOT NULL", "shipped > received + returned")
            .add("dest = ?", location)
            .add("sku = ?", sku)
            .add("closed_at < ?", before)
        )

    if after is None:
        wanted = [(where(), limit)]
    else:  # those stamped like the cursor's row may sort either side of it: read them all
        wanted = [
            (where().add("closed_at < ?", after.occurred_at), limit),
            (where().add("closed_at = ?", after.occurred_at), keys.TIES_MAX),
        ]
    rows: list[Row] = []
    for w, most in wanted:
        sql = f"SELECT {TRANSFER_FIELDS}, updated_at_ms FROM transfers{w.sql} ORDER BY closed_at DESC LIMIT ?"
        rows += await db.fetch(sql, (*w.params, most))
    return rows


async def set_safety_stock(db: Db, tx: IngestTx, location: str, sku: str, qty: int, now_ms: int) -> CountRow:
    """Inside a write transaction holding (location, sku): set its safety stock; the change feed shows a new
    ``available``, and the bundles made of it follow."""
    was = await db.fetchone(
        "SELECT on_hand, reserved, safety_stock FROM stock WHERE location = ? AND sku = ?", (location, sku)
    )
    stored = await db.fetchone(
        "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
        "VALUES (?, ?, 0, 0, 0, ?, ?) ON CONFLICT (location, sku) DO UPDATE SET "
        "safety_stock = excluded.safety_stock, updated_at_ms = excluded.updated_at_ms "
        f"RETURNING {COUNT_FIELDS}",
        (location, sku, qty, now_ms),
    )
    assert stored is not None  # an upsert returns its row
    row = count_row(stored)
    await tx.stock_stamped((location, sku), row.on_hand, now_ms)
    if available(*(was or (0, 0, 0))) != row.available:  # a new key starts at zero
        snapshot = CountSnapshot(location, sku, row.on_hand, row.reserved, row.available, row.in_transit)
        await tx.append_changes([NewChange(snapshot, ())], now_ms)
    await refresh_bundles(tx, [(location, sku)], now_ms)  # the bundles made of it
    return row
