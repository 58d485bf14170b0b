"""Where each channel stands, kept across restarts: its change-feed cursor, what it last pushed, its mapping.

``ChannelState`` is the small interface the pusher needs. ``SqliteChannelState``
keeps it in the hub's own SQLite file, in tables of the hub's schema (numbered
migration 6, hub/storage/schema_sqlite_v6.sql), over a connection of its own, so
that a restore of the hub database brings back the channel positions that
belong to it. Opening it on a file the hub has not migrated yet migrates it.

Every write is one ``BEGIN IMMEDIATE … COMMIT``. The writes are small and rare
(one per confirmed push), and SQLite's busy timeout serialises them with the
hub's own writer.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Mapping as MappingABC
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import aiosqlite

from hub.channels.levels import LevelKey
from hub.channels.mapping import ItemIds, MappingFinding, SkuMapping
from hub.storage.base import StoreClosed, StoreError
from hub.storage.sqlite import SqliteHubStore

BUSY_TIMEOUT_MS = 10_000

class ChannelState(Protocol):
    """What a channel pusher keeps between turns and restarts."""

    async def cursor(self, channel: str) -> int:
        """The last change id whose effect the channel confirmed (0: none yet)."""

    async def pushed(self, channel: str) -> dict[LevelKey, int]:
        """The last quantity the channel confirmed for each level."""

    async def record(
        self, channel: str, pushed: MappingABC[LevelKey, int], at_ms: int, cursor: int | None = None
    ) -> None:
        """In one transaction: store confirmed quantities and, if given, move the cursor to ``cursor``."""

    async def mapping(self, channel: str) -> SkuMapping | None:
        """The stored mapping, or None if it was never loaded."""

    async def save_mapping(self, channel: str, mapping: SkuMapping) -> None:
        """Replace the channel's mapping and findings in one transaction."""


class SqliteChannelState:
    """``ChannelState`` in the hub's SQLite file (or any SQLite file)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self._path = path
        self._closed = False
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SqliteChannelState:
        target = os.fspath(path)
        if target.startswith("sqlite://"):
            target = target[len("sqlite://") :]
        async with SqliteHubStore.open(target):
            pass  # the hub's migrations create the channel tables
        try:
            db = await aiosqlite.connect(target, isolation_level=None)
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"the channel state in {Path(target).name} cannot be opened ({err})") from err
        return cls(db, target)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; safe twice, and any call afterwards raises ``StoreClosed``."""
        if self._closed:
            return
        self._closed = True
        await self._db.close()

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed()

    async def cursor(self, channel: str) -> int:
        self._check()
        rows = await self._read("SELECT cursor FROM channel_state WHERE channel = ?", (channel,))
        return int(rows[0][0]) if rows else 0

    async def pushed(self, channel: str) -> dict[LevelKey, int]:
        self._check()
        rows = await self._read("SELECT level_key, quantity FROM channel_pushed WHERE channel = ?", (channel,))
        return {LevelKey.from_text(k): int(q) for k, q in rows}

    async def record(
        self, channel: str, pushed: MappingABC[LevelKey, int], at_ms: int, cursor: int | None = None
    ) -> None:
        self._check()

        async def work(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "INSERT INTO channel_pushed (channel, level_key, quantity, pushed_at_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (channel, level_key) DO UPDATE SET quantity = excluded.quantity, "
                "pushed_at_ms = excluded.pushed_at_ms",
                [(channel, k.text(), q, at_ms) for k, q in pushed.items()],
            )
            if cursor is not None:
                await db.execute(
                    "INSERT INTO channel_state (channel, cursor, last_push_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (channel) DO UPDATE SET cursor = MAX(cursor, excluded.cursor), "
                    "last_push_ms = excluded.last_push_ms",
                    (channel, cursor, at_ms),
                )

        await self._write("saving a channel's position", work)

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

    async def save_mapping(self, channel: str, mapping: SkuMapping) -> None:
        self._check()

        async def work(db: aiosqlite.Connection) -> None:
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

        await self._write("saving a channel's mapping", work)

    async def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            async with self._lock:
                return [tuple(r) for r in await self._db.execute_fetchall(sql, params)]
        except sqlite3.Error as err:
            raise StoreError(f"reading the channel state failed ({err})") from err

    async def _write(self, what: str, run: Callable[[aiosqlite.Connection], Awaitable[None]]) -> None:
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    await run(self._db)
                except BaseException:
                    await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise StoreError(f"{what} failed ({err})") from err
