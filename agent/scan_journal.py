"""The scan journal: every raw scan any reader sent, with what became of it, and each reader's state.

Its own SQLite file beside the outbox (``scans.sqlite3``), like the POS
import's store: the outbox has one owner and one writer, and nothing here must
commit in the same transaction as a movement. Same shape as the outbox: one
connection on one thread (``agent.db``), WAL, each write one ``BEGIN
IMMEDIATE … COMMIT``; ``synchronous = NORMAL``, because the journal explains
what happened and the outbox is what must survive a power cut.

A scan is written *before* it is routed (result ``received``) and updated with
its outcome afterwards, so a scan whose routing was cut short by a crash is
still there: the next start marks it ``interrupted`` and counts it as a
problem. Scans known to be problems before they are routed (cut off, or not
decodable: line noise) are kept one row each only up to
``PROBLEM_ROWS_PER_DAY`` per reader per UTC day; past that each is counted in
one ``not_kept`` row for that reader and day (``qty``: how many; ``raw``: the
latest frame; ``message``: the latest problem), and in the reader's
``scans`` and ``problems``. A scanner spewing noise at 115,200 baud made
about 7.8 million rows a day, kept for the whole retention; a good scan is
never held back by this. Past the bound the counting is done in memory and
written at most every ``NOT_KEPT_WRITE_S`` per reader (the first at once, the
rest by a timer), before the journal is read here, and at ``close()``: the
rows were bounded, but each noise frame was still one SQLite write (a
transaction for the refused row, one for the count), thousands a second. ``readers`` holds each reader's availability and its last problem
(a bad check digit, a cut-off scan) for ``shelfsync-agent status``, which
reads the file without writing (``read_reader_states``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.db import Opening, SqliteFile, SqliteThread
from agent.errors import AgentError
from protocol import event_id_hex, parse_event_id, wall_ms_now

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
JOURNAL_FILENAME = "scans.sqlite3"
PURGE_EVERY_MS = 3_600_000
AGE_STOPPED_MAX_MS = 86_400_000  # the time the agent was stopped adds at most this much to the scans' age
RETENTION_DEFAULT_S = 30 * 86_400.0
RECEIVED = "received"  # written, not yet routed
INTERRUPTED = "interrupted"  # was being routed when the agent stopped
PROBLEM_RESULTS = ("decode_error", "incomplete", "failed", INTERRUPTED)
NOT_KEPT = "not_kept"  # the row counting a reader's problem scans of one UTC day past PROBLEM_ROWS_PER_DAY
KNOWN_PROBLEM_RESULTS = ("decode_error", "incomplete")  # what a scan known to be a problem before routing becomes
PROBLEM_ROWS_PER_DAY = 10_000
NOT_KEPT_WRITE_S = 5.0  # a reader's not_kept row is written at most this often; the counting between is in memory
DAY_MS = 86_400_000
INTERRUPTED_MESSAGE = "the agent stopped while this scan was being booked; check whether it was recorded"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS scans (
        id          INTEGER PRIMARY KEY,
        reader_id   TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        raw         BLOB NOT NULL,
        complete    INTEGER NOT NULL,
        mode        TEXT,
        result      TEXT NOT NULL,
        message     TEXT,
        location    TEXT,
        sku         TEXT,
        kind        TEXT,
        qty         INTEGER,
        event_ids   TEXT,
        decided_ms  INTEGER
    )""",
    # Read by no agent since a count-mode reader's running total is read back from the outbox (agent.scanning);
    # kept so that a journal's schema stays one.
    "CREATE INDEX IF NOT EXISTS scans_counts ON scans (reader_id, location, sku, id) WHERE kind = 'count'",
    """CREATE TABLE IF NOT EXISTS readers (
        reader_id       TEXT PRIMARY KEY,
        device          TEXT,
        available       INTEGER NOT NULL DEFAULT 0,
        changed_ms      INTEGER,
        error           TEXT,
        scans           INTEGER NOT NULL DEFAULT 0,
        problems        INTEGER NOT NULL DEFAULT 0,
        last_scan_ms    INTEGER,
        last_problem    TEXT,
        last_problem_ms INTEGER
    )""",
    # The scans up to scan_id were there when the journal's age clock (meta age_ms) read at_ms: retention_s later
    # on that clock they are deleted. The age clock moves by the lesser of what the wall clock and the monotonic
    # clock moved (_age), so a wall clock wrong by years, or put right, neither deletes early nor keeps for ever.
    "CREATE TABLE IF NOT EXISTS aged (scan_id INTEGER NOT NULL, at_ms INTEGER NOT NULL)",
)


