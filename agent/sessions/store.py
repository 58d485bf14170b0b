"""The sessions' own SQLite file: every session and every line, so an open session survives a restart.

It sits beside the outbox (``sessions.sqlite3``) rather than inside it, like
the POS import's file: the outbox has one owner and one writer
(``agent.outbox``), and a session's lines are a working document, not stock
movements — they become movements only when the session is closed, through
one ``Outbox.record`` call. A close therefore spans two files, and is made
safe by its order and by deterministic event ids:

1. ``begin_close``: the session becomes ``closing`` with the close's HLC and
   choices stored (from here on its lines cannot change);
2. the manager records the planned events in the outbox (one transaction);
3. ``finish_close``: the session becomes ``closed`` with its report.

A crash after 1 or 2 leaves a ``closing`` session; on start the manager asks
the outbox whether it holds any event of the session (source
``session:<id>``): one transaction wrote them all or none, so if it does,
only 3 is left. If not, it plans the events again and records them, then
finishes. Nothing is booked twice, even when an upgrade in between changed
how a close's events and ids are derived (one event per lot, per serial).

Same shape as the outbox: one connection on one thread (``agent.db``), WAL,
each write one ``BEGIN IMMEDIATE … COMMIT``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent.db import Opening, SqliteFile, SqliteThread, disk_refused
from agent.outbox import write_failure
from agent.sessions.errors import (
    AlreadyReceived,
    InvalidSessionInput,
    LineNotFound,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SessionNotOpen,
    SessionStoreClosed,
    SessionStoreFailed,
    SessionStoreFull,
)
from agent.sessions.model import (
    BinNote,
    CloseReport,
    CountNote,
    Disposition,
    ExpectedLine,
    Line,
    ReportLine,
    Session,
    SessionSpec,
    SessionStatus,
    SessionType,
    bin_key,
    ref_key,
)
from agent.sessions.plan import Unit, unit_of
from protocol import QTY_MAX

T = TypeVar("T")
SCHEMA_VERSION = 1
LINES_MAX = 20_000  # per session
FILENAME = "sessions.sqlite3"
IN_LIST_MAX = 500  # ids in one IN (…) list, far under SQLite's bound on parameters

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS sessions (
        id             TEXT PRIMARY KEY,
        type           TEXT NOT NULL,
        location       TEXT NOT NULL,
        status         TEXT NOT NULL,
        opened_by      TEXT NOT NULL,
        opened_ms      INTEGER NOT NULL,
        ref            TEXT,
        to_location    TEXT,
        from_location  TEXT,
        reason         TEXT,
        bin            TEXT,
        scope          TEXT NOT NULL,
        expected       TEXT NOT NULL,
        reader_id      TEXT,
        close_hlc      INTEGER,
        zero_unscanned INTEGER NOT NULL DEFAULT 0,
        closed_by      TEXT,
        closed_ms      INTEGER,
        report         TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, opened_ms)",
    (
        "CREATE UNIQUE INDEX IF NOT EXISTS sessions_reader ON sessions (reader_id)"
        " WHERE reader_id IS NOT NULL AND status IN ('open', 'closing')"
    ),
    """CREATE TABLE IF NOT EXISTS lines (
        session_id  TEXT NOT NULL REFERENCES sessions (id),
        no          INTEGER NOT NULL,
        sku         TEXT NOT NULL,
        qty         INTEGER NOT NULL,
        hlc         INTEGER NOT NULL,
        at_ms       INTEGER NOT NULL,
        by          TEXT NOT NULL,
        source      TEXT NOT NULL,
        barcode     TEXT,
        pack_size   INTEGER NOT NULL,
        disposition TEXT,
        unknown     INTEGER NOT NULL,
        undone      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, no)
    ) WITHOUT ROWID""",
    # The hub's refusals the staff dismissed from the handheld's home screen (added without a schema change: an
    # older agent ignores the table). What was refused stays in the outbox; this only says it was read.
    """CREATE TABLE IF NOT EXISTS refusals_dismissed (
        event_id TEXT PRIMARY KEY,
        by       TEXT NOT NULL,
        at_ms    INTEGER NOT NULL
    ) WITHOUT ROWID""",
)
_SESSION_COLUMNS = (
    "id, type, location, status, opened_by, opened_ms, ref, to_location, from_location, reason, bin, scope,"
    " expected, reader_id, close_hlc, zero_unscanned, closed_by, closed_ms, report"
)
_REF_COLUMN = 6  # ref's place in _SESSION_COLUMNS
_LINE_COLUMNS = (
    "session_id, no, sku, qty, hlc, at_ms, by, source, barcode, pack_size, disposition, unknown, undone,"
    " held, decided_by, rejected"
)


class SessionStore(SqliteFile):
    """Durable sessions and lines. Use ``SessionStore.open``; ``SessionManager`` is the one writer."""

    def __init__(self, db: SqliteThread) -> None:
        super().__init__(db)

    @classmethod
    def open(cls, path: str | Path, *, synchronous: str = "full") -> Opening[SessionStore]:
        return Opening(lambda: cls._open(Path(path), synchronous))

    @classmethod
    async def _open(cls, path: Path, synchronous: str) -> SessionStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = cls(SqliteThread(path, synchronous))
        return await opened._start(opened._init)

    def _init(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise SessionError(f"{self.path} was written by a newer shelfsync (schema {row[0]}); upgrade this agent")
        # A handheld's own id for each scan (added without a schema change: older agents ignore the column), so a
        # scan sent again after its answer was lost is the same line, not a second one.
        if "scan_id" not in {r[1] for r in conn.execute("PRAGMA table_info(lines)")}:
            conn.execute("ALTER TABLE lines ADD COLUMN scan_id TEXT")
        conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS lines_scan_id ON lines (session_id, scan_id) WHERE scan_id IS NOT NULL"
        )
        # A back-office scanner's line held for a person (``Line.held``), who confirmed or rejected it, and whether
        # it was rejected (added the same way). A held line is stored undone: an older agent reading the file counts
        # it for nothing.
        columns = {r[1] for r in conn.execute("PRAGMA table_info(lines)")}
        for column, sql_type in (("held", "TEXT"), ("decided_by", "TEXT"), ("rejected", "INTEGER")):
            if column not in columns:
                conn.execute(f"ALTER TABLE lines ADD COLUMN {column} {sql_type}")

    def _not_usable(self, err: sqlite3.DatabaseError) -> Exception:
        return SessionError(f"{self.path} is not a usable session store: {err}")

    def _closed_error(self) -> Exception:
        return SessionStoreClosed(self.path)

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        detail = write_failure(err, "send it again") if verb == "written" else err
        full = verb == "written" and disk_refused(err)
        return (SessionStoreFull if full else SessionStoreFailed)(
            f"the session store {self.path} could not be {verb}: {detail}"
        )

    # --- sessions ----------------------------------------------------------
    async def insert(self, session: Session, *, again: bool = False) -> Session:
        """Store a new open session. ``again``: a delivery or transfer received here before is received again (a
        second delivery on the same note); without it, such a session is refused (``AlreadyReceived``)."""

        def insert(conn: sqlite3.Connection) -> Session:
            if session.spec.reader_id is not None:
                _check_reader_free(conn, session.spec.reader_id, session.id)
            if session.type is SessionType.COUNT:
                _check_not_counted_elsewhere(conn, session)
            elif session.type in ONE_SESSION_PER_REF and session.spec.ref is not None:
                _check_not_received_elsewhere(conn, session)
                if session.type in RECEIVED_ONCE and not again:
                    _check_not_received_before(conn, session)
            conn.execute(f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({_marks(19)})", _session_row(session))
            return session

        return await self._write(insert)

    async def get(self, session_id: str) -> Session:
        return await self._read(lambda conn: _get(conn, session_id))

    async def get_with_lines(self, session_id: str) -> tuple[Session, tuple[Line, ...]]:
        """The session and its lines, read in one snapshot."""
        return await self._read(lambda conn: (_get(conn, session_id), _lines(conn, session_id)))

    async def lines(self, session_id: str) -> tuple[Line, ...]:
        return await self._read(lambda conn: _lines(conn, session_id))

    async def list(self, statuses: Sequence[SessionStatus], limit: int = 100) -> list[Session]:
        """Sessions in these states, newest first."""
        marks = _marks(len(statuses))
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE status IN ({marks})"
                " ORDER BY opened_ms DESC, id DESC LIMIT ?",
                (*[s.value for s in statuses], limit),
            ).fetchall()
        )
        return [_session(row) for row in rows]

    async def for_reader(self, reader_id: str) -> Session | None:
        """The open (or closing) session this reader feeds, if any."""

        def read(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE reader_id = ? AND status IN ('open', 'closing')",
                (reader_id,),
            ).fetchone()
            return None if row is None else _session(row)

        return await self._read(read)

    async def counting(self, location: str, sku: str) -> tuple[str, str] | None:
        """(id, opened by) of an active count of ``location`` counting ``sku`` (in its scope, or scanned)."""
        return await self._read(lambda conn: _counting(conn, location, sku))

    async def holding_unit(
        self, location: str, sku: str, unit: Unit, types: Sequence[SessionType], except_id: str = ""
    ) -> tuple[Session, int] | None:
        """An active session of ``location`` of one of ``types``, other than ``except_id``, with a line still
        counting the serialised item ``unit`` (of ``sku``), and that line's number; None if there is none."""

        def read(conn: sqlite3.Connection) -> tuple[Session, int] | None:
            rows = conn.execute(
                "SELECT l.session_id, l.no, l.barcode FROM lines l JOIN sessions s ON s.id = l.session_id"
                " WHERE s.location = ? AND s.status IN ('open', 'closing') AND l.sku = ? AND l.undone = 0"
                f" AND l.barcode IS NOT NULL AND s.id <> ? AND s.type IN ({_marks(len(types))})"
                " ORDER BY l.session_id, l.no",
                (location, sku, except_id, *[t.value for t in types]),
            ).fetchall()
            for session_id, no, barcode in rows:
                if _may_name(barcode, unit) and unit_of(barcode) == unit:
                    return _get(conn, session_id), no
            return None

        return await self._read(read)

    async def bind_reader(self, session_id: str, reader_id: str | None) -> Session:
        def bind(conn: sqlite3.Connection) -> Session:
            session = _open_session(conn, session_id, "take a reader")
            if reader_id is not None:
                _check_reader_free(conn, reader_id, session_id)
            conn.execute("UPDATE sessions SET reader_id = ? WHERE id = ?", (reader_id, session_id))
            return _get(conn, session.id)

        return await self._write(bind, small=True)

    async def max_hlc(self) -> int:
        """The highest HLC a line or the close of an open (or closing) session holds: the clock must not issue
        below it, or a line scanned after a restart with the wall clock set back sorts before the lines scanned
        before it. A closed session's stamps are not: what it booked, the outbox holds with its own clock's mark,
        which knows when that clock was reset after running ahead (``Outbox._recover_clock``); a cancelled
        session booked nothing."""
        return int(
            await self._read(
                lambda conn: conn.execute(
                    "SELECT max(coalesce((SELECT max(l.hlc) FROM lines l JOIN sessions s ON s.id = l.session_id"
                    " WHERE s.status IN ('open', 'closing')), 0),"
                    " coalesce((SELECT max(close_hlc) FROM sessions WHERE status = 'closing'), 0))"
                ).fetchone()[0]
            )
        )

    # --- lines ---------------------------------------------------------------
    async def add_line(
        self, line: Line, *, qty_max: int = QTY_MAX, scan_id: str | None = None, unit: Unit | None = None
    ) -> Line:
        """Append ``line`` (its ``no`` is assigned here) to an open session, its SKU at most ``qty_max`` units in
        all (a transfer's: ``TRANSFER_QTY_MAX``, the most one transfer event may move at the hub). A ``scan_id``
        the session already holds answers that line, unchanged: the same scan sent again. ``unit``, the serialised
        item the line's code names (``plan.unit_of``), refuses the line when a line still counting names it: one
        item scanned twice is one unit, not two (checked here, in the write, so two handhelds cannot both pass).
        A held line (``line.held``) is stored undone; the same checks are made again when it is confirmed."""

        def add(conn: sqlite3.Connection) -> Line:
            _open_session(conn, line.session_id, "take scans")
            if scan_id is not None and (earlier := _scanned_line(conn, line.session_id, scan_id)) is not None:
                _check_counts_here(conn, line.session_id, line.sku)
                return same_scan(scan_id, earlier, line.sku, line.qty, line.disposition)
            _check_line_fits(conn, line, qty_max, unit)
            no, count = conn.execute(
                "SELECT coalesce(max(no), 0) + 1, count(*) FROM lines WHERE session_id = ?", (line.session_id,)
            ).fetchone()
            if count >= LINES_MAX:
                raise InvalidSessionInput(f"a session holds at most {LINES_MAX:,} lines; close it and open another")
            stored = dataclasses.replace(line, no=no, undone=line.undone or line.held is not None)
            conn.execute(
                f"INSERT INTO lines ({_LINE_COLUMNS}, scan_id) VALUES ({_marks(17)})", (*_line_row(stored), scan_id)
            )
            return stored

        return await self._write(add, small=True, reserved=True)  # a scan: lives nowhere else (agent.reserve)

    async def held_counts(self, session_ids: Sequence[str]) -> dict[str, int]:
        """How many lines held for a person (``Line.pending``) each of ``session_ids`` has (those with none left out)."""

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = {}
            for start in range(0, len(session_ids), IN_LIST_MAX):
                chunk = session_ids[start : start + IN_LIST_MAX]
                sql = (
                    "SELECT session_id, count(*) FROM lines WHERE held IS NOT NULL AND decided_by IS NULL"
                    f" AND session_id IN ({_marks(len(chunk))}) GROUP BY session_id"
                )
                found.update((str(sid), int(n)) for sid, n in conn.execute(sql, chunk))
            return found

        return await self._read(read)

    async def scanned(self, session_id: str, scan_id: str) -> Line | None:
        """The line a scan with this ``scan_id`` added to the session, whatever the session's state; None if none."""
        return await self._read(lambda conn: _scanned_line(conn, session_id, scan_id))

    async def undo_last(self, session_id: str, by: str) -> Line | None:
        """Mark the newest line of ``by`` not yet undone as undone; None if there is none. Only their own: with
        two people scanning into one session, the newest line of the session is as likely the other's."""

        def undo(conn: sqlite3.Connection) -> Line | None:
            _open_session(conn, session_id, "undo lines")
            row = conn.execute(
                f"SELECT {_LINE_COLUMNS} FROM lines WHERE session_id = ? AND by = ? AND undone = 0"
                " ORDER BY no DESC LIMIT 1",
                (session_id, by),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE lines SET undone = 1 WHERE session_id = ? AND no = ?", (session_id, row[1]))
            return dataclasses.replace(_line(row), undone=True)

        return await self._write(undo, small=True)

    async def undo_line(self, session_id: str, by: str, no: int) -> tuple[Line, bool]:
        """Mark line ``no`` of ``by`` as undone: the line, and whether this undid it (False: it counted for nothing
        already, undone before or held, so an Undo sent again after its answer was lost takes back nothing more).
        A line of another person is a ``SessionConflict``."""

        def undo(conn: sqlite3.Connection) -> tuple[Line, bool]:
            _open_session(conn, session_id, "undo lines")
            line = _line_at(conn, session_id, no)
            if line.by != by:
                raise SessionConflict(
                    f"line {no} of session {session_id} was added by {line.by}; Undo takes back only your own lines"
                )
            if line.undone:
                return line, False
            conn.execute("UPDATE lines SET undone = 1 WHERE session_id = ? AND no = ?", (session_id, no))
            return dataclasses.replace(line, undone=True), True

        return await self._write(undo, small=True)

    async def decide_held(
        self, session_id: str, no: int, *, by: str, confirm: bool, qty_max: int = QTY_MAX, unit: Unit | None = None
    ) -> Line:
        """Confirm (it counts from now on) or reject (it stays undone, kept for the record) the held line ``no`` of
        an open session, as ``by``; the line as it is then. The same decision again answers the line unchanged; the
        other one, or a line that was never held, is a ``SessionConflict``. A line confirmed must still fit as
        ``add_line`` checks it (``qty_max``, the serialised item ``unit``, a count of its SKU elsewhere)."""

        def decide(conn: sqlite3.Connection) -> Line:
            session = _get(conn, session_id)
            line = _line_at(conn, session_id, no)
            if line.held is None:
                raise SessionConflict(f"line {no} of session {session_id} was not held; it counts as scanned")
            if line.decided_by is not None:
                if line.undone != confirm:
                    return line  # the same decision again, or a reject of a line that counts for nothing already
                if line.rejected:
                    raise SessionConflict(
                        f"line {no} of session {session_id} was rejected by {line.decided_by} already"
                    )
                if line.undone:  # confirmed, and then undone as any line may be: it is not booked, and not rejected
                    raise SessionConflict(
                        f"line {no} of session {session_id} was confirmed by {line.decided_by} and then undone, so it"
                        " counts for nothing; scan the label again if its quantity is right"
                    )
                raise SessionConflict(f"line {no} of session {session_id} was confirmed by {line.decided_by} already")
            _check_open(session, "take a decision on its held lines")
            if confirm:
                _check_line_fits(conn, dataclasses.replace(line, undone=False), qty_max, unit)
            conn.execute(
                "UPDATE lines SET undone = ?, decided_by = ?, rejected = ? WHERE session_id = ? AND no = ?",
                (0 if confirm else 1, by, 0 if confirm else 1, session_id, no),
            )
            return dataclasses.replace(line, undone=not confirm, decided_by=by, rejected=not confirm)

        return await self._write(decide, small=True)

    # --- closing and cancelling ----------------------------------------------------
    async def dismiss_refusal(self, event_id: str, *, by: str, at_ms: int) -> bool:
        """Note that ``by`` dismissed the hub's refusal of movement ``event_id``; False if it was dismissed before."""

        def dismiss(conn: sqlite3.Connection) -> bool:
            sql = "INSERT OR IGNORE INTO refusals_dismissed (event_id, by, at_ms) VALUES (?, ?, ?)"
            return conn.execute(sql, (event_id, by, at_ms)).rowcount > 0

        return await self._write(dismiss)

    async def dismissed_count(self) -> int:
        """How many refusals were ever dismissed."""
        return await self._read(lambda conn: int(conn.execute("SELECT count(*) FROM refusals_dismissed").fetchone()[0]))

    async def dismissed_among(self, event_ids: Sequence[str]) -> set[str]:
        """Those of ``event_ids`` whose refusal was dismissed: by the refusal's movement id alone, never by when
        (the dismissal's time is this machine's clock, which may have been set back or put right since)."""

        def read(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(event_ids), IN_LIST_MAX):
                chunk = event_ids[start : start + IN_LIST_MAX]
                sql = f"SELECT event_id FROM refusals_dismissed WHERE event_id IN ({', '.join('?' * len(chunk))})"
                found.update(str(row[0]) for row in conn.execute(sql, chunk))
            return found

        return await self._read(read)

    async def begin_close(self, session_id: str, *, by: str, close_hlc: int, zero_unscanned: bool) -> Session:
        """Decide the close: ``open`` → ``closing`` with its HLC and choices. A ``closing`` session is returned as stored."""

        def begin(conn: sqlite3.Connection) -> Session:
            session = _get(conn, session_id)
            if session.status is SessionStatus.CLOSING:
                return session
            _check_open(session, "be closed")
            _check_none_held(conn, session_id)
            conn.execute(
                "UPDATE sessions SET status = 'closing', close_hlc = ?, zero_unscanned = ?, closed_by = ? WHERE id = ?",
                (close_hlc, int(zero_unscanned), by, session_id),
            )
            return _get(conn, session_id)

        return await self._write(begin)

    async def finish_close(self, session_id: str, report: CloseReport, closed_ms: int) -> Session:
        def finish(conn: sqlite3.Connection) -> Session:
            session = _get(conn, session_id)
            if session.status is SessionStatus.CLOSED:
                return session
            if session.status is not SessionStatus.CLOSING:
                raise SessionNotOpen(f"session {session_id} is {session.status.value}, not closing")
            conn.execute(
                "UPDATE sessions SET status = 'closed', closed_ms = ?, report = ? WHERE id = ?",
                (closed_ms, json.dumps(_report_json(report)), session_id),
            )
            return _get(conn, session_id)

        return await self._write(finish)

    async def reopen(self, session_id: str) -> Session:
        """``closing`` → ``open`` again: only when the close's events were refused and none was recorded."""

        def reopen(conn: sqlite3.Connection) -> Session:
            conn.execute(
                "UPDATE sessions SET status = 'open', close_hlc = NULL, zero_unscanned = 0, closed_by = NULL"
                " WHERE id = ? AND status = 'closing'",
                (session_id,),
            )
            return _get(conn, session_id)

        return await self._write(reopen)

    async def cancel(self, session_id: str, *, by: str, at_ms: int) -> Session:
        def cancel(conn: sqlite3.Connection) -> Session:
            session = _get(conn, session_id)
            _check_open(session, "be cancelled")
            conn.execute(
                "UPDATE sessions SET status = 'cancelled', closed_by = ?, closed_ms = ? WHERE id = ?",
                (by, at_ms, session_id),
            )
            return _get(conn, session_id)

        return await self._write(cancel)


# --- rows ----------------------------------------------------------------------


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _get(conn: sqlite3.Connection, session_id: str) -> Session:
    row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionNotFound(session_id)
    return _session(row)


def _lines(conn: sqlite3.Connection, session_id: str) -> tuple[Line, ...]:
    rows = conn.execute(f"SELECT {_LINE_COLUMNS} FROM lines WHERE session_id = ? ORDER BY no", (session_id,))
    return tuple(_line(row) for row in rows)


def _scanned_line(conn: sqlite3.Connection, session_id: str, scan_id: str) -> Line | None:
    row = conn.execute(
        f"SELECT {_LINE_COLUMNS} FROM lines WHERE session_id = ? AND scan_id = ?", (session_id, scan_id)
    ).fetchone()
    return None if row is None else _line(row)


def same_scan(scan_id: str, earlier: Line, sku: str, qty: int, disposition: Disposition | None) -> Line:
    """``earlier``, the line of ``scan_id``, when the scan sent again is the same (SKU, units, disposition): it
    adds nothing. Another scan under the same id is a ``SessionConflict``."""
    if (earlier.sku, earlier.qty, earlier.disposition) != (sku, qty, disposition):
        raise SessionConflict(
            f"scan {scan_id} is already line {earlier.no} of this session ({earlier.sku} × {earlier.qty});"
            " give a new scan its own scan_id"
        )
    return earlier


def _check_line_fits(conn: sqlite3.Connection, line: Line, qty_max: int, unit: Unit | None) -> None:
    """What ``add_line`` checks of a line that is to count in its session (a new one, or a held one confirmed)."""
    session = _get(conn, line.session_id)
    if session.type is SessionType.COUNT:
        _check_sku_not_counted_elsewhere(conn, session, line.sku)
    if unit is not None:
        _check_unit_not_scanned(conn, line, unit)
    total = conn.execute(
        "SELECT coalesce(sum(qty), 0) FROM lines WHERE session_id = ? AND sku = ? AND undone = 0",
        (line.session_id, line.sku),
    ).fetchone()[0]
    if total + line.qty > qty_max:
        raise InvalidSessionInput(
            f"{line.sku} would total more than {qty_max:,} units in this session"
            + ("; one transfer moves at most that many of a SKU" if qty_max < QTY_MAX else "")
        )


def _check_counts_here(conn: sqlite3.Connection, session_id: str, sku: str) -> None:
    session = _get(conn, session_id)
    if session.type is SessionType.COUNT:
        _check_sku_not_counted_elsewhere(conn, session, sku)


def _check_none_held(conn: sqlite3.Connection, session_id: str) -> None:
    """Refuse to close a session holding a line no person has confirmed or rejected yet: closed, it was either
    booked without anyone saying the quantity is right, or dropped without anyone knowing."""
    rows = conn.execute(
        "SELECT no, sku, qty, source FROM lines WHERE session_id = ? AND held IS NOT NULL AND decided_by IS NULL"
        " ORDER BY no",
        (session_id,),
    ).fetchall()
    if not rows:
        return
    no, sku, qty, source = rows[0]
    first = f"line {no} ({qty:,} × {sku} from {source})"
    if len(rows) == 1:
        what = f"{first} of session {session_id} is held for a person to confirm or reject; confirm or reject it"
    else:
        more = f"{len(rows) - 1} more line" + ("s" if len(rows) > 2 else "")
        what = (
            f"{first} and {more} of session {session_id} are held for a person to confirm or reject; confirm or reject"
            " them"
        )
    raise SessionConflict(f"{what} on the session's page first, so nothing scanned is booked blindly or dropped")


def _check_open(session: Session, what: str) -> None:
    if session.status is not SessionStatus.OPEN:
        raise SessionNotOpen(f"session {session.id} is {session.status.value} and cannot {what}")


def _open_session(conn: sqlite3.Connection, session_id: str, what: str) -> Session:
    session = _get(conn, session_id)
    _check_open(session, what)
    return session


def _check_reader_free(conn: sqlite3.Connection, reader_id: str, session_id: str) -> None:
    row = conn.execute(
        "SELECT id FROM sessions WHERE reader_id = ? AND status IN ('open', 'closing') AND id <> ?",
        (reader_id, session_id),
    ).fetchone()
    if row is not None:
        raise SessionConflict(f"reader {reader_id} already feeds session {row[0]}; close that one or unbind it first")


def _check_not_counted_elsewhere(conn: sqlite3.Connection, session: Session) -> None:
    """A count must not overlap an active count of the same location: each books the SKU's whole count there, so
    the one closed last would replace the other's units (5 counted on the shelf, 3 in the back room: 3 booked)."""
    scope, bin_ = set(session.spec.scope_skus), session.spec.bin
    rows = conn.execute(
        "SELECT id, opened_by, scope, bin FROM sessions WHERE type = 'count' AND status IN ('open', 'closing')"
        " AND location = ? AND id <> ?",
        (session.location, session.id),
    ).fetchall()
    for other_id, other_by, other_scope, other_bin in rows:
        both = sorted(scope.intersection(json.loads(other_scope)).union(scope.intersection(_scanned(conn, other_id))))
        if both:
            what = f"{both[0]!r}" + (f" (and {len(both) - 1} more SKU(s))" if len(both) > 1 else "")
        elif bin_ is not None and other_bin is not None and bin_key(bin_) == bin_key(other_bin):
            what = f"bin {bin_!r}"
        else:
            continue
        raise SessionConflict(
            f"{what} is already being counted in session {other_id} (opened by {other_by}); scan into that"
            " session, or close or cancel it first, so neither count replaces the other's units"
        )


def _check_sku_not_counted_elsewhere(conn: sqlite3.Connection, session: Session, sku: str) -> None:
    """A SKU scanned into a count must not be in another active count of the location (in its scope, or scanned
    into it): a bin count books the SKU's whole count at the location too, so with 5 counted in bin A-01 and 3 in
    bin B-02 the one closed last replaced the other (3 booked). The open checks bins and scopes; this, the scans."""
    found = _counting(conn, session.location, sku, session.id)
    if found is not None:
        raise SessionConflict(
            f"{sku!r} is already being counted in session {found[0]} (opened by {found[1]}); scan into that"
            " session, or close or cancel it first, so neither count replaces the other's units"
        )


def _check_unit_not_scanned(conn: sqlite3.Connection, line: Line, unit: Unit) -> None:
    """Refuse a second line of one serialised item (its GTIN and serial number): a double scan of one phone
    booked two phones, and the hub's ledger two events of one serial."""
    rows = conn.execute(
        "SELECT no, barcode FROM lines WHERE session_id = ? AND sku = ? AND undone = 0 AND barcode IS NOT NULL",
        (line.session_id, line.sku),
    )
    for no, barcode in rows:
        if _may_name(barcode, unit) and unit_of(barcode) == unit:
            raise InvalidSessionInput(
                f"serial number {unit[1]} of {line.sku} is already line {no} of this session, so this scan was not"
                " taken: one serialised item is one unit; scan the next item (or undo that line to scan it again)"
            )


def _may_name(barcode: str, unit: Unit) -> bool:
    """Whether a stored code may name the serialised item ``unit``, before it is decoded to tell: its serial's text
    is in the code, once the white space a printed (HRI) code may hold and the decoder drops is gone, or the code is
    a Digital Link that may escape it with %. Decoding every line made each scan of a delivery of thousands of
    serialised items take seconds."""
    return unit[1] in "".join(barcode.split()) or "%" in barcode


def _counting(conn: sqlite3.Connection, location: str, sku: str, except_id: str = "") -> tuple[str, str] | None:
    """(id, opened by) of an active count of the location, other than ``except_id``, with ``sku`` in its scope or
    scanned into it; None if there is none."""
    rows = conn.execute(
        "SELECT id, opened_by, scope FROM sessions WHERE type = 'count' AND status IN ('open', 'closing')"
        " AND location = ? AND id <> ?",
        (location, except_id),
    ).fetchall()
    for other_id, other_by, other_scope in rows:
        if sku in json.loads(other_scope) or sku in _scanned(conn, other_id):
            return other_id, other_by
    return None


def _scanned(conn: sqlite3.Connection, session_id: str) -> set[str]:
    """The SKUs a session's lines still count (undone lines do not)."""
    rows = conn.execute("SELECT DISTINCT sku FROM lines WHERE session_id = ? AND undone = 0", (session_id,))
    return {row[0] for row in rows}


# One document is worked in one open session of its type at a time (receiving it, or shipping a transfer).
ONE_SESSION_PER_REF = (SessionType.RECEIVE, SessionType.TRANSFER_IN, SessionType.TRANSFER_OUT)


def _check_not_received_elsewhere(conn: sqlite3.Connection, session: Session) -> None:
    """One document is received (or shipped) in one open session at a time: from two, the same goods were booked
    twice, and a transfer's first close (a final receipt) wrote off as lost in transit what the other session had
    scanned; a shipment packed from two sessions was shipped twice, and the receipt wrote off the second. The
    reference is matched as ``_check_not_received_before`` does (``model.ref_key``)."""
    key = ref_key(session.spec.ref or "")
    rows = conn.execute(
        "SELECT id, opened_by, ref FROM sessions WHERE type = ? AND ref IS NOT NULL AND location = ?"
        " AND status IN ('open', 'closing') AND id <> ?",
        (session.type.value, session.location, session.id),
    ).fetchall()
    row = next((r for r in rows if ref_key(r[2]) == key), None)
    if row is not None:
        raise SessionConflict(
            f"{session.spec.ref!r} is already being {_worked(session.type)} in {session.type.value} session {row[0]}"
            f" (opened by {row[1]}); scan into that session, or close or cancel it first, so nothing is booked twice"
        )


# A document received here in a closed session is received again only when the staff say it is a second delivery.
RECEIVED_ONCE = (SessionType.RECEIVE, SessionType.TRANSFER_IN)


def _check_not_received_before(conn: sqlite3.Connection, session: Session) -> None:
    """A delivery note (or transfer) received here in a closed session that booked goods is not received again
    unless the staff say so (``again``): the same note scanned on two days, by two people or off the same pallet,
    booked its goods twice without a word. Its reference is matched as a person means it (``model.ref_key``: case,
    width and the spaces around it aside), so "dn-4711 " typed on a phone, or full-width "ＤＮ-４７１１", is DN-4711."""
    key = ref_key(session.spec.ref or "")
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE type = ? AND location = ? AND status = 'closed'"
        " AND ref IS NOT NULL ORDER BY closed_ms DESC, id DESC",
        (session.type.value, session.location),
    ).fetchall()
    same = [row for row in rows if ref_key(row[_REF_COLUMN]) == key]
    booked = [(s, s.report) for s in map(_session, same) if s.report is not None and s.report.events > 0]
    if not booked:
        return
    last, report = booked[0]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime((last.closed_ms or 0) / 1000))
    more = f", and {len(booked) - 1} time(s) before that" if len(booked) > 1 else ""
    raise AlreadyReceived(
        f"{last.spec.ref!r} was received here already, in {last.type.value} session {last.id} closed by"
        f" {last.closed_by} on {when} ({report.units} units){more}; its goods are booked: open it again only"
        " for a second delivery under the same reference (again: true)"
    )


