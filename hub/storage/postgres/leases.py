"""Which hub process does a job that only one may do at a time: session-level advisory locks, one per name.

Several hub processes share one database, but only one may push a channel
(``hub.channels.runner``) or deliver a webhook (``hub.webhooks``). Each such
job holds a session-level advisory lock, keyed by its kind, the schema
(``search_path``) and its name, on the hub's lock connection (one per hub,
``LockConnection``, shared by the channels' and the webhooks' ``Leases``); a
hub that does not get it stands by and tries again. The lock goes when the holder's
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
from hub.storage.postgres.store import CONNECT_TIMEOUT_S, redacted, session_settings

LEASE_QUERY_TIMEOUT_S = 5.0
# The lock connection's own settings, over the store's: it is idle between lock checks by design, so a server's
# idle_session_timeout shorter than the checks' interval would end it between two checks, and the locks with it.
LOCK_SESSION_SETTINGS = {"idle_session_timeout": "0"}
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
LEASE_KEY_SQL = "hashtextextended('shelfsync.' || $1 || '.' || current_schema() || '.' || $2, 0)"


class LockConnection:
    """The one connection on which a hub process holds its session-level advisory locks, of every kind.

    A hub with channels and webhooks needs one lock connection, not one per kind: each kind's ``Leases`` is
    opened on it and counted, and the last one's ``close`` closes it. Its queries run one at a time (a
    connection runs one query at a time, and the kinds' loops run side by side). ``generation`` counts the
    connections made: locks taken on an earlier one went with it, whichever kind's failure dropped it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted(url)
        self.generation = 0
        self._conn: asyncpg.Connection | None = None
        self._users = 0
        self._busy = asyncio.Lock()

    def current(self) -> asyncpg.Connection | None:
        """The open connection, if any."""
        return None if self._conn is None or self._conn.is_closed() else self._conn

    async def connect(self, locks: str) -> asyncpg.Connection:
        """The open connection, connecting anew when there is none (``locks``: what it is for, in the error)."""
        async with self._busy:
            conn = self.current()
            if conn is None:
                try:
                    # The hub store's session settings: the TCP keepalives above all, so the server ends this
                    # session, and frees every lock on it, about a minute after this hub's host vanished, not after
                    # TCP's two hours during which no hub would run these jobs.
                    # It idles between lock checks by design: a DBA's idle_session_timeout would end it, and every
                    # lock on it, between two checks, so the jobs would flap from hub to hub (LOCK_SESSION_SETTINGS).
                    conn = await asyncpg.connect(
                        self.url, timeout=CONNECT_TIMEOUT_S,
                        server_settings={**session_settings(self.url), **LOCK_SESSION_SETTINGS},
                    )  # fmt: skip
                except (*DB_ERRORS, ValueError) as err:
                    raise StoreError(f"cannot reach {self.where} to take {locks} ({err})") from err
                self._conn = conn
                self.generation += 1
            return conn

    async def fetchval(self, conn: asyncpg.Connection, sql: str, *args: object) -> object:
        """``sql``'s value on ``conn``, after any other query on it; raises what asyncpg raises."""
        async with self._busy:
            return await conn.fetchval(sql, *args, timeout=LEASE_QUERY_TIMEOUT_S)

    def drop(self, conn: asyncpg.Connection | None = None) -> None:
        """Cut ``conn`` (by default the current one), and with it every lock on it, of every kind; a connection
        made anew since is kept."""
        if conn is None or conn is self._conn:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def use(self) -> None:
        self._users += 1

    async def unuse(self) -> bool:
        """One user fewer; the last one closes the connection (giving every lock back). True when it was the last."""
        self._users -= 1
        if self._users > 0:
            return False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), LEASE_QUERY_TIMEOUT_S)
            except DB_ERRORS:
                conn.terminate()
        return True


