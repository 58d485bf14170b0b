"""The outbox: every stock movement of this store, on disk before anyone is told it was recorded.

One SQLite file (WAL), one writer thread (see ``agent.db``), every write one
``BEGIN IMMEDIATE … COMMIT``. The file holds:

- ``meta``: agent id, location, epoch (random, chosen when the file is
  created), the last seq issued, the acknowledged mark, the last HLC value
  issued (so the clock never goes backwards across restarts) and the sync
  state the replicator reports (``shelfsync-agent status`` reads it);
- ``events``: every movement, seq order; acknowledged rows are kept for the
  retention period so they can be resent if the hub is restored from a backup;
- ``rejected``: events set aside with the reason (the hub refused them);
- ``counts``: the local count cache (``agent.counts``).

    async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
        result = await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "pos:acme")])
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from agent.counts import COUNTS_SCHEMA, CountCache, store_counts
from agent.db import Opening, SqliteFile, SqliteThread
from agent.errors import EventConflict, InvalidMovement, OutboxClosed, OutboxError, OutboxMissing
from protocol import HybridClock, Kind, ProtocolError, Rejection, StockEvent, SyncResponse, event_id_hex, new_event_id
from protocol.hlc import wall_ms_now

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
RETENTION_DEFAULT_S = 30 * 86_400.0
PURGE_EVERY_MS = 3_600_000
EPOCH_BITS = 63
INLINE_MAX_MOVEMENTS = 8  # a record of at most this many may commit on the caller's thread (agent.db)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS events (
        seq         INTEGER PRIMARY KEY,
        event_id    BLOB NOT NULL UNIQUE,
        location    TEXT NOT NULL,
        sku         TEXT NOT NULL,
        kind        TEXT NOT NULL,
        qty         INTEGER NOT NULL,
        occurred_at INTEGER NOT NULL,
        wall_ms     INTEGER NOT NULL,
        source      TEXT NOT NULL,
        ref         TEXT,
        reason      TEXT,
        attrs       BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_key ON events (location, sku)",
    """CREATE TABLE IF NOT EXISTS rejected (
        seq         INTEGER PRIMARY KEY REFERENCES events (seq),
        code        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        rejected_ms INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS acks (acked_seq INTEGER NOT NULL, at_ms INTEGER NOT NULL)",
    COUNTS_SCHEMA,
)
_EVENT_COLUMNS = "seq, event_id, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs"
_EVENT_PARAMS = ", ".join("?" * len(_EVENT_COLUMNS.split(", ")))
_INSERT_EVENT = f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) VALUES ({_EVENT_PARAMS})"
_READ_MARKS = "SELECT key, value FROM meta WHERE key IN ('hlc_last', 'last_seq')"
_WRITE_MARKS = (
    "UPDATE meta SET value = CASE key WHEN 'last_seq' THEN ?1 ELSE ?2 END WHERE key IN ('last_seq', 'hlc_last')"
)
_PENDING = "seq > (SELECT value FROM meta WHERE key = 'acked_seq') AND seq NOT IN (SELECT seq FROM rejected)"


@dataclass(frozen=True, slots=True)
class Movement:
    """One stock movement as a producer (scanner session, POS importer, CLI) hands it over.

    ``event_id``: give a deterministic id (``protocol.derived_event_id``) for
    anything that can be imported twice; recording it again is then a no-op.
    ``occurred_at``: a packed HLC for when it happened (a POS row's time);
    default: the outbox's clock when it is recorded.
    """

    location: str
    sku: str
    kind: Kind
    qty: int
    source: str
    ref: str | None = None
    reason: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    event_id: bytes | None = None
    occurred_at: int | None = None


@dataclass(frozen=True, slots=True)
class RecordResult:
    events: tuple[StockEvent, ...]  # inserted by this call, durable
    duplicates: tuple[bytes, ...]  # ids that were already in the outbox (nothing inserted for them)


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    event: StockEvent
    code: str
    reason: str
    rejected_ms: int