class JournalError(AgentError):
    """The scan journal cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: int
    reader_id: str
    received_ms: int
    raw: bytes
    complete: bool
    mode: str | None
    result: str  # a ScanResult value, or "received" / "interrupted"
    message: str | None
    location: str | None
    sku: str | None
    kind: str | None
    qty: int | None
    event_ids: tuple[str, ...]  # UUID text
    decided_ms: int | None


@dataclass(frozen=True, slots=True)
class ReaderState:
    """One reader as ``status`` shows it."""

    reader_id: str
    device: str | None
    available: bool
    changed_ms: int | None
    error: str | None  # why it is unavailable
    scans: int
    problems: int  # scans that could not be booked (bad check digit, cut off, failed, interrupted)
    last_scan_ms: int | None
    last_problem: str | None
    last_problem_ms: int | None


@dataclass(slots=True)
class _Uncounted:
    """A reader's problem scans of one UTC day counted in memory since its ``not_kept`` row was last written."""

    reader_id: str
    day: int
    n: int = 0
    received_ms: int = 0
    raw: bytes = b""
    complete: bool = True
    mode: str | None = None
    message: str = ""
    decided_ms: int = 0

    def add(self, received_ms: int, raw: bytes, complete: bool, mode: str | None, message: str, now_ms: int) -> None:
        self.n += 1
        self.received_ms, self.raw, self.complete, self.mode = received_ms, raw, complete, mode
        self.message, self.decided_ms = message, now_ms


_ENTRY_COLUMNS = (
    "id, reader_id, received_ms, raw, complete, mode, result, message, location, sku, kind, qty, event_ids, decided_ms"
)
_READER_COLUMNS = (
    "reader_id, device, available, changed_ms, error, scans, problems, last_scan_ms, last_problem, last_problem_ms"
)


def _entry(row: Any) -> JournalEntry:
    values = list(row)
    values[4] = bool(values[4])
    values[12] = tuple(values[12].split()) if values[12] else ()
    return JournalEntry(*values)


def _reader(row: Any) -> ReaderState:
    values = list(row)
    values[2] = bool(values[2])
    return ReaderState(*values)


