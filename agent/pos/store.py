"""The POS import's own SQLite file: imports done, rows quarantined, stock observations.

It sits beside the outbox (``pos-import.sqlite``) rather than inside it: the
outbox file has one owner and one writer (``agent.outbox``), and nothing here
needs to commit in the same transaction as the movements. Every write here is
idempotent instead — a quarantined row is keyed by (file digest, line), an
observation by (system, location, sku, time) — so a crash between the outbox
commit and this one is repaired by importing the file again, which the watcher
does because the file is only moved once both are committed. An import's
checkpoint (``checkpoints``, ``checkpoint_counts``) is written with the
batch's quarantined rows and observations, after the batch's movements are
committed: never ahead of the outbox, so an import interrupted goes on from
it (agent.pos.importer). An import of the drop folder keeps its checkpoint when
it ends, while the watcher watches the copy it filed (``filed_watch``): rows a
till appends there are read from where that import ended.

The counts take ~20 bytes a row while an import runs; one that ends keeps a
summary of them (agent.pos.occurrences, ~5.3 bytes a row), written in parts and
made its checkpoint's in one transaction. The WAL is copied back whenever a
write leaves it past ``WAL_LIMIT_BYTES`` (agent.db), and deletes do not write
over the pages they free. The file is made with
``auto_vacuum = INCREMENTAL`` (a file made before is rewritten once, ``VACUUM``,
when opened), and once counts are dropped their pages are given back to the
disk and the WAL is truncated: the file does not stay the size of the largest
import it ever held.

Same shape as the outbox: one connection on one thread (``agent.db``), WAL,
each write one ``BEGIN IMMEDIATE … COMMIT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.db import Opening, SqliteFile, SqliteThread
from agent.lock import lock_held
from agent.outbox import write_failure
from agent.pos.errors import PosImportError, PosStoreClosed
from agent.pos.model import CutRow, ImportReport, Observation, Quarantined, QuarantineEntry
from agent.pos.source import FileScan, Position
from protocol import wall_ms_now
from protocol.values import shown

T = TypeVar("T")
SCHEMA_VERSION = 1
FINISHED = ("imported", "quarantined")  # the statuses of an import that ended and may keep its checkpoint
_FINISHED_SQL = "('imported', 'quarantined')"
# Room the one-time rewrite of a store from an older agent leaves on its disk, beyond what it writes: the outbox
# beside it goes on writing meanwhile. (A new store is rewritten too, at its first open: a few pages.)
REWRITE_MARGIN_BYTES = 1 << 20
# The WAL is copied back into the file whenever a write leaves it larger than this, and cut back to it (agent.db):
# a checkpoint's packed counts are a few rows of many pages, which the outbox's count of changed rows never reached.
WAL_LIMIT_BYTES = 4 << 20
GIVE_BACK_MIN_BYTES = 1 << 20  # packs of counts a summary replaced whose space is given back to the disk at once
SUMMARY_PART_BYTES = 1 << 20  # a summary of counts is written in parts of this size, one transaction each
VACUUM_STEP_PAGES = 256  # free pages given back to the disk a transaction, the WAL copied back between them
_PAGES = ("page_size", "page_count", "freelist_count")

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS imports (
        id          INTEGER PRIMARY KEY,
        file_name   TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        size_bytes  INTEGER NOT NULL,
        encoding    TEXT NOT NULL,
        profile     TEXT NOT NULL,
        status      TEXT NOT NULL,
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER,
        rows_read   INTEGER NOT NULL DEFAULT 0,
        imported    INTEGER NOT NULL DEFAULT 0,
        duplicates  INTEGER NOT NULL DEFAULT 0,
        observations INTEGER NOT NULL DEFAULT 0,
        observation_duplicates INTEGER NOT NULL DEFAULT 0,
        skipped     INTEGER NOT NULL DEFAULT 0,
        quarantined INTEGER NOT NULL DEFAULT 0,
        error       TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id          INTEGER PRIMARY KEY,
        import_id   INTEGER NOT NULL REFERENCES imports (id),
        file_name   TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        line        INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        raw         TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        UNIQUE (sha256, line)
    )""",
    """CREATE TABLE IF NOT EXISTS observations (
        id             INTEGER PRIMARY KEY,
        system         TEXT NOT NULL,
        location       TEXT NOT NULL,
        sku            TEXT NOT NULL,
        on_hand        INTEGER NOT NULL,
        observed_at_ms INTEGER NOT NULL,
        source_file    TEXT NOT NULL,
        stored_ms      INTEGER NOT NULL,
        sent_ms        INTEGER,
        UNIQUE (system, location, sku, observed_at_ms)
    )""",
    "CREATE INDEX IF NOT EXISTS observations_unsent ON observations (id) WHERE sent_ms IS NULL",
    # an import's content looked up by each import (``first_dated``)
    "CREATE INDEX IF NOT EXISTS imports_by_sha256 ON imports (sha256)",
    # A report the disk refused to write beside its filed export (agent.pos.watcher): written at the next start
    # too, not only while this agent runs. Added without a schema version: an older agent ignores the table.
    # How far an import durably got (agent.pos.importer): an agent killed in the middle of a long export goes on
    # from there. Written in the transaction that stores the batch's quarantined rows and observations, after the
    # batch's movements are committed to the outbox, so it is never ahead of what is recorded. Kept until the
    # import ends. Added without a schema version, like reports_owed: an older agent ignores both tables.
    """CREATE TABLE IF NOT EXISTS checkpoints (
        import_id     INTEGER PRIMARY KEY REFERENCES imports (id),
        file_name     TEXT NOT NULL,
        encoding      TEXT NOT NULL,
        profile       TEXT NOT NULL,
        position      TEXT NOT NULL,
        line          INTEGER NOT NULL,
        hashed        INTEGER NOT NULL,
        prefix_sha256 TEXT NOT NULL,
        state         TEXT NOT NULL,
        at_ms         INTEGER NOT NULL,
        counts_of     INTEGER
    )""",
    # The file's occurrence counts up to its checkpoint (agent.pos.occurrences), a pack per batch, in order, or a
    # summary of them in parts and the packs after it; kept under ``checkpoints.counts_of`` (``_counts_key``).
    "CREATE TABLE IF NOT EXISTS checkpoint_counts (import_id INTEGER NOT NULL, packed BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS checkpoint_counts_by_import ON checkpoint_counts (import_id)",
    """CREATE TABLE IF NOT EXISTS reports_owed (
        dest   TEXT PRIMARY KEY,
        report TEXT NOT NULL,
        at_ms  INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # The exports the drop folder's watcher filed and still watches for a writer that was not done with them
    # (agent.pos.watcher): watched again after a restart. ``import_id``: the import whose checkpoint an import of
    # what is appended goes on from. Added without a schema version: an older agent ignores the table.
    """CREATE TABLE IF NOT EXISTS filed_watch (
        dest      TEXT PRIMARY KEY,
        file_name TEXT NOT NULL,
        import_id INTEGER,
        dev       INTEGER NOT NULL,
        ino       INTEGER NOT NULL,
        size      INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        until_ms  INTEGER NOT NULL,
        digests   TEXT NOT NULL,
        cuts      TEXT NOT NULL,
        at_ms     INTEGER NOT NULL,
        head      TEXT,
        ctime_ns  INTEGER
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far an import durably got: where its next row begins in the file, what the file was read as, and
    ``state`` (JSON): its counts so far and what its rows' mapping keeps from row to row."""

    import_id: int
    encoding: str
    profile: str
    position: Position
    state: dict[str, Any]
    held: bool = False  # its import read the complete rows and held a last line without a line break
    finished: bool = False  # its import ended; kept for the copy it filed, which a till may write on


@dataclass(frozen=True, slots=True)
class FiledWatch:
    """A filed export the watcher watches (agent.pos.watcher), as kept across a restart."""

    dest: str  # where it is filed
    file_name: str  # its name in the drop folder
    import_id: int | None  # the import whose checkpoint the next import of it goes on from
    dev: int
    ino: int
    size: int
    mtime_ns: int
    until_ms: int  # wall-clock ms when it is forgotten unless it changed
    digests: tuple[str, ...]
    cuts: tuple[CutRow, ...]
    head: str | None = None  # the digest of its first bytes (agent.pos.watcher): another file with its inode, size
    # and time is told from it
    ctime_ns: int | None = None  # its inode's change time (POSIX): a write in place keeping its size and time moves it


@dataclass(frozen=True, slots=True)
class FirstDated:
    """The first import of a content whose rows without a time of their own were dated by the file's time."""

    import_id: int
    file_name: str
    file_time_ms: int


_COUNTS = ("rows_read", "imported", "duplicates", "observations", "observation_duplicates", "skipped", "quarantined")


class PosStore(SqliteFile):
    """Durable records of the POS import. Use ``PosStore.open``."""

    def __init__(self, db: SqliteThread, *, wall_clock_ms: Callable[[], int]) -> None:
        super().__init__(db)
        self._wall_clock_ms = wall_clock_ms

    @classmethod
    def open(cls, path: str | Path, *, wall_clock_ms: Callable[[], int] | None = None) -> Opening[PosStore]:
        """Open (or create) the store at ``path``."""
        return Opening(lambda: cls._open(Path(path), wall_clock_ms or wall_ms_now))

    @classmethod
    async def _open(cls, path: Path, wall_clock_ms: Callable[[], int]) -> PosStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = cls(SqliteThread(path, "full", wal_limit_bytes=WAL_LIMIT_BYTES), wall_clock_ms=wall_clock_ms)
        await opened._start(opened._init)
        await opened._outside_transaction(opened._incremental)
        return opened

    @classmethod
    def _incremental(cls, conn: sqlite3.Connection) -> None:
        """Make the file one that can give free pages back (``auto_vacuum``, set only by rewriting it, once), and
        give back what is free (the counts of checkpoints ``_init`` dropped)."""
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        try:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                # VACUUM writes the whole file again through the WAL beside it (and a copy in the temporary folder,
                # often the same disk). Begun without room, it failed with the WAL grown to the disk's last byte,
                # and that WAL stayed while the agent ran: the outbox beside it could not write.
                page, pages, free_pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in _PAGES)
                needed = 2 * (pages - free_pages) * page + REWRITE_MARGIN_BYTES
                free = shutil.disk_usage(Path(path).parent).free
                if free < needed:
                    log.warning(
                        "The POS store %s is not rewritten to give free space back to the disk: the disk has %s "
                        "free and the rewrite needs %s; it works as it is, and is rewritten at a start with room.",
                        path, _size(free), _size(needed),
                    )  # fmt: skip
                    return
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("VACUUM")
            cls._give_back(conn)
        except (sqlite3.Error, OSError) as err:  # the disk filled meanwhile: it works as it is
            log.warning(
                "The POS store %s could not be rewritten to give its free space back to the disk (%s); it works as "
                "it is.",
                path, err,
            )  # fmt: skip

    @classmethod
    def _give_back(cls, conn: sqlite3.Connection) -> None:
        """Give the free pages back to the disk, and truncate the WAL they went through: ``VACUUM_STEP_PAGES`` a
        transaction, the WAL copied back after each (in one, the pages moved to fill 20 MB freed went through a WAL
        of 18 MB)."""
        while cls._vacuum_step(conn):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @staticmethod
    def _vacuum_step(conn: sqlite3.Connection) -> bool:
        """Give up to ``VACUUM_STEP_PAGES`` free pages back to the disk, in one transaction; whether any are left.
        (``executescript``: run from Python by ``execute``, ``PRAGMA incremental_vacuum`` frees one page.)"""
        conn.executescript(f"PRAGMA incremental_vacuum({int(VACUUM_STEP_PAGES)});")
        return bool(conn.execute("PRAGMA freelist_count").fetchone()[0])

    async def _space_back(self) -> None:
        """After counts were dropped: their space back to the disk. Only a smaller file is at stake: said, not raised."""
        try:
            await self._outside_transaction(self._give_back)
        except PosImportError as err:
            log.warning("The POS store could not give the space of dropped checkpoints back to the disk: %s", err)

    def _init(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise PosImportError(f"{self.path} was written by a newer shelfsync (schema {row[0]}); upgrade this agent")
        # Quarantined rows are reported to the hub (agent.reports); files from before that gain the column.
        if "sent_ms" not in {r[1] for r in conn.execute("PRAGMA table_info(quarantine)")}:
            conn.execute("ALTER TABLE quarantine ADD COLUMN sent_ms INTEGER")
        conn.execute("CREATE INDEX IF NOT EXISTS quarantine_unsent ON quarantine (id) WHERE sent_ms IS NULL")
        # An import names the lock its process holds while it runs (``owner``): a ``running`` row whose lock
        # nobody holds is an import its process never finished (killed, or the computer went down).
        if "owner" not in {r[1] for r in conn.execute("PRAGMA table_info(imports)")}:
            conn.execute("ALTER TABLE imports ADD COLUMN owner TEXT")
        # The time its rows without one were dated by (``first_dated``): a copy of the same content keeps it.
        if "file_time_ms" not in {r[1] for r in conn.execute("PRAGMA table_info(imports)")}:
            conn.execute("ALTER TABLE imports ADD COLUMN file_time_ms INTEGER")
        # The key a checkpoint's occurrence counts are kept under (``_counts_key``); a row from before: its import.
        if "counts_of" not in {r[1] for r in conn.execute("PRAGMA table_info(checkpoints)")}:
            conn.execute("ALTER TABLE checkpoints ADD COLUMN counts_of INTEGER")
        # The digest of a watched copy's first bytes (``FiledWatch.head``); a row from before has none.
        if "head" not in {r[1] for r in conn.execute("PRAGMA table_info(filed_watch)")}:
            conn.execute("ALTER TABLE filed_watch ADD COLUMN head TEXT")
        # Its inode's change time (``FiledWatch.ctime_ns``); a row from before has none (its content is compared).
        if "ctime_ns" not in {r[1] for r in conn.execute("PRAGMA table_info(filed_watch)")}:
            conn.execute("ALTER TABLE filed_watch ADD COLUMN ctime_ns INTEGER")
        # The checkpoints of ended imports are kept for the copies the watcher watches; any other (its watch
        # ended while the agent stopped before it could drop it) is dropped.
        orphans = [
            i for (i,) in conn.execute(
                "SELECT c.import_id FROM checkpoints c JOIN imports i ON i.id = c.import_id"
                f" WHERE i.status IN {_FINISHED_SQL} AND c.import_id NOT IN"
                " (SELECT import_id FROM filed_watch WHERE import_id IS NOT NULL)"
            )
        ]  # fmt: skip
        for orphan in orphans:
            self._drop_checkpoint(conn, orphan)
        # counts no checkpoint keeps: the parts of a summary written ahead by an import that stopped before it kept
        # them (add_batch)
        conn.execute(
            "DELETE FROM checkpoint_counts WHERE import_id NOT IN"
            " (SELECT coalesce(counts_of, import_id) FROM checkpoints)"
        )

    @staticmethod
    def _counts_key(conn: sqlite3.Connection, import_id: int) -> int:
        """The key the occurrence counts of ``import_id``'s checkpoint are kept under in ``checkpoint_counts``: the
        import that wrote the first of them (an import that goes on from a checkpoint adds its packs there), or the
        parts of its summary. Rows are never moved from one key to another: SQLite may write a row of a megabyte
        whole again, through the WAL, when its key changes size (1 is stored in no byte, -1 in one)."""
        row = conn.execute(
            "SELECT coalesce(counts_of, import_id) FROM checkpoints WHERE import_id = ?", (import_id,)
        ).fetchone()
        return import_id if row is None else int(row[0])

    @classmethod
    def _drop_checkpoint(cls, conn: sqlite3.Connection, import_id: int) -> int:
        """Drop the checkpoint of ``import_id`` and its counts; how many packs of counts went (their space is free)."""
        key = cls._counts_key(conn, import_id)
        conn.execute("DELETE FROM checkpoints WHERE import_id = ?", (import_id,))
        return conn.execute("DELETE FROM checkpoint_counts WHERE import_id = ?", (key,)).rowcount

    def _not_usable(self, err: sqlite3.DatabaseError) -> Exception:
        return PosImportError(f"{self.path} is not a usable POS import store: {err}")

    def _closed_error(self) -> Exception:
        return PosStoreClosed(self.path)

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        # A full disk says so and what to do, as the outbox's does: SQLite's "database or disk is full" alone did not.
        detail = (
            write_failure(err, "import it again (the drop folder's are, by themselves)") if verb == "written" else err
        )
        return PosImportError(f"the POS import store {self.path} could not be {verb}: {detail}")

    # --- imports ----------------------------------------------------------------
    async def begin_import(
        self, scan: FileScan, file_name: str, profile: str, *, owner: str | None = None, file_time_ms: int | None = None
    ) -> int:
        """A new ``running`` import; ``owner`` names the lock its process holds until it ends (``ImportOwner``);
        ``file_time_ms``: the time its rows that carry none are dated by (``first_dated``)."""
        now_ms = self._wall_clock_ms()

        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO imports (file_name, sha256, size_bytes, encoding, profile, status, started_ms, owner,"
                " file_time_ms) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (file_name, scan.sha256, scan.size_bytes, scan.encoding, profile, now_ms, owner, file_time_ms),
            )
            return int(cur.lastrowid or 0)

        return await self._write(insert)

    async def first_dated(self, sha256: str) -> FirstDated | None:
        """The first import of a file with this content that dated rows by the file's time (and did not fail), or
        None: a copy of it, whatever its name and time, dates them as that import did (agent.pos.importer)."""

        def select(conn: sqlite3.Connection) -> FirstDated | None:
            row = conn.execute(
                "SELECT id, file_name, file_time_ms FROM imports WHERE sha256 = ? AND file_time_ms IS NOT NULL"
                " AND status != 'failed' ORDER BY id LIMIT 1",
                (sha256,),
            ).fetchone()
            if row is not None:
                return FirstDated(int(row[0]), str(row[1]), int(row[2]))
            # An import by an agent from before ``file_time_ms`` was kept: the time the observations it stored
            # carry, when they all carry one (a file dated by its time; rows with their own are not told apart).
            legacy = conn.execute(
                "SELECT id, file_name, started_ms, finished_ms FROM imports WHERE sha256 = ? AND file_time_ms IS NULL"
                " AND status != 'failed' AND observations > 0 AND finished_ms IS NOT NULL ORDER BY id",
                (sha256,),
            ).fetchall()
            for import_id, file_name, started_ms, finished_ms in legacy:
                low, high = conn.execute(
                    "SELECT min(observed_at_ms), max(observed_at_ms) FROM observations WHERE source_file = ?"
                    " AND stored_ms BETWEEN ? AND ?",
                    (shown(file_name, bare=True), started_ms, finished_ms),
                ).fetchone()
                if low is not None and low == high:
                    return FirstDated(int(import_id), str(file_name), int(low))
            return None

        return await self._read(select)

    def owner_lock(self, owner: str) -> Path:
        """The lock file an import's process holds while it runs, beside the store."""
        return Path(f"{self.path}.import-{owner}.lock")

    async def mark_interrupted(self) -> int:
        """Mark ``interrupted`` every ``running`` import whose process is gone (nobody holds its lock); how many.

        Their checkpoints stay: the next import of the same file goes on from there."""
        query = "SELECT id, owner FROM imports WHERE status = 'running'"
        rows = await self._read(lambda conn: conn.execute(query).fetchall())
        gone = [(int(i), owner) for i, owner in rows if owner is None or not lock_held(self.owner_lock(str(owner)))]
        if not gone:
            return 0
        now_ms = self._wall_clock_ms()

        def mark(conn: sqlite3.Connection) -> int:
            changed = 0
            for import_id, _ in gone:
                line = conn.execute("SELECT line FROM checkpoints WHERE import_id = ?", (import_id,)).fetchone()
                where = f"after line {line[0]:,}" if line else "before its first batch was recorded"
                error = f"interrupted {where}: the agent stopped, or its computer, before the import ended"
                changed += conn.execute(
                    "UPDATE imports SET status = 'interrupted', finished_ms = ?, error = ? WHERE id = ? AND status = 'running'",
                    (now_ms, error, import_id),
                ).rowcount
            return changed

        changed = await self._write(mark)
        for _, owner in gone:
            if owner is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.owner_lock(str(owner)))
        return changed

    async def checkpoint_of(self, file_name: str) -> Checkpoint | None:
        """The newest checkpoint of an interrupted import of ``file_name``, if any."""

        def read(conn: sqlite3.Connection) -> Checkpoint | None:
            row = conn.execute(
                CHECKPOINT_SELECT
                + " WHERE c.file_name = ? AND i.status IN ('interrupted', 'held') ORDER BY c.import_id DESC LIMIT 1",
                (file_name,),
            ).fetchone()
            if row is None:
                return None
            return _checkpoint(*row)

        return await self._read(read)

    async def checkpoint_after(self, import_id: int, file_name: str) -> Checkpoint | None:
        """The checkpoint to go on from when the file ``import_id`` imported (and filed) was written on since: the
        one it kept when it ended, or that of a later import of the file that went on from it and was interrupted."""

        def read(conn: sqlite3.Connection) -> Checkpoint | None:
            rows = conn.execute(
                CHECKPOINT_SELECT
                + " WHERE c.file_name = ? AND c.import_id >= ? AND i.status <> 'running' ORDER BY c.import_id DESC",
                (file_name, import_id),
            )
            for row in rows:
                checkpoint = _checkpoint(*row)
                if checkpoint.import_id == import_id or import_id in checkpoint.state.get("lineage", ()):
                    return checkpoint
            return None

        return await self._read(read)

    async def take_over(self, old_id: int, new_id: int, why: str) -> bytes | None:
        """Import ``new_id`` goes on from ``old_id``'s checkpoint: the old one is marked ``resumed`` (with ``why``)
        and its checkpoint and occurrence counts become the new one's, which they are returned (packed, in order).
        None when another import took it over first."""

        def take(conn: sqlite3.Connection) -> bytes | None:
            moved = conn.execute(
                "UPDATE checkpoints SET import_id = ?, counts_of = coalesce(counts_of, import_id) WHERE import_id = ?",
                (new_id, old_id),
            )
            if not moved.rowcount:
                return None
            # an import that ended keeps its status: the checkpoint it kept for its filed copy moves on
            conn.execute(
                "UPDATE imports SET status = 'resumed', error = ? WHERE id = ? AND status IN ('interrupted', 'held')",
                (why, old_id),
            )
            key = self._counts_key(conn, new_id)
            packs = conn.execute("SELECT packed FROM checkpoint_counts WHERE import_id = ? ORDER BY rowid", (key,))
            return b"".join(bytes(p) for (p,) in packs)

        return await self._write(take)

    async def forget_checkpoint(self, import_id: int, *, why: str | None = None) -> None:
        """The checkpoint of ``import_id`` is of no more use (the file changed: ``why``, said in its import's row)."""

        def forget(conn: sqlite3.Connection) -> int:
            if why is not None:
                conn.execute("UPDATE imports SET error = ? WHERE id = ?", (why, import_id))
            return self._drop_checkpoint(conn, import_id)

        if await self._write(forget):
            await self._space_back()

    async def lineage_quarantine(self, import_ids: Sequence[int], limit: int) -> list[Quarantined]:
        """The first ``limit`` rows quarantined by these imports (the parts of one resumed import), by line."""
        marks = ",".join("?" * len(import_ids))
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT line, reason, raw FROM quarantine WHERE import_id IN ({marks}) ORDER BY line LIMIT ?",
                (*import_ids, limit),
            ).fetchall()
        )
        return [Quarantined(int(line), str(reason), str(raw)) for line, reason, raw in rows]

    async def add_batch(
        self,
        import_id: int,
        file_name: str,
        sha256: str,
        quarantined: Sequence[Quarantined],
        observations: Sequence[Observation],
        *,
        seen_under: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
        counts: bytes = b"",
        replace_counts: bool = False,
    ) -> tuple[int, int]:
        """One batch's observations and quarantined rows, and the import's checkpoint after it, in one transaction
        (the batch's movements are in the outbox already); returns (observations new, already stored).
        ``replace_counts``: ``counts`` (a summary, agent.pos.occurrences) replaces the packs kept so far, whose
        space is given back. It is written ahead in parts (``SUMMARY_PART_BYTES``), one transaction each, under the
        import's id negated, so that the WAL is copied back between them (5 MB at 1,000,000 rows in one transaction
        went past its bound); the transaction of the checkpoint makes them its counts (``_counts_key``), in place of
        the packs, at once. Parts a crash left are dropped at the next start. (An import writes one summary, at
        its end.)"""
        now_ms = self._wall_clock_ms()
        ahead = -import_id
        summary = counts if replace_counts else b""
        if summary:
            for at in range(0, len(counts), SUMMARY_PART_BYTES):
                part = counts[at : at + SUMMARY_PART_BYTES]

                def write_part(conn: sqlite3.Connection, part: bytes = part, first: bool = at == 0) -> None:
                    if first:  # what an attempt that failed half-way left
                        conn.execute("DELETE FROM checkpoint_counts WHERE import_id = ?", (ahead,))
                    conn.execute("INSERT INTO checkpoint_counts (import_id, packed) VALUES (?, ?)", (ahead, part))

                await self._write(write_part)
            counts = b""

        replaced = 0  # bytes of packs the summary replaced

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            nonlocal replaced
            obs = self._insert_observations(conn, observations, now_ms)
            self._insert_quarantine(conn, import_id, file_name, sha256, quarantined, seen_under, now_ms)
            if checkpoint is not None:
                p = checkpoint.position
                state = dict(checkpoint.state)  # its observation counts are before this batch's, known only here
                state["observations"] = state.get("observations", 0) + obs[0]
                state["observation_duplicates"] = state.get("observation_duplicates", 0) + obs[1]
                key = self._counts_key(conn, import_id)
                if summary:
                    by_key = "FROM checkpoint_counts WHERE import_id = ?"
                    replaced = conn.execute(f"SELECT coalesce(sum(length(packed)), 0) {by_key}", (key,)).fetchone()[0]
                    conn.execute(f"DELETE {by_key}", (key,))
                    key = ahead
                    in_parts = conn.execute(f"SELECT coalesce(sum(length(packed)), 0) {by_key}", (key,)).fetchone()[0]
                    if in_parts != len(summary):  # parts gone (another process's start took them for a crash's)
                        conn.execute(f"DELETE {by_key}", (key,))
                        conn.execute("INSERT INTO checkpoint_counts (import_id, packed) VALUES (?, ?)", (key, summary))
                conn.execute(
                    "INSERT OR REPLACE INTO checkpoints (import_id, file_name, encoding, profile, position, line,"
                    " hashed, prefix_sha256, state, at_ms, counts_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (import_id, file_name, checkpoint.encoding, checkpoint.profile, str(p.cookie), p.line, p.hashed,
                     p.sha256, json.dumps(state), now_ms, key),
                )  # fmt: skip
                if counts:
                    conn.execute("INSERT INTO checkpoint_counts (import_id, packed) VALUES (?, ?)", (key, counts))
            return obs

        written = await self._write(write)
        if replaced >= GIVE_BACK_MIN_BYTES:  # less is left for the next writes to use
            await self._space_back()
        return written

    async def finish_import(self, import_id: int, report: ImportReport, *, keep_checkpoint: bool = False) -> None:
        """The import ended (``report``): its row says how, and the checkpoints of earlier interrupted imports of
        the same file, which nothing will go on from now, are dropped; its own too, unless ``keep_checkpoint`` and
        it ended well (``imported`` or ``quarantined``): then an import of rows appended since goes on from it
        (``checkpoint_after``). The space the dropped counts took is given back to the disk."""
        values = [getattr(report, name) for name in _COUNTS]
        keep = keep_checkpoint and report.status in FINISHED

        def finish(conn: sqlite3.Connection) -> int:
            conn.execute(
                f"UPDATE imports SET status = ?, finished_ms = ?, error = ?, {', '.join(f'{n} = ?' for n in _COUNTS)}"
                " WHERE id = ?",
                (report.status, report.finished_ms, report.error, *values, import_id),
            )
            done = (
                "SELECT c.import_id FROM checkpoints c JOIN imports i ON i.id = c.import_id WHERE (c.import_id = ?"
                " AND NOT ?) OR (c.file_name = ? AND c.import_id < ? AND i.status IN ('interrupted', 'held'))"
            )
            ids = [i for (i,) in conn.execute(done, (import_id, keep, report.file_name, import_id))]
            return sum(self._drop_checkpoint(conn, old) for old in ids)

        if await self._write(finish):
            await self._space_back()

    async def hold_import(self, import_id: int, report: ImportReport) -> None:
        """The import read the file's complete rows and holds its last line, which has no line break yet
        (``report``, status ``held``): its checkpoint is kept, so that the import of the rest goes on from there."""
        values = [getattr(report, name) for name in _COUNTS]
        counts = ", ".join(f"{n} = ?" for n in _COUNTS)
        await self._write(
            lambda conn: conn.execute(
                f"UPDATE imports SET status = 'held', finished_ms = ?, error = ?, {counts} WHERE id = ?",
                (report.finished_ms, "its last line has no line break yet: held until it ends", *values, import_id),
            )
        )

    async def abandon_import(self, import_id: int, why: str) -> None:
        """The import stopped before its end (the outbox or the store failed, or the agent is stopping): marked
        ``interrupted``, its checkpoint kept, so that importing the file again goes on from there."""
        now_ms = self._wall_clock_ms()
        await self._write(
            lambda conn: conn.execute(
                "UPDATE imports SET status = 'interrupted', finished_ms = ?, error = ? WHERE id = ? AND status = 'running'",
                (now_ms, why[:500], import_id),
            )
        )

    async def recent_imports(self, limit: int = 20) -> list[ImportReport]:
        """The last imports, newest first (without their quarantine lists)."""
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT file_name, sha256, size_bytes, encoding, profile, status, started_ms, coalesce(finished_ms, 0),"
                f" error, {', '.join(_COUNTS)} FROM imports ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            ImportReport(
                file_name=r[0], sha256=r[1], size_bytes=r[2], encoding=r[3], profile=r[4], status=r[5],
                started_ms=r[6], finished_ms=r[7], error=r[8], **dict(zip(_COUNTS, r[9:], strict=True)),
                produces="observations" if r[12] or r[13] else "movements",
            )
            for r in rows
        ]

    # --- quarantine ---------------------------------------------------------------
    async def add_quarantine(
        self, import_id: int, file_name: str, sha256: str, rows: Sequence[Quarantined], *, seen_under: Sequence[str] = ()
    ) -> int:
        """Keep these rows with their reasons; a row of the same file content and line is kept once. ``seen_under``:
        the digests this file had when it was imported before (it grew since): a row kept then at the same line
        with the same text is that row, kept (and reported to the hub) once."""
        if not rows:
            return 0
        now_ms = self._wall_clock_ms()
        return await self._write(
            lambda conn: self._insert_quarantine(conn, import_id, file_name, sha256, rows, seen_under, now_ms)
        )

    @staticmethod
    def _insert_quarantine(
        conn: sqlite3.Connection,
        import_id: int,
        file_name: str,
        sha256: str,
        rows: Sequence[Quarantined],
        seen_under: Sequence[str],
        now_ms: int,
    ) -> int:
        if not rows:
            return 0
        fresh = rows
        if seen_under:
            earlier = ",".join("?" * len(seen_under))
            kept = set(
                conn.execute(
                    f"SELECT line, raw FROM quarantine WHERE sha256 IN ({earlier}) AND line BETWEEN ? AND ?",
                    (*seen_under, min(q.line for q in rows), max(q.line for q in rows)),
                )
            )
            fresh = [q for q in rows if (q.line, q.raw) not in kept]
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO quarantine (import_id, file_name, sha256, line, reason, raw, at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(import_id, file_name, sha256, q.line, q.reason, q.raw, now_ms) for q in fresh],
        )
        return conn.total_changes - before

    async def quarantined(self, limit: int = 100, *, file_name: str | None = None) -> list[QuarantineEntry]:
        """Quarantined rows, newest file first, then by line."""

        def read(conn: sqlite3.Connection) -> list[QuarantineEntry]:
            where, args = ("WHERE file_name = ?", (file_name,)) if file_name else ("", ())
            rows = conn.execute(
                f"SELECT id, file_name, sha256, line, reason, raw, at_ms FROM quarantine {where}"
                " ORDER BY import_id DESC, line LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [QuarantineEntry(*row) for row in rows]

        return await self._read(read)

    async def pending_quarantine(self, limit: int = 1000) -> list[QuarantineEntry]:
        """Quarantined rows not yet reported to the hub, oldest first (``mark_quarantine_sent`` their ids)."""
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT id, file_name, sha256, line, reason, raw, at_ms FROM quarantine WHERE sent_ms IS NULL"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [QuarantineEntry(*row) for row in rows]

    async def mark_quarantine_sent(self, ids: Sequence[int]) -> None:
        now_ms = self._wall_clock_ms()
        await self._write(
            lambda conn: conn.executemany(
                "UPDATE quarantine SET sent_ms = ? WHERE id = ? AND sent_ms IS NULL", [(now_ms, i) for i in ids]
            )
        )

    async def quarantine_count(self) -> int:
        return int(await self._read(lambda conn: conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]))

    # --- observations -------------------------------------------------------------
    async def add_observations(self, observations: Sequence[Observation]) -> tuple[int, int]:
        """Store observations for the hub; returns (new, already stored)."""
        if not observations:
            return 0, 0
        now_ms = self._wall_clock_ms()
        return await self._write(lambda conn: self._insert_observations(conn, observations, now_ms))

    @staticmethod
    def _insert_observations(conn: sqlite3.Connection, observations: Sequence[Observation], now_ms: int) -> tuple[int, int]:
        if not observations:
            return 0, 0
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO observations"
            " (system, location, sku, on_hand, observed_at_ms, source_file, stored_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(o.system, o.location, o.sku, o.on_hand, o.observed_at_ms, o.source_file, now_ms) for o in observations],
        )
        new = conn.total_changes - before
        return new, len(observations) - new

    async def pending_observations(self, limit: int = 1000) -> list[tuple[int, Observation]]:
        """Observations not yet sent to the hub, oldest first, with their ids for ``mark_observations_sent``."""
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT id, location, sku, system, on_hand, observed_at_ms, source_file FROM observations"
                " WHERE sent_ms IS NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [(r[0], Observation(*r[1:])) for r in rows]

    async def mark_observations_sent(self, ids: Sequence[int]) -> None:
        now_ms = self._wall_clock_ms()
        await self._write(
            lambda conn: conn.executemany(
                "UPDATE observations SET sent_ms = ? WHERE id = ? AND sent_ms IS NULL", [(now_ms, i) for i in ids]
            )
        )

    async def resend_after_hub_restores(self, restores: int) -> int:
        """Mark every observation and quarantined row unsent when ``restores`` (how many times the agent found the
        hub's database restored from a backup) is past the count this store last saw, which it keeps: the hub
        lost what it took since its backup, and holds one report per (agent, id), so a resend of what it kept is
        a duplicate. The rows marked; 0 the first time (nothing seen before) and whenever the count did not grow."""

        def mark(conn: sqlite3.Connection) -> int:
            seen = conn.execute("SELECT value FROM meta WHERE key = 'hub_restores'").fetchone()
            if seen is not None and int(seen[0]) == restores:
                return 0
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hub_restores', ?)", (restores,))
            if seen is None or int(seen[0]) > restores:  # first seen, or the outbox itself was replaced
                return 0
            marked = conn.execute("UPDATE observations SET sent_ms = NULL WHERE sent_ms IS NOT NULL").rowcount
            return marked + conn.execute("UPDATE quarantine SET sent_ms = NULL WHERE sent_ms IS NOT NULL").rowcount

        return int(await self._write(mark))

    # --- reports owed ---------------------------------------------------------------
    async def owe_report(self, dest: str, report_json: str) -> None:
        """Keep the report (JSON text) that could not be written beside the export filed at ``dest``."""
        now_ms = self._wall_clock_ms()
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO reports_owed (dest, report, at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (dest) DO UPDATE SET report = excluded.report, at_ms = excluded.at_ms",
                (dest, report_json, now_ms),
            )
        )

    async def report_paid(self, dest: str) -> None:
        """The report of ``dest`` is written (or has nowhere to go any more): it is owed no longer."""
        await self._write(lambda conn: conn.execute("DELETE FROM reports_owed WHERE dest = ?", (dest,)))

    async def reports_owed(self) -> list[tuple[str, str]]:
        """(dest, report JSON) of every report still owed, oldest first."""
        rows = await self._read(
            lambda conn: conn.execute("SELECT dest, report FROM reports_owed ORDER BY at_ms, dest").fetchall()
        )
        return [(str(dest), str(report)) for dest, report in rows]

    # --- filed copies watched ----------------------------------------------------------
    async def watch_filed(self, watch: FiledWatch) -> None:
        """Keep (or update) what the watcher watches of a filed export, for after a restart."""
        cuts = json.dumps([[c.line, c.raw, c.event_id.hex()] for c in watch.cuts])
        now_ms = self._wall_clock_ms()
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO filed_watch (dest, file_name, import_id, dev, ino, size, mtime_ns, until_ms,"
                " digests, cuts, at_ms, head, ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (watch.dest, watch.file_name, watch.import_id, watch.dev, watch.ino, watch.size, watch.mtime_ns,
                 watch.until_ms, json.dumps(watch.digests), cuts, now_ms, watch.head, watch.ctime_ns),
            ),
            small=True,
        )  # fmt: skip

    async def filed_ends(self, ends: dict[str, int]) -> None:
        """Keep again when the watches of the filed copies ``ends`` names end (wall-clock ms): the wall clock jumped."""
        rows = [(until_ms, dest) for dest, until_ms in ends.items()]
        await self._write(
            lambda conn: conn.executemany("UPDATE filed_watch SET until_ms = ? WHERE dest = ?", rows), small=True
        )

    async def unwatch_filed(self, dest: str, import_id: int | None) -> None:
        """The watcher watches ``dest`` no more: the checkpoint its import kept for it (``import_id``) is dropped too,
        and the space it took given back."""

        def drop(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM filed_watch WHERE dest = ?", (dest,))
            ended = f"SELECT 1 FROM imports WHERE id = ? AND status IN {_FINISHED_SQL}"
            if import_id is None or conn.execute(ended, (import_id,)).fetchone() is None:
                return 0  # none kept, or one an import goes on from now (interrupted, held)
            return self._drop_checkpoint(conn, import_id)

        if await self._write(drop):
            await self._space_back()

    async def filed_watches(self) -> list[FiledWatch]:
        """What the watcher watched when the agent last stopped, the oldest first."""
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT dest, file_name, import_id, dev, ino, size, mtime_ns, until_ms, digests, cuts, head, ctime_ns"
                " FROM filed_watch ORDER BY at_ms, dest"
            ).fetchall()
        )
        return [_filed_watch(*r) for r in rows]


