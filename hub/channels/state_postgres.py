"""The channel state in a PostgreSQL hub's database, and which hub process pushes each channel.

``PostgresChannelState`` runs the SQL of ``hub.channels.state.SqlChannelState``
(its ``?`` markers numbered ``$1, $2, …`` by ``hub.storage.db.PostgresDb``) over an asyncpg pool of the hub's
database URL, in the tables of schema migration 6
(hub/storage/postgres/migrations/006_channels_and_bundles.sql). Every write is one READ COMMITTED
transaction; one aborted by PostgreSQL as a deadlock or serialization failure
runs again whole. Numbering divergences (``MAX + 1``) takes a
transaction-scoped advisory lock per channel, so two hubs reconciling one
channel at once number one after the other.

``PusherLeases``: several hub processes share one database, but only one may
push a channel. Each channel's pusher holds a session-level advisory lock on the
hub's lock connection (``hub.storage.postgres.leases.Leases`` on its
``LockConnection``, the channels' own: the webhooks' locks are on another); a hub that does not get it stands by and tries again
(``hub.channels.runner``). The lock goes when the holder's connection does (a
stopped or killed hub), and another hub takes the channel over from the
cursor the holder saved. Both locks are keyed by the schema (``search_path``)
too, so hubs in different schemas of one database never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from hub.channels.state import SqlChannelState, Tx
from hub.storage.base import StoreError
from hub.storage.db import PostgresDb
from hub.storage.postgres.leases import Leases, LockConnection
from hub.storage.postgres.schema import migrate
from hub.storage.postgres.store import (
    CLOSE_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    DB_TIMEOUT_S,
    POOL_ACQUIRE_TIMEOUT_S,
    RETRY_BASE_S,
    RETRY_MAX_S,
    RETRY_SQLSTATES,
    TX_ATTEMPTS,
    NoAnswer,
    cut_off_after,
    redacted,
    server_says,
    session_settings,
)
from protocol.retry import FULL_JITTER, Backoff

log = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4  # the channel state's own connections per hub process (writes are small and rare)
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
DIVERGENCES_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('shelfsync.channel.divergences.' || current_schema() || '.' || $1, 0))"
# A transaction PostgreSQL aborted runs again after a jittered wait; the n-th retry waits up to RETRY_BASE_S × 2^n.
TX_BACKOFF = Backoff(base_s=2 * RETRY_BASE_S, max_s=RETRY_MAX_S, jitter=FULL_JITTER)


class PostgresChannelState(SqlChannelState):
    """``ChannelState`` in a PostgreSQL hub's database (shared by every hub process on it)."""

    def __init__(self, pool: asyncpg.Pool, where: str, db_timeout_s: float = DB_TIMEOUT_S) -> None:
        self._pool = pool
        self._where = where  # the URL without its password
        self._db_timeout_s = db_timeout_s  # the hub's db_timeout_s: work on a connection unanswered this long is cut
        self._unanswered = False  # the last work found the server silent or gone: closing does not wait for it
        self._closed = False
        self._rng = random.Random()

    @classmethod
    async def open(cls, url: str, db_timeout_s: float | None = None) -> PostgresChannelState:
        """Open a pool on the hub's database URL, migrating it if the hub has not yet; ``db_timeout_s`` bounds the
        work on each connection as the hub store's (``DB_TIMEOUT_S`` if None)."""
        where = redacted(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE, timeout=CONNECT_TIMEOUT_S,
                server_settings=session_settings(url, "channel-state"),  # the hub store's bounds on a stalled or vanished hub
            )  # fmt: skip
        except (*DB_ERRORS, ValueError) as err:
            raise StoreError(f"cannot open the channel state in {where}: {err or type(err).__name__}") from err
        try:
            async with pool.acquire() as conn:
                await migrate(conn, where)  # the hub's migrations create the channel tables
        except DB_ERRORS as err:
            await pool.close()
            raise StoreError(f"cannot open the channel state in {where}: {err}") from err
        except BaseException:
            await pool.close()
            raise
        return cls(pool, where, DB_TIMEOUT_S if db_timeout_s is None else db_timeout_s)

    async def close(self) -> None:
        """Close the pool; safe twice, and any call afterwards raises ``StoreClosed``."""
        if self._closed:
            return
        self._closed = True
        if self._unanswered:  # a server that did not answer the last work is not waited for (as the hub store's)
            self._pool.terminate()
            return
        limit_s = min(CLOSE_TIMEOUT_S, self._db_timeout_s)
        try:
            await asyncio.wait_for(self._pool.close(), limit_s)
        except TimeoutError:
            log.warning("Closing the channel state's connections took over %g s; they were cut.", limit_s)
            self._pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one that met a server refusing writes is not pooled again (as the hub store's,
        ``hub.storage.postgres.store``): a primary demoted to a standby at a failover refuses them for as long as
        the session lasts, and a new one, with a URL asking for target_session_attrs=read-write, goes to the server
        that took writes over. As the hub store's, a connection comes within ``POOL_ACQUIRE_TIMEOUT_S`` (else
        ``TimeoutError``), and one whose work has not ended within ``db_timeout_s`` is closed (``NoAnswer``): a
        silent server held the pushers' connections for ever, and the channels' work with them."""
        try:
            async with asyncio.timeout(POOL_ACQUIRE_TIMEOUT_S):
                conn: asyncpg.Connection = await self._pool.acquire()
        except TimeoutError:
            self._unanswered = True
            raise TimeoutError(f"no connection came within {POOL_ACQUIRE_TIMEOUT_S:g} s") from None
        try:
            with cut_off_after(conn, self._db_timeout_s) as silent:
                yield conn
            self._unanswered = False
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as err:
            self._unanswered = True
            if silent:
                raise NoAnswer(self._db_timeout_s) from err
            raise
        except asyncpg.ReadOnlySQLTransactionError:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise
        finally:
            await self._pool.release(conn)

    async def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            async with self._connection() as conn:
                return await PostgresDb(conn).fetch(sql, params)
        except DB_ERRORS as err:
            raise StoreError(
                f"reading the channel state in {self._where} failed ({err or type(err).__name__})"
            ) from err

    async def _write(self, what: str, run: Callable[[Tx], Awaitable[None]], channel: str | None = None) -> None:
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    if channel is not None:
                        await conn.execute(DIVERGENCES_LOCK_SQL, channel)
                    await run(PostgresDb(conn))
                return
            except asyncpg.PostgresError as err:
                if err.sqlstate not in RETRY_SQLSTATES or attempt == TX_ATTEMPTS:
                    if isinstance(err, asyncpg.ReadOnlySQLTransactionError):
                        raise StoreError(server_says(f"while {what}", err)) from err
                    raise StoreError(f"{what} failed ({err})") from err
            except DB_ERRORS as err:
                raise StoreError(f"{what} failed ({err or type(err).__name__})") from err
            await asyncio.sleep(TX_BACKOFF.delay_s(attempt, self._rng))


class PusherLeases(Leases):
    """Who pushes each channel: a session-level advisory lock per channel (``hub.storage.postgres.leases``)."""

    def __init__(self, connection: str | LockConnection) -> None:
        super().__init__(
            connection, "channel.pusher", "the pusher lock of channel {name}", "the channels' pusher locks"
        )
