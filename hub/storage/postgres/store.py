"""The PostgreSQL hub store: several hub processes share one database.

Open it with a URL: ``PostgresHubStore.open("postgresql://user:pw@127.0.0.1/shelfsync")``.
Query parameters the driver does not know are PostgreSQL settings for every
connection (``?search_path=hub2`` keeps a hub's tables in their own schema).

Every write is one READ COMMITTED transaction on a pooled connection. Ingest
serializes per key with advisory locks (``hub.storage.postgres.ingest``), so
hubs ingesting the same or overlapping batches at the same moment commit one
after the other and the second sees the first's events as resends. A
transaction that PostgreSQL aborts as a deadlock or serialization failure, or
that lost a race for an event id, is retried whole with jittered backoff.

Change-feed ids are assigned from one counter row as the last statement before
COMMIT (``hub.storage.postgres.feed``): its row lock is held until commit, so
change N+1 is never visible before change N, whichever hub wrote them.

A caller that is cancelled does not cancel its write: it commits or fails whole.

Every read and write of the store is ``hub.storage.store``'s, shared with SQLite; this module runs them
(``PostgresDb`` over a pooled connection) and gives the locks they take here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from hub.clock_window import span
from hub.resolver import StockKey
from hub.storage.base import ChangeRow, DatabaseUnreachable, StoreClosed, StoreError, StoreOpener
from hub.storage.bundles import BundleReads
from hub.storage.db import PostgresDb
from hub.storage.ingest import Batch, IngestTx
from hub.storage.migrations import MigrationProgress
from hub.storage.postgres import feed
from hub.storage.postgres.ingest import (
    HUB_CLOCK_LOCK,
    PostgresIngest,
    batch_keys,
    lock_keys,
    sender_lockable,
    stock_lockable,
)
from hub.storage.postgres.schema import SCHEMA_VERSION, check_not_newer, feed_history, migrate, schema_version
from hub.storage.store import SqlHubStore
from protocol import wall_ms_now

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10  # connections per hub process; N hubs need N × this below max_connections
# A request waits this long for a free connection, then is answered 503: with every connection waiting on a lock
# (an operator's LOCK TABLE, a stalled hub) the queue behind them would grow one lock_timeout per round of the pool,
# past the agents' 30 s timeout and the load balancer's health check, which would then hear nothing at all.
POOL_ACQUIRE_TIMEOUT_S = 5.0
# Ingest transactions one hub runs at once; more batches wait their turn in the hub, decoded, for up to
# POOL_ACQUIRE_TIMEOUT_S (then 503), and leave the pool's other connections to reads. Every ingest transaction
# ends on the change feed's counter row, which lets one through at a time, and holds its locks until then: beyond a
# few at once they only queue in the database, switching in and out of its cores. One hub's batches are bounded by
# its own event loop anyway (its Python is a third of a batch's CPU), which four keep busy.
INGEST_TX_MAX = 4
# Batches of more than this many events (an agent's catch-up sends 10,000 at once) take at most INGEST_TX_MAX - 1
# turns between them: a store's live sale, a few events, always finds one turn that no catch-up holds, and waits
# for it no longer than the shortest transaction in flight.
LIVE_BATCH_EVENTS_MAX = 1_000
CONNECT_TIMEOUT_S = 10.0
# A request's database work (one transaction, or one read) that has had no end this long has its connection closed
# and is answered 503: a server that went silent (a hung pooler or middlebox, a host gone while the hub waits for its
# answer: asyncpg's sockets have no keepalive) held the request, its connection and its ingest turn for ever, and
# the hub's stop waited for it. Far above lock_timeout (10 s) and the agents' 30 s timeout; the hub's db_timeout_s.
DB_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 30.0
TX_ATTEMPTS = 10
RETRY_BASE_S = 0.005
RETRY_MAX_S = 0.5
# Aborted by PostgreSQL so that another transaction could go on: run it again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
UNIQUE_VIOLATION = "23505"  # an event id another hub stored meanwhile: the retry sees it as stored
# Every hub session's application_name: this, then the hub's host and process id and the pool the session is of
# ("shelfsync-hub HOST:PID POOL", application_name()), so pg_stat_activity says which hub holds a session or a lock,
# and what for. Another hub ends a silent lock connection only when its name starts so (hub.storage.postgres.leases).
APPLICATION_NAME = "shelfsync-hub"
APPLICATION_NAME_MAX_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: pg_stat_activity shows no more of a longer name
POOL_NAME_MAX = len("locks-webhooks")  # the longest pool's name
# A hub's clock this far from the database server's is named in the log at start: every hub judges event times by
# its own clock (the clock window), and the server's is the one clock the hubs share.
CLOCK_OFFSET_WARN_MS = 5_000
SERVER_CLOCK_SQL = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
# The hub store's sessions start with these PostgreSQL settings unless the URL gives its own (?lock_timeout=2s).
# A hub that stalls inside a transaction — paused, swapped out, cut off from the network — keeps its locks (the
# change counter's row, its sender's advisory lock) and every other hub's ingest would wait on them for ever:
SESSION_DEFAULTS = {
    # no hub transaction waits on anything but the database, so one idle this long has a stalled hub behind it:
    # PostgreSQL ends its session and frees its locks
    "idle_in_transaction_session_timeout": "30s",
    # a statement waiting this long for a lock fails (503 with Retry-After): the agent tries again, here or elsewhere
    "lock_timeout": "10s",
    # a hub whose host vanished is noticed by the server in about a minute, not TCP's two hours
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",  # ms: unacknowledged data to a vanished hub ends the session too
}
# Opening the store failed for a reason that passes by itself: the server is down, starting, shutting down (a
# restart, a failover) or out of connection slots.
UNREACHABLE_AT_OPEN = (
    OSError,  # refused, unreachable, reset; a name not resolved yet at boot
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # 57P03: the database system is starting up
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# The connection, not the statement, failed: the server is gone or ended the session (a restart, a failover,
# pg_terminate_backend), or the driver lost track of where the protocol stands — asyncpg's InternalClientError
# ("cannot switch to state 12; another operation (2) is in progress") when a session ends between its last
# answer and the next query. The database is unavailable (503), and the connection is never used again.
CONNECTION_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError)


def redacted(url: str) -> str:
    """The URL as a log or an error may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def process_name() -> str:
    """``HOST:PID``: this hub process as its sessions' application_name names it (``application_name``), in
    printable ASCII (PostgreSQL shows any other byte as "?"). A host name too long for the name of the longest pool
    to fit within ``APPLICATION_NAME_MAX_BYTES`` loses its domain, then its end: the process id and the pool are
    what tell two sessions apart, and are always whole; the same for every pool, so one process is one name."""
    pid = str(os.getpid())
    host = "".join(c for c in socket.gethostname() if "!" <= c <= "~") or "?"
    room = APPLICATION_NAME_MAX_BYTES - len(f"{APPLICATION_NAME} :{pid} ") - POOL_NAME_MAX
    if len(host) > room:
        host = host.split(".", 1)[0][: max(1, room)]
    return f"{host}:{pid}"


