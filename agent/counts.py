"""The local count cache: the hub's counts as last answered, plus what is still on its way.

The hub answers every sync with the counts of the (location, sku) pairs the
batch touched, read in the same transaction that committed the batch. The
outbox stores them with the acknowledged mark in one transaction, so for any
key the cached hub count already includes every acknowledged event and none
of the pending ones. ``local_count`` adds the pending ones back:

- pending on-hand deltas (sale, receive, return, adjust, transfers) add to on_hand;
- a pending ``count`` sets on_hand to what was counted, and the deltas ordered
  before it stop counting (the count saw them on the shelf), as the hub will do;
  this agent's acknowledged deltas ordered after it (the hub's count holds them)
  apply on top of it again, as at the hub;
- pending reserve/release change reserved.

``available`` keeps the hub's safety margin (on_hand − reserved − available as
last answered), so it is an estimate until the hub answers again.

The cache also follows the hub's change feed for this location (``agent.feed``),
so a reservation by a channel order, another store's transfer or an admin's
safety stock reaches it without waiting for this store's next movement of the
SKU. Each row keeps the feed position its values are as of (``change_id``): a
sync answer says the newest change id as of its commit, a feed change is its
own id. A row is replaced only by values at a later position (a sync answer
also at the same one), so whichever of a sync answer and a feed page is stored
first, the cache never goes back to older values. A row whose position is
unknown (NULL: written before positions, or after the hub was restored from a
backup and its numbering restarted) takes the next value of either kind.

While a full disk refuses to store the hub's answers and the replicator sends
on past them (docs/design.md, "A full disk at the store"), the stored mark
stays, so the cache still counts those batches' movements as pending, once.
Their answers' counts are kept in memory meanwhile (``HeldCounts``, the newest
per key) and stored in the transaction of the first answer stored after them:
that answer moves the mark past their movements, which then stop being pending
and must be in the cached count; an answer carries only the counts of its own
batch, so without them a SKU that only those batches moved read its count from
before them (10 received, 5 more received: 10) until its next sync.

The mark may also move past movements whose counts no answer brought: an answer was lost (the hub booked the
batch) and the handshake after it finds the hub's mark past the batch, or the agent restarted while a full disk
kept those counts only in memory. The keys of those movements are then *due* (``counts_due``, marked in the
transaction that moves the mark): the cached hub count lacks them, so ``local_count`` keeps adding them as it adds
pending ones (``stale_events`` says how many), and the replicator reads the keys' counts from the hub
(``agent.count_refresh``). A due key takes a value only from a later place in the hub's commit order: a sync
answer that carries it, a feed change at or after the position of the answer that made it due (an older change
may or may not hold the movements), or the hub's count read once nothing of the key is pending. A key not read by
the time the outbox's retention purges its movements keeps them in the hub's count held here and is due no more
(``keep_expiring``): the local count neither loses them with their rows nor stays flagged for ever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import ON_HAND_KINDS, CountSnapshot, Kind
from protocol.feed import FeedChange

if TYPE_CHECKING:
    from agent.outbox import Outbox

COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    location    TEXT NOT NULL,
    sku         TEXT NOT NULL,
    on_hand     INTEGER NOT NULL,
    reserved    INTEGER NOT NULL,
    available   INTEGER NOT NULL,
    in_transit  INTEGER NOT NULL,
    as_of_ms    INTEGER NOT NULL,
    change_id   INTEGER,
    PRIMARY KEY (location, sku)
) WITHOUT ROWID;
"""


