"""The SQLite hub schema and its migrations (``PRAGMA user_version``)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

from hub.storage.base import StoreError
from hub.storage.feed import (
    FEED_HISTORY_KEY,
    FEED_HOME_KEY,
    NEWEST_SYNC_SQL,
    RESTORED_CREDENTIALS,
    new_feed_history,
    restored_movements,
)
from hub.storage.migrations import LEDGER_STEPS, Migration, MigrationProgress, migrations, size_text, step_failed
from hub.storage.sqlite.writer import InlineConnection
from protocol import stored_reason

log = logging.getLogger(__name__)

# Schema version -> the migration that brings version - 1 to it (hub/storage/sqlite/migrations/).
MIGRATIONS: dict[int, Migration] = migrations("hub.storage.sqlite")
SCHEMA_VERSION = max(MIGRATIONS)
HOME_TOKEN_BYTES = 8
# The SQL function a step calls to word a stored reason as ingest does (step 29): Python's casefold and white space,
# which SQLite's lower() and replace() are not.
STORED_REASON_SQL = "shelfsync_stored_reason"


def register_step_functions(conn: sqlite3.Connection) -> None:
    """Give a connection the SQL functions the steps call (a tool or test running the steps' SQL itself needs them)."""
    conn.create_function(STORED_REASON_SQL, 1, stored_reason, deterministic=True)


async def migrate(db: InlineConnection, path: Path, progress: MigrationProgress | None = None) -> str:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; return the hub id.

    A step runs statement by statement (its transaction whole), so that ``progress`` tells how far it is."""
    progress = progress or MigrationProgress(str(path))
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the hub database {path} has schema version {version}, newer than this shelfsync "
            f"understands ({SCHEMA_VERSION}); upgrade shelfsync"
        )
    register_step_functions(db.conn)
    for step in range(version + 1, SCHEMA_VERSION + 1):
        statements = script_statements(MIGRATIONS[step].read())
        events = None
        if step in LEDGER_STEPS:  # counted from its narrowest index: a blink beside the step
            [(events,)] = await db.execute_fetchall("SELECT count(*) FROM events")
        progress.begin(step, SCHEMA_VERSION, MIGRATIONS[step].name, len(statements), events)
        await db.execute("BEGIN IMMEDIATE")
        try:
            for number, statement in enumerate(statements, 1):
                progress.statement = number
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {step}")
            await db.execute("COMMIT")
        except BaseException as err:
            if db.conn.in_transaction:
                db.conn.rollback()
            if isinstance(err, sqlite3.Error):
                raise StoreError(_step_failed(progress, path, err)) from err
            raise
        progress.done()
    await db.execute(
        "INSERT INTO meta (key, value) VALUES ('hub_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,)
    )
    rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'hub_id'"))
    return str(rows[0][0])


def _step_failed(progress: MigrationProgress, path: Path, err: sqlite3.Error) -> str:
    """What to say of a step SQLite failed: a full disk (SQLITE_FULL, or an I/O error with less room left than the
    database takes) says how much to free; anything else, what SQLite said."""
    try:
        need = os.path.getsize(path)
        free = shutil.disk_usage(path.parent).free
    except OSError:
        need = free = 0
    code = getattr(err, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and free < need):
        return step_failed(
            progress, "the disk is full",
            f"free about {size_text(need)} on the file system of {path.parent} (as much as the database: a step may "
            "write that much into its -wal), then start the hub again",
        )  # fmt: skip
    return step_failed(progress, f"{err}", "fix what SQLite says, then start the hub again")


def script_statements(script: str) -> list[str]:
    """A migration script's statements, each whole (SQLite's own test of a statement's end: a ';' in a comment,
    a string or a trigger's body does not end one)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(part.strip().startswith("--") or not part.strip() for part in pending.splitlines()):
        statements.append(pending.strip())  # a last statement without its ';'
    return statements


# The file beside the database (``hub.db.feed-home``) holding the token of the database's home. The device and
# inode alone do not tell the file apart from a copy written over it (``cp old.db hub.db`` keeps the inode), nor
# from another machine's file at the same inode. So each open draws a new token, writes it here and into the
# database's home in meta: a copy of the database taken before that open carries a token this file no longer
# holds. The token is changed under the database's write lock; the file holds the old and the new token until
# the new one is committed, so a crash between the two writes begins no new history.
HOME_TOKEN_SUFFIX = ".feed-home"
TOKEN_FILE_MODE = 0o600  # the hub's own, as its database is (hub.storage.sqlite.store.DB_FILE_MODE)


async def feed_history(db: InlineConnection, path: Path) -> str:
    """The change feed's history (``hub.storage.feed``): a new one when this file is not the one it began in."""
    st = path.stat()
    inode = f"sqlite:{st.st_dev}:{st.st_ino}"
    real = Path(os.path.realpath(path))  # a symlink's name is not another home: beside the file, as its -wal is
    tokens_file = real.with_name(real.name + HOME_TOKEN_SUFFIX)
    await db.execute("BEGIN IMMEDIATE")
    try:
        rows = dict(await db.execute_fetchall(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (FEED_HISTORY_KEY, FEED_HOME_KEY)
        ))  # fmt: skip
        stored_home = rows.get(FEED_HOME_KEY)
        same = _same_home(stored_home, inode, tokens_file)
        history = new_feed_history(rows.get(FEED_HISTORY_KEY), inode if same else None, inode)
        newest: int | None = None
        if history is not None and FEED_HISTORY_KEY in rows:
            await _check_restored(db, path)
            ((newest,),) = await db.execute_fetchall(NEWEST_SYNC_SQL)  # said with the new history, below
        token = secrets.token_hex(HOME_TOKEN_BYTES)
        kept = _token(stored_home) if same else None  # still good should the commit below not happen
        _write_tokens(tokens_file, [t for t in (kept, token) if t])
        await db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?), (?, ?)",
            (FEED_HISTORY_KEY, history or rows[FEED_HISTORY_KEY], FEED_HOME_KEY, f"{inode}:{token}"),
        )  # one statement: both or neither
        await db.execute("COMMIT")
    except BaseException:
        db.conn.rollback()
        raise
    if not await _checkpointed(db):  # the new home is in the file itself only after a whole checkpoint
        log.info("The WAL of %s could not be copied back whole at its open (a reader holds it); the token file "
                 "keeps the database's previous token too.", path)  # fmt: skip
        return str(rows[FEED_HISTORY_KEY]) if history is None else _new_history(path, history, rows, newest)
    await db.execute("BEGIN IMMEDIATE")  # the old token dropped, unless another process drew a newer one meanwhile
    try:
        if (await db.execute_fetchall("SELECT value FROM meta WHERE key = ?", (FEED_HOME_KEY,))) == [
            (f"{inode}:{token}",)
        ]:
            _write_tokens(tokens_file, [token])
    finally:
        db.conn.rollback()
    if history is None:
        return str(rows[FEED_HISTORY_KEY])
    return _new_history(path, history, rows, newest)


