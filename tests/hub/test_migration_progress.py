"""A hub migrating a big database says what it does and how far it is, before, during and after each step.

Migration 010 over 2,000,000 events takes tens of seconds to minutes (docs/operations.md, Upgrades), all of it
before the hub listens. It used to say nothing until the step was done, and ``init`` (the migration run by
hand) nothing at all: an operator could not tell a slow migration from a hung hub. A step is made slow here by
one statement added to the end of migration 010's script (a big ledger's stand-in), and the lines are read
from the log.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from hub.storage import SqliteHubStore
from hub.storage import migrations as migrations_module
from hub.storage.migrations import Migration
from hub.storage.postgres import PostgresHubStore
from hub.storage.postgres import schema as postgres_schema
from hub.storage.sqlite import schema as sqlite_schema

LATEST = sqlite_schema.SCHEMA_VERSION
# A statement taking a second or so in SQLite (a count of 1,000,000 numbers): far longer than the lines' pace here.
SQLITE_SLOW = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) SELECT count(*) FROM n;"
)
POSTGRES_SLOW = "SELECT pg_sleep(1);"
REPO = Path(__file__).resolve().parents[2]


def write_sqlite(db: Path, version: int) -> None:
    """A SQLite hub database at ``version``, as that hub left it."""
    conn = sqlite3.connect(db, isolation_level=None)
    sqlite_schema.register_step_functions(conn)
    try:
        for step in range(1, version + 1):
            conn.executescript(
                f"BEGIN;\n{sqlite_schema.MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;"
            )
    finally:
        conn.close()


def slowed(migrations: dict[int, Migration], monkeypatch: pytest.MonkeyPatch, slow: str) -> None:
    """The latest migration with a slow statement at its end, and progress lines 20 times a second."""
    latest = migrations[LATEST]
    script = latest.read() + "\n" + slow + "\n"
    monkeypatch.setitem(migrations, LATEST, Migration(latest.version, latest.name, lambda: script))
    monkeypatch.setattr(migrations_module, "MIGRATION_PROGRESS_S", 0.05, raising=False)


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hub.storage.migrations"]


def check_said(lines: list[str], where: str) -> None:
    """Before, during and after the step: what it does, how far it is (a statement of so many), how long it took."""
    name = sqlite_schema.MIGRATIONS[LATEST].name
    assert lines[0].startswith(f"Migrating the hub database {where} to schema version {LATEST} ({name})"), lines
    assert lines[-1].startswith(f"Migrated the hub database {where} to schema version {LATEST} ({name}) in "), lines
    still = lines[1:-1]
    assert still, lines
    assert all(
        line.startswith(f"Still migrating the hub database {where} to schema version {LATEST}") for line in still
    )
    assert all("s so far; the hub serves once the migration is done." in line for line in still), still


async def test_a_long_sqlite_migration_says_how_far_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "hub.db"
    write_sqlite(db, LATEST - 1)
    slowed(sqlite_schema.MIGRATIONS, monkeypatch, SQLITE_SLOW)
    caplog.set_level(logging.INFO, logger="hub.storage.migrations")
    async with SqliteHubStore.open(db) as store:
        assert (await store.health())["schema_version"] == LATEST
    lines = progress_lines(caplog)
    check_said(lines, str(db))
    statements = len(sqlite_schema.script_statements(sqlite_schema.MIGRATIONS[LATEST].read()))
    assert f"statement {statements} of {statements}, " in lines[-2], lines  # the slow one, the last


async def test_a_long_postgres_migration_says_how_far_it_is(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, LATEST):
            async with conn.transaction():
                await conn.execute(postgres_schema.MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
    finally:
        await conn.close()
    slowed(postgres_schema.MIGRATIONS, monkeypatch, POSTGRES_SLOW)
    caplog.set_level(logging.INFO, logger="hub.storage.migrations")
    async with PostgresHubStore.open(pg_url) as store:
        health = await store.health()
    assert health["schema_version"] == LATEST
    check_said(progress_lines(caplog), str(health["database"]))


def test_init_says_what_it_migrates(tmp_path: Path) -> None:
    """``init`` on a database of the previous version: the lines serve would log, on its stderr."""
    db = tmp_path / "hub.db"
    write_sqlite(db, LATEST - 1)
    done = subprocess.run(
        [sys.executable, "-m", "hub", "init", "--db", str(db)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = sqlite_schema.MIGRATIONS[LATEST].name
    assert f"Migrating the hub database {db} to schema version {LATEST} ({name})" in done.stderr
    assert f"Migrated the hub database {db} to schema version {LATEST} ({name}) in " in done.stderr
    assert done.stdout == f"the hub database {db} is ready (schema version {LATEST}).\n"


async def test_a_new_database_is_made_without_a_line_per_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database made from nothing takes its steps in a blink: "Opened the hub database (schema version N)"
    says what came of them, not two INFO lines for each of its steps (a new hub's log began with 22 of them)."""
    caplog.set_level(logging.INFO)
    async with SqliteHubStore.open(tmp_path / "hub.db") as store:
        assert (await store.health())["schema_version"] == LATEST
    assert progress_lines(caplog) == []
    assert any(f"(schema version {LATEST})" in r.getMessage() for r in caplog.records)