def _size(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


# A checkpoint with its import's status, the columns ``_checkpoint`` takes.
CHECKPOINT_SELECT = (
    "SELECT c.import_id, c.encoding, c.profile, c.position, c.line, c.hashed, c.prefix_sha256, c.state, i.status"
    " FROM checkpoints c JOIN imports i ON i.id = c.import_id"
)


def _checkpoint(
    import_id: int, encoding: str, profile: str, position: str, line: int, hashed: int, sha: str, state: str, status: str,
) -> Checkpoint:  # fmt: skip
    return Checkpoint(
        int(import_id), str(encoding), str(profile), Position(int(position), int(line), int(hashed), str(sha)),
        json.loads(state), held=status == "held", finished=status in FINISHED,
    )  # fmt: skip


def _filed_watch(
    dest: str, file_name: str, import_id: int | None, dev: int, ino: int, size: int, mtime_ns: int, until_ms: int,
    digests: str, cuts: str, head: str | None, ctime_ns: int | None,
) -> FiledWatch:  # fmt: skip
    return FiledWatch(
        str(dest), str(file_name), None if import_id is None else int(import_id), int(dev), int(ino), int(size),
        int(mtime_ns), int(until_ms), tuple(str(d) for d in json.loads(digests)),
        tuple(CutRow(int(c[0]), str(c[1]), bytes.fromhex(c[2])) for c in json.loads(cuts)),
        None if head is None else str(head), None if ctime_ns is None else int(ctime_ns),
    )  # fmt: skip
