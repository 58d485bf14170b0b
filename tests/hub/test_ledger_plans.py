"""One location's ledger is read by an index in the ledger's order: SQLite's plan of each statement of a page.

Found by a black-box attack: ``GET /v1/ledger?location=X`` had no index serving (location, order), so on SQLite
each page (and each page of its CSV export) read every event of the location and sorted them: 0.5-0.77 s a page at
200,000 events. The plans are SQLite's own words (EXPLAIN QUERY PLAN) on a hub's file as the hub leaves it (no
ANALYZE), not times. A PostgreSQL ledger is partitioned by location: its page reads one partition
(hub/storage/postgres/migrations/024_events_by_location_in_order.sql).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from hub import open_store
from hub.storage import stock
from hub.storage.keys import PART_EVENT, LedgerKey
from tests.hub.test_exception_plans import Statements

NOW_MS = time.time_ns() // 1_000_000


async def test_one_locations_ledger_is_read_by_an_index_in_its_order_on_sqlite(tmp_path: Path) -> None:
    """SQLite's plan of a location's ledger page (the first, after a cursor, before a time) sorts nothing: it read
    every event of the location and sorted them for each page (0.24 s a page at 160,000 events)."""
    db = tmp_path / "hub.db"
    async with open_store(db):
        pass  # the schema, migrated: a plan without statistics is the one a hub's file gets (it runs no ANALYZE)
    after = LedgerKey(NOW_MS << 16, "agent-x", 5, bytes(16), PART_EVENT)
    for location, sku, before, key in (
        ("WEB", None, None, None),
        ("WEB", None, None, after),
        ("WEB", None, NOW_MS << 16, None),
        ("WEB", "SKU-1", None, after),
    ):
        statements = Statements()
        await stock.ledger(statements, None, location, sku, 1001, before, key)  # type: ignore[arg-type]
        events_sql = [(sql, p) for sql, p in statements.seen if "FROM events" in sql]
        assert len(events_sql) == 1
        sql, params = events_sql[0]
        with sqlite3.connect(db) as conn:
            plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params))]
        assert not any("TEMP B-TREE" in line for line in plan), (location, sku, before, key, plan)
        assert any("SEARCH events USING INDEX" in line for line in plan), plan