def _new_history(path: Path, history: str, rows: dict[str, str], newest_sync_ms: int | None) -> str:
    _log_new_history(path, history, rows.get(FEED_HISTORY_KEY))
    if rows.get(FEED_HISTORY_KEY) is not None:
        log.warning("%s", restored_movements(path, newest_sync_ms, int(time.time() * 1000)))
    return history


async def _checkpointed(db: InlineConnection) -> bool:
    """Copy the WAL back into the database file (a PASSIVE checkpoint: it waits for nobody); whether it was whole.

    The file alone then holds the home just drawn, which ``hub.storage.sqlite.sidefiles`` reads without the WAL
    to tell a -wal that is not the file's own (a restore's leftover) from its own."""
    rows = list(await db.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)"))
    busy, frames, copied = rows[0] if rows else (1, 0, -1)
    return busy == 0 and frames == copied


async def _check_restored(db: InlineConnection, path: Path) -> None:
    """A database restored, copied or moved is checked whole (``PRAGMA quick_check``) at its first start: a copy
    damaged since it was made is refused before the hub serves it, not found page by page by the requests."""
    log.info("Checking the whole of %s, restored, copied or moved, before it is served (PRAGMA quick_check).", path)
    try:
        problems = [str(r[0]) for r in await db.execute_fetchall("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as err:  # a page too broken to check
        problems = [str(err)]
    if problems != ["ok"]:
        raise StoreError(
            f"the hub database {path} is damaged ({'; '.join(problems)}); it is a restored or copied file: "
            "restore another backup (docs/operations.md, Backup and restore)"
        )


def _same_home(stored_home: str | None, inode: str, tokens_file: Path) -> bool:
    """Whether the stored home is this file: its inode and a token the token file holds.

    A home of the older form (the inode alone, from before the token file) passes while there is no token file:
    the first start of this version keeps the history it finds."""
    if stored_home is None:
        return False
    try:
        tokens = tokens_file.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return stored_home == inode
    except (OSError, ValueError):
        return False  # unreadable: not this file's
    place, _, token = stored_home.rpartition(":")
    return place == inode and token in tokens


def _token(home: str | None) -> str | None:
    if home is None or home.count(":") < 3:
        return None
    return home.rpartition(":")[2]


def _write_tokens(tokens_file: Path, tokens: list[str]) -> None:
    """Replace the token file by one holding ``tokens``, synced to disk before the database commits."""
    partial = tokens_file.with_name(f".{tokens_file.name}.{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, TOKEN_FILE_MODE)
        if os.name == "posix":
            os.fchmod(fd, TOKEN_FILE_MODE)  # whatever the umask made of it
        with open(fd, "w", encoding="ascii") as f:
            f.write("\n".join(tokens) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, tokens_file)
    except BaseException:  # a full disk, say: no half-written file of this process's left beside the database
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    try:  # the rename made durable; Windows opens no directory (a rename lost in a crash: one new history)
        fd = os.open(tokens_file.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_new_history(where: object, history: str, before: str | None) -> None:
    if before is None:
        log.info("The change feed of %s begins its history %s (its cursors carry it).", where, history)
    else:
        log.warning(
            "The change feed of %s begins a new history %s after %s: the database was restored from a backup, "
            "copied or moved, so cursors of the old history are refused and their readers read the feed again.",
            where, history, before,
        )  # fmt: skip
        log.warning(RESTORED_CREDENTIALS, where)
