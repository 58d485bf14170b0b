"""The outbox: every stock movement of this store, on disk before anyone is told it was recorded.

One SQLite file (WAL), one writer thread (see ``agent.db``), every write one
``BEGIN IMMEDIATE … COMMIT``. The file holds:

- ``meta``: agent id, location, epoch (random, chosen when the file is
  created), the last seq issued, the acknowledged mark, the last HLC value
  issued (so the clock never goes backwards across restarts) and the sync
  state the replicator reports (``shelfsync-agent status`` reads it), and the
  id of the hub's database it last synced with and at which URL (``hub_id``,
  ``hub_id_url``: a refusal from a hub whose id changed says so);
- ``events``: every movement, seq order; acknowledged rows are kept for the
  retention period so they can be resent if the hub is restored from a backup;
- ``rejected``: events set aside with the reason (the hub refused them);
- ``counts``: the local count cache (``agent.counts``); meta ``feed_cursor`` is
  where the cache follows the hub's change feed (``agent.feed``), stored in the
  transaction that stores the changes read up to it; ``counts_due``: the keys
  whose cached count lacks acknowledged movements (an answer lost), until the
  hub's count of them is read again (``agent.count_refresh``).

Lineage. Every row carries a 16-byte digest of the outbox's history up to it:
``chain(seq) = blake2b(chain(seq - 1) || event_id)``, 16 zero bytes before the
first row (computed at record time, in the same transaction; meta ``chain_last``
holds the newest). The hub stores the digest sent with each batch at its
high-water mark and answers it back. The acknowledged mark moves to the hub's
mark only when this file holds a row there with the same digest. Otherwise the
hub has seen another history of this epoch — the file was restored from an
older backup, copied to another machine, or rolled back with a VM snapshot —
and renumbering or skipping would lose movements. The outbox then *forks*: it
takes a new random epoch that continues from its own acknowledged mark
(``epoch_base``, verified when it was acknowledged), keeps its rows and seqs,
and resends everything above the base; the hub counts each event once (an event
is identified by agent id and event id, not by epoch and seq). It says so once
as a WARNING and in ``status``.

The file under the agent. Deleting the outbox (or its folder) while the agent
runs leaves the open file working but nowhere on disk: whatever it holds dies
with the process. Before every write and every ``FILE_CHECK_S`` in the running
agent, the outbox compares the path's (st_dev, st_ino) with the file it
opened. Deleted: it writes the open database back at the path (SQLite's backup
API, fsynced), goes on there and says so once as an ERROR; until that has
worked, new movements are refused like on a full disk. Replaced by another
file (a backup put back, a new outbox made by hand): that file is left alone,
the open one is saved beside it as ``outbox.sqlite3.replaced-<UTC time>``,
new movements are refused, ``replaced`` is set (the agent stops so that its
restart uses the file now at the path), and the restart takes the saved copy's
movements into the outbox it finds (``agent.saved``; ``shelfsync-agent outbox send FILE`` sends them by hand).
Written over in place by another program (``cp backup.sqlite3 outbox.sqlite3``: the same file, other bytes;
only the running agent's outbox, ``owner=True``, can tell, see ``agent.db``):
the same, before the agent's next checkpoint could copy its WAL into the
bytes put there; what the open connection reads (its WAL over those bytes) is
saved, and what only the file's overwritten bytes held and the hub has not
acknowledged is gone with them, which the ERROR says.

    async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
        result = await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "pos:acme")])
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from agent.counts import (
    COUNTS_DUE_SCHEMA,
    COUNTS_SCHEMA,
    CountCache,
    HeldCounts,
    add_positions,
    due_settled,
    forget_positions,
    keep_expiring,
    mark_due,
    store_changes,
    store_counts,
)
from agent.db import OnDisk, Opening, SqliteFile, SqliteThread, disk_refused
from agent.errors import (
    EventConflict,
    InvalidMovement,
    OutboxClosed,
    OutboxError,
    OutboxFull,
    OutboxMissing,
    OutboxOfAnotherAgent,
)
from agent.lock import agent_running
from protocol import (
    DiskReport,
    HybridClock,
    Kind,
    LostReport,
    ProtocolError,
    Rejection,
    StockEvent,
    SyncResponse,
    event_id_hex,
    new_event_id,
)
from protocol.codec import chain_link
from protocol.feed import FeedChange
from protocol.hlc import pack_hlc, unpack_hlc, wall_ms_now

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLite's Unix files: a database path of up to 512 bytes with room for "-journal" (its MAX_PATHNAME)
SQLITE_PATH_MAX = 504
SCHEMA_VERSION = 2  # 2: the lineage chain (a ``chain`` per row)
CHAIN_BYTES = 16
ZERO_CHAIN = bytes(CHAIN_BYTES)  # the chain before the first row
RETENTION_DEFAULT_S = 30 * 86_400.0
PURGE_EVERY_MS = 3_600_000
# Acknowledgements age by the retention clock (meta ``kept_ms``), which moves at each hub answer by the lesser of
# what the hub's clock and this machine's moved since the one before, never back: one wrong clock, ahead or behind
# or put right, can neither purge early nor stop the purge. When the two moved this far apart, one WARNING says so,
# at most once an hour for each direction (two hubs an hour apart answering in turn would say it at every answer).
CLOCKS_APART_MS = 3_600_000
CLOCKS_APART_SAID_EVERY_S = 3_600.0
# Windows back from now (``recent_since_ms``: a serial number booked twice within a day) are timed on the monotonic
# clock while the agent runs: the wall clock jumping (NTP putting right a clock hours off) neither shortens nor
# lengthens them. A jump of more than WALL_JUMP_MS starts a new frame of wall stamps; frames that ended more than
# WINDOW_FRAMES_S ago are forgotten. Across a restart the time the agent was stopped, which only the wall clock
# saw, counts for at most STOPPED_MAX_MS (meta ``window_wall_ms`` and ``window_low_ms``, kept with each record).
WALL_JUMP_MS = 1_000
WINDOW_FRAMES_S = 2 * 86_400.0
STOPPED_MAX_MS = 86_400_000
EPOCH_BITS = 63
OPEN_BUSY_S = 10.0  # opening waits this long for another process creating or migrating the same file
OPEN_RETRY_S = 0.05
INLINE_MAX_MOVEMENTS = 8  # a record of at most this many may commit on the caller's thread (agent.db)
FILE_CHECK_S = 2.0  # the running agent looks whether its outbox is still at its path this often, writes or not
REPLACED_SUFFIX = ".replaced-"  # the open outbox saved beside another file put at its path: <name>.replaced-<UTC time>

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
        attrs       BLOB NOT NULL,
        chain       BLOB
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
    COUNTS_DUE_SCHEMA,
)
_EVENT_COLUMNS = "seq, event_id, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs"
_EVENT_PARAMS = ", ".join("?" * len(_EVENT_COLUMNS.split(", ")))
_INSERT_EVENT = f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}, chain) VALUES ({_EVENT_PARAMS}, ?)"
_READ_MARKS = "SELECT key, value FROM meta WHERE key IN ('hlc_last', 'last_seq', 'chain_last')"
_WRITE_MARKS = (
    "UPDATE meta SET value = CASE key WHEN 'last_seq' THEN ?1 WHEN 'hlc_last' THEN ?2 ELSE ?3 END"
    " WHERE key IN ('last_seq', 'hlc_last', 'chain_last')"
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
    forked_from_epoch: int | None = None  # the hub holds another history of that epoch: this outbox left it
    epoch: int = 0  # after a fork: the new epoch
    fork_reason: str = ""
    change_id: int | None = None  # the hub's change feed position the answer's counts are as of (None: not said)
    feed_restarted: bool = False  # that position went back: the hub was restored, the cache follows it from 0
    hub_id_before: str | None = None  # the hub's database id this outbox last synced with there, if it differs now
    due: int = 0  # keys whose acknowledged movements this answer's counts lack (agent.counts, "due")
    # due keys whose pending movements this answer settled without bringing their counts (the hub refused or held
    # them): nothing of them is pending now, so their counts can be read (agent.counts.due_settled)
    due_settled: int = 0
    # rewound: the movements between the hub's mark and the one it acknowledged before that this outbox no longer
    # holds (retention purged them): the restored hub lacks them for good
    gone: int = 0
    # the hub's change numbering went below that of its answer that last moved the mark of the agent id this outbox
    # was rebound from: the movements that answer acknowledged are not in its counts (seq from, seq to, the old
    # agent id, that answer's change id)
    rebound_lacks: tuple[int, int, str, int] | None = None

    @property
    def rewound(self) -> bool:
        return self.acked_seq < self.previous_acked_seq


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The next request's events and the lineage it reports (``protocol.SyncRequest``)."""

    events: tuple[StockEvent, ...]
    chain: bytes | None  # at the last event's seq, or at the acknowledged mark when there is none
    epoch_base: int  # the seq this epoch continues from (0: the file's first epoch)
    base_chain: bytes | None
    backlog: int = 0  # events waiting above the acknowledged mark when read (these included)
    oldest_pending_ms: int | None = None  # wall ms of the oldest of them


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
    sync_state: str  # "never", "ok", "unreachable", "intercepted", "credentials_refused", "hub_error", …
    last_sync_ms: int | None
    last_error: str | None
    hub_reachable: bool | None  # None: no sync attempt yet
    clock_skew_ms: int | None  # hub clock minus ours, at the last sync
    # … and the hub said its own clock is this far off its stores' then (protocol.routes.HUB_CLOCK_HEADER; None: not)
    hub_clock_off_ms: int | None = None
    # … or that this many other stores agree with its clock, while this machine's is a minute or more off it
    # (protocol.routes.HUB_CLOCK_AGREED_HEADER; None: not said: the hub cannot tell whose clock is wrong)
    hub_clock_agreed: int | None = None
    epoch_base: int = 0  # the seq this epoch continues from (see the module doc: lineage)
    forked_from_epoch: int | None = None  # the last fork: the epoch this outbox left, when, and events resent
    forked_ms: int | None = None
    fork_resent: int | None = None
    held_by_hub: int = 0  # events the hub holds in its clock quarantine: processed, waiting for an operator there
    rebound_from: str | None = None  # the agent id this outbox belonged to before the last ``rebind``, and when
    rebound_ms: int | None = None
    feed_cursor: int | None = None  # where the count cache follows the hub's change feed (None: it never did)
    # the last rewind that found acknowledged movements purged (``AnswerResult.gone``): how many, the seqs, when
    hub_lacks: int | None = None
    hub_lacks_seqs: str | None = None
    hub_lacks_ms: int | None = None
    hub_lacks_of: str | None = None  # … acknowledged to this agent id before a ``rebind`` (None: to this one)
    set_aside_codes: dict[str, int] = field(default_factory=dict)  # set_aside by the hub's code


