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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
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


def add_positions(conn: sqlite3.Connection) -> None:
    """A cache from before feed positions gets the column (its rows' positions unknown: NULL)."""
    if "change_id" not in {r[1] for r in conn.execute("PRAGMA table_info(counts)")}:
        conn.execute("ALTER TABLE counts ADD COLUMN change_id INTEGER")


@dataclass(frozen=True, slots=True)
class HubCount:
    """A count as the hub last answered it, and when (hub time, ms)."""

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
    (None: not said), replace the cached rows for these keys unless a row holds a later position."""
    conn.executemany(
        _UPSERT + _ANSWER_NEWER,
        [(c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, as_of_ms, change_id) for c in snapshots],
    )


def store_changes(conn: sqlite3.Connection, changes: Iterable[FeedChange]) -> None:
    """Inside the caller's write transaction: feed changes replace the cached rows they are later than."""
    conn.executemany(
        _UPSERT + _CHANGE_NEWER,
        [(c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit, c.at_ms, c.change_id) for c in changes],
    )


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


def forget_positions(conn: sqlite3.Connection) -> None:
    """The hub's change numbering restarted (it was restored from a backup): every row's position is unknown."""
    conn.execute("UPDATE counts SET change_id = NULL WHERE change_id IS NOT NULL")


def _hub_count(conn: sqlite3.Connection, location: str, sku: str) -> HubCount | None:
    row = conn.execute(
        "SELECT on_hand, reserved, available, in_transit, as_of_ms FROM counts WHERE location = ? AND sku = ?",
        (location, sku),
    ).fetchone()
    return None if row is None else HubCount(location, sku, *row)


def _local_count(conn: sqlite3.Connection, location: str, sku: str) -> LocalCount:
    hub = _hub_count(conn, location, sku)
    # Pending events, and the acknowledged ones ordered after the first pending count: the hub's count holds
    # those, and a pending count stamped before them (a bin count of a round, at the round's count before it)
    # replaces that count here, as at the hub, which applies them on top of it.
    rows = conn.execute(
        "SELECT kind, qty, seq > (SELECT value FROM meta WHERE key = 'acked_seq') FROM events"
        " WHERE location = ? AND sku = ? AND seq NOT IN (SELECT seq FROM rejected)"
        " AND (seq > (SELECT value FROM meta WHERE key = 'acked_seq') OR (occurred_at, seq) > ("
        "  SELECT occurred_at, seq FROM events WHERE location = ? AND sku = ? AND kind = 'count'"
        "  AND seq > (SELECT value FROM meta WHERE key = 'acked_seq') AND seq NOT IN (SELECT seq FROM rejected)"
        "  ORDER BY occurred_at, seq LIMIT 1))"
        " ORDER BY occurred_at, seq",
        (location, sku, location, sku),
    ).fetchall()
    on_hand = hub.on_hand if hub else 0
    reserved = hub.reserved if hub else 0
    safety = max(0, hub.on_hand - hub.reserved - hub.available) if hub and hub.available > 0 else 0
    pending = 0
    for kind, qty, is_pending in rows:
        kind = Kind(kind)
        pending += bool(is_pending)
        if kind is Kind.COUNT:
            on_hand = qty
        elif kind in ON_HAND_KINDS:
            on_hand += qty
        elif kind in (Kind.RESERVE, Kind.RELEASE) and is_pending:
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
    )


class CountCache:
    """Reads of the count cache kept in the outbox's SQLite file (``outbox.counts``)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def hub_count(self, location: str, sku: str) -> HubCount | None:
        """The count exactly as the hub last answered it, or None if it never has."""
        return await self._outbox._read(lambda conn: _hub_count(conn, location, sku))

    async def local_count(self, location: str, sku: str) -> LocalCount:
        """The hub's count plus this agent's pending (unacknowledged) movements for the key."""
        return await self._outbox._read(lambda conn: _local_count(conn, location, sku))

    async def all_hub_counts(self, location: str | None = None) -> list[HubCount]:
        def read(conn: sqlite3.Connection) -> list[HubCount]:
            sql = "SELECT location, sku, on_hand, reserved, available, in_transit, as_of_ms FROM counts"
            args: tuple[str, ...] = ()
            if location is not None:
                sql, args = sql + " WHERE location = ?", (location,)
            return [HubCount(*row) for row in conn.execute(sql + " ORDER BY location, sku", args)]

        return await self._outbox._read(read)
