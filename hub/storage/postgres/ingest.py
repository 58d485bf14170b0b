"""The PostgreSQL side of the shared ingest algorithm: ``hub.storage.ingest.IngestTx`` in SQL.

Several hub processes may ingest into one database at once, so every
read-modify-write of the algorithm is guarded by transaction-scoped advisory
locks (``lock_keys``):

* a (location, SKU bucket) lock for the stock rows of that location whose SKU
  hashes to the bucket — and with them the key's events (ranges, variances,
  duplicates) and its reservations, which only that key's events change;
* a transfer-document lock (ref) for the (dest, ref, sku) transfer rows, which the
  events of two locations change.

Buckets keep the locks one transaction holds bounded (at most
``STOCK_LOCK_BUCKETS`` per location, however many SKUs a batch of up to
10,000 events names: PostgreSQL's lock table is shared and finite), while
batches of one location with different SKUs still commit side by side.

A batch takes the locks it can foresee in one sorted round before its first
read (``batch_locks``), so two hubs never deadlock over them; each read locks
its keys again (a no-op for those held) in case the algorithm needs more — a
transfer's receiving location — and the rare deadlock that can cause is
detected by PostgreSQL and retried by the store. Under READ COMMITTED every
statement after the lock sees the other hubs' commits under it.

Sets travel as arrays (``unnest``), as one array of a table's row type, or by COPY. A batch from an agent
makes few round trips (each one costs the hub and the server a turn): BEGIN, its locks, one read of
everything it reads first (``preload``), the COPY of its events, one statement that writes its stock rows,
its sender's mark and sync, and its change rows (``finish_sync``), and COMMIT.

An agent's stored events are found by the ledger's primary key (location, agent_id, event_id) in the
partitions of the locations it has stored events in (``agent_locations``, which gets a row in the transaction
that stores the agent's first event of a location). An (agent_id, event_id) stays one event under every
location because each batch holds its sender's lock (``sender_lockable``): it sees what the sender's batch
before it stored, wherever, before it stores an id.

Every lock round also takes the migration lock shared (``MIGRATION_LOCK_SHARED``), and ``preload`` reads the
schema version after it: a hub of a newer version migrating the database waits for the batches in flight, and a
batch after its migration is refused (``NewerSchema``, a 503) by a hub that does not know what the new schema
needs of an ingest.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, TypeAlias

import asyncpg

from hub.clock_window import HUB_CLOCK_AGREE_MS
from hub.resolver import (
    OrderKey,
    Reservation,
    ReservationKey,
    StockKey,
    Transfer,
    TransferKey,
    transfer_destination,
    transfer_key,
)
from hub.storage import credentials, reports
from hub.storage.base import BundleRecipe, CredentialChanged
from hub.storage.db import PostgresDb, Row, numbered
from hub.storage.held import FINDING_SQL, NOTE_OFF_SQL, HubClockFinding, finding, transfer_values
from hub.storage.ingest import (
    Batch,
    BundleParts,
    CountPoint,
    EventRow,
    NewChange,
    NewEvent,
    NewExpansion,
    RejectedAttempt,
    StockRow,
    SyncNote,
    attrs_json,
    stock_row,
)
from hub.storage.postgres.feed import append_changes, append_ctes, run_params
from hub.storage.postgres.schema import check_not_newer
from hub.storage.postgres.texts import text_list, text_list_sql
from hub.storage.reports import OBSERVED_FIELDS
from hub.storage.rows import bundle_book, bundle_recipe
from hub.storage.sql import (
    BUNDLE_PART_FIELDS,
    DELTA_KINDS,
    EVENT_FIELDS,
    EXPANSION_FIELDS,
    NEWEST_FIRST,
    NEWEST_RECIPES,
    ORDER_KEY,
    RECIPE_FIELDS,
    STOCK_FIELDS,
    TRANSFER_FIELDS,
)
from hub.storage.sql import note_lost as note_lost_sql
from hub.storage.sql import note_sync as note_sync_sql
from protocol import DiskReport, LostReport

# The COPY's columns: an event's row (``EventRow``) first, then its id and what the batch decided of it, so a
# record is that row plus one short tuple (unpacking the row into a new record per event cost more).
EVENT_COLUMNS = [*EVENT_FIELDS.split(", ")[1:], "event_id", "effect", "variance", "received_at_ms"]

# Every stock write takes the bundle recipes' lock shared, first, with its own locks; setting a recipe takes it
# alone (``PostgresIngest.lock_recipes``), so no write reads the recipes while one is being set (schema v6).
RECIPES_LOCK = int.from_bytes(hashlib.blake2b(b"shelfsync bundle recipes", digest_size=8).digest(), "big", signed=True)
# A migration takes it alone (hub.storage.postgres.schema.MIGRATION_LOCK_SQL): it waits for the writes in flight.
MIGRATION_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext('shelfsync.migrate.' || current_schema()))"
# What a hub process finds of the hub's own clock, and its marking of what was held (``SqlHubStore.hub_clock_found``),
# takes this lock alone; the write of a held event that hub did not know to be its clock's takes it shared and then
# reads the finding (``PostgresIngest.hub_clock_finding``): across hub processes, a held event is either written
# before the marking (which marks it) or reads the finding (and is marked as it is written). Schema version 32.
HUB_CLOCK_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext('shelfsync.hub_clock.' || current_schema()))"
HUB_CLOCK_LOCK = "SELECT pg_advisory_xact_lock(hashtext('shelfsync.hub_clock.' || current_schema()))"
LOCK_SQL = (
    f"{MIGRATION_LOCK_SHARED} UNION ALL SELECT pg_advisory_xact_lock_shared({RECIPES_LOCK}) UNION ALL "
    "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k"
)


# The dedupe lookups name the batch's lowest and highest id besides the ids themselves. Without that bound
# the planner may read every id the agent ever sent and filter them against the batch — it does so on a young
# table without statistics, or on a prepared statement's generic plan — a cost that grows with the agent's
# history (over 200 ms a batch at 40,000 stored events, measured). With it, the index range holds the batch's
# own ids and the ones stored between them: ids are UUIDv7, minted in time order at the edge, so a batch of new
# events finds none, and a resend finds the events it repeats.
# The ledger is partitioned by location: the lookup runs one location of the agent's at a time
# (``agent_event_ids``, migration 007), so each statement's cached plan opens that location's partition only.
STORED_IDS_SQL = "SELECT event_id, location FROM agent_event_ids($1, $3, $4, NULL, $2::bytea[])"
STORED_EVENTS_SQL = (
    f"SELECT {EVENT_FIELDS} FROM events "
    "WHERE location = $1 AND agent_id = $2 AND event_id = ANY($3::bytea[]) AND event_id BETWEEN $4 AND $5"
)

# Bulk writes send their rows as ONE array of the table's own row type (``$1::stock[]``): the driver checks
# each row once and encodes its fields in C, where an array per column (``unnest($1::text[], $2::text[], …)``)
# costs a Python-level type check per value — 6,000 of them for a batch's 430 stock rows, half the client's
# cost of the write (measured). The tuples must match the table's columns, in order (``STOCK_FIELDS``, the
# table as created; a migration that adds a column adds it here, and every ingest test fails until it does).
_STOCK_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in STOCK_FIELDS.split(", ")[2:])


def save_stock_sql(rows: str) -> str:
    """Upsert the stock rows of ``rows``, an array parameter of the table's row type."""
    return (
        f"INSERT INTO stock ({STOCK_FIELDS}) SELECT {STOCK_FIELDS} FROM unnest({rows}::stock[]) "
        f"ON CONFLICT (location, sku) DO UPDATE SET {_STOCK_UPDATES}"
    )