# The keys whose cached hub count lacks some of this agent's acknowledged movements: those of the key with
# after_seq < seq <= upto_seq (set-asides excepted). change_id: the feed position of the answer that acknowledged
# them (the hub held them then; NULL: not said), so a feed change of the key at it or later holds them.
COUNTS_DUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts_due (
    location    TEXT NOT NULL,
    sku         TEXT NOT NULL,
    after_seq   INTEGER NOT NULL,
    upto_seq    INTEGER NOT NULL,
    change_id   INTEGER,
    PRIMARY KEY (location, sku)
) WITHOUT ROWID;
"""


def add_positions(conn: sqlite3.Connection) -> None:
    """A cache from before feed positions gets the column (its rows' positions unknown: NULL)."""
    if "change_id" not in {r[1] for r in conn.execute("PRAGMA table_info(counts)")}:
        conn.execute("ALTER TABLE counts ADD COLUMN change_id INTEGER")


@dataclass(frozen=True, slots=True)
class HubCount:
    """A count as the hub last answered it, and when (hub time, ms); for a due key retention purged the movements
    of, with those movements added (``keep_expiring``)."""

    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class LocalCount:
    """The hub's count for one key with this agent's pending events applied."""

    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int
    pending_events: int  # how many unacknowledged events went into it
    hub_as_of_ms: int | None  # None: the hub has not answered for this key yet
    # acknowledged events added too: the hub's count held here lacks them (an answer lost or not stored), until
    # the agent has read the key's count from the hub again
    stale_events: int = 0


_UPSERT = (
    "INSERT INTO counts (location, sku, on_hand, reserved, available, in_transit, as_of_ms, change_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (location, sku) DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved,"
    " available = excluded.available, in_transit = excluded.in_transit, as_of_ms = excluded.as_of_ms,"
    " change_id = excluded.change_id"
)
# A sync answer: at its position or later; an answer that did not say its position (a hub from before
# positions), by the hub's clock as before.
_ANSWER_NEWER = (
    " WHERE CASE WHEN excluded.change_id IS NULL THEN excluded.as_of_ms >= counts.as_of_ms"
    " ELSE counts.change_id IS NULL OR excluded.change_id >= counts.change_id END"
)
# A feed change: strictly after the row's position (the same change again, or an older one, changes nothing).
_CHANGE_NEWER = " WHERE counts.change_id IS NULL OR excluded.change_id > counts.change_id"


def store_counts(
    conn: sqlite3.Connection, snapshots: Iterable[CountSnapshot], as_of_ms: int, change_id: int | None = None
) -> None:
    """Inside the caller's write transaction: the counts of a sync answer, as of feed position ``change_id``
    (None: not said), replace the cached rows for these keys unless a row holds a later position. The answer was
    read after every movement it acknowledges: none of these keys is due any more."""
    rows = [
        (c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, as_of_ms, change_id) for c in snapshots
    ]
    conn.executemany(_UPSERT + _ANSWER_NEWER, rows)
    _not_due(conn, [(r[0], r[1]) for r in rows])


def store_changes(conn: sqlite3.Connection, changes: Iterable[FeedChange]) -> None:
    """Inside the caller's write transaction: feed changes replace the cached rows they are later than. A due key
    takes only a change at or after the position its movements were acknowledged at (``counts_due``), which then
    holds them."""
    changes = list(changes)
    if changes and conn.execute("SELECT EXISTS (SELECT 1 FROM counts_due)").fetchone()[0]:
        kept = []
        for c in changes:
            due = conn.execute(
                "SELECT change_id FROM counts_due WHERE location = ? AND sku = ?", (c.location, c.sku)
            ).fetchone()
            if due is None:
                kept.append(c)
            elif due[0] is not None and c.change_id >= due[0]:
                kept.append(c)
                _not_due(conn, [(c.location, c.sku)])
        changes = kept
    conn.executemany(
        _UPSERT + _CHANGE_NEWER,
        [(c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, c.at_ms, c.change_id) for c in changes],
    )


def _not_due(conn: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> None:
    if keys and conn.execute("SELECT EXISTS (SELECT 1 FROM counts_due)").fetchone()[0]:
        conn.executemany("DELETE FROM counts_due WHERE location = ? AND sku = ?", keys)


def mark_due(conn: sqlite3.Connection, after_seq: int, upto_seq: int, change_id: int | None) -> int:
    """Inside the caller's write transaction, the one that moves the acknowledged mark past ``after_seq`` to
    ``upto_seq`` or beyond without storing counts of the movements in between (their answer was lost, or kept only
    in memory): their keys are due, as of feed position ``change_id`` (None: not said). The keys the same
    transaction then stores an answer's counts for stop being due. One pass over the movements, one row a key."""
    if upto_seq <= after_seq:
        return 0
    return conn.execute(
        "INSERT INTO counts_due (location, sku, after_seq, upto_seq, change_id)"
        " SELECT location, sku, min(seq) - 1, max(seq), ? FROM events"
        " WHERE seq > ? AND seq <= ? AND seq NOT IN (SELECT seq FROM rejected) GROUP BY location, sku"
        " ON CONFLICT (location, sku) DO UPDATE SET after_seq = min(counts_due.after_seq, excluded.after_seq),"
        " upto_seq = max(counts_due.upto_seq, excluded.upto_seq), change_id = excluded.change_id",
        (change_id, after_seq, upto_seq),
    ).rowcount


_NOTHING_PENDING = (
    "NOT EXISTS (SELECT 1 FROM events e WHERE e.location = counts_due.location AND e.sku = counts_due.sku"
    " AND e.seq > (SELECT value FROM meta WHERE key = 'acked_seq') AND e.seq NOT IN (SELECT seq FROM rejected))"
)


def due_settled(conn: sqlite3.Connection, after_seq: int, upto_seq: int) -> int:
    """Inside the caller's write transaction, the one that settled (acknowledged, refused or held at the hub) the
    movements after ``after_seq`` up to ``upto_seq``: how many of their keys are due and have nothing pending now.
    A due key with a pending movement waits for that movement's answer, which brings its count; an answer that
    settles it without (the hub refused the movement, or holds it in its clock quarantine) leaves it due, and it
    can be read now."""
    if upto_seq <= after_seq or not conn.execute("SELECT EXISTS (SELECT 1 FROM counts_due)").fetchone()[0]:
        return 0
    # From the settled movements' keys (a batch's) to counts_due (CROSS JOIN keeps that order), not all due keys.
    settled: int = conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT location, sku FROM events WHERE seq > ? AND seq <= ?) AS moved"
        " CROSS JOIN counts_due ON counts_due.location = moved.location AND counts_due.sku = moved.sku"
        f" WHERE {_NOTHING_PENDING}",
        (after_seq, upto_seq),
    ).fetchone()[0]
    return settled