def application_name(pool: str) -> str:
    """``shelfsync-hub HOST:PID POOL``: the application_name of this hub process's sessions of ``pool``
    ("requests", "channel-state", "locks-channels", "locks-webhooks"; at most ``POOL_NAME_MAX`` characters)."""
    return f"{APPLICATION_NAME} {process_name()} {pool[:POOL_NAME_MAX]}"


def session_settings(url: str, pool: str) -> dict[str, str]:
    """The settings a hub connection of ``pool`` is opened with: ``SESSION_DEFAULTS`` but those the URL sets itself
    (asyncpg sends the URL's own), and its ``application_name`` (the hub's, whatever the URL says: other hubs know
    a hub's lock connection by it)."""
    given = parse_qs(urlsplit(url).query)
    defaults = {k: v for k, v in SESSION_DEFAULTS.items() if k not in given}
    return {**defaults, "application_name": application_name(pool)}


# A hub process of hub_processes (alias h) is running while it has a session on this database.
HUB_RUNNING_SQL = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
    f"AND starts_with(a.application_name, '{APPLICATION_NAME} ' || h.name || ' '))"
)


async def _other_hubs(conn: asyncpg.Connection, name: str) -> dict[str, dict[str, str]]:
    """The settings of the hub processes but ``name`` that are running (``HUB_RUNNING_SQL``), by name."""
    rows = await conn.fetch(
        f"SELECT h.name, h.settings FROM hub_processes h WHERE h.name <> $1 AND {HUB_RUNNING_SQL} ORDER BY h.name",
        name,
    )
    return {row["name"]: {str(k): str(v) for k, v in json.loads(row["settings"]).items()} for row in rows}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to reset. The driver's default is one more round trip per
    transaction (advisory unlock all, CLOSE ALL, UNLISTEN *, RESET ALL), but these connections never hold session
    state — every lock is transaction-scoped, nothing LISTENs or SETs a session variable, cursors live in
    transactions (the channels' session-level pusher locks keep a connection of their own,
    hub.channels.state_postgres) — and the pool still rolls back a transaction left open before this runs."""


class _OrphanedWaiterFilter:
    """The event loop's exception handler once a PostgreSQL store is open: asyncio's "Future exception was never
    retrieved" for a driver future that failed with ``ConnectionDoesNotExistError`` is one INFO line; anything else
    goes to the handler before it.

    asyncpg (0.32) makes such a future when a session ends between two statements of a transaction and the next is a
    COPY: ``copy_in`` creates its waiter, then refuses to start (InternalClientError, "cannot switch to state 21")
    without awaiting it, and the connection's end fails the waiter later. The store has already answered that
    failure (``CONNECTION_ERRORS``: 503, connection dropped); logged at ERROR it read as a hub fault, and set off
    the alerts kept for those, in about one in four runs of the failover test."""

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None) -> None:
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        future = context.get("future")
        if isinstance(context.get("exception"), asyncpg.ConnectionDoesNotExistError) and (
            future is not None and not isinstance(future, asyncio.Task)  # a task of ours is never hidden
        ):
            log.info("A database session ended under an operation the driver had begun; it was answered as failed.")
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Put the filter in front of ``loop``'s handler, once."""
        handler = loop.get_exception_handler()
        if not isinstance(handler, cls):
            loop.set_exception_handler(cls(handler))