SAVE_STOCK_SQL = save_stock_sql("$1")
# The stock rows below zero, their keys and times (schema 16), for the exceptions' negative-stock source: a row is
# written with its stock row when that stock is below zero and deleted when a write brings it back, in the statement
# that writes the stock, so a batch that moves no stock below zero writes nothing more. Parameters: the keys' and
# times' columns (location text[], sku text[], updated_at_ms int8[]), the keys' (location, sku).
NEGATIVE_PUT_SQL = (
    "negative_put AS (INSERT INTO stock_negative (location, sku, updated_at_ms) "
    "SELECT * FROM unnest({}::text[], {}::text[], {}::int8[]) "
    "ON CONFLICT (location, sku) DO UPDATE SET updated_at_ms = excluded.updated_at_ms)"
)
NEGATIVE_GONE_SQL = (
    "negative_gone AS (DELETE FROM stock_negative n USING unnest({}::text[], {}::text[]) AS k(location, sku) "
    "WHERE n.location = k.location AND n.sku = k.sku)"
)
# The sync before the last in the epoch (prev_ms), the first (first_ms) and the sender's address (peer) tell two
# copies of one agent syncing at once (hub.storage.exceptions, agent_copies).
ADVANCE_MARK_SQL = (
    "INSERT INTO agent_hwm (agent_id, epoch, hwm, chain, updated_ms, first_ms, peer) VALUES ($1, $2, $3, $4, $5, $5, $6) "
    "ON CONFLICT (agent_id, epoch) DO UPDATE SET "
    "chain = CASE WHEN excluded.hwm > agent_hwm.hwm THEN excluded.chain ELSE agent_hwm.chain END, "
    "hwm = GREATEST(agent_hwm.hwm, excluded.hwm), prev_ms = agent_hwm.updated_ms, updated_ms = excluded.updated_ms, "
    "peer = excluded.peer RETURNING hwm, chain"
)
HELD_PENDING_SQL = "SELECT count(*) FROM quarantine WHERE agent_id = $1 AND status = 'pending'"

# What a batch reads first, right after its locks, in one round trip (``PostgresIngest.preload``): whether the
# sender ever had events held, whether any bundle is defined, the sender's ids stored in the batch's id range
# (at most $4: more, and the exact lookup runs), the stock rows of the batch's keys, its stored mark, and the
# locations it has stored events in.
# Everything it reads is what the same reads later in the transaction would see: the batch holds the locks of
# its keys, of its sender (``sender_lockable``) and the recipes' lock (LOCK_SQL) before it runs, and writes none
# of it before it is used.
# The stock rows come as one array per column (``PRELOAD_STOCK_FROM``, all NULL when no key has a row), not as one
# array of the table's row type: PostgreSQL sends ~430 rows that way in 1.6-1.7 ms instead of 1.8-1.9, and the
# driver decodes them in 0.6 ms instead of 0.75 (in-process replays of 200 batches, four of each).
# The keys travel as two texts (``text_list``): asyncpg checks each element of an array parameter against three
# abstract base classes in Python, ~1 µs a text, so the ~860 texts of a batch's keys cost the hub 1.0 ms as two
# text[] and 0.13 ms as two texts split by PostgreSQL, at the same cost there (0.10–0.17 ms; 3 × 300 calls each).
# The sender's credential comes with them (``Batch.credential``, credentials.confirm): a batch whose credential was
# revoked or bound elsewhere since the hub found it writes nothing, and the hub need not read it before.
PRELOAD_STOCK_FROM = 9  # the row's first stock column
PRELOAD_SQL = (
    "SELECT EXISTS (SELECT 1 FROM quarantine WHERE agent_id = $1), EXISTS (SELECT 1 FROM bundle_parts), "
    "ARRAY(SELECT ROW(event_id, location) FROM agent_event_ids($1, $2, $3, $4, NULL)), "
    "(SELECT hwm FROM agent_hwm WHERE agent_id = $1 AND epoch = $7), "
    "(SELECT chain FROM agent_hwm WHERE agent_id = $1 AND epoch = $7), "
    "ARRAY(SELECT location FROM agent_locations WHERE agent_id = $1), "
    "(SELECT max(version) FROM schema_migrations), "
    f"ARRAY(SELECT ROW({', '.join('n.' + c for c in OBSERVED_FIELDS.split(', '))}) "
    f"FROM unnest({text_list_sql('$5', '$8')}, {text_list_sql('$6', '$9')}) AS k(location, sku), "
    "LATERAL (SELECT * FROM observations_newest o WHERE o.location = k.location AND o.sku = k.sku) AS n), "
    "(SELECT ROW(token_sha256, locations, revoked_ms) FROM agents WHERE agent_id = $1), "
    "stock.* FROM "
    f"(SELECT {', '.join(f'array_agg(s.{c})' for c in STOCK_FIELDS.split(', '))} "
    f"FROM unnest({text_list_sql('$5', '$8')}, {text_list_sql('$6', '$9')}) AS k(location, sku) "
    "JOIN stock s ON s.location = k.location AND s.sku = k.sku) AS stock"
)
ADD_LOCATIONS_SQL = (
    "INSERT INTO agent_locations (agent_id, location) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT DO NOTHING"
)

