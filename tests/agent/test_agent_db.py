"""The one thread that owns an agent SQLite file: closing is safe twice, even at once, and final."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.db import SqliteThread

WAIT_S = 5.0


async def test_closing_twice_at_once_neither_hangs_nor_fails_and_later_work_is_refused(tmp_path: Path) -> None:
    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    assert await db.write(lambda conn: conn.execute("CREATE TABLE t (x)").rowcount) == -1
    await asyncio.wait_for(asyncio.gather(db.close(), db.close()), WAIT_S)
    await asyncio.wait_for(db.close(), WAIT_S)
    with pytest.raises(RuntimeError, match="is closed"):
        await asyncio.wait_for(db.read(lambda conn: 1), WAIT_S)


async def test_an_error_inside_a_write_rolls_it_back_and_reaches_the_caller(tmp_path: Path) -> None:
    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x)"))

    def half_then_fail(conn):  # type: ignore[no-untyped-def]
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await db.write(half_then_fail)
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    await db.close()