class Leases:
    """Session-level advisory locks of one ``kind``, one per name, on the hub's lock connection.

    ``take`` tries to take a name's lock without waiting; ``alive`` tells whether the connection (and so every
    lock taken on it) is still there. When it is not, the locks are gone: stop the jobs, then ``take`` again
    (it connects anew). A ``hub.leases.LeaseHolder`` shared with every hub on the database. ``connection``: the
    hub's ``LockConnection``, which the other kinds use too, or a URL for a connection of these locks' own.
    ``kind`` is part of the key (``channel.pusher``: the key channel pushers always had); ``lock`` names one
    lock in errors (``{name}`` is the name) and ``locks`` all of them."""

    def __init__(self, connection: str | LockConnection, kind: str, lock: str, locks: str) -> None:
        self._shared = connection if isinstance(connection, LockConnection) else LockConnection(connection)
        self._shared.use()
        self._where = self._shared.where
        self._kind = kind
        self._lock = lock
        self._locks = locks
        self._generation = 0  # of the connection the locks in ``held`` were taken on
        self._closed = False
        self.held: set[str] = set()
        self.shared = True  # every hub on the database takes these locks

    async def _connection(self) -> asyncpg.Connection:
        conn = await self._shared.connect(self._locks)
        if self._shared.generation != self._generation:
            self.held.clear()  # a new connection holds nothing
            self._generation = self._shared.generation
        return conn

    def _holding(self) -> asyncpg.Connection | None:
        """The connection the locks in ``held`` were taken on, while it is open; when it is not, they are gone."""
        conn = self._shared.current()
        if conn is None or self._shared.generation != self._generation:
            self.held.clear()
            return None
        return conn

    async def take(self, name: str) -> bool:
        """True when this hub now holds (or already held) ``name``'s lock."""
        if name in self.held and await self.alive():
            return True
        conn = await self._connection()
        try:
            got = await self._shared.fetchval(conn, f"SELECT pg_try_advisory_lock({LEASE_KEY_SQL})", self._kind, name)
        except DB_ERRORS as err:
            await self._drop(conn)
            what = self._lock.format(name=name)
            raise StoreError(f"taking {what} in {self._where} failed ({err})") from err
        if got:
            self.held.add(name)
        return bool(got)

    def holds(self, name: str) -> bool:
        """This hub holds ``name``'s lock as far as the driver knows, without a round trip: the connection it was
        taken on is still open. A session the server ended (a restart, a failover, pg_terminate_backend) is seen
        closed at once, while ``lead`` notices only at its next turn, and another hub may hold the lock by then."""
        return name in self.held and self._holding() is not None

    async def release(self, name: str) -> None:
        """Give ``name``'s lock back, keeping the others; a failure drops the connection (and every lock)."""
        conn = self._holding()
        if name not in self.held or conn is None:
            self.held.discard(name)
            return
        self.held.discard(name)
        try:
            await self._shared.fetchval(conn, f"SELECT pg_advisory_unlock({LEASE_KEY_SQL})", self._kind, name)
        except DB_ERRORS as err:
            await self._drop(conn)
            what = self._lock.format(name=name)
            raise StoreError(f"giving back {what} in {self._where} failed ({err})") from err

    async def alive(self) -> bool:
        """The connection answers: every lock in ``held`` is still this hub's."""
        conn = self._holding()
        if conn is None:
            return False
        try:
            await self._shared.fetchval(conn, "SELECT 1")
        except DB_ERRORS:
            await self._drop(conn)
            return False
        return True

    async def _drop(self, conn: asyncpg.Connection | None = None) -> None:
        self.held.clear()
        self._shared.drop(conn)

    async def close(self) -> None:
        """Give every lock of this kind back (the last kind on the connection closes it); safe twice."""
        if self._closed:
            return
        self._closed = True
        conn, names = self._holding(), sorted(self.held)
        self.held.clear()
        if await self._shared.unuse() or conn is None:
            return
        for name in names:  # the other kinds keep the connection and their locks
            try:
                await self._shared.fetchval(conn, f"SELECT pg_advisory_unlock({LEASE_KEY_SQL})", self._kind, name)
            except DB_ERRORS:
                self._shared.drop(conn)  # every lock goes with it: the other kinds see it at their next check
                return