STOCK_LOCK_BUCKETS = 16  # stock locks per location

# What a lock guards: ("stock", location, SKU bucket) or ("transfer", ref).
Lockable: TypeAlias = tuple[str, ...]


def _digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


LOCK_CACHE_SIZE = 65_536  # SKUs and lockables whose hashes are kept (a batch names ~500 of each)


@lru_cache(maxsize=LOCK_CACHE_SIZE)
def _bucket(sku: str) -> str:
    return str(int.from_bytes(_digest(sku, 4), "big") % STOCK_LOCK_BUCKETS)


def stock_lockable(key: StockKey) -> Lockable:
    location, sku = key
    return ("stock", location, _bucket(sku))


def transfer_lockable(key: TransferKey) -> Lockable:
    return ("transfer", key[1])  # the ref: every destination of a ref is locked alike


def sender_lockable(agent_id: str) -> Lockable:
    """One sender's batches, one at a time: its mark, its held events and its ids are read once, first
    (``PostgresIngest.preload``), and stay so until its commit. An agent sends one batch at a time anyway;
    this orders the rare overlap (the same batch to two hubs, a copied outbox sending beside the original)."""
    return ("sender", agent_id)


@lru_cache(maxsize=LOCK_CACHE_SIZE)
def lock_key(what: Lockable) -> int:
    """The signed 64-bit advisory lock key of a lockable (the same in every hub
    process; a collision only makes two unrelated keys wait for each other)."""
    return int.from_bytes(_digest("\x1f".join(what), 8), "big", signed=True)


def batch_keys(batch: Batch) -> tuple[set[StockKey], set[Lockable]]:
    """The stock keys the batch is known to read before anything is read (its events' and their transfers'
    destinations), and the locks of its transfer documents."""
    stock = {(ev.location, ev.sku) for ev, _ in batch.accepted}
    transfers: set[Lockable] = set()
    for ev, _ in batch.accepted:
        if ev.ref is not None and (tkey := transfer_key(ev)) is not None:  # a transfer has a ref: most skip the call
            transfers.add(transfer_lockable(tkey))
            if (dest := transfer_destination(ev)) is not None:
                stock.add((dest, ev.sku))
    return stock, transfers


def batch_locks(batch: Batch) -> set[Lockable]:
    """Every lock the batch is known to need before anything is read."""
    stock, transfers = batch_keys(batch)
    return {stock_lockable(k) for k in stock} | transfers


async def lock_keys(conn: asyncpg.Connection, keys: Iterable[Lockable]) -> None:
    """Take the transaction-scoped advisory locks of ``keys``, in sorted order (held until commit)."""
    ordered = sorted({lock_key(k) for k in keys})
    if ordered:
        await conn.execute(LOCK_SQL, ordered)


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to one list per column, for ``unnest``."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


@dataclass(frozen=True, slots=True)
class _Preloaded:
    """What ``PostgresIngest.preload`` read for one batch."""

    agent_id: str
    epoch: int
    held_any: bool  # any event of the sender ever held in the quarantine
    bundles_any: bool  # any bundle defined
    low: bytes  # the batch's lowest and highest event id
    high: bytes
    ids: dict[bytes, str] | None  # the sender's stored ids from low to high -> location; None: too many, ask
    stock_keys: frozenset[StockKey]
    stock: dict[StockKey, StockRow]  # those of stock_keys with a row
    mark: tuple[int, bytes | None] | None  # stored_mark
    locations: frozenset[str]  # where the sender has stored events (agent_locations)
    observed_keys: frozenset[StockKey]  # the keys whose newest observations were read (stock_keys, kept)
    observed: list[Row]  # their newest observations (reports.OBSERVED_FIELDS)


