"""The SQLite side of the shared ingest algorithm: ``hub.storage.ingest.IngestTx`` in SQL.

The SQL is plain enough for a PostgreSQL backend to mirror: upserts with
``ON CONFLICT``, row-value ranges on the order key, and ``WITH k(...) AS
(VALUES …)`` joins for set lookups (each chunk one statement, one round trip).

A batch's big writes (its events, change rows and stock rows) go as
multi-row ``VALUES`` statements of ``ROWS_PER_STATEMENT`` rows, not as
``executemany``: the sqlite3 module lets go of the GIL around every step,
and ``executemany`` steps once per row, so a 1,000-row write asked for the
GIL back a thousand times — each time waiting behind whatever Python the
event loop was running (measured: the same writes took 13 ms per batch
in-process and 24 ms with the HTTP server busy beside them). One step per
500 rows lets SQLite work while the event loop runs, and asks for the GIL
twice; it also took 0.7 ms less of the writer's CPU per batch than 200 rows
(fewer statements to step and reset; ``bench/bench_ingest.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, TypeVar

from hub.clock_window import HUB_CLOCK_AGREE_MS
from hub.resolver import OrderKey, Reservation, ReservationKey, StockKey, Transfer, TransferKey
from hub.storage import reports
from hub.storage.base import BundleRecipe
from hub.storage.db import SqliteDb
from hub.storage.held import FINDING_SQL, NOTE_OFF_SQL, HubClockFinding, finding, transfer_values
from hub.storage.ingest import (
    EFFECT_TEXT,
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
    finish_in_steps,
    stock_row,
)
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
from hub.storage.sqlite.writer import Db
from protocol import DiskReport, LostReport

T = TypeVar("T")

IN_LIST_MAX_PARAMS = 5_000  # well under SQLite's 32,766 bound parameters per statement
STOCK_WIDTH = len(STOCK_FIELDS.split(", "))
ROWS_PER_STATEMENT = 500  # rows per multi-row INSERT/UPDATE: 17 × 500 parameters for the widest (events)
STOCK_CACHE_ROWS = 50_000  # (location, sku) rows the writer keeps in memory: ~20 MiB

FIRST_STORED_BETWEEN = "SELECT 1 FROM events WHERE agent_id = ? AND event_id BETWEEN ? AND ? LIMIT 1"
NONE4 = (None, None, None, None)  # an order key that is not there
UPSERT_STOCK = (  # head and tail of a multi-row upsert of whole stock rows
    f"INSERT INTO stock ({STOCK_FIELDS})",
    "ON CONFLICT (location, sku) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in STOCK_FIELDS.split(", ")[2:]),
)
UPDATE_ON_HAND = (  # head and tail of a multi-row UPDATE … FROM (VALUES …): on_hand and the newest key of each row
    ("UPDATE stock SET on_hand = v.column1, max_at = v.column2, max_agent = v.column3, max_seq = v.column4, "
    "max_id = v.column5, updated_at_ms = v.column6 FROM ("),
    ") AS v WHERE stock.location = v.column7 AND stock.sku = v.column8",
)


def chunks(items: Sequence[T], params_each: int) -> Iterable[Sequence[T]]:
    step = max(1, IN_LIST_MAX_PARAMS // params_each)
    for i in range(0, len(items), step):
        yield items[i : i + step]


def marks(n: int) -> str:
    return ", ".join("?" * n)


def values_rows(n: int, width: int) -> str:
    return ", ".join([f"({marks(width)})"] * n)


async def insert_rows(db: Db, head: str, tail: str, width: int, rows: Sequence[Sequence[Any]]) -> int:
    """``{head} VALUES (…), (…) {tail}`` with ``ROWS_PER_STATEMENT`` rows a statement; the rows it changed.

    Full statements share one text (the connection's statement cache keeps it
    prepared); the remainder is one more."""
    step = ROWS_PER_STATEMENT
    full = len(rows) - len(rows) % step
    changed = 0
    if full:
        sql = f"{head} VALUES {values_rows(step, width)} {tail}"
        cursor = await db.executemany(sql, [list(chain.from_iterable(rows[i : i + step])) for i in range(0, full, step)])
        changed += cursor.rowcount
    if full < len(rows):
        rest = rows[full:]
        cursor = await db.execute(f"{head} VALUES {values_rows(len(rest), width)} {tail}", list(chain.from_iterable(rest)))
        changed += cursor.rowcount
    return changed


class StockCache:
    """The writer's copy of the stock rows it read or wrote lately, so a batch finds its keys in memory.

    Owned by the writer thread. The store clears it when a write rolls back
    (rows it cached may not be committed) and when another connection has
    committed since the last write (``PRAGMA data_version``). The least
    recently saved rows leave first once it holds ``max_rows``. A cached row's
    ``updated_at_ms`` may lag: ingest never reads it.
    """

    def __init__(self, max_rows: int = STOCK_CACHE_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: dict[StockKey, StockRow] = {}  # in order of last save: a dict keeps insertion order
        self.data_version: int | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: StockKey) -> StockRow | None:
        return self._rows.get(key)

    def put(self, rows: Iterable[StockRow]) -> None:
        cached = self._rows
        for row in rows:
            key = row[:2]  # (location, sku)
            cached.pop(key, None)
            cached[key] = row
        while len(cached) > self.max_rows:
            del cached[next(iter(cached))]

    def swap(self, rows: Sequence[StockRow]) -> list[StockRow | None]:
        """``put(rows)``, returning the row each replaced (None: not held)."""
        cached = self._rows
        pop = cached.pop
        olds: list[StockRow | None] = []
        for row in rows:
            key = row[:2]
            olds.append(pop(key, None))
            cached[key] = row
        while len(cached) > self.max_rows:
            del cached[next(iter(cached))]
        return olds

    def discard(self, key: StockKey) -> None:
        self._rows.pop(key, None)

    def clear(self) -> None:
        self._rows.clear()

    def check_version(self, data_version: int) -> None:
        """Forget everything if another connection committed (``data_version`` moved)."""
        if data_version != self.data_version:
            self._rows.clear()
            self.data_version = data_version


class SqliteIngest:
    """``hub.storage.ingest.IngestTx`` over the writer connection, inside its transaction."""

    def __init__(self, db: Db, cache: StockCache | None = None) -> None:
        self.db = db
        self.cache = cache

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, params))

    async def stored_rows(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, EventRow]:
        if not event_ids:
            return {}
        # One seek first. Event ids are time-ordered (UUIDv7), so a batch of new events finds nothing stored
        # between its lowest and its highest id, and is spared a lookup per event (0.8 ms a 1,000-event batch).
        if not await self._fetch(FIRST_STORED_BETWEEN, (agent_id, min(event_ids), max(event_ids))):
            return {}
        found: dict[bytes, EventRow] = {}
        for part in chunks(event_ids, 1):
            sql = f"SELECT {EVENT_FIELDS} FROM events WHERE agent_id = ? AND event_id IN ({marks(len(part))})"
            found.update((r[0], tuple(r[1:])) for r in await self._fetch(sql, [agent_id, *part]))
        return found

    async def _join(self, table: str, fields: str, names: str, keys: Collection[tuple[str, ...]]) -> list[Any]:
        cols = names.split(", ")
        on = " AND ".join(f"t.{c} = k.{c}" for c in cols)
        rows: list[Any] = []
        for part in chunks(list(keys), len(cols)):
            sql = (
                f"WITH k({names}) AS (VALUES {values_rows(len(part), len(cols))}) "
                f"SELECT {fields} FROM k JOIN {table} t ON {on}"
            )
            rows += await self._fetch(sql, [v for key in part for v in key])
        return rows

    async def stock_rows(self, keys: Collection[StockKey]) -> dict[StockKey, StockRow]:
        cache = self.cache
        found: dict[StockKey, StockRow] = {}
        if cache is None:
            missing = list(keys)
        else:
            missing = []
            get = cache.get
            for k in keys:
                row = get(k)
                if row is None:
                    missing.append(k)
                else:
                    found[k] = row
        if missing:
            fields = ", ".join(f"t.{c}" for c in STOCK_FIELDS.split(", "))
            read = {(r[0], r[1]): stock_row(r) for r in await self._join("stock", fields, "location, sku", missing)}
            if cache is not None:
                cache.put(read.values())
            found.update(read)
        return found

    async def transfer_rows(self, keys: Collection[TransferKey]) -> dict[TransferKey, Transfer]:
        fields = ", ".join(f"t.{c}" for c in TRANSFER_FIELDS.split(", "))
        return {(r[0], r[1], r[2]): Transfer(*r) for r in await self._join("transfers", fields, "dest, ref, sku", keys)}

    async def transfers_of(self, pairs: Collection[tuple[str, str]]) -> dict[TransferKey, Transfer]:
        fields = ", ".join(f"t.{c}" for c in TRANSFER_FIELDS.split(", "))
        rows = await self._join("transfers", fields, "ref, sku", pairs)  # transfers_by_ref (schema 25)
        return {(r[0], r[1], r[2]): Transfer(*r) for r in rows}

    async def reservation_rows(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, Reservation]:
        rows = await self._join(
            "reservations", "t.location, t.sku, t.ref, t.reserved, t.consumed", "location, sku, ref", keys
        )
        return {(r[0], r[1], r[2]): Reservation(r[3], r[4]) for r in rows}

    async def stored_sales(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, int]:
        out: dict[ReservationKey, int] = {}
        for part in chunks(list(keys), 3):
            sql = (
                f"WITH k(location, sku, ref) AS (VALUES {values_rows(len(part), 3)}) "
                "SELECT k.location, k.sku, k.ref, -SUM(e.qty) FROM k JOIN events e "
                "ON e.ref = k.ref AND e.location = k.location AND e.sku = k.sku AND e.kind = 'sale' "
                "GROUP BY k.location, k.sku, k.ref"
            )
            rows = await self._fetch(sql, [v for key in part for v in key])
            out.update({(r[0], r[1], r[2]): r[3] for r in rows})
        return out

    async def stored_book_outs(self, keys: Collection[TransferKey]) -> dict[TransferKey, int]:
        out: dict[TransferKey, int] = {}
        for part in chunks(list(keys), 3):
            sql = (  # events_ref: the few events of a ref
                f"WITH k(dest, ref, sku) AS (VALUES {values_rows(len(part), 3)}) "
                "SELECT k.dest, k.ref, k.sku, -SUM(e.qty) FROM k JOIN events e "
                "ON e.ref = k.ref AND e.location = k.dest AND e.sku = k.sku AND e.kind = 'adjust' "
                "AND e.ref <> e.source AND e.effect <> 'expanded' "
                "GROUP BY k.dest, k.ref, k.sku"
            )
            rows = await self._fetch(sql, [v for key in part for v in key])
            out.update({(r[0], r[1], r[2]): r[3] for r in rows})
        return out

    async def insert_events(self, rows: Sequence[NewEvent], received_at_ms: int) -> None:
        await insert_rows(
            self.db, f"INSERT INTO events ({EVENT_FIELDS}, effect, variance, received_at_ms)", "", 17,
            [(event_id, *row, EFFECT_TEXT[effect], variance, received_at_ms) for event_id, row, effect, variance in rows],
        )

    async def add_duplicates(self, agent_id: str, counts: Mapping[tuple[str, bytes], int]) -> None:
        await self.db.executemany(
            "UPDATE events SET duplicates = duplicates + ? WHERE agent_id = ? AND event_id = ?",
            [(n, agent_id, i) for (_, i), n in counts.items()],  # the primary key: no location needed
        )

    async def insert_rejections(self, rows: Sequence[RejectedAttempt], received_at_ms: int) -> None:
        await self.db.executemany(
            f"INSERT INTO rejections ({EVENT_FIELDS}, content_hash, code, detail, received_at_ms) "
            f"VALUES ({marks(18)}) ON CONFLICT (agent_id, event_id, content_hash) DO UPDATE SET "
            "attempts = rejections.attempts + 1, code = excluded.code, detail = excluded.detail, "
            "received_at_ms = excluded.received_at_ms",
            [(r.event.event_id, *r.row, r.content_hash, r.code, r.reason, received_at_ms) for r in rows],
        )

    async def sum_deltas(self, key: StockKey, after: OrderKey | None, before: OrderKey | None) -> int:
        sql = f"SELECT COALESCE(SUM(qty), 0) FROM events WHERE location = ? AND sku = ? AND kind IN {DELTA_KINDS}"
        params: list[Any] = [*key]
        if after is not None:
            sql += f" AND {ORDER_KEY} > (?, ?, ?, ?)"
            params += after
        if before is not None:
            sql += f" AND {ORDER_KEY} < (?, ?, ?, ?)"
            params += before
        rows = await self._fetch(sql, params)
        return int(rows[0][0])

    async def counts_from(self, key: StockKey, start: OrderKey) -> list[CountPoint]:
        fields = "occurred_at, agent_id, seq, event_id, qty"
        where = "location = ? AND sku = ? AND kind = 'count'"
        before = await self._fetch(
            f"SELECT {fields} FROM events WHERE {where} AND {ORDER_KEY} < (?, ?, ?, ?) ORDER BY {NEWEST_FIRST} LIMIT 1",
            [*key, *start],
        )
        since = await self._fetch(
            f"SELECT {fields} FROM events WHERE {where} AND {ORDER_KEY} >= (?, ?, ?, ?) "
            "ORDER BY occurred_at, agent_id, seq, event_id",
            [*key, *start],
        )
        return [CountPoint((r[0], r[1], r[2], r[3]), r[4]) for r in before + since]

    async def set_variances(self, rows: Sequence[tuple[str, str, bytes, int]]) -> None:
        await self.db.executemany(
            "UPDATE events SET variance = ? WHERE agent_id = ? AND event_id = ?", [(v, a, i) for _, a, i, v in rows]
        )

    async def save_transfers(self, rows: Sequence[Transfer], now_ms: int) -> None:
        sql = (
            f"INSERT INTO transfers ({TRANSFER_FIELDS}, updated_at_ms) VALUES ({marks(16)}) "
            "ON CONFLICT (dest, ref, sku) DO UPDATE SET shipped = excluded.shipped, received = excluded.received, "
            "out_from = excluded.out_from, out_to = excluded.out_to, in_to = excluded.in_to, "
            "in_from = excluded.in_from, shipped_at_ms = excluded.shipped_at_ms, closed_at = excluded.closed_at, "
            "shippers = excluded.shippers, final_at = excluded.final_at, returned = excluded.returned, "
            "booked_out = excluded.booked_out, updated_at_ms = excluded.updated_at_ms"
        )
        params = [(*transfer_values(t), now_ms) for t in rows]
        await self.db.executemany(sql, params)

    async def finish_sync(self, note: SyncNote) -> tuple[int, bytes | None, int]:
        return await finish_in_steps(self, note)  # one writer, no round trips: nothing to gain by one statement

    async def held_pending(self, agent_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM quarantine WHERE agent_id = ? AND status = 'pending'", (agent_id,))
        return int(rows[0][0])

    async def held_status(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, str]:
        if not await self._fetch("SELECT 1 FROM quarantine WHERE agent_id = ? LIMIT 1", (agent_id,)):
            return {}  # the common case: nothing of this sender was ever held
        found: dict[bytes, str] = {}
        for part in chunks(event_ids, 1):
            sql = f"SELECT event_id, status FROM quarantine WHERE agent_id = ? AND event_id IN ({marks(len(part))})"
            found.update((r[0], r[1]) for r in await self._fetch(sql, [agent_id, *part]))
        return found

    async def insert_quarantined(
        self, rows: Sequence[RejectedAttempt], received_at_ms: int, sent_ms: int | None = None,
        hub_clock_off_ms: int | None = None, hub_clock_vouched: int | None = None,
    ) -> None:  # fmt: skip
        await self.db.executemany(
            f"INSERT INTO quarantine ({EVENT_FIELDS}, detail, received_at_ms, sent_ms, hub_clock_off_ms, "
            f"hub_clock_vouched) VALUES ({marks(19)}) ON CONFLICT (agent_id, event_id) DO UPDATE SET "
            "attempts = quarantine.attempts + 1",
            [(r.event.event_id, *r.row, r.reason, received_at_ms, sent_ms, hub_clock_off_ms, hub_clock_vouched)
             for r in rows],
        )  # fmt: skip

    async def hub_clock_finding(self) -> HubClockFinding | None:
        rows = await self._fetch(FINDING_SQL)  # one writer: no marking is under way meanwhile
        return finding(rows[0] if rows else None)

    async def note_hub_clock_off(self, offset_ms: int, now_ms: int, judged_ms: int) -> HubClockFinding | None:
        await self.db.execute(NOTE_OFF_SQL, (offset_ms, now_ms, judged_ms, HUB_CLOCK_AGREE_MS))
        rows = await self._fetch(FINDING_SQL)
        return finding(rows[0] if rows else None)

    async def save_reservations(self, rows: Mapping[ReservationKey, Reservation], now_ms: int) -> None:
        sql = (
            f"INSERT INTO reservations (location, sku, ref, reserved, consumed, updated_at_ms) VALUES ({marks(6)}) "
            "ON CONFLICT (location, sku, ref) DO UPDATE SET reserved = excluded.reserved, "
            "consumed = excluded.consumed, updated_at_ms = excluded.updated_at_ms"
        )
        await self.db.executemany(sql, [(*k, r.reserved, r.consumed, now_ms) for k, r in rows.items()])

    async def save_stock(self, rows: Sequence[StockRow], now_ms: int) -> None:
        """Rows the writer's cache holds with the same reserved, in_transit, safety stock and last count
        (most rows of a batch: only on_hand and the newest key moved) are updated in those columns alone,
        a third cheaper than an upsert; the others, and any such row found missing, are upserted."""
        plain: list[StockRow] = []
        moved: list[tuple[Any, ...]] = []
        if self.cache is None:
            plain = list(rows)
        else:  # the cache holds them from here on; a failed write rolls back and clears it
            for r, old in zip(rows, self.cache.swap(rows)):
                if old is not None and old[3:7] == r[3:7]:  # reserved, in_transit, safety_stock, last_count
                    moved.append((r[2], *(r[7] or NONE4), now_ms, r[0], r[1]))
                else:
                    plain.append(r)
        if moved and await insert_rows(self.db, *UPDATE_ON_HAND, 8, moved) != len(moved):
            plain = list(rows)  # a row the cache held is gone: write them all whole
        if plain:
            await insert_rows(
                self.db, *UPSERT_STOCK, STOCK_WIDTH, [(*r[:6], *(r[6] or NONE4), *(r[7] or NONE4), now_ms) for r in plain]
            )

    async def advance_hwm(self, agent_id: str, epoch: int, seq: int, now_ms: int) -> int:
        rows = await self._fetch(
            "INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (agent_id, epoch) DO UPDATE SET "
            "hwm = CASE WHEN excluded.hwm > agent_hwm.hwm THEN excluded.hwm ELSE agent_hwm.hwm END, "
            "updated_ms = excluded.updated_ms RETURNING hwm",
            (agent_id, epoch, seq, now_ms),
        )
        return int(rows[0][0])

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
        await self.db.execute(
            *note_sync_sql(agent_id, now_ms, clock_skew_ms, backlog, oldest_pending_ms, sent_ms, disk)
        )

    async def note_lost(self, agent_id: str, lost: LostReport, now_ms: int) -> None:
        await self.db.execute(*note_lost_sql(agent_id, lost, now_ms))

    async def stored_hwm(self, agent_id: str, epoch: int) -> int:
        rows = await self._fetch("SELECT hwm FROM agent_hwm WHERE agent_id = ? AND epoch = ?", (agent_id, epoch))
        return int(rows[0][0]) if rows else 0

    async def stored_mark(self, agent_id: str, epoch: int) -> tuple[int, bytes | None] | None:
        rows = await self._fetch(
            "SELECT hwm, chain FROM agent_hwm WHERE agent_id = ? AND epoch = ?", (agent_id, epoch)
        )
        return (int(rows[0][0]), rows[0][1]) if rows else None

    async def top_mark(self, agent_id: str) -> tuple[int, bytes | None] | None:
        rows = await self._fetch(
            "SELECT hwm, chain FROM agent_hwm WHERE agent_id = ? ORDER BY hwm DESC LIMIT 1", (agent_id,)
        )
        return (int(rows[0][0]), rows[0][1]) if rows else None

    async def advance_mark(
        self, agent_id: str, epoch: int, seq: int, chain: bytes | None, now_ms: int, peer: str | None = None
    ) -> tuple[int, bytes | None]:
        rows = await self._fetch(
            "INSERT INTO agent_hwm (agent_id, epoch, hwm, chain, updated_ms, first_ms, peer) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (agent_id, epoch) DO UPDATE SET "
            "chain = CASE WHEN excluded.hwm > agent_hwm.hwm THEN excluded.chain ELSE agent_hwm.chain END, "
            "hwm = CASE WHEN excluded.hwm > agent_hwm.hwm THEN excluded.hwm ELSE agent_hwm.hwm END, "
            "prev_ms = agent_hwm.updated_ms, updated_ms = excluded.updated_ms, peer = excluded.peer RETURNING hwm, chain",
            (agent_id, epoch, seq, chain, now_ms, now_ms, peer),
        )
        return int(rows[0][0]), rows[0][1]

    async def append_changes(self, rows: Sequence[NewChange], now_ms: int) -> None:
        await insert_rows(
            self.db, "INSERT INTO changes (location, sku, on_hand, reserved, available, in_transit, event_ids, at_ms)",
            "", 8,
            [(*snapshot, b"".join(event_ids), now_ms) for snapshot, event_ids in rows],  # a snapshot's fields in column order
        )

    # --- bundles (schema version 6) ------------------------------------------------------------------

    async def bundle_book(self, skus: Collection[str] | None) -> dict[str, BundleParts]:
        if skus is None:
            return bundle_book(await self._fetch(f"SELECT {BUNDLE_PART_FIELDS} FROM bundle_parts"))
        if not await self._fetch("SELECT 1 FROM bundle_parts LIMIT 1"):
            return {}  # the common case: a hub without bundles (a batch's SKUs need no look-up)
        rows: list[Any] = []
        for part in chunks(list(skus), 2):
            m = marks(len(part))
            rows += await self._fetch(
                f"SELECT {BUNDLE_PART_FIELDS} FROM bundle_parts WHERE bundle IN (SELECT bundle FROM bundle_parts "
                f"WHERE bundle IN ({m}) UNION SELECT bundle FROM bundle_parts WHERE part IN ({m}))",
                [*part, *part],
            )
        return bundle_book(rows)

    async def insert_expansions(self, rows: Sequence[NewExpansion]) -> None:
        await self.db.executemany(
            f"INSERT INTO bundle_expansions ({EXPANSION_FIELDS}) VALUES ({marks(4)})", [tuple(r) for r in rows]
        )

    async def lock_recipes(self) -> None:
        return None  # one writer: nothing else writes meanwhile

    async def recipes(self) -> dict[str, BundleRecipe]:
        return {r[0]: bundle_recipe(r) for r in await self._fetch(NEWEST_RECIPES)}

    async def insert_recipe(self, recipe: BundleRecipe) -> None:
        await self.db.execute(
            f"INSERT INTO bundle_recipes ({RECIPE_FIELDS}) VALUES ({marks(5)})",
            (recipe.sku, recipe.version, recipe.valid_from_ms, attrs_json(dict(recipe.components)), recipe.set_by),
        )

    async def save_parts(self, rows: Mapping[str, BundleParts]) -> None:
        await self.db.executemany("DELETE FROM bundle_parts WHERE bundle = ?", [(b,) for b in rows])
        await self.db.executemany(
            f"INSERT INTO bundle_parts ({BUNDLE_PART_FIELDS}) VALUES ({marks(4)})",
            [(b, part, units, bp.version) for b, bp in rows.items() for part, units in bp.parts.items()],
        )

    async def stock_keys_of(self, skus: Collection[str]) -> list[StockKey]:
        keys: list[StockKey] = []
        for part in chunks(list(skus), 1):
            rows = await self._fetch(f"SELECT location, sku FROM stock WHERE sku IN ({marks(len(part))})", part)
            keys += [(r[0], r[1]) for r in rows]
        return keys

    async def has_events(self, key: StockKey) -> bool:
        return bool(await self._fetch("SELECT 1 FROM events WHERE location = ? AND sku = ? LIMIT 1", key))

    async def settle_observed(
        self, stock: Mapping[StockKey, tuple[int, int | None]], earliest: Mapping[StockKey, int], bundles: bool = True
    ) -> None:
        await reports.settle_observed(SqliteDb(self.db), stock, earliest, bundles=bundles)

    async def stock_stamped(self, key: StockKey, on_hand: int, now_ms: int) -> None:
        pass  # the partial indexes of the stock rows below zero follow the row

    async def delete_stock(self, keys: Collection[StockKey]) -> None:
        await self.db.executemany("DELETE FROM stock WHERE location = ? AND sku = ?", list(keys))
        if self.cache is not None:
            for key in keys:
                self.cache.discard(key)

    async def expansions(self, ids: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Rows of EXPANSION_FIELDS of these bundle movements (agent_id, event_id): a read, any connection."""
        rows: list[Any] = []
        for part in chunks(list(ids), 2):
            rows += await self._fetch(
                f"WITH k(agent_id, event_id) AS (VALUES {values_rows(len(part), 2)}) "
                f"SELECT {', '.join('e.' + f for f in EXPANSION_FIELDS.split(', '))} FROM k JOIN bundle_expansions e "
                "ON e.agent_id = k.agent_id AND e.event_id = k.event_id",
                [v for key in part for v in key],
            )
        return rows
