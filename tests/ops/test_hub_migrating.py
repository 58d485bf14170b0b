"""A migration step that fails says, in one sentence, which step failed, that the database is still at the version
before it, and what to do.

A full disk in the middle of a step (SQLite) ended the hub with SQLite's words alone ("cannot open the hub database
…: database or disk is full"): nothing said the step was rolled back and the database still whole at the old
version, nor how much room the step needs. PostgreSQL's failed statement was said the same way.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg

from hub.storage.postgres import schema as postgres_schema
from hub.storage.sqlite import schema as sqlite_schema
from tests.harness.commands import hub_env, run_hub
from tests.harness.small_disk import fill
from tests.ops.held_migration import FAIL_ENV

LATEST = sqlite_schema.SCHEMA_VERSION
NAME = sqlite_schema.MIGRATIONS[LATEST].name
HELD = (sys.executable, str(Path(__file__).with_name("held_migration.py")))
PROBLEM = "application/problem+json"
ASK_TIMEOUT_S = 10.0
ISSUES = 1_000  # import issues in the full-disk test's database (480 KB): the step's -wal takes some 200 KB
ROOM_BYTES = 128 << 10  # left on the full disk: the -shm and the first pages of the -wal


def write_sqlite(db: Path, version: int) -> None:
    """A SQLite hub database at ``version``, in WAL mode, as that hub left it."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for step in range(1, version + 1):
            conn.executescript(
                f"BEGIN;\n{sqlite_schema.MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;"
            )
    finally:
        conn.close()


async def write_postgres(url: str, version: int) -> None:
    """The schema at ``version``, recorded as a hub of that version records it."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, version + 1):
            async with conn.transaction():
                await conn.execute(postgres_schema.MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
    finally:
        await conn.close()


def test_a_full_disk_mid_migration_says_the_database_is_still_at_the_old_version(small_disk: Path) -> None:
    """The step's new indexes over import issues need more room than the disk has left: the step is rolled back."""
    built = small_disk.parent / "built.db"  # made beside the small disk: its WAL and checkpoint need room
    write_sqlite(built, LATEST - 1)
    with sqlite3.connect(built) as conn:
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO import_issues SELECT 'agent-1', printf('%032d', x), printf('S%059d', x), 'sales.csv', x, "
            "'bad_qty', 'x', x FROM n", (ISSUES,),
        )  # fmt: skip
    conn.close()
    db = small_disk / "hub.db"
    shutil.copyfile(built, db)
    ballast = fill(small_disk)
    os.truncate(ballast, max(0, ballast.stat().st_size - ROOM_BYTES))  # room to open it, not for the step
    done = run_hub("serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0", env=hub_env())
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("shelfsync-hub: "), done.stderr
    assert f"schema version {LATEST} ({NAME})" in said and "disk is full" in said, said
    assert f"still at schema version {LATEST - 1}" in said and "free about" in said, said
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (LATEST - 1,)
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    conn.close()
    ballast.unlink()
    done = run_hub("init", "--db", str(db), env=hub_env())
    assert done.returncode == 0 and f"(schema version {LATEST})" in done.stdout, done.stderr


def test_a_failed_postgres_step_says_the_database_is_still_at_the_old_version(pg_url: str) -> None:
    """A statement of a step failing rolls the whole step back: the sentence says so, and which step it was."""
    asyncio.run(write_postgres(pg_url, LATEST - 1))
    done = subprocess.run(
        [*HELD, "-m", "hub", "init", "--db", pg_url], env=hub_env(**{FAIL_ENV: "1"}),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("shelfsync-hub: ") and "division by zero" in said, done.stderr
    assert f"schema version {LATEST} ({NAME}) failed" in said, said
    assert f"still at schema version {LATEST - 1}" in said, said

    async def version() -> int:
        conn = await asyncpg.connect(pg_url)
        try:
            return int(await conn.fetchval("SELECT max(version) FROM schema_migrations"))
        finally:
            await conn.close()

    assert asyncio.run(version()) == LATEST - 1