@dataclass(frozen=True, slots=True)
class AnswerResult:
    """What storing one hub answer changed."""

    acked_seq: int
    previous_acked_seq: int
    set_aside: int
    backlog: int  # pending events after the answer

    @property
    def rewound(self) -> bool:
        return self.acked_seq < self.previous_acked_seq


@dataclass(frozen=True, slots=True)
class OutboxStats:
    path: str
    agent_id: str
    location: str
    epoch: int
    last_seq: int
    acked_seq: int
    backlog: int
    oldest_pending_ms: int | None  # wall clock of the oldest pending event
    oldest_pending_age_s: float | None
    set_aside: int
    sync_state: str  # "never", "ok", "unreachable", "credentials_refused", "hub_error"
    last_sync_ms: int | None
    last_error: str | None
    hub_reachable: bool | None  # None: no sync attempt yet
    clock_skew_ms: int | None  # hub clock minus ours, at the last sync


def _meta(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def _set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))


def _row(ev: StockEvent) -> tuple[Any, ...]:
    """``ev`` as a row of ``_EVENT_COLUMNS``."""
    attrs = msgpack.packb(dict(ev.attrs), use_bin_type=True)
    return (
        ev.seq, ev.event_id, ev.location, ev.sku, ev.kind.value, ev.qty, ev.occurred_at, ev.wall_ms, ev.source, ev.ref,
        ev.reason, attrs,
    )  # fmt: skip


