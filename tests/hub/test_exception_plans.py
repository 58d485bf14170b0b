"""The exceptions list reads each source through an index in the list's order and stops at a page: SQLite's
query plan of each statement ``hub.storage.exceptions`` builds, on a hub seeded with every source's rows.

A chain's transfers (every one it ever made), its stock and its import issues grow without end; a statement that
scans one of them, or sorts all of its rows for the page, reads a whole table on every page the dashboard asks
for (every 15 s), with a filter or without. The plans are SQLite's own words (EXPLAIN QUERY PLAN), not times.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hub import open_store
from hub.storage import exceptions
from hub.storage.keys import ExceptionFilter, ExceptionKey
from tests.hub.test_paging import NOW_MS, exception_burst

FILTERS = (
    ExceptionFilter(),
    ExceptionFilter(location="S002"),
    ExceptionFilter(kind="transfer_short"),
    ExceptionFilter(kind="transfer_misdirected", location="S003"),
    ExceptionFilter(since_ms=NOW_MS - 3_600_000),
    ExceptionFilter(location="S001", since_ms=NOW_MS - 3_600_000),
    ExceptionFilter(kind="import_quarantine", location="S001"),
    ExceptionFilter(kind="unknown_barcode"),
)
AFTER = (
    None,
    ExceptionKey(NOW_MS, "transfer", ("T3", "SKU-T003")),
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
                    assert any("transfers_finding" in line or "transfers_misdirected" in line for line in plan), where
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
