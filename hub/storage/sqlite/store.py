"""The SQLite hub store: one file, one writer, WAL.

One writer task owns the writer connection: every write (a batch, a
credential, a safety stock) commits inside a ``BEGIN IMMEDIATE … COMMIT``
there, and writes that queue up meanwhile share the next one (group commit,
see ``_write``). Reads go through a second, query-only connection: they never
upgrade to writers, and under WAL they never wait for a write.

``synchronous=FULL``: under WAL, NORMAL can lose the last commits on power
loss. The hub answers an agent right after the commit and the agent then
forgets the batch, so a lost commit would be a lost stock movement. FULL costs
one WAL fsync per write transaction; the hub pays it (group commit shares it).

Every read and write of the store is ``hub.storage.store``'s, shared with PostgreSQL; this module runs
them (``SqliteDb`` over the reader, or over the writer inside its transaction). The ingest algorithm
lives in ``hub.storage.ingest``; ``hub.storage.sqlite.ingest`` supplies its reads and writes in SQL,
``hub.storage.sqlite.schema`` the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite

from hub.resolver import StockKey
from hub.secretfiles import warn_if_path_open
from hub.storage.base import HubError, StoreClosed, StoreError, StoreOpener
from hub.storage.bundles import BundleReads
from hub.storage.db import SqliteDb
from hub.storage.feed import FEED_HOME_KEY
from hub.storage.ingest import Batch, IngestTx
from hub.storage.migrations import MigrationProgress, progress_logged, size_text
from hub.storage.sqlite import sidefiles
from hub.storage.sqlite.ingest import SqliteIngest, StockCache
from hub.storage.sqlite.schema import SCHEMA_VERSION, feed_history, migrate
from hub.storage.sqlite.writer import WAL_VALVE_PAGES, Checkpointer, ConnectionThread, InlineConnection, run_inline
from hub.storage.store import SMALL_WRITE_EVENTS, SqlHubStore

log = logging.getLogger(__name__)

# The mode of a database file the hub creates, whatever the umask: it holds every credential's hash and the whole
# ledger. SQLite gives its -wal and -shm the database file's mode. An existing file keeps its own (0640 in
# docs/operations.md's restore, for the hub's group); one every user may read is said in a WARNING at each open.
DB_FILE_MODE = 0o600
DB_FILE_HOLDS = "the hash of every credential and the whole ledger"

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000
CACHE_SIZE_KIB = 16_384
WRITE_GROUP_MAX = 16  # writes that share one transaction at most
# Catch-up batches share one transaction only up to this many events: one more batch of 10,000 would double how long a
# small write that arrives meanwhile waits, and saves only an fsync (~1 % of such a batch's time).
WRITE_GROUP_EVENTS = 10_000
OVERWRITE_READINGS = 2  # the same foreign reading this many checks in a row: the file was written over


@dataclass(frozen=True, slots=True)
class _Write:
    what: str  # for messages: "adding a credential"
    work: Callable[[InlineConnection], Coroutine[Any, Any, Any]]
    done: asyncio.Future[Any]
    events: int = 0  # the events it writes: above SMALL_WRITE_EVENTS it waits for the small writes queued with it
    sender: str | None = None  # the agent whose batch it is: its writes commit in the order they came

    @property
    def small(self) -> bool:
        return self.events <= SMALL_WRITE_EVENTS


def next_group(queue: list[_Write], small_first: bool) -> list[_Write]:
    """Take the writes of the next transaction out of ``queue`` (not empty).

    ``small_first``: the small writes queued anywhere (a live store's sale, a credential, a webhook's cursor),
    up to ``WRITE_GROUP_MAX``, ahead of the catch-up batches queued before them, so that a store selling now
    waits for at most the one transaction under way, not for every other store's backlog. A small write never
    passes an earlier write of its own sender (an agent's batches commit in the order they came). Otherwise
    (or when no small write is queued): the writes in the order they came, up to ``WRITE_GROUP_MAX`` and
    ``WRITE_GROUP_EVENTS`` events (always one at least). The writer alternates, so neither kind starves."""
    if small_first:
        passed: set[str | None] = set()
        taken: list[int] = []
        for index, item in enumerate(queue):
            if item.small and (item.sender is None or item.sender not in passed):
                taken.append(index)
                if len(taken) == WRITE_GROUP_MAX:
                    break
            else:
                passed.add(item.sender)
        if taken:
            group = [queue[i] for i in taken]
            for index in reversed(taken):
                del queue[index]
            return group
    count, events = 1, queue[0].events
    while count < min(len(queue), WRITE_GROUP_MAX) and events + queue[count].events <= WRITE_GROUP_EVENTS:
        events += queue[count].events
        count += 1
    group = queue[:count]
    del queue[:count]
    return group


def _consume_result(done: asyncio.Future[Any]) -> None:
    """Mark a write's error as seen, for callers that were cancelled while waiting."""
    if not done.cancelled():
        done.exception()


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)


