"""Which hub process does a job that only one may do at a time: session-level advisory locks, one per name.

Several hub processes share one database, but only one may push a channel
(``hub.channels.runner``) or deliver a webhook (``hub.webhooks``). Each such
job holds a session-level advisory lock, keyed by its kind, the schema
(``search_path``) and its name, on a connection of its own; a hub that does
not get it stands by and tries again. The lock goes when the holder's
connection does (a stopped or killed hub, or one cut off from the database),
and another hub takes the job over from what the holder saved. The schema in
the key keeps hubs in different schemas of one database from waiting for
each other; the kind keeps a channel and a webhook of one name apart.

``hub.leases.lead`` is the one standby/takeover loop both use over these
locks (a SQLite hub uses it too, over ``hub.leases.LocalLeases``): it runs
the jobs whose lock this hub holds and stands by for the others.
"""

from __future__ import annotations

import asyncio

import asyncpg

from hub.storage.base import StoreError
from hub.storage.postgres.store import CONNECT_TIMEOUT_S, SERVER_SETTINGS, redacted

LEASE_QUERY_TIMEOUT_S = 5.0
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
LEASE_KEY_SQL = "hashtextextended('shelfsync.' || $1 || '.' || current_schema() || '.' || $2, 0)"


class Leases:
    """Session-level advisory locks of one ``kind``, one per name, on one connection of their own.

    ``take`` tries to take a name's lock without waiting; ``alive`` tells whether the connection (and so every
    lock taken on it) is still there. When it is not, the locks are gone: stop the jobs, then ``take`` again
    (it connects anew). A ``hub.leases.LeaseHolder`` shared with every hub on the database. ``kind`` is part of
    the key (``channel.pusher``: the key channel pushers always had); ``lock`` names one lock in errors
    (``{name}`` is the name) and ``locks`` all of them."""

    def __init__(self, url: str, kind: str, lock: str, locks: str) -> None:
        self._url = url
        self._where = redacted(url)
        self._kind = kind
        self._lock = lock
        self._locks = locks
        self._conn: asyncpg.Connection | None = None
        self.held: set[str] = set()
        self.shared = True  # every hub on the database takes these locks

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self.held.clear()  # a new connection holds nothing
            try:
                self._conn = await asyncpg.connect(
                    self._url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS
                )
            except (*DB_ERRORS, ValueError) as err:
                raise StoreError(f"cannot reach {self._where} to take {self._locks} ({err})") from err
        return self._conn

    async def take(self, name: str) -> bool:
        """True when this hub now holds (or already held) ``name``'s lock."""
        if name in self.held and await self.alive():
            return True
        conn = await self._connection()
        try:
            got = await conn.fetchval(f"SELECT pg_try_advisory_lock({LEASE_KEY_SQL})", self._kind, name,
                                      timeout=LEASE_QUERY_TIMEOUT_S)  # fmt: skip
        except DB_ERRORS as err:
            await self._drop()
            what = self._lock.format(name=name)
            raise StoreError(f"taking {what} in {self._where} failed ({err})") from err
        if got:
            self.held.add(name)
        return bool(got)

    async def release(self, name: str) -> None:
        """Give ``name``'s lock back, keeping the others; a failure drops the connection (and every lock)."""
        if name not in self.held or self._conn is None or self._conn.is_closed():
            self.held.discard(name)
            return
        self.held.discard(name)
        try:
            await self._conn.fetchval(f"SELECT pg_advisory_unlock({LEASE_KEY_SQL})", self._kind, name,
                                      timeout=LEASE_QUERY_TIMEOUT_S)  # fmt: skip
        except DB_ERRORS as err:
            await self._drop()
            what = self._lock.format(name=name)
            raise StoreError(f"giving back {what} in {self._where} failed ({err})") from err

    async def alive(self) -> bool:
        """The connection answers: every lock in ``held`` is still this hub's."""
        if self._conn is None or self._conn.is_closed():
            self.held.clear()
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=LEASE_QUERY_TIMEOUT_S)
        except DB_ERRORS:
            await self._drop()
            return False
        return True

    async def _drop(self) -> None:
        self.held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Give every lock back (closing the connection does); safe twice."""
        conn, self._conn = self._conn, None
        self.held.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), LEASE_QUERY_TIMEOUT_S)
            except DB_ERRORS:
                conn.terminate()
