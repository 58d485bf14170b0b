"""The PostgreSQL hub schema and its migrations (the ``schema_migrations`` table).

Each step runs in its own transaction under a transaction-scoped advisory lock
on the schema, so hubs started at the same moment migrate once: the second
waits, then finds the work done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg

from hub.storage.base import StoreError
from hub.storage.feed import (
    FEED_HISTORY_KEY,
    FEED_HOME_KEY,
    NEWEST_SYNC_SQL,
    RESTORED_CREDENTIALS,
    new_feed_history,
    restored_movements,
)
from hub.storage.migrations import (
    LEDGER_STEPS,
    Migration,
    MigrationProgress,
    migrations,
    progress_logged,
    step_failed,
)
from protocol import wall_ms_now

log = logging.getLogger(__name__)

MIGRATION_WAIT_LOG_S = 5.0  # while a starting hub waits for the schema's lock, a log line this often
MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('shelfsync.migrate.' || current_schema()))"


# Schema version -> the migration that brings version - 1 to it (hub/storage/postgres/migrations/).
MIGRATIONS: dict[int, Migration] = migrations("hub.storage.postgres")
SCHEMA_VERSION = max(MIGRATIONS)


class NewerSchema(StoreError):
    """The database was migrated past what this shelfsync knows: a hub of a newer version did it (an upgrade under
    way, docs/scaling.md). This hub must not ingest into it — the newer schema may keep something every ingest has
    to maintain that this code does not know of — so it answers 503 and fails its health check until it is replaced."""

    def __init__(self, version: int, where: str, running: bool) -> None:
        self.version = version
        what = "this hub runs" if running else "this shelfsync understands"
        action = "replace this hub with the newer version" if running else "upgrade shelfsync"
        database = f"the hub database {where}" if where else "the hub database"
        super().__init__(f"{database} has schema version {version}, newer than {what} ({SCHEMA_VERSION}); {action}")


def check_not_newer(version: int, where: str = "", *, running: bool = True) -> None:
    """``NewerSchema`` when ``version`` is past this shelfsync's."""
    if version > SCHEMA_VERSION:
        raise NewerSchema(version, where, running)


# Whether the version table exists, read from the catalog as of this statement. Not ``to_regclass``: it answers from
# the session's catalog cache, which inside a transaction keeps a name's absence until the session reads the
# invalidations, and a wait for the migration lock (an advisory lock) does not make it read them: a hub that found
# no schema, then waited while another hub ran the first step, read version 0 again and ran that step twice.
HAS_VERSIONS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = 'schema_migrations' AND n.nspname = current_schema())"
)


FOREIGN_TABLES_NAMED = 5  # tables of another program's schema named in the refusal

# The tables and views of the schema the hub works in, and whether each has the column the hub's schema_migrations
# has (another tool's schema_migrations — golang-migrate's, Rails' — is not the hub's). One statement, so a hub
# running the first migration step meanwhile (its tables and schema_migrations commit together) is seen whole or
# not at all; from the catalog, as HAS_VERSIONS_SQL (below) says why.
SCHEMA_TABLES_SQL = (
    "SELECT c.relname, EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid"
    " AND a.attname = 'applied_ms' AND NOT a.attisdropped) FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
    " AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition ORDER BY c.relname COLLATE \"C\""
)


async def check_is_a_hubs(conn: asyncpg.Connection, where: str) -> None:
    """Refuse a schema that holds tables but not the hub's schema_migrations: another program's (a --db naming its
    database, or a search_path its schema), which migrating would fill with the hub's tables beside its own, to
    serve an empty hub from there. An empty schema is a new hub's."""
    rows = await conn.fetch(SCHEMA_TABLES_SQL)
    if not rows or any(name == "schema_migrations" and hubs for name, hubs in rows):
        return
    tables = [name for name, _ in rows]
    named = ", ".join(tables[:FOREIGN_TABLES_NAMED]) + (" …" if len(tables) > FOREIGN_TABLES_NAMED else "")
    schema = await conn.fetchval("SELECT current_schema()")
    raise StoreError(
        f"cannot open the hub database {where}: its schema {schema} is of something else, not of a shelfsync hub (it"
        f" holds the tables {named} and not the hub's schema_migrations); give the hub's own database (--db or its"
        " config's db), or an empty schema or database for a new hub"
    )