def _commit_group(
    conn: sqlite3.Connection, group: list[_Write], cache: StockCache
) -> tuple[list[tuple[_Write, Any, Exception | None]], int]:
    """On the writer thread: every write of ``group`` in one transaction, each in its own savepoint
    (one failing write does not undo the others); one alone runs without one. Also returns the
    number of rows the transaction changed."""
    db = InlineConnection(conn)
    changes_before = conn.total_changes
    single = len(group) == 1
    outcomes: list[tuple[_Write, Any, Exception | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        cache.check_version(conn.execute("PRAGMA data_version").fetchone()[0])
        for item in group:
            if not single:
                conn.execute("SAVEPOINT one_write")
            try:
                result = run_inline(item.work(db))
            except Exception as err:
                if single:
                    raise
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
                cache.clear()  # it may hold rows of the write just undone
                outcomes.append((item, None, _translated(err, item.what)))
            else:
                if not single:
                    conn.execute("RELEASE one_write")
                outcomes.append((item, result, None))
        conn.execute("COMMIT")
    except BaseException as err:
        cache.clear()
        # A refusal the write made on purpose (bad input, already resolved) is the caller's to answer, as one of a
        # group's is: only a failure is worth a warning.
        refused = isinstance(err, HubError) and not isinstance(err, StoreError)
        log.log(logging.DEBUG if refused else logging.WARNING,
                "A write transaction of %d write(s) failed and was rolled back: %s", len(group), err)  # fmt: skip
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_err:
                log.warning("Rolling back a failed write transaction failed too: %s", rollback_err)
        raise
    return outcomes, conn.total_changes - changes_before


def not_a_file(path: str | Path) -> str:
    return f"the hub database {path} is a directory, not a file; give the file in it, such as {Path(path) / 'hub.db'}"


SPECIAL_FILES = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                 (stat.S_ISSOCK, "a socket"))  # fmt: skip


def special_file(path: str | Path, mode: int) -> str | None:
    """The sentence refusing ``path`` as the hub database when its ``mode`` is a device, a FIFO or a socket."""
    kind = next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), None)
    return None if kind is None else f"the hub database {path} is {kind}, not a file; give the hub's database file"


def _check_one_name(path: Path) -> None:
    """Refuse a database file with hard links: SQLite names its -wal and -shm after the name it is opened by, so
    processes opening it by two names write two logs of one database and corrupt it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # a new database
    except OSError as err:
        raise StoreError(f"cannot open the hub database {path}: {err.strerror or err}") from err
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(not_a_file(path))
    special = special_file(path, st.st_mode)
    if special is not None:
        raise StoreError(special)
    links = st.st_nlink
    if links > 1:
        raise StoreError(
            f"the hub database {path} has {links} names (hard links), and SQLite keeps a -wal file per name, so "
            f"opened by two names it is corrupted; keep one name (find {path.parent} -samefile {path}) and remove "
            "the others"
        )


def read_only_file_system(directory: Path) -> bool:
    """Whether ``directory`` is on a file system mounted read-only (where ``statvfs`` tells: not on Windows)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# Less free than this where the database is: no room for SQLite's -shm file (32 KiB), which it makes even to read a
# database in WAL mode, nor for a page of -wal. An open that failed there failed for the full disk.
FULL_BELOW_BYTES = 64 * 1024