@dataclass(frozen=True, slots=True)
class Rebound:
    """What ``Outbox.rebind`` did."""

    previous_agent_id: str
    agent_id: str
    epoch: int  # the epoch the outbox continues in (unchanged when it belonged to ``agent_id`` already)
    epoch_base: int  # the seq it continues from: what the hub acknowledged to the previous agent id
    waiting: int  # movements that will be sent as ``agent_id``

    @property
    def changed(self) -> bool:
        return self.previous_agent_id != self.agent_id


@dataclass(frozen=True, slots=True)
class Requeued:
    """One set-aside movement ``Outbox.requeue`` put back in the queue: the same event id and movement, a new seq."""

    event: StockEvent  # as it is queued now (its new seq)
    previous_seq: int
    code: str  # what the hub had answered


@dataclass(frozen=True, slots=True)
class RequeueResult:
    requeued: tuple[Requeued, ...]
    refused: dict[str, int]  # code → movements left aside, as no resend can change the hub's answer (``NEVER_RESENT``)
    waiting_before: int  # movements that were waiting already, sent before the requeued ones


# A clock that ran ahead (see Outbox._recover_clock): reset once the machine's clock is within
# HLC_SANE_SKEW_MS of the hub's and the outbox's clock is HLC_AHEAD_RESET_MS ahead of it (the hub's
# default clock window), or any amount over HLC_SANE_SKEW_MS when the hub has just held an event for it.
HLC_SANE_SKEW_MS = 60_000
HLC_AHEAD_RESET_MS = 24 * 3_600_000
HELD_CODE = "quarantined"  # a rejection code that is not a refusal: the hub holds the event (clock quarantine)
# Set-aside codes that ``requeue`` refuses: sending the same movement again can only meet the same answer. Every other
# code may succeed after something changes at the hub: ``forbidden_location`` once the credential is bound to the
# location, ``invalid_bundle`` once the bundle's recipe changes (or the SKU is no bundle any more), and a code this
# agent does not know (a newer hub's) is left to the operator's judgement.
NEVER_RESENT = {
    "conflict": "the hub holds another movement under the same event id, and it keeps the one it has",
    "invalid_transfer": "the movement itself breaks the transfer rules, and sent again unchanged it breaks them again",
    "invalid": "the movement names another agent or epoch than the one it was sent in",
    "unreadable": "this outbox cannot read the row back as a movement, so there is nothing to send",
    HELD_CODE: "the hub holds it already, for its operator to apply or refuse (GET /v1/quarantine)",
}