def due_locations(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT location FROM counts_due ORDER BY location")]


def due_keys(conn: sqlite3.Connection, location: str, limit: int) -> list[str]:
    """Up to ``limit`` SKUs due at ``location`` that the hub's count can be read for now: none of their movements
    is pending (the hub may hold a pending one whose answer is on its way, and it would count twice); a pending
    one's answer brings the key's count anyway."""
    return [
        r[0]
        for r in conn.execute(
            f"SELECT sku FROM counts_due WHERE location = ? AND {_NOTHING_PENDING} ORDER BY sku LIMIT ?",
            (location, limit),
        )
    ]


def store_read_counts(
    conn: sqlite3.Connection,
    location: str,
    counts: Sequence[CountSnapshot],
    *,
    acked_seq: int,
    as_of_ms: int,
    missing: Sequence[str] | None = (),
) -> int | None:
    """Inside the caller's write transaction: counts read from the hub (``GET /v1/counts``) after the mark was
    ``acked_seq``, stored for the keys still due with nothing pending, which stop being due. ``missing``: due SKUs
    the hub has no count for (it answered without them; None: every SKU still due at ``location``): they stop
    being due too. None (nothing stored) when the mark moved meanwhile (an answer stored, a rewind): what was read
    may lack movements acknowledged since. Else how many SKUs of ``location`` are still due and can be read."""
    if conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()[0] != acked_seq:
        return None
    due = f"SELECT change_id FROM counts_due WHERE location = ? AND sku = ? AND {_NOTHING_PENDING}"
    for c in counts:
        row = conn.execute(due, (c.location, c.sku)).fetchone()
        if c.location != location or row is None:
            continue
        # At the position of the answer that made it due: the hub read it later, and a feed change after that
        # position is later still (or holds an older value of a key that moved since, followed by its newer ones).
        conn.execute(_UPSERT, (c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, as_of_ms, row[0]))
        _not_due(conn, [(c.location, c.sku)])
    if missing is None:
        conn.execute(f"DELETE FROM counts_due WHERE location = ? AND {_NOTHING_PENDING}", (location,))
    elif missing:
        conn.executemany(
            f"DELETE FROM counts_due WHERE location = ? AND sku = ? AND {_NOTHING_PENDING}",
            [(location, sku) for sku in missing],
        )
    left: int = conn.execute(
        f"SELECT count(*) FROM counts_due WHERE location = ? AND {_NOTHING_PENDING}", (location,)
    ).fetchone()[0]
    return left


class HeldCounts:
    """The counts of sync answers a full disk refused to store, kept while the replicator sends on past them: the
    newest per key, each with the hub's time and feed position of its answer, and the highest mark they were
    answered with (``hwm``). Bounded by the SKUs the batches moved, not by the batches."""

    __slots__ = ("_rows", "hwm")

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[CountSnapshot, int | None, int | None]] = {}
        self.hwm = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, hwm: int, counts: Iterable[CountSnapshot], as_of_ms: int | None, change_id: int | None) -> None:
        """An answer up to ``hwm`` that was not stored (answers are added in the order the hub answered them)."""
        for c in counts:
            self._rows[(c.location, c.sku)] = (c, as_of_ms, change_id)
        self.hwm = max(self.hwm, hwm)

    def clear(self) -> None:
        self._rows.clear()
        self.hwm = 0

    def store(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Inside the caller's write transaction (that of the answer moving the mark to ``hwm`` or past it): as
        ``store_counts`` stores each (``now_ms``: the time of an answer that did not say the hub's)."""
        conn.executemany(
            _UPSERT + _ANSWER_NEWER,
            [
                (c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, as_of or now_ms, change_id)
                for c, as_of, change_id in self._rows.values()
            ],
        )
        _not_due(conn, list(self._rows))


def keep_expiring(conn: sqlite3.Connection, upto_seq: int, now_ms: int) -> list[tuple[str, str]]:
    """Inside the caller's write transaction, the one that purges the acknowledged movements up to ``upto_seq``
    (kept for the outbox's retention): a due key with movements among them was not read from the hub for that
    long (``agent.count_refresh``), and the local count would lose them with their rows. Its movements the hub's
    count held here lacks are added to it instead, as the local count added them, and the key is due no more: a
    count is not flagged for ever, and the next value the hub gives (a sync answer, a feed change, a read) replaces
    it. ``now_ms``: the time of a key the hub never gave a count of. The keys."""
    keys: list[tuple[str, str]] = conn.execute(
        "SELECT location, sku FROM counts_due WHERE after_seq < ? ORDER BY location, sku", (upto_seq,)
    ).fetchall()
    for location, sku in keys:
        c = _local_count(conn, location, sku, with_pending=False)
        at = conn.execute(
            "SELECT c.as_of_ms, c.change_id FROM counts_due d LEFT JOIN counts c USING (location, sku)"
            " WHERE d.location = ? AND d.sku = ?",
            (location, sku),
        ).fetchone()
        as_of_ms = now_ms if at[0] is None else at[0]
        conn.execute(_UPSERT, (location, sku, c.on_hand, c.reserved, c.available, c.in_transit, as_of_ms, at[1]))
    conn.executemany("DELETE FROM counts_due WHERE location = ? AND sku = ?", keys)
    return [(k[0], k[1]) for k in keys]


def forget_positions(conn: sqlite3.Connection) -> None:
    """The hub's change numbering restarted (it was restored from a backup): every row's position is unknown."""
    conn.execute("UPDATE counts SET change_id = NULL WHERE change_id IS NOT NULL")
    conn.execute("UPDATE counts_due SET change_id = NULL WHERE change_id IS NOT NULL")


def _hub_count(conn: sqlite3.Connection, location: str, sku: str) -> HubCount | None:
    row = conn.execute(
        "SELECT on_hand, reserved, available, in_transit, as_of_ms FROM counts WHERE location = ? AND sku = ?",
        (location, sku),
    ).fetchone()
    return None if row is None else HubCount(location, sku, *row)


def _local_count(conn: sqlite3.Connection, location: str, sku: str, *, with_pending: bool = True) -> LocalCount:
    hub = _hub_count(conn, location, sku)
    due = conn.execute(
        "SELECT after_seq, upto_seq FROM counts_due WHERE location = ? AND sku = ?", (location, sku)
    ).fetchone() or (0, 0)
    # Not in the hub's count held here: the pending events, and the acknowledged ones it lacks (due). They apply,
    # and so do the acknowledged ones ordered after the first such count: the hub's count holds those, and such a
    # count stamped before them (a bin count of a round, at the round's count before it) replaces that count here,
    # as at the hub, which applies them on top of it. Without the pending ones (``with_pending=False``): the hub's
    # count with the due ones, as far as this agent can tell.
    acked = "(SELECT value FROM meta WHERE key = 'acked_seq')"
    uncounted = f"(seq > {acked} OR (seq > ? AND seq <= ?))"
    kept = "seq NOT IN (SELECT seq FROM rejected)"
    if not with_pending:
        uncounted, kept = "(seq > ? AND seq <= ?)", f"{kept} AND seq <= {acked}"
    rows = conn.execute(
        f"SELECT kind, qty, seq > {acked}, {uncounted} FROM events"
        f" WHERE location = ? AND sku = ? AND {kept}"
        f" AND ({uncounted} OR (occurred_at, seq) > ("
        f"  SELECT occurred_at, seq FROM events WHERE location = ? AND sku = ? AND kind = 'count'"
        f"  AND {uncounted} AND {kept}"
        f"  ORDER BY occurred_at, seq LIMIT 1))"
        " ORDER BY occurred_at, seq",
        (*due, location, sku, *due, location, sku, *due),
    ).fetchall()
    on_hand = hub.on_hand if hub else 0
    reserved = hub.reserved if hub else 0
    safety = max(0, hub.on_hand - hub.reserved - hub.available) if hub and hub.available > 0 else 0
    pending = stale = 0
    for kind, qty, is_pending, is_uncounted in rows:
        kind = Kind(kind)
        pending += bool(is_pending)
        stale += bool(is_uncounted) and not is_pending
        if kind is Kind.COUNT:
            on_hand = qty
        elif kind in ON_HAND_KINDS:
            on_hand += qty
        elif kind in (Kind.RESERVE, Kind.RELEASE) and is_uncounted:
            reserved = max(0, reserved + qty)
    return LocalCount(
        location=location,
        sku=sku,
        on_hand=on_hand,
        reserved=reserved,
        available=max(0, on_hand - reserved - safety),
        in_transit=hub.in_transit if hub else 0,
        pending_events=pending,
        hub_as_of_ms=hub.as_of_ms if hub else None,
        stale_events=stale,
    )


class CountCache:
    """Reads of the count cache kept in the outbox's SQLite file (``outbox.counts``)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def hub_count(self, location: str, sku: str) -> HubCount | None:
        """The count exactly as the hub last answered it (``HubCount``), or None if it never has."""
        return await self._outbox._read(lambda conn: _hub_count(conn, location, sku))

    async def local_count(self, location: str, sku: str) -> LocalCount:
        """The hub's count plus this agent's pending (unacknowledged) movements for the key."""
        return await self._outbox._read(lambda conn: _local_count(conn, location, sku))

    async def due_locations(self) -> list[str]:
        """The locations with keys whose hub count held here lacks acknowledged movements (``counts_due``)."""
        return await self._outbox._read(due_locations)

    async def due_keys(self, location: str, limit: int) -> tuple[int, list[str]]:
        """The acknowledged mark, and up to ``limit`` due SKUs of ``location`` whose count can be read now."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            acked = conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()[0]
            return acked, due_keys(conn, location, limit)

        return await self._outbox._read(read)

    async def store_read(
        self,
        location: str,
        counts: Sequence[CountSnapshot],
        *,
        acked_seq: int,
        as_of_ms: int,
        missing: Sequence[str] | None = (),
    ) -> int | None:
        """``store_read_counts`` in a transaction of its own."""
        left = await self._outbox._write(
            lambda conn: store_read_counts(
                conn, location, counts, acked_seq=acked_seq, as_of_ms=as_of_ms, missing=missing
            )
        )
        self._outbox.expired_said = False  # the hub's counts are read again: a next time is news
        return left

    async def all_hub_counts(self, location: str | None = None) -> list[HubCount]:
        def read(conn: sqlite3.Connection) -> list[HubCount]:
            sql = "SELECT location, sku, on_hand, reserved, available, in_transit, as_of_ms FROM counts"
            args: tuple[str, ...] = ()
            if location is not None:
                sql, args = sql + " WHERE location = ?", (location,)
            return [HubCount(*row) for row in conn.execute(sql + " ORDER BY location, sku", args)]

        return await self._outbox._read(read)