def full_file_system(directory: Path) -> int | None:
    """The bytes free on the file system of ``directory`` when it is full (less than ``FULL_BELOW_BYTES``), else
    None (or when it cannot be told)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    return free if free < FULL_BELOW_BYTES else None


FOREIGN_TABLES_NAMED = 5  # tables of another program's database named in the refusal


SQLITE_HEADER = b"SQLite format 3\x00"


def _damaged(err: sqlite3.DatabaseError) -> bool:
    """SQLite found the file's pages broken (SQLITE_CORRUPT) or not a database's (SQLITE_NOTADB)."""
    name = getattr(err, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(err)


def damaged_words(path: Path, err: sqlite3.DatabaseError) -> str:
    """The sentence for a hub database SQLite cannot read: damaged, and cut short when the file is shorter than
    its header says (a copy that stopped midway: a full disk, a transfer or ``cp`` interrupted)."""
    short = ""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        size = os.stat(path).st_size
    except OSError:
        header, size = b"", 0
    if len(header) == 100 and header.startswith(SQLITE_HEADER) and header[24:28] == header[92:96]:
        page_size = int.from_bytes(header[16:18], "big")
        expected = (65_536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")
        if size < expected:
            short = (
                f": it is {size:,} bytes, shorter than the {expected:,} its header says (a copy cut short: a full"
                " disk, a copy stopped midway), and SQLite reads it as malformed"
            )
    return (
        f"the hub database {path} is damaged{short} ({err}); restore another backup (docs/operations.md, Backup and"
        " restore)"
    )


def _check_is_a_hubs(path: Path) -> None:
    """Refuse a SQLite database that holds tables but no hub schema (``user_version`` 0): another program's (the
    agent's outbox, say), which migrating would fill with the hub's tables. Read before the hub changes anything
    in the file (its journal mode); a file SQLite cannot read is left to the open, which says why."""
    if _file_id(path) in _OPEN_HERE or not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = [row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "ORDER BY name"
            )]  # fmt: skip
    except sqlite3.Error:
        return
    if version != 0 or not tables:
        return
    named = ", ".join(tables[:FOREIGN_TABLES_NAMED]) + (" …" if len(tables) > FOREIGN_TABLES_NAMED else "")
    raise StoreError(
        f"cannot open the hub database {path}: it is a SQLite database of something else, not of a shelfsync hub "
        f"(it holds the tables {named} and no hub schema); give the hub's own database file (--db or its config's "
        "db), or a path where no file is yet for a new hub"
    )


# The database files (device, inode) a store of this process has open: their -wal is live, and reading them
# alone here would close a descriptor of the file, which drops the POSIX locks SQLite holds on it in this process.
_OPEN_HERE: list[tuple[int, int] | None] = []  # one entry a store


def _check_wal_is_its_own(path: Path) -> None:
    """Refuse to open a database whose -wal was written for another file: SQLite would replay it into this one."""
    if _file_id(path) in _OPEN_HERE:
        return
    why = sidefiles.foreign_wal(path)
    if why is not None:
        raise StoreError(
            f"the hub database {path} has a -wal file beside it that was not written for it ({why}), and SQLite "
            f"would copy it into the database; move {path.name}-wal and {path.name}-shm aside (mkdir -p replaced && "
            f"mv {path}-wal {path}-shm replaced/), then start again"
        )


def _create_private(path: Path) -> bool:
    """Create the database file ``path`` with ``DB_FILE_MODE`` when there is none (SQLite would make it 0644 under
    the default umask); True when this call made it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), DB_FILE_MODE)
    except FileExistsError:
        return False
    except OSError:
        return False  # left to SQLite's open, which says why
    try:
        if os.name == "posix":
            os.fchmod(fd, DB_FILE_MODE)  # whatever the umask made of it
    finally:
        os.close(fd)
    return True