class Outbox(SqliteFile):
    """The store's durable queue of stock events. Use ``Outbox.open``."""

    def __init__(self, db: SqliteThread, *, wall_clock_ms: Callable[[], int], retention_s: float) -> None:
        super().__init__(db)
        self._wall_clock_ms = wall_clock_ms
        self._retention_ms = int(retention_s * 1000)
        self._last_purge_ms = 0
        self.clock = HybridClock(wall_clock_ms=wall_clock_ms)
        self.agent_id = ""
        self.location = ""
        self.epoch = 0
        self.new_data = asyncio.Event()  # set after every commit that added events
        self.counts = CountCache(self)

    # --- lifecycle -----------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        agent_id: str | None,
        location: str | None,
        synchronous: str = "full",
        retention_s: float = RETENTION_DEFAULT_S,
        wall_clock_ms: Callable[[], int] = wall_ms_now,
        create: bool = True,
    ) -> Opening[Outbox]:
        """Open (or create) the outbox at ``path``.

        ``create=False`` opens only an existing file (``OutboxMissing``
        otherwise) and changes nothing in it. ``agent_id``/``location`` may be
        None only then; if given, they must match the file's agent id.
        """
        return Opening(
            lambda: cls._open(Path(path), agent_id, location, synchronous, retention_s, wall_clock_ms, create)
        )

    @classmethod
    async def _open(
        cls,
        path: Path,
        agent_id: str | None,
        location: str | None,
        synchronous: str,
        retention_s: float,
        wall_clock_ms: Callable[[], int],
        create: bool,
    ) -> Outbox:
        if create and (agent_id is None or location is None):
            raise OutboxError("creating an outbox needs the agent id and the location")
        if agent_id is not None and location is not None:
            check_identity(agent_id, location)
        if not path.exists():
            if not create:
                raise OutboxMissing(str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            # Leftovers of a deleted file must not be replayed into the new one.
            for stale in ("-wal", "-shm", "-journal"):
                path.with_name(path.name + stale).unlink(missing_ok=True)
        try:
            db = SqliteThread(path, synchronous)
        except ValueError as err:
            raise OutboxError(str(err)) from err
        outbox = cls(db, wall_clock_ms=wall_clock_ms, retention_s=retention_s)
        try:
            await db.connect()
            if create:
                await db.write(lambda conn: outbox._init(conn, agent_id, location))
            else:
                await db.read(lambda conn: outbox._load(conn, agent_id))
        except sqlite3.DatabaseError as err:
            await db.close()
            if getattr(err, "sqlite_errorname", "") in _DISK_REFUSED:
                raise OutboxError(f"the outbox {path} could not be opened: {write_failure(err)}") from err
            raise OutboxError(f"{path} is not a usable shelfsync outbox: {err}") from err
        except BaseException:
            await db.close()
            raise
        return outbox

    def _init(self, conn: sqlite3.Connection, agent_id: str | None, location: str | None) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        now_ms = self._wall_clock_ms()
        if _meta(conn, "epoch") is None:
            _set_meta(
                conn,
                schema_version=SCHEMA_VERSION,
                agent_id=agent_id,
                location=location,
                epoch=secrets.randbits(EPOCH_BITS) or 1,
                created_ms=now_ms,
                last_seq=0,
                acked_seq=0,
                hlc_last=0,
                sync_state="never",
            )
        elif location is not None and _meta(conn, "location") != location:
            _set_meta(conn, location=location)
        self._load(conn, agent_id)
        self._purge(conn, now_ms)

    def _load(self, conn: sqlite3.Connection, agent_id: str | None) -> None:
        version = _meta(conn, "schema_version")
        if version is None:
            raise OutboxError(f"{self.path} is not a shelfsync outbox (it has no agent identity)")
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path} was written by a newer shelfsync (schema {version}); upgrade this agent")
        stored_agent = _meta(conn, "agent_id")
        if agent_id is not None and stored_agent != agent_id:
            raise OutboxError(
                f"the outbox {self.path} belongs to agent {stored_agent!r}, not {agent_id!r};"
                " point this agent at its own outbox file"
            )
        self.agent_id = stored_agent
        self.location = _meta(conn, "location")
        self.epoch = _meta(conn, "epoch")
        self.clock.observe(_meta(conn, "hlc_last", 0))

    def _closed_error(self) -> Exception:
        return OutboxClosed(self.path)

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        detail = write_failure(err) if verb == "written" else err
        return OutboxError(f"the outbox {self.path} could not be {verb}: {detail}")

    def _event(self, row: Sequence[Any]) -> StockEvent:
        """An event from a row of ``_EVENT_COLUMNS``."""
        seq, event_id, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs = row
        return StockEvent(
            event_id, self.agent_id, self.epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason,
            msgpack.unpackb(attrs, raw=False),
        )  # fmt: skip

    # --- recording -------------------------------------------------------
    async def record(self, movements: Sequence[Movement], *, tally: str | None = None) -> RecordResult:
        """Validate, commit all of ``movements`` in one transaction, then wake the replicator.

        A movement that breaks the event contract raises ``InvalidMovement``
        naming it (``EventConflict`` when its id is already recorded with other
        content), and none of the batch is recorded. ``tally`` names a counter (see
        ``tally()``) increased by the number inserted, in the same transaction.
        """
        if self._closed:
            raise OutboxClosed(self.path)
        drafts = [self._draft(i, m) for i, m in enumerate(movements)]
        small = len(drafts) <= INLINE_MAX_MOVEMENTS
        result = await self._write(lambda conn: self._insert(conn, drafts, tally), small=small)
        if result.events:
            self.new_data.set()
        return result

    def _draft(self, index: int, m: Movement) -> tuple[StockEvent, bool]:
        """The movement as a validated event, and whether the producer supplied its time.

        Its seq, clock and wall time are placeholders, filled in at commit.
        """
        try:
            event = StockEvent(
                event_id=m.event_id if m.event_id is not None else new_event_id(),
                agent_id=self.agent_id,
                epoch=self.epoch,
                seq=1,
                location=m.location,
                sku=m.sku,
                kind=m.kind,
                qty=m.qty,
                occurred_at=m.occurred_at if m.occurred_at is not None else 1,
                wall_ms=0,
                source=m.source,
                ref=m.ref,
                reason=m.reason,
                attrs=m.attrs,
            )
        except ProtocolError as err:
            raise InvalidMovement(
                f"movement {index} ({m.kind} of {str(m.sku)[:40]!r}) is invalid, nothing was recorded: {err}"
            ) from err
        return event, m.occurred_at is not None

    def _insert(
        self, conn: sqlite3.Connection, drafts: list[tuple[StockEvent, bool]], tally: str | None
    ) -> RecordResult:
        # One read of both marks: another process (``shelfsync-agent record``) may have recorded since we last
        # looked, and nobody else can write until this transaction ends (BEGIN IMMEDIATE).
        marks = dict(conn.execute(_READ_MARKS).fetchall())
        self.clock.observe(marks.get("hlc_last", 0))
        last_seq = marks["last_seq"]
        wall_ms = self._wall_clock_ms()
        inserted: list[StockEvent] = []
        duplicates: list[bytes] = []
        for draft, time_supplied in drafts:
            occurred_at = draft.occurred_at if time_supplied else self.clock.now()
            ev = draft.stamped(seq=last_seq + 1, occurred_at=occurred_at, wall_ms=wall_ms)
            cur = conn.execute(_INSERT_EVENT, _row(ev))
            if cur.rowcount == 1:
                last_seq += 1
                inserted.append(ev)
            else:
                self._check_same(conn, ev, check_time=time_supplied)
                duplicates.append(ev.event_id)
        conn.execute(_WRITE_MARKS, (last_seq, self.clock.last))  # observe() above: never below the stored hlc
        if tally is not None and inserted:
            _set_meta(conn, **{f"tally:{tally}": _meta(conn, f"tally:{tally}", 0) + len(inserted)})
        return RecordResult(tuple(inserted), tuple(duplicates))

    def _check_same(self, conn: sqlite3.Connection, ev: StockEvent, *, check_time: bool) -> None:
        """The same event id with different content is an error, not a duplicate."""
        row = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (ev.event_id,)).fetchone()
        stored = self._event(row)
        fields = ("location", "sku", "kind", "qty", "source", "ref", "reason", "attrs") + (
            ("occurred_at",) if check_time else ()
        )
        differ = [name for name in fields if getattr(stored, name) != getattr(ev, name)]
        if differ:
            raise EventConflict(
                f"event {event_id_hex(ev.event_id)} is already recorded with a different {', '.join(differ)};"
                " nothing was recorded"
            )

    async def tally(self, name: str) -> int:
        """How many events have been recorded with ``record(..., tally=name)``."""
        return int(await self._read(lambda conn: _meta(conn, f"tally:{name}", 0)))

    # --- replication -----------------------------------------------------
    async def pending(self, limit: int) -> tuple[StockEvent, ...]:
        """Unacknowledged events not set aside, in seq order, at most ``limit``.

        A row that cannot be read back as an event (written by a newer or a broken program) is set
        aside with code "unreadable" instead of blocking every row behind it.
        """
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE {_PENDING} ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        )
        events: list[StockEvent] = []
        unreadable: list[tuple[int, str]] = []
        for row in rows:
            try:
                events.append(self._event(row))
            except (ValueError, TypeError, msgpack.UnpackException) as err:
                unreadable.append((row[0], f"this outbox row cannot be read back as an event: {err}"))
        if unreadable:
            await self._write(lambda conn: self._set_unreadable(conn, unreadable))
        return tuple(events)

    def _set_unreadable(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        now_ms = self._wall_clock_ms()
        for seq, reason in rows:
            conn.execute(
                "INSERT OR REPLACE INTO rejected (seq, code, reason, rejected_ms) VALUES (?, 'unreadable', ?, ?)",
                (seq, reason[:1000], now_ms),
            )
            log.error("Outbox row seq %d was set aside and the events behind it are sent: %s.", seq, reason)

    async def mark_acked(self, hwm: int) -> AnswerResult:
        """Set the acknowledged mark to the hub's high-water mark (rewinding it if the hub's is lower)."""
        result = await self._write(lambda conn: self._ack(conn, hwm, ()))
        self._log_ack(hwm, result)
        return result

    async def set_aside(self, rejections: Sequence[Rejection]) -> int:
        """Keep these events aside with their reasons; they are not sent again. Returns how many."""
        return await self._write(lambda conn: self._set_aside(conn, rejections))

    async def apply_answer(self, resp: SyncResponse, *, clock_skew_ms: int | None) -> AnswerResult:
        """Store one decoded hub answer in one transaction: mark, set-asides, counts, sync state."""
        as_of_ms = resp.server_time_ms or self._wall_clock_ms()

        def apply(conn: sqlite3.Connection) -> AnswerResult:
            result = self._ack(conn, resp.hwm, resp.rejected)
            store_counts(conn, resp.counts, as_of_ms)
            _set_meta(
                conn,
                sync_state="ok",
                last_error=None,
                last_sync_ms=self._wall_clock_ms(),
                clock_skew_ms=clock_skew_ms,
                hub_reachable=1,
            )
            return result

        result = await self._write(apply)
        self._log_ack(resp.hwm, result)
        return result

    def _ack(self, conn: sqlite3.Connection, hwm: int, rejections: Sequence[Rejection]) -> AnswerResult:
        previous = _meta(conn, "acked_seq")
        last_seq = _meta(conn, "last_seq")
        now_ms = self._wall_clock_ms()
        if hwm > last_seq:
            # The hub has seen seqs this file never issued: the file was restored from a backup.
            # Number new events above the hub's mark so they are not mistaken for ones it has.
            log.warning(
                "The hub has seen seq %d of epoch %d but this outbox only issued up to %d (restored from a backup?);"
                " numbering new events from %d.",
                hwm,
                self.epoch,
                last_seq,
                hwm + 1,
            )
            _set_meta(conn, last_seq=hwm)
        _set_meta(conn, acked_seq=hwm)
        if hwm > previous:
            conn.execute("INSERT INTO acks (acked_seq, at_ms) VALUES (?, ?)", (hwm, now_ms))
        set_aside = self._set_aside(conn, rejections)
        if now_ms - self._last_purge_ms >= PURGE_EVERY_MS:
            self._purge(conn, now_ms)
        backlog = conn.execute(f"SELECT count(*) FROM events WHERE {_PENDING}").fetchone()[0]
        return AnswerResult(hwm, previous, set_aside, backlog)

    def _log_ack(self, hwm: int, result: AnswerResult) -> None:
        if result.rewound:
            log.warning(
                "The hub's high-water mark for epoch %d is %d, below the %d it acknowledged before"
                " (restored from a backup?); resending %s events from seq %d.",
                self.epoch,
                hwm,
                result.previous_acked_seq,
                f"{result.backlog:,}",
                hwm + 1,
            )

    def _set_aside(self, conn: sqlite3.Connection, rejections: Sequence[Rejection]) -> int:
        done = 0
        now_ms = self._wall_clock_ms()
        for r in rejections:
            row = conn.execute("SELECT seq FROM events WHERE event_id = ?", (r.event_id,)).fetchone()
            if row is None:  # the id is the key; a seq alone could name another event
                log.warning(
                    "The hub rejected event %s (seq %d), which this outbox does not hold.",
                    event_id_hex(r.event_id) if len(r.event_id) == 16 else r.event_id.hex(),
                    r.seq,
                )
                continue
            conn.execute(
                "INSERT OR REPLACE INTO rejected (seq, code, reason, rejected_ms) VALUES (?, ?, ?, ?)",
                (row[0], r.code, r.reason, now_ms),
            )
            done += 1
        return done

    def _purge(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Delete acknowledged events whose acknowledgement is older than the retention period."""
        self._last_purge_ms = now_ms
        cutoff_ms = now_ms - self._retention_ms
        mark = conn.execute("SELECT max(acked_seq) FROM acks WHERE at_ms <= ?", (cutoff_ms,)).fetchone()[0]
        if mark is None:
            return
        upto = min(mark, _meta(conn, "acked_seq"))
        conn.execute("DELETE FROM events WHERE seq <= ? AND seq NOT IN (SELECT seq FROM rejected)", (upto,))
        conn.execute("DELETE FROM acks WHERE at_ms <= ?", (cutoff_ms,))

    async def note_sync_failure(self, state: str, message: str, *, hub_reachable: bool) -> None:
        """Remember why the last sync failed, for ``status``."""
        await self._write(
            lambda conn: _set_meta(conn, sync_state=state, last_error=message, hub_reachable=int(hub_reachable))
        )

    # --- reading -----------------------------------------------------------
    async def list_rejected(self, limit: int = 1000) -> list[RejectedEvent]:
        """Events set aside, newest first."""
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS.split(', '))}, r.code, r.reason, r.rejected_ms"
                " FROM rejected r JOIN events e ON e.seq = r.seq ORDER BY r.rejected_ms DESC, r.seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [RejectedEvent(self._event(row[:12]), row[12], row[13], row[14]) for row in rows]

    async def stats(self) -> OutboxStats:
        def read(conn: sqlite3.Connection) -> OutboxStats:
            backlog, oldest = _backlog(conn)
            reachable = _meta(conn, "hub_reachable")
            return OutboxStats(
                path=self.path,
                agent_id=self.agent_id,
                location=_meta(conn, "location"),
                epoch=self.epoch,
                last_seq=_meta(conn, "last_seq"),
                acked_seq=_meta(conn, "acked_seq"),
                backlog=backlog,
                oldest_pending_ms=oldest,
                oldest_pending_age_s=None if oldest is None else max(0.0, (self._wall_clock_ms() - oldest) / 1000),
                set_aside=conn.execute("SELECT count(*) FROM rejected").fetchone()[0],
                sync_state=_meta(conn, "sync_state", "never"),
                last_sync_ms=_meta(conn, "last_sync_ms"),
                last_error=_meta(conn, "last_error"),
                hub_reachable=None if reachable is None else bool(reachable),
                clock_skew_ms=_meta(conn, "clock_skew_ms"),
            )

        return await self._read(read)


def _backlog(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(events waiting, wall ms of the oldest) without counting rows: cheap with a million waiting.

    Seqs are handed out one after another and only acknowledged rows are ever purged, so the rows
    above the acknowledged mark are exactly last_seq − mark of them, less those set aside.
    """
    acked, last = _meta(conn, "acked_seq"), _meta(conn, "last_seq")
    first_kept = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
    floor = acked if first_kept is None else max(acked, first_kept - 1)
    aside = conn.execute("SELECT count(*) FROM rejected WHERE seq > ?", (floor,)).fetchone()[0]
    row = conn.execute(f"SELECT wall_ms FROM events WHERE {_PENDING} ORDER BY seq LIMIT 1").fetchone()
    return max(0, last - floor - aside), None if row is None else row[0]


_DISK_REFUSED = ("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_SHMSIZE")


def write_failure(err: sqlite3.Error) -> str:
    """A failed write in words an operator can act on: a full disk says so (SQLite calls a file-size limit an I/O error)."""
    if getattr(err, "sqlite_errorname", "") in _DISK_REFUSED:
        return (
            f"the disk is full or refuses writes ({err}); nothing of this write was recorded and everything"
            " recorded before is safe; free disk space, then record again"
        )
    return str(err)


def check_identity(agent_id: str, location: str) -> None:
    """Raise OutboxError unless ``agent_id`` and ``location`` are valid on the wire."""
    try:
        StockEvent(bytes(16), agent_id, 0, 1, location, "x", Kind.ADJUST, 1, 1, 0, "api:check")
    except ProtocolError as err:
        raise OutboxError(f"this agent's identity is not valid: {err}") from err
