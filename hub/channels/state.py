"""Where each channel stands, kept across restarts: its change-feed cursor, what it last pushed, its mapping,
the levels it refused for good, and what reading its levels back found (divergences).

``ChannelState`` is the small interface the pusher and the reconciler need.
``SqlChannelState`` writes it once, in SQL both backends run (``?`` markers; a
backend's ``Tx`` adapts them). ``SqliteChannelState`` keeps it in the hub's own
SQLite file, in tables of the hub's schema (numbered migration 6,
hub/storage/sqlite/migrations/006_channels_and_bundles.sql), over a connection of its own, so that a
restore of the hub database brings back the channel positions that belong to
it. Opening it on a file the hub has not migrated yet migrates it.

Every write is one ``BEGIN IMMEDIATE … COMMIT``. The writes are small and rare
(one per confirmed push), and SQLite's busy timeout serialises them with the
hub's own writer. ``hub.channels.state_postgres`` keeps it in a PostgreSQL hub's
database, shared by every hub process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Self

import aiosqlite

from hub.channels.levels import LevelKey
from hub.channels.mapping import ItemIds, MappingFinding, SkuMapping
from hub.resolver import BUNDLE_ATTR
from hub.storage import findings
from hub.storage.base import StoreClosed, StoreError
from hub.storage.db import Db, SqliteDb
from hub.storage.sqlite import SqliteHubStore
from protocol import wall_ms_now
from protocol.event import REF_MAX_LEN

BUSY_TIMEOUT_MS = 10_000
KEYS_PER_STATEMENT = 500  # level keys per IN (...) list
# A level's stamp matters while a count the hub sends could be stamped before it: never once it is older than this,
# the oldest occurred_at Square takes (hub.channels.square sends none older). An item no longer mapped keeps it
# until then, then loses its row at a mapping load.
STAMP_KEPT_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Divergence:
    """A level a channel showed differently from what the hub holds, found by reading it back."""

    key: LevelKey
    sku: str
    location: str | None  # the hub location feeding that channel location, when only one does
    hub_level: int  # what the channel should have shown
    last_pushed: int | None  # what the channel last confirmed from the hub (None: never)
    channel_level: int  # what it showed
    found_at_ms: int
    corrected_at_ms: int | None = None  # when the channel confirmed the correction (None: open)
    divergence_id: int = 0  # 1, 2, … per channel, given when stored


@dataclass(frozen=True, slots=True)
class Refusal:
    """A level the channel refused for good, with its reason."""

    sku: str
    location: str | None
    quantity: int
    detail: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Unbooked:
    """What a level's last count confirmed took off for sales at the channel whose orders had not reached the hub:
    how many units, and when the channel received the oldest of those sales (wall ms, the channel's; None: none)."""

    units: int
    from_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RefusedOrder:
    """A channel's order whose webhook the hub refused for good, as stored (``ChannelState.refuse_order``)."""

    channel: str
    order_id: str
    location: str | None  # the hub location its channel location feeds (None: not said)
    channel_location: str | None
    reason: str
    refused_at_ms: int
    dismissed_at_ms: int | None = None
    dismissed_by: str | None = None


@dataclass(frozen=True, slots=True)
class Reconciled:
    """When a channel's levels were last read back, how many and how many diverged."""

    at_ms: int
    checked: int
    diverged: int


class ChannelState(Protocol):
    """What a channel pusher keeps between turns and restarts."""

    async def cursor(self, channel: str) -> int:
        """The last change id whose effect the channel confirmed (0: none yet)."""

    async def pushed(self, channel: str) -> dict[LevelKey, int]:
        """The last quantity the channel confirmed for each level."""

    async def pushed_at(self, channel: str) -> dict[LevelKey, int]:
        """Each level's stamp: the latest of the times (wall ms of the pushing hub) the channel confirmed it and the
        times it was stamped with, kept across a mapping load; it never goes back."""

    async def unsure(self, channel: str, keys: Collection[LevelKey]) -> None:
        """Before a push of ``keys``: their confirmed quantities are no longer known (the channel may apply the push
        and its answer be lost); ``pushed`` leaves them out until ``record`` stores them again."""

    async def record(
        self, channel: str, pushed: MappingABC[LevelKey, int], at_ms: int, cursor: int | None = None,
        stamps: MappingABC[LevelKey, int] | None = None, unbooked: MappingABC[LevelKey, Unbooked] | None = None,
    ) -> None:  # fmt: skip
        """In one transaction: store confirmed quantities and, if given, move the cursor to ``cursor``. A level's
        stamp becomes the latest of ``at_ms``, its ``stamps`` entry (what it was sent with) and the one stored;
        what its count took off (``unbooked``; none when it has no entry) replaces the one stored, and is known."""

    async def unbooked(self, channel: str) -> dict[LevelKey, Unbooked]:
        """The levels whose last count confirmed took units off for sales whose orders had not reached the hub, or
        must read the channel's record from further back than their stamp (``Unbooked.from_ms``)."""

    async def unbooked_unknown(self, channel: str) -> set[LevelKey]:
        """The levels whose last confirmation says nothing of what its count took off: stored before schema 14
        (which kept it in memory), or by a hub of version 14 during an upgrade (schema 15, ``less_known``)."""

    async def save_unbooked(self, channel: str, unbooked: MappingABC[LevelKey, Unbooked]) -> None:
        """What the last counts of these levels take off, found by reading the channel's sales again (their
        quantities and stamps stay as they are); known from then on."""

    async def clear_unbooked(self, channel: str, keys: Collection[LevelKey]) -> None:
        """The orders behind what the last counts of ``keys`` took off are booked (or refused): nothing is taken
        off there any more (known), and their stamps stay as they are."""

    async def mapping(self, channel: str) -> SkuMapping | None:
        """The stored mapping, or None if it was never loaded."""

    async def settings(self, channel: str) -> str | None:
        """The settings the channel last ran with that decide what it shows and where (``save_settings``), or None:
        never stored (a channel that last ran before schema 27, or never)."""

    async def save_settings(self, channel: str, settings: str) -> None:
        """Store the settings the channel runs with (``hub.channels.pusher.settings_text``)."""

    async def save_mapping(self, channel: str, mapping: SkuMapping) -> None:
        """Replace the channel's mapping and findings, and forget the levels it confirmed and refused, in one
        transaction: a (re)loaded mapping is pushed whole, and until the channel confirms a level again the hub
        does not know what it holds there, so a restart before that pushes it again. The levels' stamps stay
        (``pushed_at``): a channel keeping the latest count (Square) still needs the next one later than the
        last, whatever the clock says after a restart."""

    async def refusals(self, channel: str) -> dict[LevelKey, Refusal]:
        """The levels the channel refused for good and has not taken since."""

    async def refuse(self, channel: str, refused: MappingABC[LevelKey, Refusal]) -> None:
        """Store (or replace) refusals."""

    async def clear_refusals(self, channel: str, keys: Collection[LevelKey] | None = None) -> None:
        """Forget the refusals of ``keys`` (None: all of the channel's)."""

    async def add_divergences(self, channel: str, found: Sequence[Divergence]) -> list[Divergence]:
        """Store divergences in one transaction; return them with their ids (1, 2, … per channel)."""

    async def close_divergences(self, channel: str, keys: Collection[LevelKey], at_ms: int) -> int:
        """Mark the open divergences of ``keys`` corrected at ``at_ms``; return how many."""

    async def divergences(self, channel: str, limit: int, before_id: int | None = None) -> list[Divergence]:
        """The channel's divergences, newest first (by id); ``before_id``: only those with a smaller id."""

    async def open_divergences(self, channel: str) -> int:
        """How many of the channel's divergences are not corrected yet."""

    async def uncorrected(self, channel: str) -> dict[LevelKey, int]:
        """The levels with a divergence not corrected yet, each with what the channel showed there when it was last
        found: the corrections a pusher started again still owes (the base of its compare-and-set)."""

    async def reconciled(self, channel: str) -> Reconciled | None:
        """The last reconciliation of the channel, or None."""

    async def save_reconciled(self, channel: str, done: Reconciled) -> None: ...

    async def order_reservations(
        self, ref: str, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """The hub's reservation of an order's ``ref`` at each (location, SKU) of ``keys`` it holds one at, as
        (Σ reserved, Σ consumed by sales): what settling a Square order compares with (hub.channels.orders)."""

    async def order_line_skus(self, channel: str, ref: str) -> dict[str, str]:
        """The SKU each line of the order ``ref`` was reserved on (line id -> SKU), read from the channel's own
        reserve events: a line whose item was mapped to another SKU since is booked where its reservation is."""

    async def orders_booked(self, channels: Collection[str], order_ids: Collection[str]) -> set[str]:
        """Of a channel's ``order_ids`` (Square's), those the hub has booked: an order webhook of one of
        ``channels`` reserved its lines (every booked Square order has a reserve event per line, under the
        channel's identity and the ref ``<channel>:order:<id>``)."""

    async def refuse_order(
        self, channel: str, order_id: str, reason: str, at_ms: int, *, location: str | None = None,
        channel_location: str | None = None,
    ) -> None:  # fmt: skip
        """A channel's order whose webhook the hub refused for good (a line it cannot map, a location not in the
        pool): its sales are no longer taken off the counts pushed, and it is an exception (``channel_order_refused``,
        at ``location``: the hub location its ``channel_location`` feeds) until a delivery of it is applied
        (``order_accepted``) or an admin dismisses it (``dismiss_order``; refused again, it stays dismissed).
        Refusals older than ``ORDER_REFUSALS_KEPT_MS`` are dropped then: no count reads sales that old."""

    async def refused_order(self, channel: str, order_id: str) -> RefusedOrder | None:
        """The channel's refused order as stored, None when it is not (never refused, booked since, or dropped)."""

    async def dismiss_order(self, channel: str, order_id: str, by: str, at_ms: int) -> RefusedOrder | None:
        """An admin booked the refused order's sale by hand: it leaves the exceptions list, and stays refused (its
        sales are still not taken off the counts pushed: the hub's level holds the sale booked by hand). The order
        as this call stored it; None when the call changed nothing: the order is not stored, or was dismissed
        already (by another call, perhaps at the same moment on another hub)."""

    async def undismiss_order(self, channel: str, order_id: str) -> RefusedOrder | None:
        """An admin's dismissal undone (``dismiss_order`` by mistake: the sale was not booked by hand): the order is
        listed again, and a later delivery of it is booked as any. The order as this call stored it; None when the
        call changed nothing: the order is not stored, or not dismissed (another call undid it first)."""

    async def orders_refused(self, channels: Collection[str], order_ids: Collection[str]) -> set[str]:
        """Of ``order_ids``, those whose webhook one of ``channels`` refused for good (at its last delivery): the
        pusher asks it of the orders not booked."""

    async def order_accepted(self, channel: str, order_id: str) -> bool:
        """A delivery of the channel's order was applied: a refusal of it stored before is deleted (it is booked as
        the order stands now, and leaves the exceptions list). True when there was one."""


# A channel order's reserve events: by the ledger's ref index on SQLite (events_ref), by events_reserve_ref on
# PostgreSQL (schema version 9); without one, each read walked the whole ledger.
ORDER_RESERVES_SQL = "SELECT sku, attrs FROM events WHERE ref = ? AND kind = 'reserve' AND agent_id = ?"
# Which of a channel's orders are booked: by the same indexes, a read of at most ORDERS_BOOKED_MAX refs
ORDERS_BOOKED_SQL = "SELECT DISTINCT ref FROM events WHERE ref IN ({}) AND kind = 'reserve' AND agent_id = ?"
ORDERS_BOOKED_MAX = 100
ORDERS_REFUSED_SQL = "SELECT order_id FROM channel_orders_refused WHERE channel = ? AND order_id IN ({})"
REFUSED_ORDER_SQL = (
    "SELECT channel, order_id, location, channel_location, reason, refused_at_ms, dismissed_at_ms, dismissed_by "
    "FROM channel_orders_refused WHERE channel = ? AND order_id = ?"
)
ORDER_REFUSALS_KEPT_MS = findings.ORDER_REFUSALS_KEPT_MS  # also how long the exceptions list shows one

Tx = Db  # one open transaction of a backend, in ``?`` parameter markers (hub.storage.db adapts them)


class SqlChannelState:
    """``ChannelState`` in SQL shared by both backends; a backend gives ``_read``, ``_write`` and ``close``."""

    _closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed()

    async def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _write(self, what: str, run: Callable[[Tx], Awaitable[None]], channel: str | None = None) -> None:
        """Run ``run`` in one transaction; ``channel``: serialise it with the channel's other numbered writes."""
        raise NotImplementedError

    async def cursor(self, channel: str) -> int:
        self._check()
        rows = await self._read("SELECT cursor FROM channel_state WHERE channel = ?", (channel,))
        return int(rows[0][0]) if rows else 0

    async def pushed(self, channel: str) -> dict[LevelKey, int]:
        self._check()
        rows = await self._read(
            "SELECT level_key, quantity FROM channel_pushed WHERE channel = ? AND quantity >= 0", (channel,)
        )  # a quantity of -1: a push of it was under way, its outcome unknown
        return {LevelKey.from_text(k): int(q) for k, q in rows}

    async def pushed_at(self, channel: str) -> dict[LevelKey, int]:
        self._check()
        rows = await self._read("SELECT level_key, pushed_at_ms FROM channel_pushed WHERE channel = ?", (channel,))
        return {LevelKey.from_text(k): int(at) for k, at in rows}

    async def record(
        self, channel: str, pushed: MappingABC[LevelKey, int], at_ms: int, cursor: int | None = None,
        stamps: MappingABC[LevelKey, int] | None = None, unbooked: MappingABC[LevelKey, Unbooked] | None = None,
    ) -> None:  # fmt: skip
        self._check()
        stamps, unbooked = stamps or {}, unbooked or {}
        none = Unbooked(0)

        async def work(db: Tx) -> None:
            await db.executemany(
                "INSERT INTO channel_pushed (channel, level_key, quantity, pushed_at_ms, less_units, sales_from_ms, "
                "less_known) VALUES (?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (channel, level_key) DO UPDATE SET quantity = excluded.quantity, "
                "pushed_at_ms = CASE WHEN excluded.pushed_at_ms > channel_pushed.pushed_at_ms "
                "THEN excluded.pushed_at_ms ELSE channel_pushed.pushed_at_ms END, "  # a stamp never goes back
                "less_units = excluded.less_units, sales_from_ms = excluded.sales_from_ms, less_known = 1",
                [
                    (channel, k.text(), q, max(at_ms, stamps.get(k, 0)), unbooked.get(k, none).units,
                     unbooked.get(k, none).from_ms)
                    for k, q in pushed.items()
                ],
            )  # fmt: skip
            if cursor is not None:  # never backwards
                await db.execute(
                    "INSERT INTO channel_state (channel, cursor, last_push_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (channel) DO UPDATE SET cursor = CASE WHEN excluded.cursor > channel_state.cursor "
                    "THEN excluded.cursor ELSE channel_state.cursor END, last_push_ms = excluded.last_push_ms",
                    (channel, cursor, at_ms),
                )

        await self._write("saving a channel's position", work)

    async def unbooked(self, channel: str) -> dict[LevelKey, Unbooked]:
        self._check()
        rows = await self._read(
            "SELECT level_key, less_units, sales_from_ms FROM channel_pushed "
            "WHERE channel = ? AND (less_units > 0 OR sales_from_ms IS NOT NULL)", (channel,),
        )  # fmt: skip
        return {LevelKey.from_text(k): Unbooked(int(n), None if at is None else int(at)) for k, n, at in rows}

    async def unbooked_unknown(self, channel: str) -> set[LevelKey]:
        self._check()
        rows = await self._read(
            "SELECT level_key FROM channel_pushed WHERE channel = ? AND less_known = 0 AND quantity >= 0", (channel,)
        )  # a quantity of -1 is pushed again whatever it took off, and stored known
        return {LevelKey.from_text(k) for (k,) in rows}

    async def save_unbooked(self, channel: str, unbooked: MappingABC[LevelKey, Unbooked]) -> None:
        self._check()
        if not unbooked:
            return

        async def work(db: Tx) -> None:
            await db.executemany(
                "UPDATE channel_pushed SET less_units = ?, sales_from_ms = ?, less_known = 1 "
                "WHERE channel = ? AND level_key = ?",
                [(u.units, u.from_ms, channel, k.text()) for k, u in sorted(unbooked.items())],
            )

        await self._write("saving what a channel's counts took off", work)

    async def clear_unbooked(self, channel: str, keys: Collection[LevelKey]) -> None:
        await self.save_unbooked(channel, dict.fromkeys(keys, Unbooked(0)))

    async def mapping(self, channel: str) -> SkuMapping | None:
        self._check()
        items = await self._read(
            "SELECT sku, item_id, variant_id FROM channel_items WHERE channel = ? ORDER BY sku", (channel,)
        )
        findings = await self._read(
            "SELECT kind, sku, detail FROM channel_findings WHERE channel = ? ORDER BY seq", (channel,)
        )
        if not items and not findings:
            return None
        return SkuMapping(
            tuple(ItemIds(s, i, v) for s, i, v in items), tuple(MappingFinding(k, s, d) for k, s, d in findings)
        )

    async def settings(self, channel: str) -> str | None:
        self._check()
        rows = await self._read("SELECT settings FROM channel_state WHERE channel = ?", (channel,))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    async def save_settings(self, channel: str, settings: str) -> None:
        self._check()

        async def work(db: Tx) -> None:
            await db.execute(
                "INSERT INTO channel_state (channel, settings) VALUES (?, ?) "
                "ON CONFLICT (channel) DO UPDATE SET settings = excluded.settings",
                (channel, settings),
            )

        await self._write("saving a channel's settings", work)

    async def save_mapping(self, channel: str, mapping: SkuMapping) -> None:
        self._check()

        async def work(db: Tx) -> None:
            await db.execute("DELETE FROM channel_items WHERE channel = ?", (channel,))
            await db.execute("DELETE FROM channel_findings WHERE channel = ?", (channel,))
            await db.executemany(
                "INSERT INTO channel_items (channel, sku, item_id, variant_id) VALUES (?, ?, ?, ?)",
                [(channel, i.sku, i.item_id, i.variant_id) for i in mapping.items],
            )
            await db.executemany(
                "INSERT INTO channel_findings (channel, seq, kind, sku, detail) VALUES (?, ?, ?, ?, ?)",
                [(channel, n, f.kind, f.sku, f.detail) for n, f in enumerate(mapping.findings)],
            )
            # unknown (-1, as ``unsure``), not deleted: the quantity is forgotten, the stamp kept
            await db.execute("UPDATE channel_pushed SET quantity = -1 WHERE channel = ?", (channel,))
            await _drop_stale_stamps(db, channel, {i.item_id for i in mapping.items}, wall_ms_now() - STAMP_KEPT_MS)
            await db.execute("DELETE FROM channel_refusals WHERE channel = ?", (channel,))
            await db.execute(
                "INSERT INTO channel_mapping_loads (channel, loaded_ms) VALUES (?, ?) "
                "ON CONFLICT (channel) DO UPDATE SET loaded_ms = excluded.loaded_ms",
                (channel, wall_ms_now()),
            )

        await self._write("saving a channel's mapping", work)

    # --- refusals ---------------------------------------------------------------------

    async def refusals(self, channel: str) -> dict[LevelKey, Refusal]:
        self._check()
        rows = await self._read(
            "SELECT level_key, sku, location, quantity, detail, at_ms FROM channel_refusals WHERE channel = ?",
            (channel,),
        )
        return {LevelKey.from_text(k): Refusal(s, loc, int(q), d, int(at)) for k, s, loc, q, d, at in rows}

    async def refuse(self, channel: str, refused: MappingABC[LevelKey, Refusal]) -> None:
        self._check()

        async def work(db: Tx) -> None:
            await db.executemany(
                "INSERT INTO channel_refusals (channel, level_key, sku, location, quantity, detail, at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel, level_key) DO UPDATE SET sku = excluded.sku, "
                "location = excluded.location, quantity = excluded.quantity, detail = excluded.detail, "
                "at_ms = excluded.at_ms",
                [(channel, k.text(), r.sku, r.location, r.quantity, r.detail, r.at_ms) for k, r in refused.items()],
            )

        await self._write("saving a channel's refused levels", work)

    async def unsure(self, channel: str, keys: Collection[LevelKey]) -> None:
        self._check()
        if not keys:
            return

        async def work(db: Tx) -> None:
            for part in _parts([k.text() for k in keys]):
                await db.execute(
                    f"UPDATE channel_pushed SET quantity = -1 WHERE channel = ? AND level_key IN ({_marks(len(part))})",
                    (channel, *part),
                )

        await self._write("marking a channel's levels under way", work)

    async def clear_refusals(self, channel: str, keys: Collection[LevelKey] | None = None) -> None:
        self._check()

        async def work(db: Tx) -> None:
            if keys is None:
                await db.execute("DELETE FROM channel_refusals WHERE channel = ?", (channel,))
                return
            for part in _parts([k.text() for k in keys]):
                await db.execute(
                    f"DELETE FROM channel_refusals WHERE channel = ? AND level_key IN ({_marks(len(part))})",
                    (channel, *part),
                )

        await self._write("forgetting a channel's refused levels", work)

    # --- divergences --------------------------------------------------------------------

    async def add_divergences(self, channel: str, found: Sequence[Divergence]) -> list[Divergence]:
        self._check()
        stored: list[Divergence] = []

        async def work(db: Tx) -> None:
            stored.clear()  # a backend may run the transaction again
            rows = await db.fetch(
                "SELECT COALESCE(MAX(divergence_id), 0) FROM channel_divergences WHERE channel = ?", (channel,)
            )
            first = int(rows[0][0]) + 1
            stored.extend(replace(d, divergence_id=first + n) for n, d in enumerate(found))
            await db.executemany(
                "INSERT INTO channel_divergences (channel, divergence_id, level_key, sku, location, hub_level, "
                "last_pushed, channel_level, found_at_ms, corrected_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (channel, d.divergence_id, d.key.text(), d.sku, d.location, d.hub_level, d.last_pushed,
                     d.channel_level, d.found_at_ms, d.corrected_at_ms)
                    for d in stored
                ],
            )  # fmt: skip

        if found:
            await self._write("saving a channel's divergences", work, channel=channel)
        return stored

    async def close_divergences(self, channel: str, keys: Collection[LevelKey], at_ms: int) -> int:
        self._check()
        closed = 0

        async def work(db: Tx) -> None:
            nonlocal closed
            closed = 0
            for part in _parts([k.text() for k in keys]):
                closed += await db.execute(
                    "UPDATE channel_divergences SET corrected_at_ms = ? WHERE channel = ? AND corrected_at_ms IS NULL "
                    f"AND level_key IN ({_marks(len(part))})",
                    (at_ms, channel, *part),
                )

        if keys:
            await self._write("marking a channel's divergences corrected", work)
        return closed

    async def divergences(self, channel: str, limit: int, before_id: int | None = None) -> list[Divergence]:
        self._check()
        where, params = "channel = ?", list[object]([channel])
        if before_id is not None:
            where += " AND divergence_id < ?"
            params.append(before_id)
        rows = await self._read(
            f"SELECT {DIVERGENCE_FIELDS} FROM channel_divergences WHERE {where} ORDER BY divergence_id DESC LIMIT ?",
            (*params, limit),
        )
        return [divergence_row(r) for r in rows]

    async def open_divergences(self, channel: str) -> int:
        self._check()
        rows = await self._read(
            "SELECT COUNT(*) FROM channel_divergences WHERE channel = ? AND corrected_at_ms IS NULL", (channel,)
        )
        return int(rows[0][0])

    async def uncorrected(self, channel: str) -> dict[LevelKey, int]:
        self._check()
        rows = await self._read(
            "SELECT level_key, channel_level FROM channel_divergences WHERE channel = ? AND corrected_at_ms IS NULL "
            "ORDER BY divergence_id", (channel,),
        )  # fmt: skip
        return {LevelKey.from_text(k): int(q) for k, q in rows}  # the newest found last: it stands

    async def reconciled(self, channel: str) -> Reconciled | None:
        self._check()
        rows = await self._read("SELECT at_ms, checked, diverged FROM channel_reconciled WHERE channel = ?", (channel,))
        return Reconciled(*(int(v) for v in rows[0])) if rows else None

    async def save_reconciled(self, channel: str, done: Reconciled) -> None:
        self._check()

        async def work(db: Tx) -> None:
            await db.execute(
                "INSERT INTO channel_reconciled (channel, at_ms, checked, diverged) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (channel) DO UPDATE SET at_ms = excluded.at_ms, checked = excluded.checked, "
                "diverged = excluded.diverged",
                (channel, done.at_ms, done.checked, done.diverged),
            )

        await self._write("saving a channel's reconciliation", work)

    # --- orders --------------------------------------------------------------------------

    async def order_reservations(
        self, ref: str, keys: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        # the hub's own reservations table (schema migration 1), read by its primary key (location, sku, ref)
        self._check()
        found: dict[tuple[str, str], tuple[int, int]] = {}
        for location, sku in keys:
            rows = await self._read(
                "SELECT reserved, consumed FROM reservations WHERE location = ? AND sku = ? AND ref = ?",
                (location, sku, ref),
            )
            if rows:
                found[(location, sku)] = (int(rows[0][0]), int(rows[0][1]))
        return found

    async def order_line_skus(self, channel: str, ref: str) -> dict[str, str]:
        self._check()
        rows = await self._read(ORDER_RESERVES_SQL, (ref, f"channel:{channel}"))
        found: dict[str, str] = {}
        for sku, attrs in rows:
            try:
                given = json.loads(attrs) if attrs else {}
            except ValueError:
                continue
            if not isinstance(given, dict) or given.get("stage") != "reserve" or BUNDLE_ATTR in given:
                continue  # a bundle's part rows carry the bundle's attrs too: the bundle's own row says its SKU
            line = given.get("line")
            if isinstance(line, str) and line:
                found.setdefault(line, str(sku))
        return found

    async def orders_booked(self, channels: Collection[str], order_ids: Collection[str]) -> set[str]:
        self._check()
        ids = sorted(set(order_ids))
        booked: set[str] = set()
        for channel in sorted(set(channels)):
            refs = {f"{channel}:order:{i}"[:REF_MAX_LEN]: i for i in ids if i not in booked}
            listed = sorted(refs)
            for start in range(0, len(listed), ORDERS_BOOKED_MAX):
                part = listed[start : start + ORDERS_BOOKED_MAX]
                rows = await self._read(ORDERS_BOOKED_SQL.format(_marks(len(part))), (*part, f"channel:{channel}"))
                booked.update(refs[str(r[0])] for r in rows if str(r[0]) in refs)
        return booked

    async def refuse_order(
        self, channel: str, order_id: str, reason: str, at_ms: int, *, location: str | None = None,
        channel_location: str | None = None,
    ) -> None:  # fmt: skip
        self._check()

        async def work(db: Tx) -> None:
            await db.execute(
                "DELETE FROM channel_orders_refused WHERE channel = ? AND refused_at_ms < ?",
                (channel, at_ms - ORDER_REFUSALS_KEPT_MS),
            )
            await db.execute(
                "INSERT INTO channel_orders_refused (channel, order_id, refused_at_ms, reason, location, "
                "channel_location) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (channel, order_id) DO UPDATE SET refused_at_ms = excluded.refused_at_ms, "
                "reason = excluded.reason, location = excluded.location, channel_location = excluded.channel_location",
                (channel, order_id, at_ms, reason, location, channel_location),
            )  # refused again after it was dismissed: it stays dismissed (its sale was booked by hand)

        await self._write("storing a refused order", work)

    async def orders_refused(self, channels: Collection[str], order_ids: Collection[str]) -> set[str]:
        self._check()
        ids = sorted(set(order_ids))
        refused: set[str] = set()
        for channel in sorted(set(channels)):
            for start in range(0, len(ids), ORDERS_BOOKED_MAX):
                part = ids[start : start + ORDERS_BOOKED_MAX]
                rows = await self._read(ORDERS_REFUSED_SQL.format(_marks(len(part))), (channel, *part))
                refused.update(str(r[0]) for r in rows)
        return refused

    async def order_accepted(self, channel: str, order_id: str) -> bool:
        self._check()
        if not await self._read(ORDERS_REFUSED_SQL.format("?"), (channel, order_id)):
            return False  # the usual case: read, nothing written

        async def work(db: Tx) -> None:
            await db.execute(
                "DELETE FROM channel_orders_refused WHERE channel = ? AND order_id = ?", (channel, order_id)
            )

        await self._write("deleting a refused order now booked", work)
        return True

    async def refused_order(self, channel: str, order_id: str) -> RefusedOrder | None:
        self._check()
        rows = await self._read(REFUSED_ORDER_SQL, (channel, order_id))
        return _refused_row(rows[0]) if rows else None

    async def dismiss_order(self, channel: str, order_id: str, by: str, at_ms: int) -> RefusedOrder | None:
        self._check()
        return await self._set_dismissal(
            "dismissing a refused order",
            "UPDATE channel_orders_refused SET dismissed_at_ms = ?, dismissed_by = ? "
            "WHERE channel = ? AND order_id = ? AND dismissed_at_ms IS NULL",
            (at_ms, by, channel, order_id),
        )

    async def undismiss_order(self, channel: str, order_id: str) -> RefusedOrder | None:
        self._check()
        return await self._set_dismissal(
            "undoing the dismissal of a refused order",
            "UPDATE channel_orders_refused SET dismissed_at_ms = NULL, dismissed_by = NULL "
            "WHERE channel = ? AND order_id = ? AND dismissed_at_ms IS NOT NULL",
            (channel, order_id),
        )

    async def _set_dismissal(self, what: str, update: str, params: Sequence[object]) -> RefusedOrder | None:
        """Run ``update`` (its last two parameters the channel and the order id) and read the row back in the same
        transaction: the order as this call left it, None when the update changed no row (two calls at once on one
        order, on any hub: one changes it, the other is told so)."""
        found: list[tuple[Any, ...]] = []

        async def work(db: Tx) -> None:
            found.clear()  # a transaction retried (PostgreSQL) starts again
            if await db.execute(update, params):
                found.extend(await db.fetch(REFUSED_ORDER_SQL, params[-2:]))

        await self._write(what, work)
        return _refused_row(found[0]) if found else None


def _refused_row(row: Sequence[Any]) -> RefusedOrder:
    """A row of ``REFUSED_ORDER_SQL``."""
    c, o, location, where, reason, at_ms, dismissed_ms, by = row
    return RefusedOrder(
        str(c), str(o), location, where, str(reason), int(at_ms), None if dismissed_ms is None else int(dismissed_ms),
        by,
    )  # fmt: skip


async def _drop_stale_stamps(db: Tx, channel: str, mapped: Collection[str], before_ms: int) -> None:
    """Delete the rows of levels whose item the mapping no longer has and whose stamp is older than ``before_ms``:
    no count sent from now on is stamped before them, so they no longer matter, and kept they grow with churn."""
    rows = await db.fetch("SELECT level_key, pushed_at_ms FROM channel_pushed WHERE channel = ?", (channel,))
    stale = [(channel, k) for k, at in rows if LevelKey.from_text(k).item_id not in mapped and int(at) < before_ms]
    await db.executemany("DELETE FROM channel_pushed WHERE channel = ? AND level_key = ?", stale)


class SqliteChannelState(SqlChannelState):
    """``ChannelState`` in the hub's SQLite file (or any SQLite file)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self._path = path
        self._closed = False
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SqliteChannelState:
        target = os.fspath(path).removeprefix("sqlite://")
        async with SqliteHubStore.open(target):
            pass  # the hub's migrations create the channel tables
        try:
            db = await aiosqlite.connect(target, isolation_level=None)
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"the channel state in {Path(target).name} cannot be opened ({err})") from err
        return cls(db, target)

    async def close(self) -> None:
        """Close the connection; safe twice, and any call afterwards raises ``StoreClosed``."""
        if self._closed:
            return
        self._closed = True
        await self._db.close()

    async def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            async with self._lock:
                return await SqliteDb(self._db).fetch(sql, params)
        except sqlite3.Error as err:
            raise StoreError(f"reading the channel state failed ({err})") from err

    async def _write(self, what: str, run: Callable[[Tx], Awaitable[None]], channel: str | None = None) -> None:
        # BEGIN IMMEDIATE takes the file's write lock: numbered writes of a channel are serialised by it
        async with self._lock:
            try:
                try:
                    await self._db.execute("BEGIN IMMEDIATE")
                except asyncio.CancelledError:
                    # cancelled while it waits for the write lock (a pusher stopped): the statement runs in the
                    # connection's thread whatever becomes of this await, and this connection serves every channel
                    # of the hub — left open, it would hold the hub file's write lock for good. The ROLLBACK is
                    # queued behind it (it fails harmlessly when the BEGIN did)
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("ROLLBACK")
                    raise
                try:
                    await run(SqliteDb(self._db))
                except BaseException:
                    await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise StoreError(f"{what} failed ({err})") from err


DIVERGENCE_FIELDS = (
    "divergence_id, level_key, sku, location, hub_level, last_pushed, channel_level, found_at_ms, corrected_at_ms"
)


def divergence_row(r: Sequence[Any]) -> Divergence:
    """A ``Divergence`` from a row of ``DIVERGENCE_FIELDS``."""
    return Divergence(
        LevelKey.from_text(r[1]), r[2], r[3], int(r[4]), None if r[5] is None else int(r[5]), int(r[6]), int(r[7]),
        None if r[8] is None else int(r[8]), int(r[0]),
    )  # fmt: skip


def _parts(values: list[str]) -> list[list[str]]:
    return [values[i : i + KEYS_PER_STATEMENT] for i in range(0, len(values), KEYS_PER_STATEMENT)]


def _marks(n: int) -> str:
    return ", ".join("?" * n)