def _remove_if_still_empty(path: Path) -> None:
    """Remove the file ``_create_private`` made for an open that failed before SQLite wrote to it: left empty, the
    next command would refuse it as an empty file."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0 and not any(os.path.exists(f"{path}{side}") for side in ("-wal", "-journal")):
            path.unlink()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _translated(err: Exception, what: str) -> Exception:
    if isinstance(err, sqlite3.Error):
        translated = StoreError(f"the hub database failed while {what}: {err}")
        translated.__cause__ = err
        return translated
    return err


class SqliteHubStore(SqlHubStore[SqliteDb]):
    """The hub's default store: one SQLite file. Open with ``SqliteHubStore.open(path)``."""

    LATEST_CHANGE_SQL = "SELECT COALESCE(MAX(change_id), 0) FROM changes"  # one writer: the newest row is the last
    LOCK_ROW = ""  # one writer: a row read in a write stays as read until the commit
    NEGATIVE_STOCK = "stock"  # its partial indexes stock_negative and stock_negative_time (schema 10)

    def __init__(
        self,
        path: Path,
        writer: ConnectionThread,
        checkpointer: Checkpointer,
        reader: aiosqlite.Connection,
        hub_id: str,
    ) -> None:
        self.path = path
        self.hub_id = hub_id
        # The files opened (the database, its -wal and -shm), to notice their names leading elsewhere.
        self._file_ids = {name: _file_id(path.with_name(path.name + name)) for name in ("", "-wal", "-shm")}
        self._writer = writer
        self._checkpointer = checkpointer
        self._reader = reader
        self._queue: list[_Write] = []
        self._stock_cache = StockCache()  # the writer thread's alone
        self._writer_task: asyncio.Task[None] | None = None
        self._read_lock = asyncio.Lock()
        self._closed = False
        # What the file alone may hold as its home while this store serves it (``file_overwritten``).
        self._homes_seen: set[str] = set()
        self._tokens_seen: set[str] = set()
        self._armed = False  # the file alone was once seen holding a home of this database
        self._last_header = b""
        self._foreign: list[object] = []  # the foreign readings in a row
        self._guard: sqlite3.Connection | None = None  # frozen: the read-only connection that closes last
        # The file, open for reading its header: never closed while SQLite has it open (a close of any descriptor
        # of a file drops every POSIX lock the process holds on it, SQLite's too).
        self._header_fd: int | None = None

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], progress: MigrationProgress | None = None
    ) -> StoreOpener[SqliteHubStore]:
        """``async with SqliteHubStore.open(path) as store:`` (or ``store = await …``); ``progress`` says how far
        its migration is meanwhile."""
        return StoreOpener(lambda: cls._open(Path(path), progress))

    @classmethod
    async def _open(cls, path: Path, progress: MigrationProgress | None = None) -> SqliteHubStore:
        if not path.parent.is_dir():
            raise StoreError(f"cannot open the hub database {path}: the directory {path.parent} does not exist")
        _check_one_name(path)
        _check_wal_is_its_own(path)
        _check_is_a_hubs(path)
        created = _create_private(path)
        if not created:
            warn_if_path_open(path, DB_FILE_HOLDS)
        writer = ConnectionThread(path, f"hub-writer:{path.name}")
        checkpointer = Checkpointer(path)
        reader: aiosqlite.Connection | None = None
        try:
            await writer.open(
                [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",  # see the module doc
                    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
                    f"PRAGMA cache_size = -{CACHE_SIZE_KIB}",
                    f"PRAGMA wal_autocheckpoint = {WAL_VALVE_PAGES}",  # the checkpointer's job; see hub.storage.sqlite.writer
                ]
            )
            if progress is None:
                progress = MigrationProgress(str(path))
            progress.where = str(path)
            async with progress_logged(progress) as steps:  # migrating runs on the writer
                hub_id = await writer.run(lambda conn: run_inline(migrate(InlineConnection(conn), path, steps)))
            history = await writer.run(lambda conn: run_inline(feed_history(InlineConnection(conn), path)))
            await checkpointer.open()
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as err:
            if reader is not None:
                await reader.close()
            await checkpointer.close()
            await writer.close()
            if created:
                _remove_if_still_empty(path)
            if isinstance(err, (sqlite3.Error, OSError)) and read_only_file_system(path.parent):
                raise StoreError(
                    f"cannot open the hub database {path}: the file system of {path.parent} is read-only, and the hub "
                    "writes its database and the -wal and -shm files beside it; give a database on a writable disk"
                ) from err
            if isinstance(err, (sqlite3.Error, OSError)) and (free := full_file_system(path.parent)) is not None:
                raise StoreError(
                    f"cannot open the hub database {path}: the file system of {path.parent} is full ({size_text(free)} "
                    "free), and the hub writes beside its database (the -wal and -shm files) even for a command that "
                    f"only reads it; free space there (df -h {path.parent}) and try again"
                ) from err
            if isinstance(err, sqlite3.DatabaseError) and _damaged(err):
                raise StoreError(damaged_words(path, err)) from err
            if isinstance(err, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open the hub database {path}: {err}") from err
            raise
        log.info("Opened the hub database %s (schema version %d).", path, SCHEMA_VERSION)
        store = cls(path, writer, checkpointer, reader, hub_id)
        store.feed_history = history
        await store._note_home()
        _OPEN_HERE.append(store._file_ids[""])
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer_task is not None:  # writes already accepted are committed first
            await asyncio.shield(self._writer_task)
        await self._checkpointer.close()
        await self._writer.close()
        async with self._read_lock:
            await self._reader.close()
        if self._guard is not None:  # the last to close, read-only: SQLite cannot copy the -wal into the file
            with contextlib.suppress(sqlite3.Error):
                self._guard.rollback()
            self._guard.close()
        if self._file_ids[""] in _OPEN_HERE:
            _OPEN_HERE.remove(self._file_ids[""])
        if self._header_fd is not None:  # SQLite holds no lock on the file now
            os.close(self._header_fd)
            self._header_fd = None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    # --- its file -------------------------------------------------------------

    def file_moved(self) -> str | None:
        """None while the database's path names the file this store has open; else "deleted" or "replaced".

        SQLite keeps writing to the file it opened: once its name is deleted (or given to another file, such as a
        backup put back while the hub runs), every commit goes to a file nothing will open again."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # cannot tell (a directory it may no longer search): say nothing rather than guess
        return None if (now.st_dev, now.st_ino) == self._file_ids[""] else "replaced"

    async def _note_home(self) -> None:
        """Remember the home this open drew and the tokens the token file holds now (the one before too, if the
        open's checkpoint could not be whole), and open the file for ``file_overwritten``'s header reads."""
        rows = await self._writer.run(
            lambda conn: conn.execute("SELECT value FROM meta WHERE key = ?", (FEED_HOME_KEY,)).fetchall()
        )
        self._homes_seen.update(str(r[0]) for r in rows)
        self._tokens_seen.update(sidefiles.file_tokens(self.path) or ())
        with contextlib.suppress(OSError):
            self._header_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    async def file_overwritten(self) -> str | None:
        """None while the file under the database's name holds what this store wrote; else why not (one clause).

        A copy written over the file in place (``cp backup.db hub.db``) keeps the inode ``file_moved`` watches,
        while SQLite reads the hub's own -wal over the copy's pages: a mix of two databases. The file is read
        alone, without SQLite's view of it (``hub.storage.sqlite.sidefiles``): its header (a copy made by backup
        is not in WAL mode) and, when the header changed, its home, read by a child process (a read of the file
        here would close a descriptor of it, which drops SQLite's locks). A reading must be the same
        ``OVERWRITE_READINGS`` checks in a row (a checkpoint may be writing the page read). A home is judged only
        once the file alone was seen holding one of this database (until then, after an open whose checkpoint
        could not be whole, it holds the one before)."""
        if self._header_fd is None or not hasattr(os, "pread"):  # Windows has no pread: not watched there
            return None
        try:
            head = os.pread(self._header_fd, sidefiles.HEADER_BYTES, 0)
        except OSError:
            return self._reading(None)
        if len(head) < sidefiles.HEADER_BYTES or not head.startswith(sidefiles.SQLITE_MAGIC):
            return self._reading(None)  # being written, or not a database (yet): cannot tell
        if head[18:20] != sidefiles.WAL_MODE:
            return self._reading(("mode", bytes(head[18:20])), "it is a self-contained copy, not in WAL mode")
        if head == self._last_header:
            return self._reading(None)
        found = await sidefiles.home_in_file_apart(self.path)
        if found is sidefiles.UNREADABLE:
            return self._reading(None)
        home = found if isinstance(found, str) else None
        self._tokens_seen.update(sidefiles.file_tokens(self.path) or ())
        why = None if home in self._homes_seen else sidefiles.foreign_home(self.path, home, sorted(self._tokens_seen))
        if home is not None and why is None:
            self._homes_seen.add(home)  # another process's open (agent add …) drew it: this file's
            self._armed = True
            self._last_header = head
            return self._reading(None)
        if not self._armed:
            return self._reading(None)
        return self._reading(("home", home), why or "it holds no home of this database")

    def _reading(self, reading: object, why: str = "") -> str | None:
        if reading is None:
            self._foreign.clear()
            return None
        if self._foreign and self._foreign[-1] != reading:
            self._foreign.clear()
        self._foreign.append(reading)
        return why if len(self._foreign) >= OVERWRITE_READINGS else None

    async def freeze(self, suffix: str) -> list[Path]:
        """Once the file was written over: nothing of the -wal may be copied into it any more. The checkpointer
        stops, the writer's own checkpoint is off, a read-only connection is held open to close last (SQLite copies
        the -wal back when its last connection closes, and a read-only one cannot), and the -wal and -shm are
        renamed aside (``sidefiles.keep_aside``), so that the file under the database's name starts without them.
        What the hub wrote since its last checkpoint stays in that -wal. The files kept."""
        if self._guard is None:
            guard = sqlite3.connect(f"file:{quote(os.fspath(self.path))}?mode=ro", uri=True, isolation_level=None,
                                    check_same_thread=False)  # fmt: skip
            with contextlib.suppress(sqlite3.Error):
                guard.execute("BEGIN")
                guard.execute("PRAGMA user_version").fetchall()  # holds the file's shared lock from here
            self._guard = guard
            await self._checkpointer.close()
            with contextlib.suppress(sqlite3.Error):
                await self._writer.run(lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0"))
        return sidefiles.keep_aside(self.path, suffix)

    def remove_stale_side_files(self) -> list[Path]:
        """Once closed after ``file_moved``: remove the -wal and -shm files it left under the database's name.

        SQLite leaves them when its database was moved (it cannot checkpoint into a file that is gone), and the
        next connection to the file now under that name would read the old database's WAL into it. Only the
        very files this store opened are removed, never another's."""
        assert self._closed, "close the store first"
        removed = []
        for side in ("-wal", "-shm"):
            path = self.path.with_name(self.path.name + side)
            if self._file_ids[side] is not None and _file_id(path) == self._file_ids[side]:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    async def save_copy(self, to: Path) -> int:
        """Copy the database this store has open (also once its name is gone) to the new file ``to``, whole:
        written beside it (mode 0600), synced, then renamed into place. The number of events in the copy."""
        partial = to.with_name(f".{to.name}.partial-{os.getpid()}")

        def copy(conn: sqlite3.Connection) -> int:  # on the writer's thread: between two write transactions
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            try:
                dst = sqlite3.connect(partial, isolation_level=None)
                try:
                    conn.backup(dst)
                    dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                    events = int(dst.execute("SELECT count(*) FROM events").fetchone()[0])
                finally:
                    dst.close()
                fd = os.open(partial, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(partial, to)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            return events

        try:
            return await self._writer.run(copy)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot copy the hub database to {to}: {err}") from err

    # --- transactions ------------------------------------------------------

    async def _write(
        self, what: str, work: Callable[[InlineConnection], Coroutine[Any, Any, T]], *, events: int = 0,
        sender: str | None = None,
    ) -> T:  # fmt: skip
        """Run ``work`` inside a write transaction and return its result once committed.

        One writer task owns the connection. Writes that queue up while it is
        busy share its next transaction (group commit: one BEGIN IMMEDIATE …
        COMMIT and one fsync for all of them), each inside its own SAVEPOINT,
        so one failing write does not undo the others; small writes go before
        the catch-up batches queued with them (``next_group``). A caller that is
        cancelled does not cancel its write: it commits or fails whole."""
        self._check_open()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_result)
        self._queue.append(_Write(what, work, done, events, sender))
        if self._writer_task is None:
            self._writer_task = asyncio.create_task(self._drain(), name=f"hub-writer:{self.path.name}")
        result: T = await asyncio.shield(done)
        return result

    async def _drain(self) -> None:
        small_first = True
        try:
            while self._queue:
                group = next_group(self._queue, small_first)
                small_first = not all(item.small for item in group)  # after small writes, the oldest batches' turn
                await self._commit(group)
        finally:
            self._writer_task = None

    async def _commit(self, group: list[_Write]) -> None:
        try:
            outcomes, rows = await self._writer.run(lambda conn: _commit_group(conn, group, self._stock_cache))
        except BaseException as err:  # the transaction failed as a whole: nothing of it is committed
            if isinstance(err, Exception):
                for item in group:
                    _settle(item.done, None, _translated(err, item.what))
                return
            for item in group:
                _settle(item.done, None, StoreError(f"the hub stopped before {item.what} was committed"))
            raise
        self._checkpointer.committed(rows)
        for item, result, error in outcomes:
            _settle(item.done, result, error)

    async def _read(
        self, what: str, work: Callable[[aiosqlite.Connection], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        self._check_open()
        # The read runs to its end in a task of its own even when its caller is cancelled (a browser
        # reload, a client gone): aiosqlite queues each statement on the reader thread, so a read
        # abandoned between its BEGIN and its end would leave the next one inside its transaction.
        read = asyncio.ensure_future(self._read_whole(what, work, snapshot))
        read.add_done_callback(_consume_result)
        return await asyncio.shield(read)

    async def _read_whole(self, what: str, work: Callable[[aiosqlite.Connection], Awaitable[T]], snapshot: bool) -> T:
        async with self._read_lock:
            self._check_open()
            db = self._reader
            try:
                if not snapshot:
                    return await work(db)
                await db.execute("BEGIN")
                try:
                    return await work(db)
                finally:
                    await db.rollback()  # read only: ROLLBACK ends it like COMMIT
            except sqlite3.Error as err:
                raise StoreError(f"the hub database failed while {what}: {err}") from err

    # --- what the shared store needs (hub.storage.store) ---------------------------------------------

    async def _read_db(self, what: str, work: Callable[[SqliteDb], Awaitable[T]], *, snapshot: bool = False) -> T:
        return await self._read(what, lambda conn: work(SqliteDb(conn)), snapshot=snapshot)

    async def _write_db(
        self, what: str, work: Callable[[SqliteDb], Coroutine[Any, Any, T]], *, unique_races: bool = False,
        events: int = 0, sender: str | None = None,
    ) -> T:  # fmt: skip
        # one writer: no race to lose
        return await self._write(what, lambda conn: work(SqliteDb(conn)), events=events, sender=sender)

    async def _booking(
        self, db: SqliteDb, work: Callable[[IngestTx], Awaitable[T]], *, batch: Batch | None = None,
        stock_keys: Collection[StockKey] = (),
    ) -> T:  # fmt: skip
        for key in stock_keys:  # written with SQL of their own: the writer's copy would be stale
            self._stock_cache.discard(key)
        return await work(SqliteIngest(db.conn, self._stock_cache))

    def _bundle_reads(self, db: SqliteDb) -> BundleReads:
        return SqliteIngest(db.conn)  # no cache: that is the writer thread's

    async def _lock(self, db: SqliteDb, name: str) -> None:
        return None  # one writer: nothing else writes meanwhile

    async def _lock_hub_clock(self, db: SqliteDb) -> None:
        return None

    async def health(self) -> dict[str, Any]:
        async def work(db: aiosqlite.Connection) -> dict[str, Any]:
            rows = list(await db.execute_fetchall("PRAGMA user_version"))
            return {
                "ok": True,
                "backend": "sqlite",
                "path": str(self.path),
                "hub_id": self.hub_id,
                "schema_version": rows[0][0],
                "writes_queued": len(self._queue),
            }

        return await self._read("checking health", work)
