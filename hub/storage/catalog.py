"""The catalog's reads and writes, and the events booked under unknown barcodes, in SQL both backends run.

The catalog's version is one row of ``meta``, read, raised and written back by
``put_catalog``: the store runs it under its catalog lock (one catalog writer
at a time across PostgreSQL hubs; SQLite has one writer anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.storage.base import Catalog, CatalogItem, CatalogUpdate
from hub.storage.db import Db, Row, in_lists, marks
from hub.storage.sql import ledger_events_sql
from protocol.catalog import unknown_sku

CATALOG_VERSION_KEY = "catalog_version"
CATALOG_LOCK = "catalog"  # the name of the lock ``put_catalog`` runs under
ITEM_FIELDS = "barcode, sku, pack_size, description"


async def catalog_version(db: Db) -> int:
    row = await db.fetchone("SELECT value FROM meta WHERE key = ?", (CATALOG_VERSION_KEY,))
    return 0 if row is None else int(row[0])


async def catalog(db: Db) -> Catalog:
    rows = await db.fetch(f"SELECT {ITEM_FIELDS} FROM catalog ORDER BY barcode")
    return Catalog(await catalog_version(db), tuple(CatalogItem(*r) for r in rows))


async def put_catalog(db: Db, items: Sequence[CatalogItem], now_ms: int) -> CatalogUpdate:
    stored: dict[str, CatalogItem] = {}
    for part in in_lists([i.barcode for i in items]):
        sql = f"SELECT {ITEM_FIELDS} FROM catalog WHERE barcode IN ({marks(len(part))})"
        stored.update((r[0], CatalogItem(*r)) for r in await db.fetch(sql, part))
    changed = [item for item in items if stored.get(item.barcode) != item]
    version = await catalog_version(db)
    if changed:
        await db.executemany(
            "INSERT INTO catalog (barcode, sku, pack_size, description, unknown_sku, updated_ms) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (barcode) DO UPDATE SET sku = excluded.sku, "
            "pack_size = excluded.pack_size, description = excluded.description, updated_ms = excluded.updated_ms",
            [(i.barcode, i.sku, i.pack_size, i.description, unknown_sku(i.barcode), now_ms) for i in changed],
        )
        version += 1
        await db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (CATALOG_VERSION_KEY, str(version)),
        )
    return CatalogUpdate(version, len(changed), tuple(i.barcode for i in changed))


async def unknown_event_rows(db: Db, skus: Sequence[str]) -> list[Row]:
    """Rows in the ledger's shape (``hub.storage.sql.ledger_events_sql``) of every event booked under one of
    ``skus``, in resolution order."""
    out: list[Row] = []
    for part in in_lists(list(dict.fromkeys(skus))):
        out += await db.fetch(
            ledger_events_sql(
                "(SELECT e.* FROM stock k JOIN events e ON e.location = k.location AND e.sku = k.sku "
                f"WHERE k.sku IN ({marks(len(part))}))"
            ),
            part,
        )
    out.sort(key=lambda r: (r[8], r[1], r[3], r[0]))
    return out