def _worked(kind: SessionType) -> str:
    return "shipped" if kind is SessionType.TRANSFER_OUT else "received"


def _session_row(s: Session) -> tuple[Any, ...]:
    spec = s.spec
    return (
        s.id, spec.type.value, s.location, s.status.value, s.by, s.opened_ms, spec.ref, spec.to_location,
        spec.from_location, spec.reason, spec.bin, json.dumps(list(spec.scope_skus)),
        json.dumps([[e.sku, e.qty] for e in spec.expected]), spec.reader_id, s.close_hlc, int(s.zero_unscanned),
        s.closed_by, s.closed_ms, None if s.report is None else json.dumps(_report_json(s.report)),
    )  # fmt: skip


def _session(row: Sequence[Any]) -> Session:
    (
        id_, type_, location, status, by, opened_ms, ref, to_location, from_location, reason, bin_, scope, expected,
        reader_id, close_hlc, zero_unscanned, closed_by, closed_ms, report,
    ) = row  # fmt: skip
    spec = SessionSpec(
        type=type_,
        ref=ref,
        to_location=to_location,
        from_location=from_location,
        reason=reason,
        scope_skus=tuple(json.loads(scope)),
        bin=bin_,
        expected=tuple(ExpectedLine(sku, qty) for sku, qty in json.loads(expected)),
        reader_id=reader_id,
    )
    return Session(
        id=id_,
        spec=spec,
        location=location,
        status=SessionStatus(status),
        by=by,
        opened_ms=opened_ms,
        close_hlc=close_hlc,
        zero_unscanned=bool(zero_unscanned),
        closed_by=closed_by,
        closed_ms=closed_ms,
        report=None if report is None else _report_from_json(json.loads(report)),
    )


