"""Upgrading a hub database from the first schema to this one (SQLite); test_upgrade_postgres.py runs the same
scenario on PostgreSQL.

A version-1 database is written row by row as the first shelfsync left it — three credentials (an agent, a
reader, a revoked agent), an agent's mark, two events and the counts they made, a refused event — then opened by
this shelfsync: every migration runs in turn, and everything is still there and still works: credentials
authenticate (the revoked one does not), marks, ledger, counts and the refusal are kept, a resend is a duplicate,
new events apply on top, the change feed and the exceptions list answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.storage import SqliteHubStore
from hub.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, register_step_functions
from tests.hub.upgrade_scenario import LOCATION, V1Hub, check_upgraded, v1_hub, v1_rows

# --- SQLite ---------------------------------------------------------------------------


def _insert(conn: sqlite3.Connection, rows: dict[str, tuple[str, list[tuple[Any, ...]]]]) -> None:
    for table, (columns, values) in rows.items():
        marks = ", ".join("?" * len(values[0]))
        conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)


def _write_v1(db: Path, h: V1Hub) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(MIGRATIONS[1].read() + "\nPRAGMA user_version = 1;")
        _insert(conn, v1_rows(h))
        conn.commit()
    finally:
        conn.close()


def _user_version(db: Path) -> Sequence[Any]:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("PRAGMA user_version").fetchone()[0], conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def test_a_version_1_sqlite_hub_upgrades_to_the_current_schema_and_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    h = v1_hub()
    _write_v1(db, h)
    async with SqliteHubStore.open(db) as store:
        await check_upgraded(store, h, SCHEMA_VERSION)
    assert _user_version(db) == (SCHEMA_VERSION, "ok") and SCHEMA_VERSION == max(MIGRATIONS)
    async with SqliteHubStore.open(db) as store:  # opened again: nothing left to migrate, the data still there
        (row,) = await store.counts(location=LOCATION)
        assert row.on_hand == 1


async def test_each_intermediate_sqlite_version_upgrades_too(tmp_path: Path) -> None:
    """A hub stopped at any version in between (2 … current − 1) is brought forward the same way."""
    h = v1_hub()
    for version in range(2, SCHEMA_VERSION):
        db = tmp_path / f"hub-v{version}.db"
        _write_v1(db, h)
        conn = sqlite3.connect(db)
        register_step_functions(conn)  # as the hub's own migrate does
        try:
            for step in range(2, version + 1):
                conn.executescript(f"BEGIN;\n{MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
        finally:
            conn.close()
        assert _user_version(db)[0] == version
        async with SqliteHubStore.open(db) as store:
            await check_upgraded(store, h, SCHEMA_VERSION)