class ScanJournal(SqliteFile):
    """Use ``ScanJournal.open(path)``; one per agent process."""

    def __init__(
        self,
        db: SqliteThread,
        *,
        retention_s: float,
        wall_clock_ms: Callable[[], int],
        problem_rows_per_day: int = PROBLEM_ROWS_PER_DAY,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(db)
        self._retention_ms = int(retention_s * 1000)
        self._wall_clock_ms = wall_clock_ms
        self._problem_rows_max = problem_rows_per_day
        # Written on the database thread only: reader -> (UTC day, problem rows kept), and -> (day, not_kept row,
        # count written); the first is read on the event loop too, to refuse a row past the bound without a write.
        self._problem_rows: dict[str, tuple[int, int]] = {}
        self._not_kept: dict[str, tuple[int, int, int]] = {}
        # On the event loop only: the counting not yet written, when each reader's was last written, its timer.
        self._uncounted: dict[str, _Uncounted] = {}
        self._counted_s: dict[str, float] = {}
        self._count_timer: asyncio.Task[None] | None = None
        self._monotonic_s: Callable[[], float] = monotonic_s
        self._last_purge_s: float | None = None  # on the monotonic clock
        self._aged_s: float | None = None  # when the age clock was last moved by this process (monotonic)
        self.interrupted = 0  # scans found half-routed when this journal was opened
        self.interrupted_scans: list[tuple[int, str, int]] = []  # … each (id, reader_id, received_ms)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        retention_s: float = RETENTION_DEFAULT_S,
        wall_clock_ms: Callable[[], int] = wall_ms_now,
        problem_rows_per_day: int = PROBLEM_ROWS_PER_DAY,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> Opening[ScanJournal]:
        return Opening(lambda: cls._open(Path(path), retention_s, wall_clock_ms, problem_rows_per_day, monotonic_s))

    @classmethod
    async def _open(
        cls,
        path: Path,
        retention_s: float,
        wall_clock_ms: Callable[[], int],
        problem_rows_per_day: int,
        monotonic_s: Callable[[], float],
    ) -> ScanJournal:
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = cls(
            SqliteThread(path, "normal"),
            retention_s=retention_s,
            wall_clock_ms=wall_clock_ms,
            problem_rows_per_day=problem_rows_per_day,
            monotonic_s=monotonic_s,
        )
        return await opened._start(opened._init)

    def _init(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise JournalError(f"{self.path} was written by a newer shelfsync (schema {row[0]}); upgrade this agent")
        now_ms = self._wall_clock_ms()
        stuck = conn.execute(
            "SELECT id, reader_id, received_ms FROM scans WHERE result = ? ORDER BY id", (RECEIVED,)
        ).fetchall()
        message = INTERRUPTED_MESSAGE
        for scan_id, reader_id, _ in stuck:
            conn.execute(
                "UPDATE scans SET result = ?, message = ?, decided_ms = ? WHERE id = ?",
                (INTERRUPTED, message, now_ms, scan_id),
            )
            conn.execute(
                "UPDATE readers SET problems = problems + 1, last_problem = ?, last_problem_ms = ? WHERE reader_id = ?",
                (message, now_ms, reader_id),
            )
        self.interrupted = len(stuck)
        self.interrupted_scans = [(int(i), str(r), int(ms)) for i, r, ms in stuck]
        # Nothing reads a device until the agent runs its readers again.
        conn.execute(
            "UPDATE readers SET available = 0, error = 'the agent is not running it', changed_ms = ?", (now_ms,)
        )
        self._purge(conn, now_ms)

    def _not_usable(self, err: sqlite3.DatabaseError) -> Exception:
        return JournalError(f"{self.path} is not a usable scan journal: {err}")

    def _closed_error(self) -> Exception:
        return JournalError(f"the scan journal {self.path} is closed")

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        return JournalError(f"the scan journal {self.path} could not be {verb}: {err}")

    # --- writing -------------------------------------------------------------
    async def add(
        self, reader_id: str, received_ms: int, raw: bytes, complete: bool, mode: str | None, *, problem: bool = False
    ) -> int | None:
        """Keep one raw scan, before anything is decided about it. Returns its journal id.

        ``problem``: the scan is already known to be one (cut off, not decodable). None when its reader has
        had ``PROBLEM_ROWS_PER_DAY`` such rows this UTC day: ``not_kept`` counts it once it is decided."""

        full = self._problem_rows.get(reader_id)
        if problem and full is not None and full[0] == received_ms // DAY_MS and full[1] >= self._problem_rows_max:
            return None  # known without a transaction: noise past the bound must not cost a write a frame

        def insert(conn: sqlite3.Connection) -> int | None:
            if problem and not self._room_for_problem(conn, reader_id, received_ms):
                return None
            cur = conn.execute(
                "INSERT INTO scans (reader_id, received_ms, raw, complete, mode, result) VALUES (?, ?, ?, ?, ?, ?)",
                (reader_id, received_ms, raw, int(complete), mode, RECEIVED),
            )
            conn.execute(
                "INSERT INTO readers (reader_id, scans, last_scan_ms) VALUES (?, 1, ?) ON CONFLICT (reader_id)"
                " DO UPDATE SET scans = scans + 1, last_scan_ms = excluded.last_scan_ms",
                (reader_id, received_ms),
            )
            return int(cur.lastrowid or 0)

        return await self._write(insert, small=True)

    def _room_for_problem(self, conn: sqlite3.Connection, reader_id: str, received_ms: int) -> bool:
        """Whether one more problem row fits this reader's day; counts it if so (counted from the file once a day)."""
        day = received_ms // DAY_MS
        known = self._problem_rows.get(reader_id)
        if known is None or known[0] != day:
            marks = ", ".join("?" * len(KNOWN_PROBLEM_RESULTS))
            (rows,) = conn.execute(
                f"SELECT COUNT(*) FROM scans WHERE reader_id = ? AND received_ms >= ? AND received_ms < ?"
                f" AND result IN ({marks})",
                (reader_id, day * DAY_MS, (day + 1) * DAY_MS, *KNOWN_PROBLEM_RESULTS),
            ).fetchone()
            known = (day, int(rows))
        if known[1] >= self._problem_rows_max:
            self._problem_rows[reader_id] = known
            return False
        self._problem_rows[reader_id] = (day, known[1] + 1)
        return True

    async def not_kept(
        self, reader_id: str, received_ms: int, raw: bytes, complete: bool, mode: str | None, *, message: str
    ) -> None:
        """Count a problem scan ``add`` did not keep: in its reader's ``not_kept`` row of that UTC day, and in
        the reader's ``scans`` and ``problems``. Counted in memory; written at once when the reader's row was not
        written for ``NOT_KEPT_WRITE_S``, else by a timer that long after (and by ``close()``)."""
        day = received_ms // DAY_MS
        held = self._uncounted.get(reader_id)
        if held is not None and held.day != day:
            await self.write_counts(reader_id)  # a new UTC day has a row of its own
            held = None
        if held is None:
            held = self._uncounted[reader_id] = _Uncounted(reader_id, day)
        held.add(received_ms, raw, complete, mode, message, self._wall_clock_ms())
        last_s = self._counted_s.get(reader_id)
        if last_s is None or self._monotonic_s() - last_s >= NOT_KEPT_WRITE_S:
            await self.write_counts(reader_id)
        elif self._count_timer is None or self._count_timer.done():
            self._count_timer = asyncio.get_running_loop().create_task(self._write_counts_later())

    async def write_counts(self, reader_id: str | None = None) -> None:
        """Write the problem scans counted in memory (of ``reader_id``, or every reader) into their rows.
        Should the write fail, the counting is kept for the next one."""
        readers = [reader_id] if reader_id else list(self._uncounted)
        batch = [self._uncounted.pop(r) for r in readers if r in self._uncounted]
        if not batch:
            return
        now_s = self._monotonic_s()
        for held in batch:
            self._counted_s[held.reader_id] = now_s

        def count(conn: sqlite3.Connection) -> None:
            for held in batch:
                self._count(conn, held)

        try:
            await self._write(count, small=True)
        except JournalError:  # rolled back (a write that started commits, even if its caller is cancelled)
            for held in batch:
                newer = self._uncounted.get(held.reader_id)
                if newer is None or newer.day != held.day:
                    self._uncounted.setdefault(held.reader_id, held)
                else:
                    newer.n += held.n
            raise

    async def _write_counts_later(self) -> None:
        await asyncio.sleep(NOT_KEPT_WRITE_S)
        try:
            await self.write_counts()
        except JournalError as err:
            log.error("The problem scans counted in memory could not be written to the scan journal: %s", err)

    def _count(self, conn: sqlite3.Connection, held: _Uncounted) -> None:
        """Add ``held`` to its reader's ``not_kept`` row of its day (made if there is none), and to the reader."""
        row_id, n = self._not_kept_row(conn, held.reader_id, held.day)
        n += held.n
        text = (
            f"{n} problem scans past the {self._problem_rows_max} a day kept one by one were only counted"
            f" this UTC day; the latest: {held.message}"
        )
        if row_id is None:
            cur = conn.execute(
                "INSERT INTO scans (reader_id, received_ms, raw, complete, mode, result, message, qty, decided_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (held.reader_id, held.received_ms, held.raw, int(held.complete), held.mode, NOT_KEPT, text, n,
                 held.decided_ms),
            )  # fmt: skip
            row_id = int(cur.lastrowid or 0)
        else:
            conn.execute(
                "UPDATE scans SET raw = ?, complete = ?, message = ?, qty = ?, decided_ms = ? WHERE id = ?",
                (held.raw, int(held.complete), text, n, held.decided_ms, row_id),
            )
        self._not_kept[held.reader_id] = (held.day, row_id, n)
        conn.execute(
            "UPDATE readers SET scans = scans + ?, last_scan_ms = ?, problems = problems + ?, last_problem = ?,"
            " last_problem_ms = ? WHERE reader_id = ?",
            (held.n, held.received_ms, held.n, held.message, held.decided_ms, held.reader_id),
        )

    async def close(self) -> None:
        """Write what was counted in memory, then close. Safe to call twice."""
        if not self.closed:
            timer, self._count_timer = self._count_timer, None
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
            try:
                await self.write_counts()
            except JournalError as err:
                log.error("The problem scans counted in memory could not be written to the scan journal: %s", err)
        await super().close()

    def _not_kept_row(self, conn: sqlite3.Connection, reader_id: str, day: int) -> tuple[int | None, int]:
        """(id, count) of this reader's ``not_kept`` row of ``day``, or (None, 0); looked up in the file once."""
        known = self._not_kept.get(reader_id)
        if known is not None and known[0] == day:
            return known[1], known[2]
        row = conn.execute(
            "SELECT id, qty FROM scans WHERE reader_id = ? AND result = ? AND received_ms >= ? AND received_ms < ?"
            " ORDER BY id DESC LIMIT 1",
            (reader_id, NOT_KEPT, day * DAY_MS, (day + 1) * DAY_MS),
        ).fetchone()
        return (None, 0) if row is None else (int(row[0]), int(row[1] or 0))

    async def decide(
        self,
        scan_id: int,
        reader_id: str,
        *,
        result: str,
        message: str,
        location: str | None = None,
        sku: str | None = None,
        kind: str | None = None,
        qty: int | None = None,
        event_ids: tuple[bytes, ...] = (),
    ) -> None:
        """Record what became of a scan; a problem also becomes its reader's last problem."""
        now_ms = self._wall_clock_ms()
        ids = " ".join(event_id_hex(e) for e in event_ids) or None

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE scans SET result = ?, message = ?, location = ?, sku = ?, kind = ?, qty = ?, event_ids = ?,"
                " decided_ms = ? WHERE id = ?",
                (result, message, location, sku, kind, qty, ids, now_ms, scan_id),
            )
            if result in PROBLEM_RESULTS:
                conn.execute(
                    "UPDATE readers SET problems = problems + 1, last_problem = ?, last_problem_ms = ?"
                    " WHERE reader_id = ?",
                    (message, now_ms, reader_id),
                )
            if purge:
                self._purge(conn, now_ms)

        purge = self._last_purge_s is None or self._monotonic_s() - self._last_purge_s >= PURGE_EVERY_MS / 1000
        await self._write(update, small=not purge)  # a purge may delete many rows: never on the caller's thread

    async def found_booked(
        self,
        scan_id: int,
        reader_id: str,
        *,
        result: str,
        message: str,
        location: str,
        sku: str,
        kind: str,
        qty: int,
        event_ids: tuple[bytes, ...],
    ) -> None:
        """An interrupted scan whose movements the outbox holds after all: journaled as booked with them, and no
        longer one of its reader's problems."""
        ids = " ".join(event_id_hex(e) for e in event_ids)

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE scans SET result = ?, message = ?, location = ?, sku = ?, kind = ?, qty = ?, event_ids = ?"
                " WHERE id = ? AND result = ?",
                (result, message, location, sku, kind, qty, ids, scan_id, INTERRUPTED),
            )
            conn.execute(
                "UPDATE readers SET problems = max(problems - 1, 0),"
                " last_problem = CASE WHEN last_problem = ?1 THEN NULL ELSE last_problem END,"
                " last_problem_ms = CASE WHEN last_problem = ?1 THEN NULL ELSE last_problem_ms END"
                " WHERE reader_id = ?2",
                (INTERRUPTED_MESSAGE, reader_id),
            )

        await self._write(update)

    async def last_booked_event(self, reader_id: str, before_id: int) -> bytes | None:
        """The id of the newest movement a scan of ``reader_id`` journaled before scan ``before_id`` booked."""
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT event_ids FROM scans WHERE reader_id = ? AND id < ? AND event_ids IS NOT NULL"
                " ORDER BY id DESC LIMIT 1",
                (reader_id, before_id),
            ).fetchone()
        )
        return None if row is None else parse_event_id(str(row[0]).split()[-1])

    async def note_status(
        self, reader_id: str, device: str, available: bool, changed_ms: int, error: str | None
    ) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO readers (reader_id, device, available, changed_ms, error) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (reader_id) DO UPDATE SET device = excluded.device, available = excluded.available,"
                " changed_ms = excluded.changed_ms, error = excluded.error",
                (reader_id, device, int(available), changed_ms, error),
            )
        )

    def _purge(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Delete the scans older than the retention on the age clock (``_age``), not on the wall clock: one that
        fell back to 2000 and was put right by NTP days later had every scan of those days deleted at once."""
        self._last_purge_s = self._monotonic_s()
        age_ms = self._age(conn, now_ms)
        conn.execute(
            "INSERT INTO aged (scan_id, at_ms) SELECT top, ? FROM (SELECT max(id) AS top FROM scans)"
            " WHERE top > coalesce((SELECT max(scan_id) FROM aged), 0)",
            (age_ms,),
        )
        cutoff_ms = age_ms - self._retention_ms
        (upto,) = conn.execute("SELECT max(scan_id) FROM aged WHERE at_ms <= ?", (cutoff_ms,)).fetchone()
        if upto is not None:
            conn.execute("DELETE FROM scans WHERE id <= ? AND result != ?", (upto, RECEIVED))
            conn.execute("DELETE FROM aged WHERE at_ms <= ?", (cutoff_ms,))

    def _age(self, conn: sqlite3.Connection, now_ms: int) -> int:
        """Move the age clock by the lesser of what the wall clock and the monotonic clock moved since it was last
        moved (never back; the time the agent was stopped, which only the wall clock saw, counts for at most
        ``AGE_STOPPED_MAX_MS``), and return it. A new journal's starts at the wall clock."""
        stored = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('age_ms', 'age_wall_ms')").fetchall())
        now_s = self._monotonic_s()
        age_ms, wall_ms = stored.get("age_ms"), stored.get("age_wall_ms")
        if age_ms is None or wall_ms is None:
            age_ms = now_ms
        else:
            ran_ms = AGE_STOPPED_MAX_MS if self._aged_s is None else round((now_s - self._aged_s) * 1000)
            age_ms += max(0, min(now_ms - wall_ms, ran_ms))
        self._aged_s = now_s
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (("age_ms", age_ms), ("age_wall_ms", now_ms)),
        )
        return int(age_ms)

    # --- reading -----------------------------------------------------------------
    async def recent(self, limit: int = 100, *, reader_id: str | None = None) -> list[JournalEntry]:
        """The latest scans, newest first (with what was counted in memory written first)."""
        await self.write_counts()
        where, args = ("WHERE reader_id = ?", (reader_id,)) if reader_id else ("", ())
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM scans {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def readers(self) -> list[ReaderState]:
        await self.write_counts()
        rows = await self._read(
            lambda conn: conn.execute(f"SELECT {_READER_COLUMNS} FROM readers ORDER BY reader_id").fetchall()
        )
        return [_reader(row) for row in rows]


def read_reader_states(path: Path) -> list[ReaderState] | None:
    """The readers' states from another process (``status``): read-only, never creates the file. None: no journal."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute(f"SELECT {_READER_COLUMNS} FROM readers ORDER BY reader_id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise JournalError(f"the scan journal {path} could not be read: {err}") from err
    return [_reader(row) for row in rows]
