"""Which hub process does a job that only one may do at a time: session-level advisory locks, one per name.

Several hub processes share one database, but only one may push a channel
(``hub.channels.runner``) or deliver a webhook (``hub.webhooks``). Each such
job holds a session-level advisory lock, keyed by its kind, the schema
(``search_path``) and its name, on the hub's lock connection for that kind (``LockConnection``: one for the
channels' ``Leases``, one for the webhooks', ``hub.leases.LockConnections``); a
hub that does not get it stands by and tries again. The lock goes when the holder's
connection does (a stopped or killed hub, or one cut off from the database),
and another hub takes the job over from what the holder saved. A hub that is
paused (SIGSTOP, swapped out, an event loop stuck in a blocking call) keeps
its connection, and the server its locks: its host still answers the TCP
keepalives. So a holder proves it is alive by checking its locks, a query on
its lock connection every few seconds (``hub.leases.lead``): the server notes
when each session last ran one (``pg_stat_activity.state_change``, the
server's clock: the hubs' clocks play no part). A hub that fails to take a
lock looks at its holder, and ends the holder's lock connection
(``pg_terminate_backend``) when it has been silent for ``stale_s``
(``lease_stale_s``, 30 s), far longer than a live hub ever is; it takes the
lock at its next try. The paused hub, resumed, finds its connection closed
before doing anything only the holder may do (``Leases.holds``). The schema in
the key keeps hubs in different schemas of one database from waiting for
each other; the kind keeps a channel and a webhook of one name apart.

``hub.leases.lead`` is the one standby/takeover loop both use over these
locks (a SQLite hub uses it too, over ``hub.leases.LocalLeases``): it runs
the jobs whose lock this hub holds and stands by for the others.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from hub.storage.base import StoreError
from hub.storage.postgres.store import APPLICATION_NAME, CONNECT_TIMEOUT_S, redacted, session_settings

log = logging.getLogger(__name__)

LEASE_QUERY_TIMEOUT_S = 5.0
# A lock connection idle this long has a hub behind it that stopped checking its locks (they are checked every 3 s,
# hub.leases.lead): paused, or its event loop stuck. Far above a slow hub's silence (a GC pause, a busy CPU):
# ending a live hub's connection only moves its jobs, but moving them back and forth is what this bound prevents.
LEASE_STALE_S = 30.0
# The lock connection's own settings, over the store's: it is idle between lock checks by design, so a server's
# idle_session_timeout shorter than the checks' interval would end it between two checks, and the locks with it.
LOCK_SESSION_SETTINGS = {"idle_session_timeout": "0"}
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
LEASE_KEY_SQL = "hashtextextended('shelfsync.' || $1 || '.' || current_schema() || '.' || $2, 0)"
# The session holding the lock of key LEASE_KEY_SQL, when it is a hub's (its application_name "shelfsync-hub HOST:PID
# POOL", or "shelfsync-hub" alone from a hub of an earlier version: an operator's psql is never ended) and has been idle, not running one query, for $3 seconds by the server's clock. pg_locks shows an
# advisory lock's 64-bit key as two 32-bit halves. A session of another role shows no state (NULL), nor does any
# session on a server with track_activities off ('disabled'): never ended, the locks stay where they are.
STALE_HOLDER_SQL = (
    "SELECT a.pid, host(a.client_addr) AS addr, a.client_port AS port, a.state_change, "
    "extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS silent_s "
    f"FROM (SELECT {LEASE_KEY_SQL} AS k) AS key "
    "JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::int8 = (key.k >> 32) & 4294967295 AND l.objid::int8 = key.k & 4294967295 "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE a.pid <> pg_backend_pid() AND (a.application_name = $4 OR starts_with(a.application_name, $4 || ' ')) "
    "AND a.state = 'idle' "
    "AND a.state_change < clock_timestamp() - make_interval(secs => $3)"
)
# Ends that session, unless it ran a query since it was seen silent (then it is alive: left alone).
END_STALE_SQL = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' AND state_change = $2"
)


def _why(err: BaseException, waited_s: float) -> str:
    """What ``err`` says, for a sentence's parentheses: a timeout says nothing by itself ("()" in the log)."""
    if isinstance(err, TimeoutError) and not str(err):
        return f"no answer within {waited_s:g} s"
    return str(err) or type(err).__name__