def _line_row(line: Line) -> tuple[Any, ...]:
    return (
        line.session_id, line.no, line.sku, line.qty, line.hlc, line.at_ms, line.by, line.source, line.barcode,
        line.pack_size, None if line.disposition is None else line.disposition.value, int(line.unknown),
        int(line.undone), line.held, line.decided_by, int(line.rejected),
    )  # fmt: skip


def _line_at(conn: sqlite3.Connection, session_id: str, no: int) -> Line:
    """Line ``no`` of the session; ``LineNotFound`` when it has none."""
    row = conn.execute(f"SELECT {_LINE_COLUMNS} FROM lines WHERE session_id = ? AND no = ?", (session_id, no)).fetchone()
    if row is None:
        raise LineNotFound(session_id, no)
    return _line(row)


def _line(row: Sequence[Any]) -> Line:
    (
        session_id, no, sku, qty, hlc, at_ms, by, source, barcode, pack_size, disposition, unknown, undone, held,
        decided, rejected,
    ) = row  # fmt: skip
    return Line(
        session_id=session_id,
        no=no,
        sku=sku,
        qty=qty,
        hlc=hlc,
        at_ms=at_ms,
        by=by,
        source=source,
        barcode=barcode,
        pack_size=pack_size,
        disposition=None if disposition is None else Disposition(disposition),
        unknown=bool(unknown),
        undone=bool(undone),
        held=held,
        decided_by=decided,
        # None: decided by an agent that did not keep which decision (it stored a rejected line undone)
        rejected=bool(undone and decided is not None) if rejected is None else bool(rejected),
    )


