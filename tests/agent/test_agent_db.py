"""The one thread that owns an agent SQLite file: closing is safe twice, even at once, and final."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

import agent.db as agent_db
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


def _where(conn: object) -> int:
    import threading

    return threading.get_ident()


async def test_a_small_write_runs_inline_once_commits_are_fast_and_big_ones_on_the_thread(tmp_path: Path) -> None:
    import threading

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    here = threading.get_ident()
    # no commit measured yet: even a small write goes through the thread
    assert await db.write(lambda conn: (conn.execute("CREATE TABLE t (x)"), _where(conn))[1], small=True) != here
    if db._commit_s is None or db._commit_s >= agent_db.INLINE_COMMIT_MAX_S:
        db._commit_s = agent_db.INLINE_COMMIT_MAX_S / 10  # a disk as fast as the module expects
    assert await db.write(lambda conn: (conn.execute("INSERT INTO t VALUES (1)"), _where(conn))[1], small=True) == here
    assert await db.write(lambda conn: (conn.execute("INSERT INTO t VALUES (2)"), _where(conn))[1]) != here
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
    await db.close()


async def test_on_a_slow_disk_small_writes_go_through_the_thread(tmp_path: Path) -> None:
    import threading

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
    db._commit_s = agent_db.INLINE_COMMIT_MAX_S * 5  # recent commits took 5 ms
    assert await db.write(lambda conn: (conn.execute("INSERT INTO t VALUES (1)"), _where(conn))[1], small=True) != (
        threading.get_ident()
    )
    await db.close()


async def test_a_small_write_never_overtakes_work_already_handed_to_the_thread(tmp_path: Path) -> None:
    import time

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, tag)"))
    db._commit_s = agent_db.INLINE_COMMIT_MAX_S / 10

    def slow_first(conn):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        conn.execute("INSERT INTO t (tag) VALUES ('first')")

    first = asyncio.ensure_future(db.write(slow_first))
    await asyncio.sleep(0)  # handed to the thread, still running
    second = db.write(lambda conn: conn.execute("INSERT INTO t (tag) VALUES ('second')"), small=True)
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    tags = await db.read(lambda conn: [r[0] for r in conn.execute("SELECT tag FROM t ORDER BY n")])
    assert tags == ["first", "second"]
    await db.close()


async def test_the_thread_checkpoints_the_wal_after_enough_rows_and_sqlite_never_does_it_inline(tmp_path: Path) -> None:
    import sqlite3
    import threading

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    assert await db.read(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    ran_on: list[int] = []
    checkpoint = db._checkpoint

    def counted() -> None:
        ran_on.append(threading.get_ident())
        checkpoint()

    db._checkpoint = counted  # type: ignore[method-assign]
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
    await db.write(lambda conn: conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)]))
    assert ran_on == []  # 10 rows: not yet
    rows = agent_db.CHECKPOINT_ROWS
    await db.write(lambda conn: conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)]))
    await db.read(lambda conn: None)  # the checkpoint was queued behind the write: this waits for it
    assert len(ran_on) == 1 and ran_on[0] != threading.get_ident()
    with sqlite3.connect(tmp_path / "x.sqlite3") as other:
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == rows + 10
        assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    await db.close()


async def test_a_small_write_waits_for_another_process_s_write_lock_on_the_thread_not_the_loop(tmp_path: Path) -> None:
    import sqlite3
    import threading
    import time

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
    db._commit_s = agent_db.INLINE_COMMIT_MAX_S / 10
    other = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing, e.g. `shelfsync-agent record`
    here = threading.get_ident()
    write = asyncio.ensure_future(
        db.write(lambda conn: (conn.execute("INSERT INTO t VALUES (1)"), _where(conn))[1], small=True)
    )
    started = time.perf_counter()
    await asyncio.sleep(0.2)  # the loop keeps running while the write waits for the lock
    assert time.perf_counter() - started < 1.0 and not write.done()
    other.execute("COMMIT")
    other.close()
    assert await asyncio.wait_for(write, WAIT_S) != here  # it went to the thread
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    assert await db.read(lambda conn: conn.execute("PRAGMA busy_timeout").fetchone()[0]) == agent_db.BUSY_TIMEOUT_MS
    await db.close()


async def test_writes_queued_behind_a_slow_commit_share_one_transaction_and_a_failing_one_undoes_only_itself(
    tmp_path: Path,
) -> None:
    """Group commit on a slow disk: writes that queued while the thread was busy commit together (one flush),
    each caller hears its own outcome after that commit, and a write that fails undoes only its own rows."""
    import threading

    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    commits: list[str] = []
    await db.write(lambda conn: conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None))
    release = threading.Event()

    def busy(conn):  # type: ignore[no-untyped-def]  # a commit that takes long: the others queue behind it
        release.wait(WAIT_S)
        conn.execute("INSERT INTO t VALUES (0)")

    def insert(x: int):  # type: ignore[no-untyped-def]
        def work(conn):  # type: ignore[no-untyped-def]
            conn.execute("INSERT INTO t VALUES (?)", (x,))
            if x == 5:
                conn.execute("INSERT INTO t VALUES (?)", (50,))
                raise ValueError("write 5 fails after two rows")
            return x

        return work

    commits.clear()
    first = asyncio.ensure_future(db.write(busy))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(db.write(insert(x))) for x in range(1, 11)]
    await asyncio.sleep(0.05)
    assert not any(q.done() for q in queued), "nobody hears back before the commit"
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), WAIT_S)
    assert outcomes[0] is None
    assert outcomes[1:5] == [1, 2, 3, 4] and outcomes[6:] == [6, 7, 8, 9, 10]
    assert isinstance(outcomes[5], ValueError)
    assert len(commits) == 2, commits  # the slow one, then the ten queued behind it together
    rows = await db.read(lambda conn: [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")])
    assert rows == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # write 5 left nothing behind
    await db.close()


async def test_a_write_the_full_disk_refuses_says_the_disk_is_full_and_the_next_one_commits_once_there_is_room(
    tmp_path: Path,
) -> None:
    # SQLite rolls a transaction back by itself when a statement meets a full disk (SQLITE_FULL); the ROLLBACK
    # after it failed ("cannot rollback - no transaction is active") and hid the disk's answer from the caller.
    db = SqliteThread(tmp_path / "x.sqlite3", "full")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x BLOB)"))
    pages = await db.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await db.outside_transaction(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))  # no more room

    def grow(conn):  # type: ignore[no-untyped-def]
        conn.execute("INSERT INTO t VALUES (zeroblob(8192))")  # needs new pages

    for small in (False, True):
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full") as refused:
            await db.write(grow, small=small)
        assert refused.value.sqlite_errorname == "SQLITE_FULL"
    refusals = await asyncio.gather(*(db.write(grow) for _ in range(3)), return_exceptions=True)
    assert [str(err) for err in refusals] == ["database or disk is full"] * 3

    await db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))  # room again
    await db.write(grow)
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    await db.close()


async def test_the_wal_is_cut_back_to_its_limit_after_a_checkpoint_however_many_commits_grew_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each single-row commit appends its pages to the WAL; the thread copies them back every CHECKPOINT_ROWS rows,
    # and without a limit the file stayed at its high-water mark for ever (tens of MB for the outbox).
    monkeypatch.setattr(agent_db, "WAL_KEEP_BYTES", 64 << 10, raising=False)
    path = tmp_path / "x.sqlite3"
    db = SqliteThread(path, "normal")
    await db.connect()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (x BLOB)"))
    for _ in range(agent_db.CHECKPOINT_ROWS):
        await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (randomblob(600))"))
    grown = os.stat(f"{path}-wal").st_size
    assert grown > 4 * (64 << 10)  # what the thread's checkpoint has to copy back
    await db.read(lambda conn: None)  # the checkpoint queued after the last write has run
    await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))  # starts the WAL again from its beginning
    assert os.stat(f"{path}-wal").st_size <= 64 << 10
    assert (
        await db.read(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == agent_db.CHECKPOINT_ROWS + 1
    )
    await db.close()