def _refuse_other_database(path: Path) -> None:
    """Raise OutboxError when ``path`` is a SQLite database that is not in WAL mode, as an outbox always is, without
    writing to it: opening it to use it would switch it to WAL first, changing another program's database (a hub's
    backup handed to ``outbox send``) before refusing it. A database in WAL mode is not changed by the opening (which
    refuses it if it is no outbox); a file that is no SQLite database is left to the opening, which says why."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return  # the opening says why it cannot be read
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00") or header[18] == 2:  # 2: WAL
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.Error as err:
        tables = [f"nothing this agent can read: {err}"]
    raise OutboxError(
        f"{path} is not a shelfsync outbox: an outbox is a SQLite database in WAL mode, and this one is not "
        f"(it holds {', '.join(tables) or 'no table'}); it was left as it was"
    )


def _thread(path: Path, synchronous: str, owner: bool) -> SqliteThread:
    """The outbox's connection: the running agent's alone copies the WAL back while it runs (see ``agent.db``)."""
    if owner:
        return SqliteThread(path, synchronous, owner=True)
    return SqliteThread(path, synchronous, checkpoint_if=lambda: not agent_running(path))


def _readable_after(conn: sqlite3.Connection, acked: int) -> tuple[int, int]:
    """How many rows after seq ``acked`` can be read back, and the newest seq among them."""
    count, newest = conn.execute("SELECT count(*), max(seq) FROM events WHERE seq > ?", (acked,)).fetchone()
    return int(count), int(newest or 0)


def _marks(conn: sqlite3.Connection) -> tuple[int, int]:
    """The last seq issued and the acknowledged mark."""
    return int(_meta(conn, "last_seq", 0)), int(_meta(conn, "acked_seq", 0))


def _meta(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def _set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))


def _lost_report(conn: sqlite3.Connection) -> LostReport | None:
    """The movements the hub lacks for good as the hub is told them (``hub_lacks``), or None. Said of a file from
    before the epoch was kept with them: the epoch it is in now (the one they were in, unless it forked since)."""
    count, seqs, found_ms = _meta(conn, "hub_lacks"), _meta(conn, "hub_lacks_seqs"), _meta(conn, "hub_lacks_ms")
    if not count or seqs is None or found_ms is None:
        return None
    first, _, last = str(seqs).partition("-")
    was = _meta(conn, "hub_lacks_of")
    return LostReport(
        int(first), int(last), count, found_ms, _meta(conn, "hub_lacks_epoch", _meta(conn, "epoch")),
        at_least=was is not None, of_agent=was,
    )  # fmt: skip


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
        self._clocks_apart_said: dict[int, float] = {}  # direction (+1: the hub's moved more) -> monotonic s said
        # Retention purged due keys' movements (agent.counts.keep_expiring) and said so, since counts were last read
        self.expired_said = False
        self._monotonic_s: Callable[[], float] = time.monotonic  # the rate limit's clock, not moved by the wall's
        self.clock = HybridClock(wall_clock_ms=wall_clock_ms)
        # This run's frames of wall stamps: (monotonic s it started, wall ms minus monotonic ms in it), oldest first;
        # and the run before this one's (the wall ms of its last record, its frames' lowest offset from its last).
        self._frames: list[tuple[float, int]] = []
        self._run_before: tuple[int, int] | None = None
        self._before_frame: tuple[float, int] | None = None  # (monotonic s it ended, its offset): the run before
        self._window_low_ms = 0  # the lowest offset of the frames kept, from the newest's (kept with each record)
        self.agent_id = ""
        self.location = ""
        self.epoch = 0
        # The acknowledged movements the hub lacks and this outbox no longer holds (``hub_lacks``), as the replicator
        # tells the hub (``protocol.LostReport``); None: none known.
        self.lost: LostReport | None = None
        self._chain_column = "chain"
        self.new_data = asyncio.Event()  # set after every commit that added events
        self.counts = CountCache(self)
        self.replaced = asyncio.Event()  # another file is at the path now; this one was saved beside it
        self.saved_copy: Path | None = None  # where, then
        self._keeping = asyncio.Lock()  # one write-back at a time
        self._refusal: OutboxError | None = None  # why new movements are refused (the file is not on disk)
        self._issued = self._acked = 0  # the last seq and the mark as of the last write: what the file must hold

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
        owner: bool = False,
    ) -> Opening[Outbox]:
        """Open (or create) the outbox at ``path``.

        ``create=False`` opens only an existing file (``OutboxMissing``
        otherwise) and changes nothing in it. ``agent_id``/``location`` may be
        None only then; if given, they must match the file's agent id.
        ``owner``: the running agent's (``run``), which alone copies the WAL back into the file while it runs and
        so tells a file written over by another program; any other leaves that to a running agent.
        """
        return Opening(
            lambda: cls._open(Path(path), agent_id, location, synchronous, retention_s, wall_clock_ms, create, owner)
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
        owner: bool = False,
    ) -> Outbox:
        if create and (agent_id is None or location is None):
            raise OutboxError("creating an outbox needs the agent id and the location")
        if agent_id is not None and location is not None:
            check_identity(agent_id, location)
        new = not path.exists()
        if new:
            if not create:
                raise OutboxMissing(str(path))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a user who may not write where the service keeps its data, a drive not there
                raise OutboxError(
                    f"the folder {path.parent} for the outbox cannot be made ({err.strerror or err}); check data_dir"
                    " and that this user may write there"
                ) from err
            # Leftovers of a deleted file must not be replayed into the new one.
            for stale in ("-wal", "-shm", "-journal"):
                path.with_name(path.name + stale).unlink(missing_ok=True)
        elif not create:
            await asyncio.to_thread(_refuse_other_database, path)
        try:
            db = _thread(path, synchronous, owner)
        except ValueError as err:
            raise OutboxError(str(err)) from err
        outbox = cls(db, wall_clock_ms=wall_clock_ms, retention_s=retention_s)
        try:
            deadline = time.monotonic() + OPEN_BUSY_S
            while True:
                try:
                    await db.connect()
                    if create:
                        await db.write(lambda conn: outbox._init(conn, agent_id, location))  # noqa: B023 (awaited here)
                    else:
                        await db.read(lambda conn: outbox._load(conn, agent_id))  # noqa: B023 (awaited here)
                    break
                except sqlite3.OperationalError as err:
                    # Another process (an agent starting, a `record`) is creating or switching the same file
                    # to WAL at this moment: SQLite answers "locked" without waiting. Try again shortly.
                    if not _busy(err) or time.monotonic() > deadline:
                        raise
                    await db.close()
                    db = _thread(path, synchronous, owner)
                    outbox = cls(db, wall_clock_ms=wall_clock_ms, retention_s=retention_s)
                    await asyncio.sleep(OPEN_RETRY_S)
        except sqlite3.DatabaseError as err:
            await db.close()
            if disk_refused(err):
                raise OutboxError(f"the outbox {path} could not be opened: {write_failure(err)}") from err
            if isinstance(err, sqlite3.OperationalError) and _busy(err):
                raise OutboxError(
                    f"the outbox {path} stayed locked by another process for {OPEN_BUSY_S:g} s; try again"
                ) from err
            if new and "unable to open" in str(err) and len(os.fsencode(path.absolute())) <= SQLITE_PATH_MAX:
                raise OutboxError(
                    f"the outbox {path} cannot be created ({err}); check data_dir and that this user may write in"
                    f" {path.parent}"
                ) from err
            if (size := len(os.fsencode(path.absolute()))) > SQLITE_PATH_MAX and "unable to open" in str(err):
                raise OutboxError(
                    f"the outbox {path} cannot be opened: its path is {size} bytes long, and SQLite opens a file"
                    f" by a path of at most {SQLITE_PATH_MAX} bytes; choose a shorter data_dir (or outbox)"
                ) from err
            raise OutboxError(f"{path} is not a usable shelfsync outbox: {err}") from err
        except BaseException:
            await db.close()
            raise
        return outbox

    def _init(self, conn: sqlite3.Connection, agent_id: str | None, location: str | None) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        add_positions(conn)
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
                chain_last=ZERO_CHAIN,
                ack_chain=ZERO_CHAIN,
                epoch_base=0,
                base_chain=ZERO_CHAIN,
            )
        elif location is not None and _meta(conn, "location") != location:
            self._refuse_other_agent(conn, agent_id, location)  # another agent's outbox moves nowhere: refused
            self._move(conn, _meta(conn, "location"), location)
        if _meta(conn, "schema_version") == 1:
            _migrate_to_2(conn)
        self._load(conn, agent_id)
        self._purge(conn)
        before_ms = _meta(conn, "window_wall_ms")
        self._run_before = None if before_ms is None else (int(before_ms), int(_meta(conn, "window_low_ms", 0)))

    def _move(self, conn: sqlite3.Connection, was: str, location: str) -> None:
        """The configuration names another location: rows keep the location they were recorded at, and the count
        cache reads the hub's change feed from 0, since the cursor it kept went past the new location's changes."""
        unsent = conn.execute(f"SELECT count(*) FROM events WHERE {_PENDING} AND location = ?", (was,)).fetchone()[0]
        _set_meta(conn, location=location, feed_cursor=0)
        # The feed follows this agent's location only: what the cache kept for the old one would be served as the
        # hub's count for ever after, however the hub's count moved. Answers to the old location's unsent movements
        # store their keys again, as of those answers.
        dropped = conn.execute("DELETE FROM counts WHERE location = ?", (was,)).rowcount
        conn.execute("DELETE FROM counts_due WHERE location = ?", (was,))
        log.warning(
            "The outbox %s was for location %s and is now for %s (the configuration changed): its %d movements"
            " recorded at %s and not yet sent are sent as %s's, new ones are booked at %s, and the count cache"
            " reads %s's counts from the start of the hub's change feed and drops the %d counts it kept for %s,"
            " which it no longer follows.",
            self.path, was, location, unsent, was, was, location, location, dropped, was,
        )  # fmt: skip

    def _load(self, conn: sqlite3.Connection, agent_id: str | None) -> None:
        version = _meta(conn, "schema_version")
        if version is None:
            raise OutboxError(f"{self.path} is not a shelfsync outbox (it has no agent identity)")
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path} was written by a newer shelfsync (schema {version}); upgrade this agent")
        self.agent_id = self._refuse_other_agent(conn, agent_id)
        self._chain_column = "chain" if version >= 2 else "NULL"  # a schema-1 file opened read-only (status)
        self.location = _meta(conn, "location")
        self.epoch = _meta(conn, "epoch")
        self.lost = _lost_report(conn)
        self.clock.observe(_meta(conn, "hlc_last", 0))
        self._issued, self._acked = _marks(conn)

    def _refuse_other_agent(self, conn: sqlite3.Connection, agent_id: str | None, location: str | None = None) -> str:
        """The outbox's agent id; ``OutboxOfAnotherAgent`` when the configuration names another."""
        stored_agent: str = _meta(conn, "agent_id")
        if agent_id is not None and stored_agent != agent_id:
            raise OutboxOfAnotherAgent(
                self.path, stored_agent, agent_id, _backlog(conn)[0],
                outbox_location=_meta(conn, "location"), configured_location=location,
            )  # fmt: skip
        return stored_agent

    def _closed_error(self) -> Exception:
        return OutboxClosed(self.path)

    async def close(self) -> None:
        """Close; a file deleted under this outbox is written back first (its connection is the last copy)."""
        if not self._closed:
            with contextlib.suppress(OutboxError):
                await self.check_file()
        await super().close()

    async def _write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        small: bool = False,
        reserved: bool = False,
        shows_room: bool = True,
    ) -> T:
        if not self._closed and self._db.on_disk() != "same":
            await self.check_file()
        marks: list[int] = []

        def marked(conn: sqlite3.Connection) -> T:
            result = fn(conn)
            marks[:] = _marks(conn)
            return result

        result = await super()._write(marked, small=small, reserved=reserved, shows_room=shows_room)
        if marks:
            self._issued, self._acked = marks
        return result

    async def check_file(self) -> OnDisk:
        """Whether the path still holds this outbox; if not, write it back or save it (see the module doc).

        Returns what was found: "same", "missing" (written back, or refused until it can be), "replaced" or
        "overwritten".
        """
        if self._closed or (found := self._db.on_disk()) == "same":
            if not self._closed:
                self._db.checkpoint_if_large()
            return "same"
        async with self._keeping:
            found = self._db.on_disk()
            if found == "same":
                return "same"
            try:
                kept, saved = await self._db.keep_file(self._saved_name)
            except (OSError, sqlite3.Error) as err:
                if str(self._db.path) == self.path:  # nothing moved: the open file still holds everything
                    if self._refusal is None:
                        log.error(
                            "The outbox %s is no longer on disk and could not be written back (%s); new movements"
                            " are refused until it can be, and every movement recorded before is held by this agent.",
                            self.path, err,
                        )  # fmt: skip
                    self._refusal = OutboxError(
                        f"the outbox {self.path} is no longer on disk and could not be written back ({err});"
                        " nothing of this write was recorded and everything recorded before is safe; record again"
                    )
                    return found
                kept, saved = "saved", self._db.path  # written, but not where it belongs: like another file there
            if kept == "restored":
                self._refusal = None
                stats = await self.stats()
                log.error(
                    "The outbox %s was deleted while the agent ran; it was written back from the open file with all"
                    " %s movements (%s not yet at the hub) and the agent goes on with it.",
                    self.path, f"{stats.last_seq:,}", f"{stats.backlog:,}",
                )  # fmt: skip
                return "missing"
            self.saved_copy = saved
            if found == "overwritten":
                return await self._overwritten(saved)
            self._refusal = OutboxError(
                f"the outbox {self.path} was replaced by another file while the agent ran and the agent stops to"
                " use it; nothing of this write was recorded; record again once the agent runs again"
            )
            waiting = (await self.stats()).backlog
            log.error(
                "The outbox %s was replaced by another file while the agent ran; the agent's own, with %s movements"
                " the hub has not acknowledged, was saved as %s (the restart takes them into the outbox it finds, to be"
                " sent with its own; `shelfsync-agent outbox send %s` sends them by hand), and the agent stops so that its restart uses the file now"
                " at %s.",
                self.path, f"{waiting:,}", saved, saved, self.path,
            )  # fmt: skip
            self.replaced.set()
            return "replaced"

    async def _overwritten(self, saved: Path | None) -> OnDisk:
        """The file was written over in place: the agent's own was saved as ``saved`` (see the module doc)."""
        self._refusal = OutboxError(
            f"the outbox {self.path} was overwritten in place while the agent ran (another file copied over it) and"
            " the agent stops to use that file; nothing of this write was recorded; record again once it runs again"
        )
        issued, acked = self._issued, self._acked
        try:
            readable, newest = await self._read(lambda conn: _readable_after(conn, acked))
        except OutboxError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            kept = f"{max(issued - acked, 0):,} movements after seq {acked:,} the hub has not acknowledged"
            said = (
                f"its own, which should hold {kept}, was saved as {saved} but reads as a mix with the file copied over"
                f" it ({cause}): movements only the overwritten file held are lost with it"
            )
        else:
            issued = max(issued, newest)
            lost = issued - acked - readable
            said = (
                f"its own, with {readable:,} movements the hub has not acknowledged, was saved as {saved} (the restart"
                f" takes them into the outbox it finds, to be sent with its own; `shelfsync-agent outbox send {saved}`"
                " sends them by hand)"
            )
            if lost > 0:
                said += (
                    f", and {lost:,} of the {issued - acked:,} after seq {acked:,} were only in the overwritten file and"
                    " are lost with it"
                )
        log.error(
            "The outbox %s was overwritten in place while the agent ran (another file copied over it, as `cp` does);"
            " nothing of the agent's was written into that file, %s; the agent stops so that its restart uses the"
            " file now at %s.",
            self.path, said, self.path,
        )  # fmt: skip
        self.replaced.set()
        return "overwritten"

    def _saved_name(self) -> Path:
        """Beside the outbox: ``<name>.replaced-<UTC time>``, never an existing file's name."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = Path(f"{self.path}{REPLACED_SUFFIX}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = Path(f"{self.path}{REPLACED_SUFFIX}{stamp}-{n}")
        return target

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        detail = write_failure(err) if verb == "written" else err
        full = verb == "written" and disk_refused(err)
        return (OutboxFull if full else OutboxError)(f"the outbox {self.path} could not be {verb}: {detail}")

    def _event(self, row: Sequence[Any]) -> StockEvent:
        """An event from a row of ``_EVENT_COLUMNS``."""
        seq, event_id, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs = row
        return StockEvent(
            event_id, self.agent_id, self.epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason,
            msgpack.unpackb(attrs, raw=False),
        )  # fmt: skip

    # --- recording -------------------------------------------------------
    async def record(
        self, movements: Sequence[Movement], *, tally: str | None = None, reserved: bool = False
    ) -> RecordResult:
        """Validate, commit all of ``movements`` in one transaction, then wake the replicator.

        A movement that breaks the event contract raises ``InvalidMovement``
        naming it (``EventConflict`` when its id is already recorded with other
        content), and none of the batch is recorded. ``tally`` names a counter (see
        ``tally()``) increased by the number inserted, in the same transaction.
        ``reserved``: a scan, which lives nowhere else: a full disk first gives back the agent's disk reserve
        (``agent.reserve``), a step at a time, before the movement is refused.
        """
        if self._closed:
            raise OutboxClosed(self.path)
        await self.check_file()  # a movement is acknowledged only in a file that is on disk at the path
        if self._refusal is not None:
            raise self._refusal
        drafts = [self._draft(i, m) for i, m in enumerate(movements)]
        self._frames_now()  # a jump of the wall clock since the last look starts a new frame before these are stamped
        small = len(drafts) <= INLINE_MAX_MOVEMENTS
        result = await self._write(lambda conn: self._insert(conn, drafts, tally), small=small, reserved=reserved)
        if result.events:
            self.new_data.set()
        return result

    async def take_over(self, events: Sequence[StockEvent]) -> RecordResult:
        """Record ``events`` of another outbox file of this agent (a copy saved beside it, ``agent.saved``) as they
        are — their ids, movements, stamps and wall times — each a new seq of this outbox's epoch, in one
        transaction, then wake the replicator. An event held here already is a duplicate (nothing recorded for it);
        one held with another movement raises ``EventConflict`` and nothing is recorded."""
        if self._closed:
            raise OutboxClosed(self.path)
        await self.check_file()
        if self._refusal is not None:
            raise self._refusal
        drafts = [(ev, True) for ev in events]
        result = await self._write(lambda conn: self._insert(conn, drafts, None, keep_wall=True))
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
        self,
        conn: sqlite3.Connection,
        drafts: list[tuple[StockEvent, bool]],
        tally: str | None,
        *,
        keep_wall: bool = False,  # the events' own wall times (take_over), not this commit's
    ) -> RecordResult:
        # One read of both marks: another process (``shelfsync-agent record``) may have recorded since we last
        # looked, and nobody else can write until this transaction ends (BEGIN IMMEDIATE).
        marks = dict(conn.execute(_READ_MARKS).fetchall())
        self.clock.observe(marks.get("hlc_last", 0))
        last_seq = marks["last_seq"]
        wall_ms = self._wall_clock_ms()
        inserted: list[StockEvent] = []
        duplicates: list[bytes] = []
        chain = marks.get("chain_last") or ZERO_CHAIN
        for draft, time_supplied in drafts:
            occurred_at = draft.occurred_at if time_supplied else self.clock.now()
            stamped_ms = draft.wall_ms if keep_wall else wall_ms
            ev = draft.stamped(seq=last_seq + 1, occurred_at=occurred_at, wall_ms=stamped_ms)
            linked = chain_link(chain, ev.event_id)
            cur = conn.execute(_INSERT_EVENT, (*_row(ev), linked))
            if cur.rowcount == 1:
                last_seq += 1
                chain = linked
                inserted.append(ev)
            else:
                self._check_same(conn, ev, check_time=time_supplied)
                duplicates.append(ev.event_id)
        conn.execute(_WRITE_MARKS, (last_seq, self.clock.last, chain))  # observe() above: never below the stored hlc
        if inserted:  # how far back this run's frames reach, for the windows timed after a restart
            _set_meta(conn, window_wall_ms=wall_ms, window_low_ms=self._window_low_ms)
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

    async def recorded_from(self, source: str) -> int:
        """How many events from ``source`` the outbox holds (acknowledged ones until retention purges them).

        A scan of the table, no index: for the rare question "did a record call that a crash interrupted commit?"
        (one ``record`` is one transaction: it committed all of its events or none)."""
        query = "SELECT count(*) FROM events WHERE source = ?"
        return int(await self._read(lambda conn: conn.execute(query, (source,)).fetchone()[0]))

    async def recorded_after(self, source: str, event_id: bytes | None, *, since_wall_ms: int) -> list[StockEvent]:
        """The events from ``source`` recorded after the event ``event_id`` (any, when None or no longer held),
        and since ``since_wall_ms``, oldest first: what a scan the agent was killed while booking booked."""
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE source = ? AND wall_ms >= ?"
            " AND seq > coalesce((SELECT seq FROM events WHERE event_id = ?), 0) ORDER BY seq"
        )
        rows = await self._read(lambda conn: conn.execute(query, (source, since_wall_ms, event_id)).fetchall())
        events = []
        for row in rows:
            with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):  # unreadable: never booked
                events.append(self._event(row))
        return events

    async def booked(
        self, location: str, sku: str, kind: Kind | None = None, *, since_wall_ms: int = 0, source: str | None = None
    ) -> list[StockEvent]:
        """The events of (location, sku) recorded since ``since_wall_ms`` (on this outbox's clock), of ``kind`` and
        from ``source`` if given, newest first: those the outbox still holds (acknowledged ones until retention
        purges them) and the hub did not refuse. What a scanner asks to tell a serialised item scanned twice."""
        query = (
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE location = ? AND sku = ? AND (? IS NULL OR kind = ?)"
            " AND wall_ms >= ? AND (? IS NULL OR source = ?) AND seq NOT IN (SELECT seq FROM rejected)"
            " ORDER BY seq DESC"
        )
        value = kind.value if kind is not None else None
        args = (location, sku, value, value, since_wall_ms, source, source)
        rows = await self._read(lambda conn: conn.execute(query, args).fetchall())
        events = []
        for row in rows:
            with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):  # unreadable: never booked
                events.append(self._event(row))
        return events

    # --- replication -----------------------------------------------------
    async def pending(self, limit: int) -> tuple[StockEvent, ...]:
        """Unacknowledged events not set aside, in seq order, at most ``limit``.

        A row that cannot be read back as an event (written by a newer or a broken program) is set
        aside with code "unreadable" instead of blocking every row behind it.
        """
        return (await self.outgoing(limit)).events

    async def outgoing(self, limit: int, *, after: int = 0) -> Outgoing:
        """``pending(limit)`` and the lineage the request carrying them reports (limit 0: a handshake's).

        ``after``: only events above this seq (the replicator reads the next batch while the one before it
        is on its way)."""

        def read(conn: sqlite3.Connection) -> tuple[list[Any], bytes | None, int, bytes | None, tuple[int, int | None]]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS}, {self._chain_column} FROM events"
                " WHERE seq > max((SELECT value FROM meta WHERE key = 'acked_seq'), ?)"
                " AND seq NOT IN (SELECT seq FROM rejected) ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            meta = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN ('ack_chain', 'epoch_base', 'base_chain')")
            )
            return rows, meta.get("ack_chain"), meta.get("epoch_base") or 0, meta.get("base_chain"), _backlog(conn)

        rows, ack_chain, epoch_base, base_chain, (backlog, oldest_ms) = await self._read(read)
        events: list[StockEvent] = []
        unreadable: list[tuple[int, str]] = []
        chain = ack_chain
        for row in rows:
            try:
                events.append(self._event(row[:12]))
            except (ValueError, TypeError, msgpack.UnpackException) as err:
                unreadable.append((row[0], f"this outbox row cannot be read back as an event: {err}"))
            else:
                chain = row[12]
        if unreadable:
            await self._write(lambda conn: self._set_unreadable(conn, unreadable))
        return Outgoing(
            tuple(events), chain if events else ack_chain, epoch_base, base_chain if epoch_base else None, backlog,
            oldest_ms,
        )  # fmt: skip

    def _set_unreadable(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        now_ms = self._wall_clock_ms()
        for seq, reason in rows:
            conn.execute(
                "INSERT OR REPLACE INTO rejected (seq, code, reason, rejected_ms) VALUES (?, 'unreadable', ?, ?)",
                (seq, reason[:1000], now_ms),
            )
            log.error("Outbox row seq %d was set aside and the events behind it are sent: %s.", seq, reason)

    async def mark_acked(self, hwm: int, chain: bytes | None = None, *, hub_ms: int | None = None) -> AnswerResult:
        """Set the acknowledged mark to the hub's high-water mark (rewinding it if the hub's is lower),
        or fork to a new epoch if the hub's mark is not this outbox's history (see the module doc).
        ``hub_ms``: the hub's clock when it answered; with this machine's, acknowledgements age by it (``_age``)."""
        result = await self._write(lambda conn: self._ack(conn, hwm, chain, (), hub_ms=hub_ms), shows_room=False)
        if result.gone:
            self.lost = await self._read(_lost_report)
        self._after_ack(hwm, result)
        return result

    async def set_aside(self, rejections: Sequence[Rejection]) -> int:
        """Keep these events aside with their reasons; they are not sent again. Returns how many."""
        return await self._write(lambda conn: self._set_aside(conn, rejections))

    async def apply_answer(
        self, resp: SyncResponse, *, clock_skew_ms: int | None, hub_id: str | None = None, hub_url: str = "",
        hub_clock_off_ms: int | None = None, hub_clock_agreed: int | None = None, held: HeldCounts | None = None,
        counted: tuple[int, int] | None = None,
    ) -> AnswerResult:  # fmt: skip
        """Store one decoded hub answer in one transaction: mark, set-asides, counts, sync state, and the id of the
        database of the hub at ``hub_url`` that answered (``protocol.routes.HUB_ID_HEADER``; None: it sent none).
        ``hub_clock_off_ms``: the hub said its own clock is this far off its stores' (``HUB_CLOCK_HEADER``);
        ``hub_clock_agreed``: that this many other stores agree with its clock (``HUB_CLOCK_AGREED_HEADER``).
        ``held``: the counts of earlier answers a full disk refused to store, stored too (before this answer's)
        when this one moves the mark to theirs or past it in this history (``agent.counts.HeldCounts``).
        ``counted``: the first and last seq of the batch the answer is for (None: a handshake, which carries no
        counts of movements). The movements the mark moves past outside it (and outside ``held``'s) came with no
        counts: their keys are due (``agent.counts.mark_due``), unless this answer's counts hold them; due keys
        whose last pending movements it settles without their counts can be read now (``due_settled``)."""
        as_of_ms = resp.server_time_ms or self._wall_clock_ms()

        def apply(conn: sqlite3.Connection) -> AnswerResult:
            result = self._ack(conn, resp.hwm, resp.chain, resp.rejected, hub_ms=resp.server_time_ms or None)
            self._recover_clock(conn, resp, clock_skew_ms)
            restarted, rebound_lacks = False, None
            if resp.change_id is not None:
                rebound_lacks = self._rebound_lacks(conn, resp.change_id)
                if result.acked_seq > result.previous_acked_seq and result.forked_from_epoch is None:
                    _set_meta(
                        conn, acked_change_id=resp.change_id, acked_change_from=result.previous_acked_seq,
                        acked_change_to=result.acked_seq,
                    )  # fmt: skip
                before = _meta(conn, "sync_change_id")
                if before is not None and resp.change_id < before:  # the hub's numbering went back: restored
                    self._restart_feed(conn)
                    restarted = True
                _set_meta(conn, sync_change_id=resp.change_id)
            due = 0
            if result.acked_seq > result.previous_acked_seq and result.forked_from_epoch is None:
                counted_to = result.previous_acked_seq
                if held and result.acked_seq >= held.hwm:
                    held.store(conn, as_of_ms)
                    counted_to = max(counted_to, held.hwm)
                first, last = counted if counted else (result.acked_seq + 1, result.acked_seq)
                due += mark_due(conn, counted_to, min(result.acked_seq, first - 1), resp.change_id)
                due += mark_due(conn, max(counted_to, last), result.acked_seq, resp.change_id)
            store_counts(conn, resp.counts, as_of_ms, resp.change_id)
            if due:  # … but for the keys whose counts the answer holds
                due = conn.execute("SELECT count(*) FROM counts_due").fetchone()[0]
            settled = 0
            if result.acked_seq > result.previous_acked_seq and result.forked_from_epoch is None:
                settled = due_settled(conn, result.previous_acked_seq, result.acked_seq)
            if resp.held is not None:
                _set_meta(conn, held_by_hub=resp.held)
            before = None
            if hub_id is not None:
                if _meta(conn, "hub_id_url") == hub_url and _meta(conn, "hub_id") not in (None, hub_id):
                    before = _meta(conn, "hub_id")
                _set_meta(conn, hub_id=hub_id, hub_id_url=hub_url)
            _set_meta(
                conn,
                sync_state="ok",
                last_error=None,
                last_sync_ms=self._wall_clock_ms(),
                clock_skew_ms=clock_skew_ms,
                hub_clock_off_ms=hub_clock_off_ms,
                hub_clock_agreed=hub_clock_agreed,
                hub_reachable=1,
            )
            return dataclasses.replace(
                result, change_id=resp.change_id, feed_restarted=restarted, hub_id_before=before, due=due,
                due_settled=settled, rebound_lacks=rebound_lacks,
            )  # fmt: skip

        result = await self._write(apply, shows_room=False)
        if result.gone or result.rebound_lacks is not None:
            self.lost = await self._read(_lost_report)
        self._after_ack(resp.hwm, result)
        if result.rebound_lacks is not None:
            first, last, was, acked_change = result.rebound_lacks
            log.error(
                "The hub's change numbering is at %d, below the %d it had reached when it acknowledged agent %s's"
                " movements up to seq %d before this outbox was rebound to %s (its database was restored from an"
                " older copy?): it lacks at least the %s movements of seq %d to %d that %s had acknowledged, which"
                " this outbox cannot send again as %s (the hub would count twice those it still holds); count the"
                " store's stock again.",
                result.change_id, acked_change, was, last, self.agent_id, f"{last - first + 1:,}",
                first, last, was, self.agent_id,
            )  # fmt: skip
        return result

    def _rebound_lacks(self, conn: sqlite3.Connection, change_id: int) -> tuple[int, int, str, int] | None:
        """After a ``rebind``: whether the hub's change numbering went below the answer that last moved the previous
        agent id's mark (its database was put back to before that answer). Then the movements that answer
        acknowledged are missing there and cannot be sent again under the new id: they are said lost (``hub_lacks``),
        once. (seq from, seq to, the previous agent id, that answer's change id), or None."""
        acked_change = _meta(conn, "rebound_change_id")
        if acked_change is None or change_id >= acked_change:
            return None
        first, last = _meta(conn, "rebound_change_from") + 1, _meta(conn, "rebound_seq")
        was = _meta(conn, "rebound_from")
        _set_meta(
            conn, rebound_change_id=None, hub_lacks=last - first + 1, hub_lacks_seqs=f"{first}-{last}",
            hub_lacks_ms=self._wall_clock_ms(), hub_lacks_of=was,
            hub_lacks_epoch=_meta(conn, "rebound_epoch", _meta(conn, "epoch")),
        )  # fmt: skip
        return first, last, was, acked_change

    # --- the change feed (agent.feed) --------------------------------------------
    async def feed_position(self) -> FeedPosition:
        """Where the count cache follows the hub's change feed."""
        return await self._read(_feed_position)

    async def apply_changes(
        self, changes: Sequence[FeedChange], *, after: FeedPosition, cursor: int, history: str | None = None
    ) -> bool:
        """Store feed changes read after ``after`` up to ``cursor`` (of the feed history ``history``), and the
        cursor, in one transaction.

        False (nothing stored) when the position is no longer ``after``: the feed was restarted meanwhile (a
        sync answer showed the hub restored from a backup), and what was read before is of the old numbering.
        """

        def apply(conn: sqlite3.Connection) -> bool:
            if _feed_position(conn) != after:
                return False
            store_changes(conn, changes)
            _set_meta(conn, feed_cursor=cursor, feed_history=history)
            return True

        return bool(await self._write(apply))

    async def restart_feed(self) -> None:
        """The hub's change feed is behind this cache's position, or of another history (restored from a backup,
        another hub): follow it from 0."""
        await self._write(self._restart_feed)

    def _restart_feed(self, conn: sqlite3.Connection) -> None:
        forget_positions(conn)
        restarts = _feed_position(conn).restarts + 1
        _set_meta(conn, feed_cursor=0, feed_history=None, feed_restarts=restarts, sync_change_id=None)

    def _ack(
        self,
        conn: sqlite3.Connection,
        hwm: int,
        hub_chain: bytes | None,
        rejections: Sequence[Rejection],
        *,
        hub_ms: int | None = None,
    ) -> AnswerResult:
        previous = _meta(conn, "acked_seq")
        last_seq = _meta(conn, "last_seq")
        now_ms = self._wall_clock_ms()
        epoch = _meta(conn, "epoch")
        if hwm > last_seq:  # seqs this file never issued
            why = f"the hub holds seq {hwm:,} of epoch {epoch} but this outbox only issued up to {last_seq:,}"
            return self._fork(conn, hwm, previous, why, rejections, now_ms)
        mine = _chain_at(conn, hwm, previous)
        # A row at or below the acknowledged mark whose digest is gone was verified when it was acknowledged.
        if hub_chain is not None and hwm > 0 and mine != hub_chain and (mine is not None or hwm > previous):
            why = f"the hub's seq {hwm:,} of epoch {epoch} is another copy's movement, not this outbox's"
            return self._fork(conn, hwm, previous, why, rejections, now_ms)
        gone = _gone(conn, hwm, previous) if hwm < previous else 0
        if gone:
            _set_meta(
                conn, hub_lacks=gone, hub_lacks_seqs=f"{hwm + 1}-{previous}", hub_lacks_ms=now_ms, hub_lacks_of=None,
                hub_lacks_epoch=epoch,
            )  # fmt: skip
        if hwm < previous:  # acknowledged by a hub that was restored since: they age from the resend's answer
            conn.execute("DELETE FROM acks WHERE acked_seq > ?", (hwm,))
        _set_meta(conn, acked_seq=hwm, ack_chain=mine if mine is not None else hub_chain)
        kept_ms = self._age(conn, hub_ms)
        if hwm > previous and kept_ms is not None:
            conn.execute("INSERT INTO acks (acked_seq, at_ms) VALUES (?, ?)", (hwm, kept_ms))
        set_aside = self._set_aside(conn, rejections)
        if kept_ms is not None and kept_ms - self._last_purge_ms >= PURGE_EVERY_MS:
            self._purge(conn)
        return AnswerResult(hwm, previous, set_aside, _backlog(conn)[0], gone=gone)  # not count(*): 1e6 rows, 50 ms

    def _age(self, conn: sqlite3.Connection, hub_ms: int | None) -> int | None:
        """Move the retention clock for an answer stamped ``hub_ms`` by the hub, and return it (None: no hub
        answer ever said its time, so nothing ages).

        Neither clock alone is trusted: this machine's may be a century ahead (a dead CMOS battery) and the hub's
        a year ahead or behind (and then put right). Each answer moves the retention clock by the lesser of what
        the two moved since the one before, never below zero; the hub's time and this machine's are kept as
        they are, so a clock put right is measured from where it is now. A file from before this rule ages
        from the hub's time as it last heard it (its acknowledgements are stamped with it).
        """
        kept_ms: int | None = _meta(conn, "kept_ms", _meta(conn, "hub_time_ms"))
        if hub_ms is None:
            return kept_ms
        wall_ms = self._wall_clock_ms()
        heard_ms, heard_wall_ms = _meta(conn, "hub_time_ms"), _meta(conn, "hub_heard_wall_ms")
        if kept_ms is None:
            kept_ms = hub_ms
        elif heard_ms is not None and heard_wall_ms is not None:
            hub_moved, wall_moved = hub_ms - heard_ms, wall_ms - heard_wall_ms
            kept_ms += max(0, min(hub_moved, wall_moved))
            if abs(hub_moved - wall_moved) > CLOCKS_APART_MS:
                self._say_clocks_apart(hub_moved, wall_moved)
        _set_meta(conn, kept_ms=kept_ms, hub_time_ms=hub_ms, hub_heard_wall_ms=wall_ms)
        return kept_ms

    def _say_clocks_apart(self, hub_moved: int, wall_moved: int) -> None:
        """One WARNING that the clocks moved apart, at most once per ``CLOCKS_APART_SAID_EVERY_S`` for each
        direction; the rest at DEBUG. Two hubs whose clocks are hours apart answering one agent in turn (a
        failover pair, one of them wrong) moved the clocks apart at every answer, and the warning repeated at
        every answer; the retention clock itself is moved as before."""
        direction = 1 if hub_moved > wall_moved else -1
        now_s = self._monotonic_s()
        said_s = self._clocks_apart_said.get(direction)
        level = logging.DEBUG
        if said_s is None or now_s - said_s >= CLOCKS_APART_SAID_EVERY_S:
            level = logging.WARNING
            self._clocks_apart_said[direction] = now_s
        log.log(
            level,
            "Since the hub's last answer its clock moved %s h and this machine's %s h (one of them is"
            " wrong, or was put right); acknowledged events age by the lesser, so they are kept at least"
            " retention_days.",
            f"{hub_moved / 3_600_000:+,.1f}", f"{wall_moved / 3_600_000:+,.1f}",
        )  # fmt: skip

    def _fork(
        self,
        conn: sqlite3.Connection,
        hwm: int,
        previous: int,
        why: str,
        rejections: Sequence[Rejection],
        now_ms: int,
    ) -> AnswerResult:
        """Leave this epoch: a new one continues from the acknowledged mark (see the module doc).

        The rows up to the mark were acknowledged with this history. Only if the hub's mark is below
        ours (the hub was restored too) is nothing known to be there, and the new epoch starts at 0; the
        acknowledgements above the base are forgotten, so what is sent again ages from the answer to it.
        """
        old = _meta(conn, "epoch")
        new = old
        while new == old:
            new = secrets.randbits(EPOCH_BITS) or 1
        base = previous if hwm >= previous else 0
        base_chain = (_meta(conn, "ack_chain") if base else ZERO_CHAIN) or None
        set_aside = self._set_aside(conn, rejections)
        conn.execute("DELETE FROM acks WHERE acked_seq > ?", (base,))  # what is sent again ages from its new answer
        resend = conn.execute(
            "SELECT count(*) FROM events WHERE seq > ? AND seq NOT IN (SELECT seq FROM rejected)", (base,)
        ).fetchone()[0]
        _set_meta(
            conn,
            epoch=new,
            epoch_base=base,
            base_chain=base_chain,
            acked_seq=base,
            ack_chain=base_chain,
            forked_from_epoch=old,
            forked_ms=now_ms,
            fork_resent=resend,
            fork_reason=why,
        )
        return AnswerResult(base, previous, set_aside, resend, forked_from_epoch=old, epoch=new, fork_reason=why)

    def _after_ack(self, hwm: int, result: AnswerResult) -> None:
        """After the commit: take a new epoch on, and say what happened."""
        if result.forked_from_epoch is not None:
            self.epoch = result.epoch
            log.warning(
                "This outbox was restored from a backup, copied or rolled back (%s); it continues as epoch %d"
                " from seq %d and sends its %s events above that again, which the hub counts once.",
                result.fork_reason,
                self.epoch,
                result.acked_seq,
                f"{result.backlog:,}",
            )
            return
        self._log_ack(hwm, result)

    def _log_ack(self, hwm: int, result: AnswerResult) -> None:
        if result.gone:
            log.error(
                "The hub's high-water mark for epoch %d is %d, below the %d it acknowledged before (its database was"
                " restored from an older copy?), and %s of the movements it acknowledged from seq %d to %d are no"
                " longer in this outbox (kept %g days after the hub acknowledged them): the hub lacks them for"
                " good and its counts of this store are off by them; count the store's stock again. The %s events"
                " this outbox still holds are sent again.",
                self.epoch, hwm, result.previous_acked_seq, f"{result.gone:,}", hwm + 1, result.previous_acked_seq,
                self._retention_ms / 86_400_000, f"{result.backlog:,}",
            )  # fmt: skip
        elif result.rewound:
            log.warning(
                "The hub's high-water mark for epoch %d is %d, below the %d it acknowledged before"
                " (restored from a backup, or another hub?); resending %s events from seq %d.",
                self.epoch,
                hwm,
                result.previous_acked_seq,
                f"{result.backlog:,}",
                hwm + 1,
            )

    def _set_aside(self, conn: sqlite3.Connection, rejections: Sequence[Rejection]) -> int:
        done = 0
        now_ms = self._wall_clock_ms()
        held: list[Rejection] = []
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
            if r.code == HELD_CODE:  # processed by the hub, held there for an operator: not set aside here
                held.append(r)
                log.debug("The hub holds event seq %d in its clock quarantine: %s.", r.seq, r.reason)
            else:
                done += 1
        if held:  # one line an answer: an export older than the credential had every row held, 10,000 a batch
            seqs = sorted(r.seq for r in held)
            which = f"event seq {seqs[0]}" if len(seqs) == 1 else f"{len(seqs):,} events (seq {seqs[0]} to {seqs[-1]})"
            log.warning(
                "The hub holds %s in its clock quarantine, for an operator to apply or refuse there; the first: %s.",
                which, held[0].reason,
            )  # fmt: skip
        return done

    async def rebind(self, agent_id: str) -> Rebound:
        """Let this outbox send as ``agent_id`` from now on (its store's credential is another agent's now).

        It continues in a new epoch from its acknowledged mark: what the hub acknowledged to the previous agent
        id stays counted there and is not sent again; the movements it never acknowledged (refused, or not sent
        yet) are sent as ``agent_id``. Run it only while no agent runs on the outbox.
        """
        if self._closed:
            raise OutboxClosed(self.path)
        check_identity(agent_id, self.location or "x")
        result = await self._write(lambda conn: self._rebind(conn, agent_id))
        self.agent_id, self.epoch = result.agent_id, result.epoch
        if result.changed:
            log.warning(
                "The outbox %s now belongs to agent %s instead of %s; it continues as epoch %d from seq %d and"
                " sends its %s waiting movements as %s.",
                self.path, result.agent_id, result.previous_agent_id, result.epoch, result.epoch_base,
                f"{result.waiting:,}", result.agent_id,
            )  # fmt: skip
        return result

    def _rebind(self, conn: sqlite3.Connection, agent_id: str) -> Rebound:
        previous, epoch, base = _meta(conn, "agent_id"), _meta(conn, "epoch"), _meta(conn, "acked_seq")
        waiting = _backlog(conn)[0]
        if previous == agent_id:
            return Rebound(previous, agent_id, epoch, _meta(conn, "epoch_base", 0) or 0, waiting)
        new = epoch
        while new == epoch:
            new = secrets.randbits(EPOCH_BITS) or 1
        base_chain = (_meta(conn, "ack_chain") if base else ZERO_CHAIN) or None
        # the answer that moved the previous id's mark to ``base``, if it said its change id: a hub whose numbering
        # goes below it later lacks those movements (``_rebound_lacks``)
        known = _meta(conn, "acked_change_to") == base and base > 0
        _set_meta(
            conn,
            rebound_change_id=_meta(conn, "acked_change_id") if known else None,
            rebound_change_from=_meta(conn, "acked_change_from") if known else None,
            rebound_seq=base,
            rebound_epoch=epoch,
            agent_id=agent_id,
            epoch=new,
            epoch_base=base,
            base_chain=base_chain,
            ack_chain=base_chain,
            sync_state="never",
            last_error=None,
            hub_reachable=None,
            held_by_hub=None,
            rebound_from=previous,
            rebound_ms=self._wall_clock_ms(),
        )
        return Rebound(previous, agent_id, new, base, waiting)

    async def requeue(self, *, codes: set[str] | None = None, seqs: set[int] | None = None) -> RequeueResult:
        """Put set-aside movements back in the queue: those set aside with one of ``codes``, or at ``seqs``, or
        (neither given) every one whose code a resend can change.

        Each keeps its event id and movement and takes a new seq after the last (in the order they were recorded):
        the rows at or below the acknowledged mark are never sent again, and the hub counts an event id once. A
        code of ``NEVER_RESENT`` named in ``codes``, or the code of a movement named in ``seqs``, is refused with
        why (OutboxError) and nothing moves. Run it only while no agent runs on the outbox."""
        if self._closed:
            raise OutboxClosed(self.path)
        result = await self._write(lambda conn: self._requeue(conn, codes, seqs))
        if result.requeued:
            first, last = result.requeued[0], result.requeued[-1]
            log.warning(
                "The outbox %s queued %s set-aside movements again (seq %d to %d, now %d to %d), after the %s"
                " waiting; the agent sends them with their event ids when it runs.",
                self.path, f"{len(result.requeued):,}", first.previous_seq, last.previous_seq, first.event.seq,
                last.event.seq, f"{result.waiting_before:,}",
            )  # fmt: skip
        return result

    def _requeue(self, conn: sqlite3.Connection, codes: set[str] | None, seqs: set[int] | None) -> RequeueResult:
        if codes is not None:
            never = sorted(c for c in codes if c in NEVER_RESENT)
            if never:
                why = "; ".join(f"{c}: {NEVER_RESENT[c]}" for c in never)
                raise OutboxError(
                    f"movements set aside as {', '.join(never)} cannot be sent again with any success ({why})"
                )
        columns = ", ".join("e." + c for c in _EVENT_COLUMNS.split(", "))
        rows = conn.execute(
            f"SELECT {columns}, r.code FROM rejected r JOIN events e ON e.seq = r.seq ORDER BY e.seq"
        ).fetchall()
        if seqs is not None:
            held = {row[0]: row[-1] for row in rows}
            for seq in sorted(seqs):
                if seq not in held:
                    raise OutboxError(f"no movement of this outbox is set aside at seq {seq}")
                if held[seq] in NEVER_RESENT:
                    raise OutboxError(
                        f"seq {seq} was refused as {held[seq]}: {NEVER_RESENT[held[seq]]}; it cannot be sent again"
                        " with any success"
                    )
            rows = [row for row in rows if row[0] in seqs]
        elif codes is not None:
            rows = [row for row in rows if row[-1] in codes]
        refused: dict[str, int] = {}
        chosen = []
        for row in rows:
            if row[-1] in NEVER_RESENT:
                if row[-1] != HELD_CODE:  # held by the hub: not set aside here, nothing to say
                    refused[row[-1]] = refused.get(row[-1], 0) + 1
            else:
                chosen.append(row)
        waiting = _backlog(conn)[0]
        acked, last_seq, chain = _meta(conn, "acked_seq"), _meta(conn, "last_seq"), _meta(conn, "chain_last")
        done: list[Requeued] = []
        for row in chosen:
            old_seq, event_id, code = row[0], row[1], row[-1]
            if old_seq > acked:  # still above the mark (the hub's mark stayed below it): sent again where it is
                conn.execute("DELETE FROM rejected WHERE seq = ?", (old_seq,))
                done.append(Requeued(self._event(row[:12]), old_seq, code))
                continue
            last_seq += 1
            chain = chain_link(chain, event_id)
            conn.execute("DELETE FROM rejected WHERE seq = ?", (old_seq,))
            conn.execute("DELETE FROM events WHERE seq = ?", (old_seq,))
            conn.execute(_INSERT_EVENT, (last_seq, *row[1:12], chain))
            done.append(Requeued(self._event((last_seq, *row[1:12])), old_seq, code))
        if last_seq != _meta(conn, "last_seq"):
            conn.execute(_WRITE_MARKS, (last_seq, _meta(conn, "hlc_last"), chain))
        return RequeueResult(tuple(done), refused, waiting)

    def wall_ms(self) -> int:
        """This outbox's wall clock (the one its events are stamped with)."""
        return self._wall_clock_ms()

    def recent_since_ms(self, window_s: float) -> int:
        """The earliest wall stamp (``StockEvent.wall_ms``) an event recorded within the last ``window_s`` can bear,
        timed on the monotonic clock while the agent runs: a wall clock jumping ahead (NTP putting right a clock
        hours off) does not shorten the window, one jumping back lengthens it by the jump at most (the lesser of
        the two clocks, as elsewhere). Before a restart, the time stopped counts by the wall clock, at most
        ``STOPPED_MAX_MS``."""
        now_s = self._frames_now()
        start_s = now_s - window_s
        ends = [start for start, _ in self._frames[1:]] + [math.inf]
        offsets = [offset for (_, offset), end in zip(self._frames, ends, strict=True) if end > start_s]
        if self._before_frame is not None and self._before_frame[0] > start_s:
            offsets.append(self._before_frame[1])
        return round(start_s * 1000) + min(offsets)

    def _frames_now(self) -> float:
        """Note a jump of the wall clock against the monotonic one since the last look; the monotonic time now."""
        now_s, now_ms = self._monotonic_s(), self._wall_clock_ms()
        offset = now_ms - round(now_s * 1000)
        frames = self._frames
        if not frames:
            frames.append((now_s, offset))
            if self._run_before is not None:  # the run before this one ended stopped_ms ago, by the wall clock
                wall_before_ms, low_ms = self._run_before
                stopped_ms = min(max(now_ms - wall_before_ms, 0), STOPPED_MAX_MS)
                ended_s = now_s - stopped_ms / 1000
                self._before_frame = (ended_s, wall_before_ms - round(ended_s * 1000) + low_ms)
        elif abs(offset - frames[-1][1]) > WALL_JUMP_MS:
            frames.append((now_s, offset))
            while len(frames) > 1 and frames[1][0] < now_s - WINDOW_FRAMES_S:
                del frames[0]
        low = min(off for _, off in frames)
        if self._before_frame is not None and self._before_frame[0] > now_s - WINDOW_FRAMES_S:
            low = min(low, self._before_frame[1])
        self._window_low_ms = low - frames[-1][1]
        return now_s

    def disk_report(self) -> DiskReport:
        """The disk this outbox is on, as the replicator tells the hub with each sync (``protocol.DiskReport``): the
        agent's disk reserve (``agent.reserve``; none: 0), its file system's free bytes (one ``statvfs``), and a
        write the disk refused for want of room that no write storing rows has succeeded since (a sync's answer or
        an acknowledgement stored meanwhile clears it only once the disk reserve is whole again)."""
        reserve = self.reserve.state() if self.reserve is not None else None
        try:
            free: int | None = shutil.disk_usage(Path(self.path).parent).free
        except OSError:
            free = None
        size, held = (reserve.size, reserve.held) if reserve is not None else (0, 0)
        return DiskReport(size, held, free, self.disk_refused_ms)

    def _recover_clock(self, conn: sqlite3.Connection, resp: SyncResponse, clock_skew_ms: int | None) -> None:
        """Reset the hybrid clock when it ran far ahead and the machine's clock is right again: it never
        goes backwards by itself, so one day in a wrong year would stamp every later event in that year."""
        if not resp.server_time_ms or clock_skew_ms is None or abs(clock_skew_ms) > HLC_SANE_SKEW_MS:
            return
        ahead_ms = unpack_hlc(self.clock.last)[0] - resp.server_time_ms
        held = any(r.code == HELD_CODE for r in resp.rejected)
        if ahead_ms > HLC_AHEAD_RESET_MS or (held and ahead_ms > HLC_SANE_SKEW_MS):
            self.clock.reset(pack_hlc(self._wall_clock_ms(), 0))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'hlc_last'", (self.clock.last,))
            log.warning(
                "This outbox's clock was %.1f hours ahead of the hub's while this machine's clock is right; "
                "it was reset to the machine's time, and events recorded from now on are stamped with it.",
                ahead_ms / 3_600_000,
            )

    def _purge(self, conn: sqlite3.Connection) -> None:
        """Delete acknowledged events whose acknowledgement is older than the retention period on the retention
        clock (``_age``): neither a wrong local clock nor a wrong hub clock purges early or stops the purge."""
        now_ms = _meta(conn, "kept_ms", _meta(conn, "hub_time_ms"))
        if now_ms is None:
            return
        self._last_purge_ms = now_ms
        cutoff_ms = now_ms - self._retention_ms
        mark = conn.execute("SELECT max(acked_seq) FROM acks WHERE at_ms <= ?", (cutoff_ms,)).fetchone()[0]
        if mark is None:
            return
        upto = min(mark, _meta(conn, "acked_seq"))
        if kept := keep_expiring(conn, upto, now_ms):
            self._say_kept(kept)
        conn.execute("DELETE FROM events WHERE seq <= ? AND seq NOT IN (SELECT seq FROM rejected)", (upto,))
        conn.execute("DELETE FROM acks WHERE at_ms <= ?", (cutoff_ms,))

    def _say_kept(self, keys: Sequence[tuple[str, str]]) -> None:
        """One WARNING while the hub's counts cannot be read (``agent.count_refresh``), however many purges keep
        due keys' movements in their counts meanwhile (``agent.counts.keep_expiring``); the rest at DEBUG."""
        level = logging.DEBUG if self.expired_said else logging.WARNING
        self.expired_said = True
        first = f"{keys[0][1]!r} at {keys[0][0]}"
        log.log(
            level,
            "The hub's counts of %d SKU(s) (first: %s) could not be read for longer than the outbox keeps"
            " acknowledged movements (retention_days, %g); their local counts keep this store's movements the hub's"
            " count held here lacked, no longer flagged as stale, until the hub gives a count of them again.",
            len(keys), first, self._retention_ms / 86_400_000,
        )  # fmt: skip

    async def synced_hub_id(self, hub_url: str) -> str | None:
        """The id of the hub's database this outbox last synced with, if that was at ``hub_url`` (None: not known)."""

        def read(conn: sqlite3.Connection) -> str | None:
            return _meta(conn, "hub_id") if _meta(conn, "hub_id_url") == hub_url else None

        return await self._read(read)

    async def note_sync_failure(self, state: str, message: str, *, hub_reachable: bool) -> None:
        """Remember why the last sync failed, for ``status``."""
        await self._write(
            lambda conn: _set_meta(conn, sync_state=state, last_error=message, hub_reachable=int(hub_reachable)),
            shows_room=False,
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

    async def refused(
        self, source_prefix: str, *, within: int | None = None, limit: int = 100, event_id: bytes | None = None
    ) -> list[RejectedEvent]:
        """Events the hub refused (set aside; not those it holds) whose source starts with ``source_prefix``,
        among the newest ``within`` set-asides of any source (only ``event_id``, if given), newest first: what the
        staff of a session must be told.

        Newest is the outbox's own order (seq), not the wall clock at the set-aside: this machine's clock may have
        been days behind or a year ahead then, and a window by it hid a refusal for good or kept it first for a
        year."""
        newest = f"SELECT seq FROM rejected WHERE code <> '{HELD_CODE}' ORDER BY seq DESC LIMIT ?"
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join('e.' + c for c in _EVENT_COLUMNS.split(', '))}, r.code, r.reason, r.rejected_ms"
                f" FROM rejected r JOIN events e ON e.seq = r.seq WHERE r.code <> '{HELD_CODE}'"
                f" AND substr(e.source, 1, ?) = ? AND r.seq >= (SELECT coalesce(min(seq), 0) FROM ({newest}))"
                " AND (? IS NULL OR e.event_id = ?) ORDER BY r.seq DESC LIMIT ?",
                (len(source_prefix), source_prefix, -1 if within is None else within, event_id, event_id, limit),
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
                set_aside=conn.execute(f"SELECT count(*) FROM rejected WHERE code <> '{HELD_CODE}'").fetchone()[0],
                held_by_hub=_held_by_hub(conn),
                sync_state=_meta(conn, "sync_state", "never"),
                last_sync_ms=_meta(conn, "last_sync_ms"),
                last_error=_meta(conn, "last_error"),
                hub_reachable=None if reachable is None else bool(reachable),
                clock_skew_ms=_meta(conn, "clock_skew_ms"),
                hub_clock_off_ms=_meta(conn, "hub_clock_off_ms"),
                hub_clock_agreed=_meta(conn, "hub_clock_agreed"),
                epoch_base=_meta(conn, "epoch_base", 0) or 0,
                forked_from_epoch=_meta(conn, "forked_from_epoch"),
                forked_ms=_meta(conn, "forked_ms"),
                fork_resent=_meta(conn, "fork_resent"),
                rebound_from=_meta(conn, "rebound_from"),
                rebound_ms=_meta(conn, "rebound_ms"),
                feed_cursor=_meta(conn, "feed_cursor"),
                hub_lacks=_meta(conn, "hub_lacks"),
                hub_lacks_seqs=_meta(conn, "hub_lacks_seqs"),
                hub_lacks_ms=_meta(conn, "hub_lacks_ms"),
                hub_lacks_of=_meta(conn, "hub_lacks_of"),
                set_aside_codes=dict(
                    conn.execute(
                        f"SELECT code, count(*) FROM rejected WHERE code <> '{HELD_CODE}' GROUP BY code ORDER BY code"
                    ).fetchall()
                ),
            )

        return await self._read(read)


def _chain_at(conn: sqlite3.Connection, seq: int, acked_seq: int) -> bytes | None:
    """The lineage digest at ``seq``; None when unknown (the row was purged, or written before chains)."""
    if seq == 0:
        return ZERO_CHAIN
    row = conn.execute("SELECT chain FROM events WHERE seq = ?", (seq,)).fetchone()
    if row is not None and row[0] is not None:
        return bytes(row[0])
    known = _meta(conn, "ack_chain") if seq == acked_seq else None
    if known is None and seq == _meta(conn, "epoch_base"):
        known = _meta(conn, "base_chain")
    return None if known is None else bytes(known)


def _gone(conn: sqlite3.Connection, hwm: int, previous: int) -> int:
    """How many of the seqs ``hwm`` + 1 … ``previous`` (acknowledged, and the hub's mark went back below them) this
    outbox no longer holds: retention purged them, so a hub restored from an older copy can never be sent them."""
    (held,) = conn.execute("SELECT count(*) FROM events WHERE seq > ? AND seq <= ?", (hwm, previous)).fetchone()
    return max(0, previous - hwm - int(held))


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2: a lineage digest for every retained row, from 16 zero bytes before the first."""
    if "chain" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}:
        conn.execute("ALTER TABLE events ADD COLUMN chain BLOB")
    acked = _meta(conn, "acked_seq")
    chain = ack_chain = ZERO_CHAIN
    links: list[tuple[bytes, int]] = []
    for seq, event_id in conn.execute("SELECT seq, event_id FROM events ORDER BY seq"):
        chain = chain_link(chain, event_id)
        links.append((chain, seq))
        if seq == acked:
            ack_chain = chain
    conn.executemany("UPDATE events SET chain = ? WHERE seq = ?", links)
    _set_meta(conn, schema_version=2, chain_last=chain, ack_chain=ack_chain, epoch_base=0, base_chain=ZERO_CHAIN)


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """Where the count cache follows the hub's change feed: the cursor and its feed history (None: unknown, or
    a hub that gives none), and how often it was restarted from 0."""

    cursor: int = 0
    restarts: int = 0
    history: str | None = None


def _feed_position(conn: sqlite3.Connection) -> FeedPosition:
    return FeedPosition(
        int(_meta(conn, "feed_cursor", 0) or 0), int(_meta(conn, "feed_restarts", 0) or 0), _meta(conn, "feed_history")
    )


def _held_by_hub(conn: sqlite3.Connection) -> int:
    """The hub's own figure from its last answer (it falls as the operator resolves them); before any, this
    outbox's count of events it answered as held."""
    said = _meta(conn, "held_by_hub")
    if said is not None:
        return int(said)
    return int(conn.execute(f"SELECT count(*) FROM rejected WHERE code = '{HELD_CODE}'").fetchone()[0])


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


def _busy(err: sqlite3.OperationalError) -> bool:
    return getattr(err, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(err)


def write_failure(err: sqlite3.Error, then: str = "record again") -> str:
    """A failed write in words an operator can act on: a full disk says so (SQLite calls a file-size limit an I/O error)."""
    if disk_refused(err):
        return (
            f"the disk is full or refuses writes ({err}); nothing of this write was recorded and everything"
            f" recorded before is safe; free disk space, then {then}"
        )
    return str(err)


def check_identity(agent_id: str, location: str) -> None:
    """Raise OutboxError unless ``agent_id`` and ``location`` are valid on the wire."""
    try:
        StockEvent(bytes(16), agent_id, 0, 1, location, "x", Kind.ADJUST, 1, 1, 0, "api:check")
    except ProtocolError as err:
        raise OutboxError(f"this agent's identity is not valid: {err}") from err