def _report_json(report: CloseReport) -> dict[str, Any]:
    return {
        "events": report.events,
        "units": report.units,
        "lines": [[r.sku, r.status, r.qty, r.expected] for r in report.lines],
        **({"bin_notes": [_note_json(n) for n in report.bin_notes]} if report.bin_notes else {}),
        **(
            {"count_notes": [[n.sku, [list(x) for x in n.moved], n.message] for n in report.count_notes]}
            if report.count_notes
            else {}
        ),
    }


def _note_json(n: BinNote) -> dict[str, Any]:
    return {
        "sku": n.sku, "bin": n.bin, "since": n.since, "before": list(n.before), "between": list(n.between),
        "put_in": [list(x) for x in n.put_in], "taken": [list(x) for x in n.taken], "message": n.message,
    }  # fmt: skip


def _note_from_json(d: dict[str, Any]) -> BinNote:
    return BinNote(
        d["sku"], d["bin"], d["since"], tuple(d["before"]), tuple(d["between"]), tuple((w, q) for w, q in d["put_in"]),
        tuple((w, q) for w, q in d["taken"]), d["message"],
    )  # fmt: skip


def _report_from_json(data: dict[str, Any]) -> CloseReport:
    lines = tuple(ReportLine(*line) for line in data["lines"])
    return CloseReport(
        data["events"],
        data["units"],
        lines,
        tuple(_note_from_json(n) for n in data.get("bin_notes", ())),
        tuple(CountNote(s, tuple((w, q) for w, q in moved), m) for s, moved, m in data.get("count_notes", ())),
    )