class PostgresIngest:
    """``hub.storage.ingest.IngestTx`` over one connection, inside its transaction."""

    def __init__(self, conn: asyncpg.Connection, locked: set[Lockable]) -> None:
        self.conn = conn
        self.locked = locked  # the keys this transaction holds locks on
        self._changes: list[NewChange] = []
        self._changes_at_ms = 0
        self._stock: list[tuple[object, ...]] = []  # stock rows whose write waits for finish_sync (or the flush)
        self._defer_stock = False
        # the keys read or written below zero in this transaction: in stock_negative, or going in with the stock
        # write kept back (_negative_unwritten: its time goes in, None: it goes out, with that write)
        self._negative: set[StockKey] = set()
        self._negative_unwritten: dict[StockKey, int | None] = {}
        self._newest_change: int | None = None
        self._pre: _Preloaded | None = None

    async def preload(self, batch: Batch, keys: Collection[StockKey]) -> None:
        """Read in one round trip what ``apply_batch`` reads first (``PRELOAD_SQL``); the reads below answer
        from it. Call it right after the batch's locks. A batch from a sender (not an operator) then ends with
        ``finish_sync``, so its stock rows are written there, in the same statement as its mark and change rows."""
        agent_id = batch.who.agent_id
        ids = [ev.event_id for ev, _ in batch.accepted]
        low, high = (min(ids), max(ids)) if ids else (b"", b"")
        limit = 2 * len(ids) + 1
        locations, skus = columns(list(keys), 2)
        (locations_joined, locations_list), (skus_joined, skus_list) = text_list(locations), text_list(skus)
        row = await self.conn.fetchrow(
            PRELOAD_SQL, agent_id, low, high, limit, locations_joined, skus_joined, batch.epoch, locations_list, skus_list
        )  # fmt: skip
        assert row is not None
        check_not_newer(row[6])  # migrated by a newer hub since this one started: it must not ingest
        if batch.credential is not None and not credentials.still_holds(batch.who, batch.credential, row[8]):
            raise CredentialChanged(agent_id)  # before anything is written
        in_range = row[2]
        stock = row[PRELOAD_STOCK_FROM:]  # one array per column, or all NULL: no key has a row
        self._pre = _Preloaded(
            agent_id=agent_id,
            epoch=batch.epoch,
            held_any=row[0],
            bundles_any=row[1],
            low=low,
            high=high,
            ids={r[0]: r[1] for r in in_range} if ids and len(in_range) < limit else None,
            stock_keys=frozenset(keys),
            stock=(read := {(r[0], r[1]): stock_row(r) for r in zip(*stock)} if stock[0] is not None else {}),
            mark=None if row[3] is None else (int(row[3]), row[4]),
            locations=frozenset(row[5]),
            observed_keys=frozenset(keys),
            observed=[tuple(r) for r in row[7]],
        )
        self._read_negative(read)
        self._defer_stock = batch.operator is None

    async def _lock(self, keys: Iterable[Lockable]) -> None:
        """Lock those of ``keys`` not held yet (the algorithm may need more than ``batch_locks`` foresaw)."""
        more = set(keys) - self.locked
        if more:
            await lock_keys(self.conn, more)
            self.locked |= more

    async def stored_rows(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, EventRow]:
        """Two lookups, each bounded by the batch's id range (``STORED_IDS_SQL``): which ids are stored and
        where, then — only for a resend — their rows, one location's partition at a time."""
        if not event_ids:
            return {}
        pre = self._pre
        found: Iterable[tuple[bytes, str]]
        if (
            pre is not None and pre.agent_id == agent_id and pre.ids is not None
            and pre.low <= min(event_ids) and max(event_ids) <= pre.high
        ):  # fmt: skip
            if not pre.ids:
                return {}  # the common case: no id of the sender stored in the batch's range, so every event new
            found = [(i, pre.ids[i]) for i in event_ids if i in pre.ids]
        else:
            ids = list(event_ids)
            found = await self.conn.fetch(STORED_IDS_SQL, agent_id, ids, min(ids), max(ids))
        if not found:
            return {}
        by_location: dict[str, list[bytes]] = defaultdict(list)
        for event_id, location in found:
            by_location[location].append(event_id)
        out: dict[bytes, EventRow] = {}
        for location, at in by_location.items():
            rows = await self.conn.fetch(STORED_EVENTS_SQL, location, agent_id, at, min(at), max(at))
            out.update((r[0], tuple(r)[1:]) for r in rows)
        return out

    async def stock_rows(self, keys: Collection[StockKey]) -> dict[StockKey, StockRow]:
        pre = self._pre
        if pre is not None and pre.stock_keys.issuperset(keys):  # locked and read already, unwritten since
            return {k: row for k in keys if (row := pre.stock.get(k)) is not None}
        keys = list(keys)
        await self._lock(map(stock_lockable, keys))
        fields = ", ".join(f"s.{c}" for c in STOCK_FIELDS.split(", "))
        rows = await self.conn.fetch(
            f"SELECT {fields} FROM unnest($1::text[], $2::text[]) AS k(location, sku) "
            "JOIN stock s ON s.location = k.location AND s.sku = k.sku",
            *columns(keys, 2),
        )
        read = {(r[0], r[1]): stock_row(r) for r in rows}
        self._read_negative(read)
        return read

    def _read_negative(self, rows: Mapping[StockKey, StockRow]) -> None:
        """Note the keys of ``rows``, as read from stock, that are below zero (in stock_negative)."""
        for key, row in rows.items():
            if row[2] < 0 and key not in self._negative_unwritten:  # not one whose newer row waits to be written
                self._negative.add(key)

    def _negative_moved(self, rows: Sequence[StockRow], now_ms: int) -> None:
        """Note which keys of ``rows``, about to be written at ``now_ms``, are below zero or came back
        (``_negative_unwritten``); the others are none of stock_negative's business."""
        negative, unwritten = self._negative, self._negative_unwritten
        for r in rows:
            if r[2] < 0:
                negative.add(key := (r[0], r[1]))
                unwritten[key] = now_ms
            elif negative and (key := (r[0], r[1])) in negative:
                negative.discard(key)
                unwritten[key] = None

    def _negative_ctes(self, args: list[Any]) -> list[str]:
        """The statements (CTEs) writing ``_negative_unwritten`` to stock_negative, their lists appended to
        ``args``; none when no key is or was below zero. Call it with the stock write."""
        put = [(*k, at_ms) for k, at_ms in self._negative_unwritten.items() if at_ms is not None]
        gone = [k for k, at_ms in self._negative_unwritten.items() if at_ms is None]
        self._negative_unwritten = {}
        ctes = []
        for rows, width, sql in ((put, 3, NEGATIVE_PUT_SQL), (gone, 2, NEGATIVE_GONE_SQL)):
            if rows:
                args += columns(rows, width)
                ctes.append(sql.format(*(f"${n}" for n in range(len(args) - width + 1, len(args) + 1))))
        return ctes

    async def stock_stamped(self, key: StockKey, on_hand: int, now_ms: int) -> None:
        if on_hand < 0:  # its row in stock_negative keeps the stock row's time
            self._negative.add(key)
            self._negative_unwritten.pop(key, None)
            await self.conn.execute(
                "INSERT INTO stock_negative (location, sku, updated_at_ms) VALUES ($1, $2, $3) "
                "ON CONFLICT (location, sku) DO UPDATE SET updated_at_ms = excluded.updated_at_ms",
                *key, now_ms,
            )  # fmt: skip

    async def transfer_rows(self, keys: Collection[TransferKey]) -> dict[TransferKey, Transfer]:
        keys = list(keys)
        await self._lock(map(transfer_lockable, keys))
        fields = ", ".join(f"t.{c}" for c in TRANSFER_FIELDS.split(", "))
        rows = await self.conn.fetch(
            f"SELECT {fields} FROM unnest($1::text[], $2::text[], $3::text[]) AS k(dest, ref, sku) "
            "JOIN transfers t ON t.dest = k.dest AND t.ref = k.ref AND t.sku = k.sku",
            *columns(keys, 3),
        )
        return {(r[0], r[1], r[2]): Transfer(*r) for r in rows}

    async def transfers_of(self, pairs: Collection[tuple[str, str]]) -> dict[TransferKey, Transfer]:
        pairs = list(pairs)
        await self._lock(("transfer", ref) for ref, _ in pairs)  # held already: the batch's transfers' refs
        fields = ", ".join(f"t.{c}" for c in TRANSFER_FIELDS.split(", "))
        rows = await self.conn.fetch(
            f"SELECT {fields} FROM unnest($1::text[], $2::text[]) AS k(ref, sku) "
            "JOIN transfers t ON t.ref = k.ref AND t.sku = k.sku",  # transfers_by_ref (schema 25)
            *columns(pairs, 2),
        )
        return {(r[0], r[1], r[2]): Transfer(*r) for r in rows}

    async def reservation_rows(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, Reservation]:
        # only the events of (location, sku) change its reservations: its stock lock guards them
        keys = list(keys)
        await self._lock(stock_lockable((k[0], k[1])) for k in keys)
        rows = await self.conn.fetch(
            "SELECT t.location, t.sku, t.ref, t.reserved, t.consumed "
            "FROM unnest($1::text[], $2::text[], $3::text[]) AS k(location, sku, ref) "
            "JOIN reservations t ON t.location = k.location AND t.sku = k.sku AND t.ref = k.ref",
            *columns(keys, 3),
        )
        return {(r[0], r[1], r[2]): Reservation(r[3], r[4]) for r in rows}

    async def stored_sales(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, int]:
        rows = await self.conn.fetch(
            "SELECT k.location, k.sku, k.ref, -SUM(e.qty) "
            "FROM unnest($1::text[], $2::text[], $3::text[]) AS k(location, sku, ref) JOIN events e "
            "ON e.location = k.location AND e.sku = k.sku AND e.ref = k.ref AND e.kind = 'sale' "
            "GROUP BY k.location, k.sku, k.ref",
            *columns(list(keys), 3),
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    async def stored_book_outs(self, keys: Collection[TransferKey]) -> dict[TransferKey, int]:
        rows = await self.conn.fetch(
            "SELECT k.dest, k.ref, k.sku, -SUM(e.qty) "
            "FROM unnest($1::text[], $2::text[], $3::text[]) AS k(dest, ref, sku) JOIN events e "
            "ON e.location = k.dest AND e.sku = k.sku AND e.ref = k.ref AND e.kind = 'adjust' "  # events_adjust_ref
            "AND e.ref <> e.source AND e.effect <> 'expanded' "
            "GROUP BY k.dest, k.ref, k.sku",
            *columns(list(keys), 3),
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    async def insert_events(self, rows: Sequence[NewEvent], received_at_ms: int) -> None:
        pre = self._pre
        known = {(pre.agent_id, at) for at in pre.locations} if pre is not None else set()
        new = {(row[0], row[3]) for _, row, _, _ in rows} - known
        if new:  # an agent's first events of a location: later lookups search its partition too
            await self.conn.execute(ADD_LOCATIONS_SQL, *columns(sorted(new), 2))
        if pre is not None:  # the ids stored in the batch's range are now more than were preloaded
            mine = {at for agent_id, at in new if agent_id == pre.agent_id}
            self._pre = replace(pre, ids=None, locations=pre.locations | mine)
        # COPY, the cheapest bulk insert on both sides.
        await self.conn.copy_records_to_table(
            "events",
            records=[row + (event_id, effect, variance, received_at_ms) for event_id, row, effect, variance in rows],
            columns=EVENT_COLUMNS,
        )

    async def add_duplicates(self, agent_id: str, counts: Mapping[tuple[str, bytes], int]) -> None:
        await self.conn.execute(
            "UPDATE events e SET duplicates = e.duplicates + d.n "
            "FROM unnest($2::text[], $3::bytea[], $4::int8[]) AS d(location, event_id, n) "
            "WHERE e.location = d.location AND e.agent_id = $1 AND e.event_id = d.event_id",
            agent_id,
            *columns([(*k, n) for k, n in counts.items()], 3),
        )

    async def insert_rejections(self, rows: Sequence[RejectedAttempt], received_at_ms: int) -> None:
        # One statement per attempt: the same attempt twice in a batch counts twice.
        await self.conn.executemany(
            f"INSERT INTO rejections ({EVENT_FIELDS}, content_hash, code, detail, received_at_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) "
            "ON CONFLICT (agent_id, event_id, content_hash) DO UPDATE SET "
            "attempts = rejections.attempts + 1, code = excluded.code, detail = excluded.detail, "
            "received_at_ms = excluded.received_at_ms",
            [(r.event.event_id, *r.row, r.content_hash, r.code, r.reason, received_at_ms) for r in rows],
        )

    async def sum_deltas(self, key: StockKey, after: OrderKey | None, before: OrderKey | None) -> int:
        sql = f"SELECT COALESCE(SUM(qty), 0) FROM events WHERE location = $1 AND sku = $2 AND kind IN {DELTA_KINDS}"
        params: list[Any] = [*key]
        if after is not None:
            sql += (
                f" AND {ORDER_KEY} > (${len(params) + 1}, ${len(params) + 2}, ${len(params) + 3}, ${len(params) + 4})"
            )
            params += after
        if before is not None:
            sql += (
                f" AND {ORDER_KEY} < (${len(params) + 1}, ${len(params) + 2}, ${len(params) + 3}, ${len(params) + 4})"
            )
            params += before
        return int(await self.conn.fetchval(sql, *params))

    async def counts_from(self, key: StockKey, start: OrderKey) -> list[CountPoint]:
        fields = "occurred_at, agent_id, seq, event_id, qty"
        where = "location = $1 AND sku = $2 AND kind = 'count'"
        before = await self.conn.fetch(
            f"SELECT {fields} FROM events WHERE {where} AND {ORDER_KEY} < ($3, $4, $5, $6) "
            f"ORDER BY {NEWEST_FIRST} LIMIT 1",
            *key,
            *start,
        )
        since = await self.conn.fetch(
            f"SELECT {fields} FROM events WHERE {where} AND {ORDER_KEY} >= ($3, $4, $5, $6) "
            "ORDER BY occurred_at, agent_id, seq, event_id",
            *key,
            *start,
        )
        return [CountPoint((r[0], r[1], r[2], r[3]), r[4]) for r in [*before, *since]]

    async def set_variances(self, rows: Sequence[tuple[str, str, bytes, int]]) -> None:
        await self.conn.execute(
            "UPDATE events e SET variance = v.variance "
            "FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[]) AS v(location, agent_id, event_id, variance) "
            "WHERE e.location = v.location AND e.agent_id = v.agent_id AND e.event_id = v.event_id",
            *columns(rows, 4),
        )

    async def save_transfers(self, rows: Sequence[Transfer], now_ms: int) -> None:
        await self.conn.executemany(
            f"INSERT INTO transfers ({TRANSFER_FIELDS}, updated_at_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
            "ON CONFLICT (dest, ref, sku) DO UPDATE SET shipped = excluded.shipped, received = excluded.received, "
            "out_from = excluded.out_from, out_to = excluded.out_to, in_to = excluded.in_to, "
            "in_from = excluded.in_from, shipped_at_ms = excluded.shipped_at_ms, closed_at = excluded.closed_at, "
            "shippers = excluded.shippers, final_at = excluded.final_at, returned = excluded.returned, "
            "booked_out = excluded.booked_out, updated_at_ms = excluded.updated_at_ms",
            [(*transfer_values(t), now_ms) for t in rows],
        )

    async def held_pending(self, agent_id: str) -> int:
        return int(await self.conn.fetchval(HELD_PENDING_SQL, agent_id))

    async def held_status(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, str]:
        pre = self._pre
        if pre is not None and pre.agent_id == agent_id:
            if not pre.held_any:
                return {}  # the common case: nothing of this sender was ever held
        elif await self.conn.fetchval("SELECT 1 FROM quarantine WHERE agent_id = $1 LIMIT 1", agent_id) is None:
            return {}
        rows = await self.conn.fetch(
            "SELECT event_id, status FROM quarantine WHERE agent_id = $1 AND event_id = ANY($2::bytea[])",
            agent_id,
            list(event_ids),
        )
        return {bytes(r[0]): str(r[1]) for r in rows}

    async def insert_quarantined(
        self, rows: Sequence[RejectedAttempt], received_at_ms: int, sent_ms: int | None = None,
        hub_clock_off_ms: int | None = None, hub_clock_vouched: int | None = None,
    ) -> None:  # fmt: skip
        await self.conn.executemany(
            f"INSERT INTO quarantine ({EVENT_FIELDS}, detail, received_at_ms, sent_ms, hub_clock_off_ms, "
            "hub_clock_vouched) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) "
            "ON CONFLICT (agent_id, event_id) DO UPDATE SET attempts = quarantine.attempts + 1",
            [(r.event.event_id, *r.row, r.reason, received_at_ms, sent_ms, hub_clock_off_ms, hub_clock_vouched)
             for r in rows],
        )  # fmt: skip

    async def hub_clock_finding(self) -> HubClockFinding | None:
        # Two statements: the read's snapshot is taken after the lock is granted (READ COMMITTED), so it sees the
        # finding of a marking that held the lock meanwhile.
        await self.conn.execute(HUB_CLOCK_LOCK_SHARED)
        return finding(await self.conn.fetchrow(FINDING_SQL))

    async def note_hub_clock_off(self, offset_ms: int, now_ms: int, judged_ms: int) -> HubClockFinding | None:
        # No hub-clock lock: the finding's row, locked by the upsert until the commit, orders this write with a
        # marking or a "right again" under way (which write that row too), and a sync is not kept waiting behind them.
        await self.conn.execute(numbered(NOTE_OFF_SQL), offset_ms, now_ms, judged_ms, HUB_CLOCK_AGREE_MS)
        return finding(await self.conn.fetchrow(FINDING_SQL))

    async def save_reservations(self, rows: Mapping[ReservationKey, Reservation], now_ms: int) -> None:
        await self.conn.executemany(
            "INSERT INTO reservations (location, sku, ref, reserved, consumed, updated_at_ms) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (location, sku, ref) DO UPDATE SET "
            "reserved = excluded.reserved, consumed = excluded.consumed, updated_at_ms = excluded.updated_at_ms",
            [(*k, r.reserved, r.consumed, now_ms) for k, r in rows.items()],
        )

    async def save_stock(self, rows: Sequence[StockRow], now_ms: int) -> None:
        none4 = (None, None, None, None)
        values = [  # in STOCK_FIELDS order, each built in one step (hundreds a batch)
            (r[0], r[1], r[2], r[3], r[4], r[5], *(r[6] or none4), *(r[7] or none4), now_ms) for r in rows
        ]
        self._forget_stock()
        self._negative_moved(rows, now_ms)
        if self._defer_stock:  # written by finish_sync (or the flush), after every read of stock
            self._stock += values
        else:
            await self._write_stock(values)

    async def _write_stock(self, values: list[tuple[object, ...]]) -> None:
        """Write these stock rows, and the keys that crossed zero with them, in one statement."""
        args: list[Any] = [values]
        ctes = self._negative_ctes(args)
        await self.conn.execute(f"WITH {', '.join(ctes)} {SAVE_STOCK_SQL}" if ctes else SAVE_STOCK_SQL, *args)

    async def advance_hwm(self, agent_id: str, epoch: int, seq: int, now_ms: int) -> int:
        hwm = await self.conn.fetchval(
            "INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (agent_id, epoch) DO UPDATE SET hwm = GREATEST(agent_hwm.hwm, excluded.hwm), "
            "updated_ms = excluded.updated_ms RETURNING hwm",
            agent_id,
            epoch,
            seq,
            now_ms,
        )
        return int(hwm)

    async def note_sync(
        self,
        agent_id: str,
        now_ms: int,
        clock_skew_ms: int | None,
        *,
        backlog: int | None = None,
        oldest_pending_ms: int | None = None,
        sent_ms: int | None = None,
        disk: DiskReport | None = None,
    ) -> None:
        statement, params = note_sync_sql(agent_id, now_ms, clock_skew_ms, backlog, oldest_pending_ms, sent_ms, disk)
        await self.conn.execute(numbered(statement), *params)

    async def note_lost(self, agent_id: str, lost: LostReport, now_ms: int) -> None:
        statement, params = note_lost_sql(agent_id, lost, now_ms)
        await self.conn.execute(numbered(statement), *params)

    async def stored_hwm(self, agent_id: str, epoch: int) -> int:
        hwm = await self.conn.fetchval("SELECT hwm FROM agent_hwm WHERE agent_id = $1 AND epoch = $2", agent_id, epoch)
        return 0 if hwm is None else int(hwm)

    def _forget_stock(self) -> None:
        """Stock was written: the preloaded rows are no longer the table's."""
        if self._pre is not None:
            self._pre = replace(self._pre, stock_keys=frozenset(), stock={})

    async def stored_mark(self, agent_id: str, epoch: int) -> tuple[int, bytes | None] | None:
        pre = self._pre
        if pre is not None and (pre.agent_id, pre.epoch) == (agent_id, epoch):
            return pre.mark
        row = await self.conn.fetchrow(
            "SELECT hwm, chain FROM agent_hwm WHERE agent_id = $1 AND epoch = $2", agent_id, epoch
        )
        return None if row is None else (int(row[0]), row[1])

    async def top_mark(self, agent_id: str) -> tuple[int, bytes | None] | None:
        row = await self.conn.fetchrow(
            "SELECT hwm, chain FROM agent_hwm WHERE agent_id = $1 ORDER BY hwm DESC LIMIT 1", agent_id
        )
        return None if row is None else (int(row[0]), row[1])

    async def advance_mark(
        self, agent_id: str, epoch: int, seq: int, chain: bytes | None, now_ms: int, peer: str | None = None
    ) -> tuple[int, bytes | None]:
        row = await self.conn.fetchrow(ADVANCE_MARK_SQL, agent_id, epoch, seq, chain, now_ms, peer)
        assert row is not None
        return int(row[0]), row[1]

    async def finish_sync(self, note: SyncNote) -> tuple[int, bytes | None, int]:
        """One statement: the mark, the sync note, the stock rows and change rows kept back, the held count.
        The change rows come last in the transaction as ``flush_changes`` requires: COMMIT follows it."""
        statement, params = note_sync_sql(
            note.agent_id, note.now_ms, note.clock_skew_ms, note.backlog, note.oldest_pending_ms, note.sent_ms, note.disk
        )
        args: list[Any] = [note.agent_id, note.epoch, note.seq, note.chain, note.now_ms, note.peer, *params]
        ctes = [f"mark AS ({ADVANCE_MARK_SQL})", f"sync AS ({numbered(statement, 7)})"]
        stock = "0"
        if self._stock:
            args.append(self._stock)
            ctes.append(f"stock_written AS ({save_stock_sql(f'${len(args)}')} RETURNING 1)")
            stock = "(SELECT count(*) FROM stock_written)"
            ctes += self._negative_ctes(args)
        newest = "NULL::int8"
        if self._changes:
            ctes.append(append_ctes(len(args) + 1))
            args += run_params(self._changes, self._changes_at_ms)
            newest = "(SELECT last_id FROM counter)"
        # The output columns are computed in order: the stock rows are written before the counter is raised, so
        # the counter row stays locked only for the change rows and the COMMIT, as in append_changes.
        row = await self.conn.fetchrow(
            f"WITH {', '.join(ctes)} SELECT mark.hwm, mark.chain, ({HELD_PENDING_SQL}), {stock}, {newest} FROM mark",
            *args,
        )
        assert row is not None
        self._stock, self._defer_stock = [], False
        if self._changes:
            self._changes, self._newest_change = [], int(row[4])
        return int(row[0]), row[1], int(row[2])

    async def append_changes(self, rows: Sequence[NewChange], now_ms: int) -> None:
        """Kept until ``flush_changes``: the feed's ids are taken just before COMMIT."""
        self._changes += rows
        self._changes_at_ms = now_ms

    async def flush_changes(self) -> int | None:
        """Write what is still kept back — stock rows, then the change rows — unless ``finish_sync`` did; call it
        last, right before COMMIT. Returns the newest change id as of this transaction's commit (None: it
        appended no change rows)."""
        if self._stock:
            await self._write_stock(self._stock)
            self._stock = []
        if self._changes:
            self._newest_change = await append_changes(self.conn, self._changes, self._changes_at_ms)
            self._changes = []
        return self._newest_change

    # --- bundles (schema version 6) ------------------------------------------------------------------

    async def bundle_book(self, skus: Collection[str] | None) -> dict[str, BundleParts]:
        if self._pre is not None and not self._pre.bundles_any:
            return {}  # no bundle defined: the recipes' lock, held since before the preload, keeps it so
        if skus is None:
            return bundle_book(await self.conn.fetch(f"SELECT {BUNDLE_PART_FIELDS} FROM bundle_parts"))
        rows = await self.conn.fetch(
            f"SELECT {BUNDLE_PART_FIELDS} FROM bundle_parts WHERE bundle IN "
            "(SELECT bundle FROM bundle_parts WHERE bundle = ANY($1::text[]) OR part = ANY($1::text[]))",
            list(skus),
        )
        return bundle_book(rows)

    async def insert_expansions(self, rows: Sequence[NewExpansion]) -> None:
        await self.conn.execute(
            f"INSERT INTO bundle_expansions ({EXPANSION_FIELDS}) "
            "SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::text[])",
            *columns(rows, 4),
        )

    async def lock_recipes(self) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", RECIPES_LOCK)  # alone: see LOCK_SQL

    async def recipes(self) -> dict[str, BundleRecipe]:
        return {r[0]: bundle_recipe(r) for r in await self.conn.fetch(NEWEST_RECIPES)}

    async def insert_recipe(self, recipe: BundleRecipe) -> None:
        await self.conn.execute(
            f"INSERT INTO bundle_recipes ({RECIPE_FIELDS}) VALUES ($1, $2, $3, $4, $5)",
            recipe.sku, recipe.version, recipe.valid_from_ms, attrs_json(dict(recipe.components)), recipe.set_by,
        )  # fmt: skip

    async def save_parts(self, rows: Mapping[str, BundleParts]) -> None:
        await self.conn.execute("DELETE FROM bundle_parts WHERE bundle = ANY($1::text[])", list(rows))
        values = [(b, part, units, bp.version) for b, bp in rows.items() for part, units in bp.parts.items()]
        await self.conn.execute(
            f"INSERT INTO bundle_parts ({BUNDLE_PART_FIELDS}) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[])",
            *columns(values, 4),
        )

    async def stock_keys_of(self, skus: Collection[str]) -> list[StockKey]:
        rows = await self.conn.fetch("SELECT location, sku FROM stock WHERE sku = ANY($1::text[])", list(skus))
        return [(r[0], r[1]) for r in rows]

    async def has_events(self, key: StockKey) -> bool:
        sql = "SELECT EXISTS (SELECT 1 FROM events WHERE location = $1 AND sku = $2)"
        return bool(await self.conn.fetchval(sql, *key))

    async def settle_observed(
        self, stock: Mapping[StockKey, tuple[int, int | None]], earliest: Mapping[StockKey, int], bundles: bool = True
    ) -> None:
        pre = self._pre  # the batch's keys' observations came with its first read: no round trip for them
        found = (pre.observed_keys, pre.observed) if pre is not None else None
        await reports.settle_observed(PostgresDb(self.conn), stock, earliest, found, bundles)

    async def delete_stock(self, keys: Collection[StockKey]) -> None:
        self._forget_stock()
        for key in keys:  # the keys go from stock_negative too, whatever was kept back for them
            self._negative.discard(key)
            self._negative_unwritten.pop(key, None)
        await self.conn.execute(
            f"WITH {NEGATIVE_GONE_SQL.format('$1', '$2')} "
            "DELETE FROM stock s USING unnest($1::text[], $2::text[]) AS k(location, sku) "
            "WHERE s.location = k.location AND s.sku = k.sku",
            *columns(list(keys), 2),
        )

    async def expansions(self, ids: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Rows of EXPANSION_FIELDS of these bundle movements (agent_id, event_id): a read, any connection."""
        return list(
            await self.conn.fetch(
                f"SELECT {', '.join('e.' + f for f in EXPANSION_FIELDS.split(', '))} "
                "FROM unnest($1::text[], $2::bytea[]) AS k(agent_id, event_id) JOIN bundle_expansions e "
                "ON e.agent_id = k.agent_id AND e.event_id = k.event_id",
                *columns(list(ids), 2),
            )
        )