class _FloorRetrySentence(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reopen the connection it keeps ready (its "floor": a
    connection the server ended, at a restart or a failover, is opened again at once, and again after 1, 2, 4 … up
    to 60 s while that fails). The server being down is no fault of the hub, and a traceback of a refused connection
    every few seconds read as one: the filter makes each such record one sentence with the reason."""

    DRIVER_SAYS = "Failed to restore the pool connection floor"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(self.DRIVER_SAYS):
            err = record.exc_info[1]
            why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            record.msg = (
                "The hub cannot reopen the connection it keeps ready to its database (%s); the database driver tries "
                "again, waiting longer each time (at most 60 s), and requests open connections of their own meanwhile."
            )
            record.args = (why,)
            record.exc_info = None
            record.exc_text = None
        return True

    @classmethod
    def install(cls) -> None:
        """Put the filter on asyncpg's pool logger, once."""
        pool_log = logging.getLogger("asyncpg.pool")
        if not any(isinstance(f, cls) for f in pool_log.filters):
            pool_log.addFilter(cls())


class PoolBusy(StoreError):
    """No connection of the hub's pool came free in time: answered 503 (Retry-After) rather than queued."""

    def __init__(self, size: int, waited_s: float, what: str = "database connections") -> None:
        super().__init__(
            f"all {size} {what} of this hub stayed busy for {waited_s:g} s "
            "(waiting on a lock in the database, or more requests than they carry)"
        )


class NoNewConnection(StoreError):
    """The pool had room but the server did not take the connection the request needed in time (not a busy pool:
    the server or the path to it is silent)."""

    def __init__(self, where: str, waited_s: float) -> None:
        super().__init__(f"the hub database {where} did not take a new connection within {waited_s:g} s")


class NoAnswer(TimeoutError):  # an OSError: one of CONNECTION_ERRORS, the connection is never used again
    """The database did not finish a request's work within the hub's ``db_timeout_s``; its connection was closed."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"it did not answer within {waited_s:g} s (db_timeout_s), so the hub closed that connection")


@contextlib.contextmanager
def cut_off_after(conn: asyncpg.Connection, seconds: float) -> Iterator[list[bool]]:
    """Close ``conn`` once ``seconds`` pass, which fails whatever awaits it at once (a cancelled query would wait on
    a silent server for its cancellation, and then for the rollback). The list yielded holds True once it did."""
    silent: list[bool] = []

    def cut_off() -> None:
        silent.append(True)
        conn.terminate()

    timer = asyncio.get_running_loop().call_later(seconds, cut_off)
    try:
        yield silent
    finally:
        timer.cancel()


# A write the server refused as read-only, in the hub's words before the server's: after a failover the URL may
# still lead to the old primary, a standby now, and "cannot execute COPY FROM in a read-only transaction" alone did
# not read as "this server takes no writes". First in the sentence: the log keeps a request's first 120 characters.
READ_ONLY_SAYS = "the database server is read-only (a standby?), so the hub could not write"


def server_says(what: str, err: BaseException) -> str:
    """``what`` (``"while saving …"``) failed, with what the server answered: a read-only server named first."""
    said = str(err) or type(err).__name__
    if isinstance(err, asyncpg.ReadOnlySQLTransactionError):
        return f"{READ_ONLY_SAYS} {what}: {said}"
    return f"the hub database failed {what}: {said}"


def _open_error(where: str, err: BaseException) -> StoreError:
    """Why the store could not be opened: ``DatabaseUnreachable`` when the server is down or not taking sessions
    yet (a restart fixes it), else a ``StoreError`` (a wrong password, database or URL: the operator must)."""
    if isinstance(err, UNREACHABLE_AT_OPEN):
        return DatabaseUnreachable(f"cannot reach the hub database {where}: {err or type(err).__name__}")
    if isinstance(err, asyncpg.ReadOnlySQLTransactionError):
        return StoreError(f"cannot open the hub database {where}: {server_says('to set it up', err)}")
    return StoreError(f"cannot open the hub database {where}: {err or type(err).__name__}")


async def clock_offset_ms(conn: asyncpg.Connection) -> int:
    """How far this process's clock is ahead of the database server's (negative: behind), halfway through a
    round trip."""
    before_ms = wall_ms_now()
    server_ms = int(await conn.fetchval(SERVER_CLOCK_SQL))
    return (before_ms + wall_ms_now()) // 2 - server_ms


def _consume_result(task: asyncio.Task[Any]) -> None:
    """Mark a write's error as seen, for callers that were cancelled while waiting."""
    if not task.cancelled():
        task.exception()


def _first_failure(err: BaseException) -> BaseException:
    """The failure that ended a session, behind what the driver raised on the way out of it: the rollback of a
    transaction whose session the server closed raises "cannot call Transaction.__aexit__(): the underlying connection
    is closed", and that sentence is no reason an operator can act on ("terminating connection due to administrator
    command" is)."""
    while isinstance(err, (asyncpg.InterfaceError, asyncpg.InternalClientError)) and isinstance(
        err.__context__, Exception
    ):
        err = err.__context__
    return err


def _retryable(err: asyncpg.PostgresError, unique_races: bool) -> bool:
    state = getattr(err, "sqlstate", None)
    return state in RETRY_SQLSTATES or (unique_races and state == UNIQUE_VIOLATION)


class PostgresHubStore(SqlHubStore[PostgresDb]):
    """The hub store on PostgreSQL. Open with ``PostgresHubStore.open(url)``."""

    CONFIRMS_IN_BOOKING = True  # PostgresIngest.preload reads the credential with the rest: no round trip of its own
    LATEST_CHANGE_SQL = "SELECT last_id FROM change_counter"  # the feed's counter (hub.storage.postgres.feed)
    LOCK_ROW = " FOR UPDATE"  # hubs share the database: a row read to be rewritten is locked first
    # The stock rows below zero, their keys and times (schema 16, kept by ingest), walked in the list's order through
    # stock_negative_time or one store's stock_negative_at, each one's on_hand looked up in stock by its key: the
    # stock table has no index of on_hand, which would keep every batch's stock updates from being heap-only. The
    # LIMIT (a key has one row) keeps the look-up a subquery per row walked: joined, the planner may walk the whole
    # primary key of stock alongside (a merge join) instead.
    NEGATIVE_STOCK = (
        "stock_negative n CROSS JOIN LATERAL (SELECT on_hand FROM stock"
        " WHERE stock.location = n.location AND stock.sku = n.sku LIMIT 1) s"
    )
    WRITES_ON_A_THREAD = False  # asyncpg: every write is an await of the event loop

    def __init__(self, url: str, pool: asyncpg.Pool, hub_id: str, db_timeout_s: float = DB_TIMEOUT_S) -> None:
        self.url = url
        self.hub_id = hub_id
        self._pool = pool
        self._db_timeout_s = db_timeout_s
        self._inflight: set[asyncio.Task[Any]] = set()
        self._ingest_turns = asyncio.Semaphore(INGEST_TX_MAX)
        self._bulk_turns = asyncio.Semaphore(max(1, INGEST_TX_MAX - 1))  # taken first by a big batch
        self._closed = False
        self._unreached_since: float | None = None  # monotonic time of the first request the database could not take
        self._unreached_count = 0

    @classmethod
    def open(
        cls, url: str, progress: MigrationProgress | None = None, db_timeout_s: float | None = None
    ) -> StoreOpener[PostgresHubStore]:
        """``async with PostgresHubStore.open(url) as store:`` (or ``store = await …``); ``progress`` says how far
        its migration (or its wait for another hub's) is meanwhile; ``db_timeout_s`` bounds each request's
        database work (``DB_TIMEOUT_S`` if None)."""
        return StoreOpener(lambda: cls._open(url, progress, DB_TIMEOUT_S if db_timeout_s is None else db_timeout_s))

    @classmethod
    async def _open(
        cls, url: str, progress: MigrationProgress | None = None, db_timeout_s: float = DB_TIMEOUT_S
    ) -> PostgresHubStore:
        where = redacted(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=session_settings(url, "requests"),
                reset=_keep_session,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ValueError) as err:
            raise _open_error(where, err) from err
        try:
            async with pool.acquire() as conn:
                hub_id = await migrate(conn, where, progress)
                offset_ms = await clock_offset_ms(conn)
                history = await feed_history(conn, where)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            await pool.close()
            raise _open_error(where, err) from err
        except BaseException:
            await pool.close()
            raise
        _OrphanedWaiterFilter.install(asyncio.get_running_loop())
        _FloorRetrySentence.install()
        log.info("Opened the hub database %s (schema version %d).", where, SCHEMA_VERSION)
        if abs(offset_ms) > CLOCK_OFFSET_WARN_MS:
            log.warning(
                "This hub's clock is %s %s the database server's: the clock window judges events by it, so a store "
                "with a right clock may have its events held in quarantine at this hub; fix this machine's clock "
                "(NTP) or the server's, whichever is wrong.",
                span(offset_ms), "ahead of" if offset_ms > 0 else "behind",
            )  # fmt: skip
        store = cls(url, pool, hub_id, db_timeout_s)
        store.feed_history = history
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inflight:  # writes already accepted are committed (or fail) first
            await asyncio.wait(set(self._inflight))
        if self._unreached_since is not None:  # a server that did not answer the last request is not waited for
            log.info("Closed the hub database's connections without waiting: it did not answer the last request.")
            self._pool.terminate()
            return
        # Idle now: closing waits on the server's goodbye, as long as any answer may take (a silent path: db_timeout_s)
        limit_s = min(CLOSE_TIMEOUT_S, self._db_timeout_s)
        try:
            await asyncio.wait_for(self._pool.close(), limit_s)
        except TimeoutError:
            log.warning("Closing the hub database took over %g s; its connections were cut.", limit_s)
            self._pool.terminate()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one whose connection failed (``CONNECTION_ERRORS``) is closed, not pooled again.
        ``PoolBusy`` when none is free within ``POOL_ACQUIRE_TIMEOUT_S`` (``NoNewConnection`` when the pool had room
        and the server did not take a new one); ``NoAnswer`` when the work on it did not end within ``db_timeout_s``."""
        # The deadline is ours (asyncio.timeout: a timer), not the pool's: given one, asyncpg wraps each acquire in a
        # task of its own (wait_for), 2.2 % of the hub's CPU under the ingest bench, for a connection mostly free.
        try:
            async with asyncio.timeout(POOL_ACQUIRE_TIMEOUT_S):
                conn: asyncpg.Connection = await self._pool.acquire()
        except TimeoutError:
            if self._pool.get_size() < POOL_MAX_SIZE:  # room for one more: the wait was the server's, to connect
                self._not_reached(TimeoutError())
                raise NoNewConnection(redacted(self.url), POOL_ACQUIRE_TIMEOUT_S) from None
            raise PoolBusy(POOL_MAX_SIZE, POOL_ACQUIRE_TIMEOUT_S) from None
        try:
            with cut_off_after(conn, self._db_timeout_s) as silent:  # past db_timeout_s
                yield conn
        except CONNECTION_ERRORS as err:
            if silent:
                raise NoAnswer(self._db_timeout_s) from err
            # The pool opens a new one in its place. A session the server closed the driver has handed back to the
            # pool already, and terminate() on it would raise "connection has been released back to the pool" in
            # place of the server's reason, which the 503 and the log must say.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise
        except asyncpg.ReadOnlySQLTransactionError:
            # The server refuses writes now: a primary demoted to a standby at a failover. Its sessions would refuse
            # them for as long as they last, so this one is not pooled again: a new one, with a URL naming the servers
            # and target_session_attrs=read-write, goes to the server that takes writes now.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise
        finally:
            await self._pool.release(conn)

    # --- transactions ------------------------------------------------------

    async def _write(
        self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], *, unique_races: bool = False,
        ingest: int = 0,
    ) -> T:  # fmt: skip
        """Run ``work`` in one transaction, retried whole when PostgreSQL aborts it
        for another's sake; return its result once committed. The transaction runs
        in its own task, so a cancelled caller does not cut it short. An ingest of
        ``ingest`` events first waits for one of the hub's ``INGEST_TX_MAX`` turns."""
        self._check_open()
        attempts = self._attempts(what, work, unique_races)
        task = asyncio.ensure_future(self._ingest_turn(attempts, ingest) if ingest else attempts)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(_consume_result)
        return await asyncio.shield(task)

    async def _ingest_turn(self, attempts: Coroutine[Any, Any, T], events: int) -> T:
        """``attempts`` once one of the hub's ingest turns is free (``INGEST_TX_MAX``; a batch of more than
        ``LIVE_BATCH_EVENTS_MAX`` events also one of the turns big batches share); ``PoolBusy`` when none came free
        within ``POOL_ACQUIRE_TIMEOUT_S``, as for a connection."""
        turns = [self._ingest_turns] if events <= LIVE_BATCH_EVENTS_MAX else [self._bulk_turns, self._ingest_turns]
        taken: list[asyncio.Semaphore] = []
        try:
            try:
                async with asyncio.timeout(POOL_ACQUIRE_TIMEOUT_S):
                    for turn in turns:
                        await turn.acquire()
                        taken.append(turn)
            except BaseException as err:  # no turn in time, or the store closing: the transaction never starts
                attempts.close()  # (no warning that it was never awaited)
                if isinstance(err, TimeoutError):
                    raise PoolBusy(INGEST_TX_MAX, POOL_ACQUIRE_TIMEOUT_S, "ingest turns") from None
                raise
            return await attempts
        finally:
            for turn in reversed(taken):
                turn.release()

    async def _attempts(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], unique_races: bool) -> T:
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    result = await work(conn)
                self._reached()
                return result
            except CONNECTION_ERRORS as err:
                raise self._unavailable(what, err) from err
            except asyncpg.PostgresError as err:
                self._not_reached(err)
                if attempt == TX_ATTEMPTS or not _retryable(err, unique_races):
                    raise StoreError(server_says(f"while {what}", err)) from err
                delay_s = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.info("Retrying %s in %.0f ms: the database aborted it (%s).", what, delay_s * 1000, err)
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _read(
        self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        """Run a read; ``snapshot`` reads see one consistent state (REPEATABLE READ, read only)."""
        self._check_open()
        try:
            async with self._connection() as conn:
                if not snapshot:
                    result = await work(conn)
                else:
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        result = await work(conn)
            self._reached()
            return result
        except CONNECTION_ERRORS as err:
            raise self._unavailable(what, err) from err
        except asyncpg.PostgresError as err:
            self._not_reached(err)
            raise StoreError(server_says(f"while {what}", err)) from err

    def _not_reached(self, err: Exception) -> None:
        """Count a request the database could not take because it is down, restarting or full (not one it
        refused): once it answers again, ``_reached`` says so, once."""
        if isinstance(err, (*CONNECTION_ERRORS, *UNREACHABLE_AT_OPEN)) and not self._closed:
            if self._unreached_since is None:
                self._unreached_since, self._unreached_count = time.monotonic(), 0
            self._unreached_count += 1

    def _reached(self) -> None:
        """The database answered: after requests it could not take, one sentence says it answers again (the app
        logs the failed requests as they come; without this, nothing told the operator when they ended)."""
        if self._unreached_since is not None:
            log.info(
                "The hub database %s answers again; %d request(s) failed in the %.1f s it could not be reached.",
                redacted(self.url), self._unreached_count, time.monotonic() - self._unreached_since,
            )  # fmt: skip
            self._unreached_since = None

    def _unavailable(self, what: str, err: Exception) -> Exception:
        if self._closed and isinstance(err, asyncpg.InterfaceError):
            return StoreClosed()
        self._not_reached(err)
        why = _first_failure(err)
        return StoreError(f"the hub database {redacted(self.url)} could not be reached while {what}: {why}")

    # --- what the shared store needs (hub.storage.store) ---------------------------------------------

    async def _read_db(self, what: str, work: Callable[[PostgresDb], Awaitable[T]], *, snapshot: bool = False) -> T:
        return await self._read(what, lambda conn: work(PostgresDb(conn)), snapshot=snapshot)

    async def _changes(
        self, db: PostgresDb, after: int, limit: int, location: str | None, sku: str | None
    ) -> list[ChangeRow]:
        return await feed.changes(db.conn, after, limit, location, sku)  # kept as runs (schema 17)

    async def _write_db(
        self, what: str, work: Callable[[PostgresDb], Coroutine[Any, Any, T]], *, unique_races: bool = False,
        events: int = 0, sender: str | None = None,
    ) -> T:  # fmt: skip
        return await self._write(what, lambda conn: work(PostgresDb(conn)), unique_races=unique_races, ingest=events)

    async def _booking(
        self, db: PostgresDb, work: Callable[[IngestTx], Awaitable[T]], *, batch: Batch | None = None,
        stock_keys: Collection[StockKey] = (),
    ) -> T:  # fmt: skip
        keys, locks = batch_keys(batch) if batch is not None else (set(), set())
        keys.update(stock_keys)
        locks.update(map(stock_lockable, keys))
        if batch is not None:
            locks.add(sender_lockable(batch.who.agent_id))
        await lock_keys(db.conn, locks)  # before the first read: see the module doc of hub.storage.postgres.ingest
        tx = PostgresIngest(db.conn, locks)
        if batch is not None:
            await tx.preload(batch, keys)  # its first reads in one round trip
        result = await work(tx)
        db.flushed_change_id = await tx.flush_changes()  # last: the feed's counter row stays locked only until COMMIT
        return result

    async def _newest_change_id(self, db: PostgresDb) -> int:
        # The counter's value after this transaction's change rows is the newest id as of its commit (the
        # counter row stays locked until then): no round trip to read it again.
        if db.flushed_change_id is not None:
            return db.flushed_change_id
        return await super()._newest_change_id(db)

    def _bundle_reads(self, db: PostgresDb) -> BundleReads:
        return PostgresIngest(db.conn, set())

    async def _lock(self, db: PostgresDb, name: str) -> None:
        await lock_keys(db.conn, [(name,)])

    async def _lock_hub_clock(self, db: PostgresDb) -> None:
        await db.conn.execute(HUB_CLOCK_LOCK)  # a statement of its own: see hub.storage.postgres.ingest

    async def share_settings(self, settings: Mapping[str, str]) -> dict[str, dict[str, str]]:
        name = process_name()

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(f"DELETE FROM hub_processes h WHERE h.name <> $1 AND NOT {HUB_RUNNING_SQL}", name)
            await conn.execute(
                "INSERT INTO hub_processes (name, started_ms, settings) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET started_ms = EXCLUDED.started_ms, settings = EXCLUDED.settings",
                name, wall_ms_now(), json.dumps(dict(settings), sort_keys=True),
            )  # fmt: skip

        await self._write("sharing this hub's settings", work)
        # Read once committed: of two hubs starting at once, the second to commit sees the first's row.
        return await self.other_hubs_settings()

    async def other_hubs_settings(self) -> dict[str, dict[str, str]]:
        return await self._read("reading the other hubs' settings", lambda conn: _other_hubs(conn, process_name()))

    async def health(self) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> dict[str, Any]:
            version = await schema_version(conn)
            check_not_newer(version, redacted(self.url))  # a hub a newer one migrated past is taken out of service
            return {
                "ok": True,
                "backend": "postgresql",
                "database": redacted(self.url),
                "hub_id": self.hub_id,
                "schema_version": version,
                "clock_offset_ms": await clock_offset_ms(conn),
                "pool_size": self._pool.get_size(),
                "pool_idle": self._pool.get_idle_size(),
            }

        return await self._read("checking health", work)