async def schema_version(conn: asyncpg.Connection) -> int:
    if not await conn.fetchval(HAS_VERSIONS_SQL):
        return 0
    return int(await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_migrations"))


@contextlib.asynccontextmanager
async def _waiting_said(where: str, progress: MigrationProgress) -> AsyncIterator[None]:
    """While the body waits (for the migration lock and the schema's version), a line every
    ``MIGRATION_WAIT_LOG_S``: without it a hub starting behind a long migration or an operator's open transaction
    on schema_migrations waited in silence, neither serving nor saying why. ``progress`` says it waits meanwhile
    (its /livez)."""

    async def say() -> None:
        waited_s = 0.0
        while True:
            await asyncio.sleep(MIGRATION_WAIT_LOG_S)
            waited_s += MIGRATION_WAIT_LOG_S
            log.warning(
                "Waited %.0f s to open the hub database %s: another session holds its schema's lock (a hub "
                "migrating it, or an open transaction on schema_migrations); still waiting.", waited_s, where,
            )  # fmt: skip

    task = asyncio.ensure_future(say())
    progress.waiting_since = time.monotonic()
    try:
        yield
    finally:
        progress.waiting_since = 0.0
        task.cancel()


async def migrate(conn: asyncpg.Connection, where: str, progress: MigrationProgress | None = None) -> str:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; return the hub id. ``progress`` says how far
    it is meanwhile."""
    if progress is None:
        progress = MigrationProgress(where)
    progress.where = where
    if await conn.fetchval("SELECT current_schema()") is None:
        raise StoreError(f"the database {where} has no schema to create the hub's tables in; check its search_path")
    await check_is_a_hubs(conn, where)
    async with _waiting_said(where, progress):
        found = await schema_version(conn)
    check_not_newer(found, where, running=False)
    # Current already (every start but an upgrade's): no migration lock, which every batch in flight holds shared —
    # queueing for it would hold up each batch arriving after this, on every hub, until those in flight ended.
    version = found if found == SCHEMA_VERSION else -1
    while version < SCHEMA_VERSION:
        async with conn.transaction():
            # A hub starting waits for the one migrating, however long, and a step runs as long as it takes: neither
            # the hub's lock_timeout nor a statement_timeout the DBA set on the database or role cuts them short.
            await conn.execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
            await _end_with_this_hub(conn)
            async with _waiting_said(where, progress):
                await conn.execute(MIGRATION_LOCK_SQL)
                version = await schema_version(conn)
            check_not_newer(version, where, running=False)
            if version == SCHEMA_VERSION:
                break
            step = version + 1
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)"
            )
            events, estimated = await ledger_size(conn) if step in LEDGER_STEPS else (None, False)
            progress.begin(step, SCHEMA_VERSION, MIGRATIONS[step].name, events=events, estimated=estimated)
            try:
                async with progress_logged(progress):
                    await conn.execute(MIGRATIONS[step].read())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", step, wall_ms_now()
                )
            except asyncpg.PostgresError as err:  # the transaction is rolled back as this leaves it
                raise StoreError(_step_failed(progress, err)) from err
        version = step
        progress.done()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('hub_id', $1) ON CONFLICT (key) DO NOTHING", uuid.uuid4().hex
        )
        return str(await conn.fetchval("SELECT value FROM meta WHERE key = 'hub_id'"))


# Each partition of events and the rows its statistics count (reltuples: -1 for a partition never vacuumed nor
# analyzed; 0 on PostgreSQL 13, or for one found empty).
LEDGER_PARTITIONS_SQL = (
    "SELECT c.oid::regclass::text, c.reltuples FROM pg_catalog.pg_inherits i "
    "JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
)


async def ledger_size(conn: asyncpg.Connection) -> tuple[int, bool]:
    """How many events the ledger holds, for the line of a step that reads them all, and whether that is
    estimated: each partition's statistics, a partition without them counted (counting them all would read the
    ledger once more before the step reads it: seconds on a ledger of millions)."""
    total, estimated = 0, False
    for partition, rows in await conn.fetch(LEDGER_PARTITIONS_SQL):
        if rows > 0:
            total, estimated = total + int(rows), True
        else:
            total += int(await conn.fetchval(f"SELECT count(*) FROM {partition}"))
    return total, estimated


def _step_failed(progress: MigrationProgress, err: asyncpg.PostgresError) -> str:
    if isinstance(err, asyncpg.DiskFullError):
        return step_failed(
            progress, "the database server's disk is full",
            "free room on the database server (a step may write as much as the tables it changes take), then start "
            "the hub again",
        )  # fmt: skip
    return step_failed(progress, f"{err}", "fix what PostgreSQL says, then start the hub again")


CLIENT_CHECK_INTERVAL = "1s"  # how often a migration step's session checks its hub is still there
CLIENT_CHECK_SINCE = 14  # the PostgreSQL version that has client_connection_check_interval


async def _end_with_this_hub(conn: asyncpg.Connection) -> None:
    """A migration step's session ends within a second of this hub's end (kill -9, a unit's SIGTERM, a machine
    gone): PostgreSQL otherwise runs the step's script to its end for nobody, then rolls it back, holding the
    migration lock the whole time, so the hub started again waited that long before doing the step anew."""
    if conn.get_server_version().major >= CLIENT_CHECK_SINCE:
        await conn.execute(f"SET LOCAL client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'")


async def feed_history(conn: asyncpg.Connection, where: str) -> str:
    """The change feed's history (``hub.storage.feed``): a new one when the changes table is not the one it began
    in (pg_restore creates the tables anew: other oids, and another database or cluster)."""
    home = await _home(conn)
    rows = await _history_rows(conn)
    if new_feed_history(rows.get(FEED_HISTORY_KEY), rows.get(FEED_HOME_KEY), home) is None:
        return str(rows[FEED_HISTORY_KEY])  # the usual start: no lock, so no batch in flight is waited for
    async with conn.transaction():
        await conn.execute(MIGRATION_LOCK_SQL)  # hubs starting together agree on one history
        rows = await _history_rows(conn)
        history = new_feed_history(rows.get(FEED_HISTORY_KEY), rows.get(FEED_HOME_KEY), home)
        if history is None:
            return str(rows[FEED_HISTORY_KEY])  # another hub starting beside this one began it
        await conn.executemany(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(FEED_HISTORY_KEY, history), (FEED_HOME_KEY, home)],
        )
    if rows.get(FEED_HISTORY_KEY) is None:
        log.info("The change feed of %s begins its history %s (its cursors carry it).", where, history)
    else:
        log.warning(
            "The change feed of %s begins a new history %s after %s: the database was restored from a backup or "
            "copied, so cursors of the old history are refused and their readers read the feed again.",
            where, history, rows[FEED_HISTORY_KEY],
        )  # fmt: skip
        log.warning(RESTORED_CREDENTIALS, where)
        newest = await conn.fetchval(NEWEST_SYNC_SQL)
        log.warning("%s", restored_movements(where, None if newest is None else int(newest), int(time.time() * 1000)))
    return history


async def _history_rows(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT key, value FROM meta WHERE key IN ($1, $2)", FEED_HISTORY_KEY, FEED_HOME_KEY)
    return {str(k): str(v) for k, v in rows}


async def _home(conn: asyncpg.Connection) -> str:
    """Where the changes live: the cluster (when this role may read it), the database and the table, by id."""
    cluster = ""
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the outer transaction usable
            cluster = str(await conn.fetchval("SELECT system_identifier FROM pg_control_system()"))
    except asyncpg.PostgresError:
        pass  # a role without the right: the database's and the table's oids still change with a restore
    database = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    table = await conn.fetchval("SELECT 'change_runs'::regclass::oid")
    return f"postgresql:{cluster}:{database}:{table}"