class LockConnection:
    """A connection on which a hub process holds session-level advisory locks.

    A hub makes one per kind of job (``hub.leases.LockConnections``), so each kind's checks prove only that kind's
    lead loop alive; several ``Leases`` may still be opened on one and counted, and the last one's ``close`` closes
    it. Its queries run one at a time (a
    connection runs one query at a time, and the kinds' loops run side by side). ``generation`` counts the
    connections made: locks taken on an earlier one went with it, whichever kind's failure dropped it. ``stale_s``:
    how long another hub's lock connection may stay silent before this hub ends it to take a lock it holds.
    ``pool``: what its sessions' application_name calls it (``locks-channels``), for an operator's pg_stat_activity."""

    def __init__(self, url: str, stale_s: float = LEASE_STALE_S, pool: str = "locks") -> None:
        self.url = url
        self.stale_s = stale_s
        self.pool = pool
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
                        server_settings={**session_settings(self.url, self.pool), **LOCK_SESSION_SETTINGS},
                    )  # fmt: skip
                except (*DB_ERRORS, ValueError) as err:
                    raise StoreError(
                        f"cannot reach {self.where} to take {locks} ({_why(err, CONNECT_TIMEOUT_S)})"
                    ) from err
                self._conn = conn
                self.generation += 1
            return conn

    async def fetchval(self, conn: asyncpg.Connection, sql: str, *args: object) -> object:
        """``sql``'s value on ``conn``, after any other query on it; raises what asyncpg raises."""
        async with self._busy:
            return await conn.fetchval(sql, *args, timeout=LEASE_QUERY_TIMEOUT_S)

    async def fetchrow(self, conn: asyncpg.Connection, sql: str, *args: object) -> asyncpg.Record | None:
        """``sql``'s first row on ``conn``, after any other query on it; raises what asyncpg raises."""
        async with self._busy:
            return await conn.fetchrow(sql, *args, timeout=LEASE_QUERY_TIMEOUT_S)

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
        self._refused: set[str] = set()  # locks whose silent holder the server would not let this hub end (said once)
        self.held: set[str] = set()
        self.shared = True  # every hub on the database takes these locks

    async def _connection(self) -> asyncpg.Connection:
        conn = await self._shared.connect(self._locks)
        if self._shared.generation != self._generation:
            self.held.clear()  # a new connection holds nothing
            self._generation = self._shared.generation
        return conn

    @property
    def stale_s(self) -> float:
        """``lease_stale_s``: how long a lock connection, or a job's own loop, may stay silent."""
        return self._shared.stale_s

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
            raise StoreError(f"taking {what} in {self._where} failed ({_why(err, LEASE_QUERY_TIMEOUT_S)})") from err
        if got:
            self.held.add(name)
            return True
        await self._end_if_stale(conn, name)
        return False

    async def _end_if_stale(self, conn: asyncpg.Connection, name: str) -> None:
        """``name``'s lock is another session's: end that session when it is a hub's lock connection that has not
        checked its locks for ``stale_s`` (its hub paused or stuck: it would hold the lock for ever), so this hub
        or another takes the lock at its next try. One sentence says so. A server's refusal (no right to end it)
        is said once and the lock left where it is; a failed connection drops it, as ``take``'s failure does."""
        what = self._lock.format(name=name)
        said = what[:1].upper() + what[1:]  # a sentence's first word
        try:
            row = await self._shared.fetchrow(
                conn, STALE_HOLDER_SQL, self._kind, name, self._shared.stale_s, APPLICATION_NAME
            )
            if row is None:
                return
            ended = await self._shared.fetchval(conn, END_STALE_SQL, row["pid"], row["state_change"])
        except asyncpg.PostgresError as err:
            if what not in self._refused:
                self._refused.add(what)
                log.warning("%s is held by a hub silent for over %.0f s, but this hub cannot end that hub's lock "
                            "connection (%s); it stays stalled until that hub resumes or is stopped", said,
                            self._shared.stale_s, err)  # fmt: skip
            return
        except DB_ERRORS as err:
            await self._drop(conn)
            raise StoreError(
                f"checking the holder of {what} in {self._where} failed ({_why(err, LEASE_QUERY_TIMEOUT_S)})"
            ) from err
        if ended:
            source = "a local socket" if row["addr"] is None else f"{row['addr']} port {row['port']}"
            log.warning(
                "%s is held by a hub whose lock connection (PostgreSQL pid %d, from %s) has been silent for %.0f s, "
                "past lease_stale_s (%.0f s): that hub is paused or stuck, so this hub ended that connection and "
                "takes the lock at its next try", said, row["pid"], source, row["silent_s"], self._shared.stale_s,
            )  # fmt: skip

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
            raise StoreError(
                f"giving back {what} in {self._where} failed ({_why(err, LEASE_QUERY_TIMEOUT_S)})"
            ) from err

    async def alive(self) -> bool:
        """The connection answers: every lock in ``held`` is still this hub's. Its query is also what proves this
        hub alive to the others (``_end_if_stale``): ``lead`` runs it every turn while the hub holds a lock."""
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
