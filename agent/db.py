"""One SQLite connection owned by one thread: the outbox's single writer.

Why a dedicated thread rather than aiosqlite: a whole transaction is one
function call on one thread. Nothing can interleave between ``BEGIN
IMMEDIATE`` and ``COMMIT``, and a cancelled caller cannot leave the connection
inside a half-finished transaction — with aiosqlite every statement is its own
``await``, so a cancellation between two of them would. It is also one thread
hop per transaction instead of one per statement. (Datasette's write thread
has the same shape.)

A caller that is cancelled while its function runs does not stop it: a write
that started commits, so "committed" never depends on who was still waiting.

The hop itself (waking the thread, then the event loop) costs about as much
as a fast disk's commit. So a small write (``write(fn, small=True)``) runs
directly on the caller's thread when the connection is idle and recent
commits have been quick (under ``INLINE_COMMIT_MAX_S``): the loop is held no
longer than a commit it has just seen take a millisecond at most, and on a
slow disk every write goes through the thread. There, writes that queued up
while the disk was busy commit together (group commit): one ``BEGIN IMMEDIATE …
COMMIT`` and one flush for all of them, each in its own savepoint, so one that
fails undoes only itself, and each caller hears back only after the commit —
durability is never weakened, two scanners on a slow disk just share a flush.
Checkpoints never run inline:
SQLite's automatic checkpoint is off and the thread runs one after every
``CHECKPOINT_ROWS`` changed rows, and, for a file given ``wal_limit_bytes``
(whose rows may be large: the POS store's packed counts), whenever its WAL is
larger than that after a write. SQLite cuts the WAL back to that size, or to
``WAL_KEEP_BYTES`` for any other file (``journal_size_limit``), when the next
write after a checkpoint starts it again from its beginning: otherwise it stays
at its largest for ever. A checkpoint copies committed pages back: durability
is the same.

A write refused for a full disk (SQLITE_FULL) is often refused for the WAL's
own room: the thread then copies the WAL back and truncates it to nothing
(``wal_checkpoint(TRUNCATE)``, not waiting for a reader), before the next
write if it could not at once (the copy may need room in the file itself), so
that the next write finds the space the WAL held.

The file's identity (device and inode) is taken when it is opened. A file
deleted or replaced under an open connection keeps working through that
connection while nobody else can see what it holds; ``on_disk()`` tells so
with one ``os.stat``, and ``keep_file()`` writes the open database back with
SQLite's backup API (see ``agent.outbox``: what the outbox does about it).

A file written over in place (``cp backup.sqlite3 outbox.sqlite3``: the same
inode, other bytes) keeps its identity. In WAL mode only a checkpoint writes
the database file itself, so the owner of a file (``owner=True``: the running
agent, which alone copies the WAL back while it runs) takes the file's size
and modification time (one ``os.stat``; not its change time, which a chmod or
a hard link moves too) and, where ``os.pread``
exists, its first 100 bytes (SQLite's header, read through a descriptor kept
open as long as the connection: closing one would drop SQLite's POSIX locks)
after connecting and after each of its own checkpoints: any other change
(file times alone may not move within one tick of the clock) means another
writer, ``on_disk()`` answers "overwritten", and no checkpoint
runs any more, so the WAL's pages are never copied into the other file (a mix
SQLite reads as "database disk image is malformed"). Closing such a connection
does not copy them either (``_close_without_checkpoint``). Any other process
on the file (``checkpoint_if``) leaves its checkpoints to the running agent,
which copies a large WAL back at its next look (``checkpoint_if_large``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar

if TYPE_CHECKING:
    from agent.reserve import Reserve

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000  # another process (``shelfsync-agent record``) may hold the write lock briefly
SYNCHRONOUS_MODES = ("full", "normal")
INLINE_COMMIT_MAX_S = 0.001  # small writes run on the caller's thread while commits average less than this
COMMIT_AVERAGE_WEIGHT = 0.2  # of the newest commit in the running average of commit times
CHECKPOINT_ROWS = 1_000  # changed rows after which the thread copies the WAL back (SQLite's own: 1,000 pages)
WAL_KEEP_BYTES = 4 << 20  # journal_size_limit of a file given no wal_limit_bytes (SQLite's own: no limit)
GROUP_MAX = 64  # queued writes committed in one transaction at most
_DISK_REFUSED = ("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_SHMSIZE")

OnDisk = Literal["same", "missing", "replaced", "overwritten"]  # the open file, nothing, another, or others' bytes
Kept = Literal["same", "restored", "saved"]  # what ``keep_file`` did


def disk_refused(err: sqlite3.Error) -> bool:
    """Whether SQLite's failure is the disk refusing a write (full, or a file-size limit)."""
    return getattr(err, "sqlite_errorname", "") in _DISK_REFUSED


def disk_full(err: sqlite3.Error) -> bool:
    """Whether SQLite's failure is the disk having no room (ENOSPC: SQLITE_FULL, or the shared-memory file's growth),
    which room given back can cure; not a file-size limit (EFBIG: SQLITE_IOERR_WRITE)."""
    return getattr(err, "sqlite_errorname", "") in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")


def _roll_back(conn: sqlite3.Connection, path: Path) -> None:
    """After a failed write: end its transaction, unless SQLite already rolled it back (it does so itself on a
    full disk, SQLITE_FULL), so that the caller hears the write's own error, not the ROLLBACK's."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as err:
        log.warning("Rolling back a failed write to %s failed too: %s", path, err)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


FilePrint = tuple[int, int, bytes]  # st_size, st_mtime_ns, header: what a write to the file changes
HEADER_BYTES = 100  # SQLite's database header


def file_print(path: Path, fd: int | None) -> FilePrint | None:
    """Size and modification time of the file at ``path`` (None when there is none), and its header read through
    ``fd`` (empty without one). Not the change time: a chmod, a hard link a backup tool makes or an extended
    attribute moves it without a byte written. ``cp -p`` sets the modification time back, to the backup's own,
    which is not the one the last checkpoint left (and the header differs once a checkpoint ran after the backup).

    Never by opening the file here: closing any descriptor of a file drops every POSIX lock this process holds on
    it, SQLite's own included (another process's connection then checkpoints and deletes the WAL under this one)."""
    try:
        st = os.stat(path)
        head = b"" if fd is None else os.pread(fd, HEADER_BYTES, 0)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, head


def _header_fd(path: Path) -> int | None:
    """A descriptor of ``path`` to read its header with ``os.pread`` (None where there is none: Windows); closed
    only once no connection of this process has the file open (``_close_header``)."""
    if not hasattr(os, "pread"):
        return None
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


class SqliteThread:
    """Runs functions ``fn(conn)`` on the one thread that owns ``conn``."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        *,
        wal_limit_bytes: int | None = None,
        owner: bool = False,
        checkpoint_if: Callable[[], bool] | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        self.path = path
        self._synchronous = synchronous
        self._wal_limit = wal_limit_bytes
        # One thread owns the connection; work reaches it through a queue (cheaper than an executor's
        # submit: the thread hop is most of a record's latency once the disk is fast).
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"sqlite:{path.name}", daemon=True)
        self._thread.start()
        self._conn: sqlite3.Connection | None = None
        self._stopping = False
        self._lock = threading.Lock()  # the connection: one user at a time, this thread or the caller's
        self._submitted = 0  # work handed to the thread; written by the caller's (event loop's) thread only
        self._finished = 0  # work the thread has done; written by the thread only
        self._commit_s: float | None = None  # running average of write transactions; None: not measured yet
        self._changed_rows = 0  # since the last checkpoint
        self._reclaim = False  # a write was refused for a full disk: truncate the WAL before the next one
        self._reclaim_now = False  # and hand that to the thread at once
        self._reclaim_failed = False  # the last try found no room either (said once)
        self.identity: tuple[int, int] | None = None  # of the file this connection opened
        self._owner = owner  # the only checkpointer: any other write to the database file is another writer's
        self._checkpoint_if = checkpoint_if  # for any other: whether it may copy the WAL back now
        self._print: FilePrint | None = None  # the database file as the owner's connection last left it
        self._header_fd: int | None = None  # the owner's, for the print; never closed while the connection is open
        self.overwritten = False  # another writer wrote the database file: no checkpoint runs any more

    async def connect(self) -> None:
        await self._submit(self._connect)

    def _connect(self) -> None:
        self._conn = self._new_connection()
        self.identity = file_identity(self.path)
        if self._owner:
            self._header_fd = _header_fd(self.path)
        self._take_print()

    def _take_print(self) -> None:
        """The owner's: the database file as its own connection and checkpoints left it."""
        if self._owner and not self.overwritten:
            self._print = file_print(self.path, self._header_fd)

    def _close_header(self) -> None:
        """Once the connection is closed: SQLite holds no lock on the file any more."""
        if self._header_fd is not None:
            os.close(self._header_fd)
            self._header_fd = None

    def _written_by_another(self) -> bool:
        """Whether the database file changed since the owner's connection last left it."""
        if self.overwritten:
            return True
        taken = self._print
        now = file_print(self.path, self._header_fd)
        if now is None or taken is None:
            return False  # gone or unreadable: on_disk's identity tells
        if now != taken:
            self.overwritten = True
            log.debug(
                "The database file %s changed outside this connection's checkpoints: %s, then %s", self.path, taken, now
            )
        return self.overwritten

    def _may_checkpoint(self) -> bool:
        """On the connection's user: the owner copies the WAL back only into the file it last left; any other
        connection only when ``checkpoint_if`` allows it."""
        if self._owner:
            return not self._written_by_another()
        return self._checkpoint_if is None or self._checkpoint_if()

    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(  # used from the caller's thread too, one at a time (self._lock)
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch to WAL (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the thread checkpoints; see the module doc
            keep = WAL_KEEP_BYTES if self._wal_limit is None else self._wal_limit
            conn.execute(f"PRAGMA journal_size_limit = {int(keep)}")
            if self._wal_limit is not None:
                # Built with SQLITE_SECURE_DELETE (as Debian's is), SQLite writes zeros over every page a delete
                # frees, through the WAL, in the delete's one transaction: dropping 20 MB of a file's rows wrote
                # 20 MB of WAL past any bound. FAST clears what lies on the pages the delete writes anyway.
                conn.execute("PRAGMA secure_delete = FAST")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def on_disk(self) -> OnDisk:
        """Whether the path still holds the file this connection opened (one ``os.stat``; for the owner, one more
        unless the connection is in use: a checkpoint of its own may be writing the file)."""
        state = self._identity_on_disk()
        if state != "same" or not self._owner:
            return state
        if self.overwritten:
            return "overwritten"
        if not self._lock.acquire(blocking=False):
            return "same"  # the thread's next checkpoint looks before it writes
        try:
            return "overwritten" if self._written_by_another() else "same"
        finally:
            self._lock.release()

    def _identity_on_disk(self) -> OnDisk:
        if self.identity is None:
            return "same"  # not opened yet: nothing to compare with
        try:
            now = file_identity(self.path)
        except OSError:
            return "same"  # cannot look (permissions): not evidence that it is gone
        if now is None:
            return "missing"
        return "same" if now == self.identity else "replaced"

    def checkpoint_if_large(self) -> None:
        """The owner, at a look: a WAL grown past its keep size by other processes' writes (which leave the
        checkpoints to it) is copied back at once, as after its own ``CHECKPOINT_ROWS``."""
        if not self._owner or self.overwritten:
            return
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size > (WAL_KEEP_BYTES if self._wal_limit is None else self._wal_limit):
            self._changed_rows = max(self._changed_rows, CHECKPOINT_ROWS)
            self._maybe_checkpoint()

    async def keep_file(self, saved_as: Callable[[], Path]) -> tuple[Kept, Path | None]:
        """Write the open database back when the path no longer holds it; on the thread, so no write runs meanwhile.

        Missing: a copy (backup API, fsynced) is linked in at the path and this connection moves to it
        ("restored"). Another file at the path, or the file written over by another: that file is left alone;
        the copy goes to ``saved_as()`` and this connection moves to the copy there ("saved"), so closing it later
        never touches the path's WAL.
        ``OSError`` or ``sqlite3.Error`` when the copy cannot be written; the open connection stays then.
        """
        return await self._submit(functools.partial(self._keep_file, saved_as))

    def _keep_file(self, saved_as: Callable[[], Path]) -> tuple[Kept, Path | None]:
        state = self._identity_on_disk()
        if state == "same" and self._owner and self._written_by_another():
            state = "overwritten"
        if state == "same":
            return "same", None
        conn = self._conn
        assert conn is not None, "SqliteThread used before connect()"
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.copy")
        _backup(conn, partial)
        # The old connection's WAL and shared memory are "<path>-wal" and "<path>-shm" by name, and SQLite leaves
        # them when it closes a file that was moved or deleted: whatever is at the path would replay them as its
        # own (a backup moved over the outbox read back as a mix of both, or "database disk image is malformed").
        # Everything they held is in the copy now, so they go once the connection is closed.
        self._conn = None
        if state == "overwritten":
            _close_without_checkpoint(conn, self.path)
        else:
            conn.close()
        self._close_header()
        for stale in ("-wal", "-shm", "-journal"):
            self.path.with_name(self.path.name + stale).unlink(missing_ok=True)
        kept: Kept = "restored"
        target = self.path
        try:
            if state == "missing":
                try:
                    _link_new(partial, self.path)
                except FileExistsError:  # another process created a file there meanwhile
                    kept = "saved"
            else:
                kept = "saved"
            if kept == "saved":
                target = saved_as()
                _link_new(partial, target)
        except BaseException:
            target = partial  # the copy holds everything: go on with it rather than with nothing
            raise
        finally:
            self.path = target
            self._conn = self._new_connection()
            self.identity = file_identity(target)
            self.overwritten = False
            if self._owner:
                self._header_fd = _header_fd(target)
            self._take_print()
        return kept, None if kept == "restored" else target

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one read transaction (a consistent snapshot; never upgraded to a write)."""
        return await self._submit(functools.partial(self._in_transaction, "BEGIN DEFERRED", fn))

    async def outside_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the thread outside any transaction: for what cannot run inside one (``VACUUM``, a
        truncating checkpoint, ``PRAGMA incremental_vacuum`` run to its end)."""
        return await self._submit(lambda: fn(self._connection()))

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        assert conn is not None, "SqliteThread used before connect()"
        return conn

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        """Run ``fn`` inside one ``BEGIN IMMEDIATE … COMMIT``; any exception rolls everything back.

        ``small``: a write of a few rows, which may run on the caller's thread (see the module doc)."""
        if small and self._may_run_inline() and self._lock.acquire(blocking=False):
            try:
                return self._write_transaction(fn, wait_for_lock=False)
            except _WriteLockBusy:
                pass  # another process is writing: wait for it on the thread, never on the event loop
            finally:
                self._lock.release()
                self._maybe_checkpoint()
        return await self._submit(functools.partial(self._write_transaction, fn), write=fn)

    def _may_run_inline(self) -> bool:
        average = self._commit_s
        return (
            average is not None
            and average < INLINE_COMMIT_MAX_S
            and self._submitted == self._finished  # nothing queued or running: order is kept
            and not self._stopping
            and not self._reclaim
        )

    def _write_transaction(self, fn: Callable[[sqlite3.Connection], T], *, wait_for_lock: bool = True) -> T:
        conn = self._conn
        assert conn is not None, "SqliteThread used before connect()"
        self._reclaim_wal()
        started = time.perf_counter()
        changes = conn.total_changes
        try:
            if wait_for_lock:
                result = self._in_transaction("BEGIN IMMEDIATE", fn)
            else:
                _begin_at_once(conn)
                result = self._in_transaction(None, fn)
        except sqlite3.Error as err:
            self._note_full(err)
            raise
        took = time.perf_counter() - started
        average = self._commit_s
        self._commit_s = took if average is None else average + COMMIT_AVERAGE_WEIGHT * (took - average)
        self._changed_rows += conn.total_changes - changes
        self._note_wal()
        return result

    def _note_wal(self) -> None:
        """After a write: a WAL grown past ``wal_limit_bytes`` is copied back at the next ``_maybe_checkpoint``,
        however few rows changed (one ``os.stat``)."""
        if self._wal_limit is None:
            return
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size > self._wal_limit:
            self._changed_rows = max(self._changed_rows, CHECKPOINT_ROWS)

    def _note_full(self, err: sqlite3.Error) -> None:
        """After a failed write: a full disk has the WAL truncated at once and, failing that, before the next write
        (see the module doc)."""
        if getattr(err, "sqlite_errorname", "") == "SQLITE_FULL":
            self._reclaim = self._reclaim_now = True

    def _reclaim_wal(self) -> None:
        """On the connection's user, outside a transaction: after a full disk, copy the WAL back and truncate it to
        nothing, unless another process is reading or writing the file (no waiting for it). Tried again before
        the next write while the copy itself finds no room; said once until it succeeds."""
        conn = self._conn
        if not self._reclaim or conn is None:
            return
        self._reclaim = False
        if not self._may_checkpoint():
            return
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            size = 0
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._take_print()
        except sqlite3.Error as err:
            self._reclaim = getattr(err, "sqlite_errorname", "") == "SQLITE_FULL"
            if not self._reclaim_failed:
                self._reclaim_failed = True
                log.warning(
                    "After a full disk, the WAL of %s (%d bytes) could not be copied back into the file (%s);"
                    " this is tried again before each write until it succeeds",
                    self.path,
                    size,
                    err,
                )
            return
        self._reclaim_failed = False
        if busy:
            log.warning(
                "After a full disk, the WAL of %s (%d bytes) was not truncated: another process is using the file",
                self.path,
                size,
            )
        else:
            log.info(
                "After a full disk, the WAL of %s was copied back and truncated, giving back %d bytes", self.path, size
            )

    def _reclaim_on_thread(self) -> None:
        try:
            with self._lock:
                self._reclaim_wal()
        finally:
            self._finished += 1

    def _maybe_checkpoint(self) -> None:
        """On the caller's thread: hand a checkpoint to the thread once enough rows changed, or the WAL's
        truncation once a write was refused for a full disk."""
        if self._stopping:
            return
        if self._reclaim_now:  # once, right after the refused write; later tries come before each write
            self._reclaim_now = False
            self._submitted += 1
            self._queue.put(self._reclaim_on_thread)
        if self._changed_rows >= CHECKPOINT_ROWS:
            self._changed_rows = 0
            self._submitted += 1
            self._queue.put(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            with self._lock:
                if self._conn is not None and self._may_checkpoint():
                    try:
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    finally:
                        self._take_print()
        except sqlite3.Error as err:  # the next one retries; the WAL only grows meanwhile
            log.warning("Copying the WAL of %s back into the database failed: %s", self.path, err)
        finally:
            self._finished += 1

    def _in_transaction(self, begin: str | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``begin`` None: the transaction is already open."""
        conn = self._conn
        assert conn is not None, "SqliteThread used before connect()"
        if begin is not None:
            conn.execute(begin)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            _roll_back(conn, self.path)
            raise
        return result

    def _serve(self) -> None:
        work: _Queued | None = self._queue.get()
        while work is not None:
            following: _Queued | None | _Nothing = _NOTHING
            if isinstance(work, _Write):
                group = [work]
                while len(group) < GROUP_MAX:  # writes that queued while the last commit ran share this one
                    try:
                        queued = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(queued, _Write):
                        following = queued  # runs next: the order of work is kept
                        break
                    group.append(queued)
                if len(group) == 1:
                    work.run()
                else:
                    self._commit_group(group)
            else:
                work()
            work = self._queue.get() if isinstance(following, _Nothing) else following

    def _commit_group(self, group: list[_Write]) -> None:
        """On the thread: every write of ``group`` in one transaction, each in its own savepoint."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with self._lock:
                conn = self._conn
                assert conn is not None, "SqliteThread used before connect()"
                started = time.perf_counter()
                changes = conn.total_changes
                self._reclaim_wal()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for item in group:
                        conn.execute("SAVEPOINT one_write")
                        try:
                            result = item.fn(conn)
                        except Exception as err:  # this write's own failure: only it is undone
                            if not conn.in_transaction:  # SQLite rolled the whole group back (a full disk)
                                raise
                            conn.execute("ROLLBACK TO one_write")
                            conn.execute("RELEASE one_write")
                            outcomes.append((None, err))
                        else:
                            conn.execute("RELEASE one_write")
                            outcomes.append((result, None))
                    conn.execute("COMMIT")
                except BaseException as err:
                    if isinstance(err, sqlite3.Error):
                        self._note_full(err)
                    _roll_back(conn, self.path)
                    raise
                took = time.perf_counter() - started
                average = self._commit_s
                self._commit_s = took if average is None else average + COMMIT_AVERAGE_WEIGHT * (took - average)
                self._changed_rows += conn.total_changes - changes
                self._note_wal()
        except BaseException as err:  # noqa: BLE001 - nothing of the group was committed: every caller hears it
            outcomes = [(None, err)] * len(group)
        for item, (result, error) in zip(group, outcomes, strict=True):
            item.deliver(result, error)

    async def close(self) -> None:
        """Close the connection and end the thread. Safe to call twice; later work raises."""
        if self._stopping:
            return
        self._stopping = True
        try:
            await self._submit(self._close, closing=True)
        finally:
            self._queue.put(None)  # the thread ends after the close

    def _close(self) -> None:
        if self._conn is not None:
            if self._owner and self._written_by_another():
                _close_without_checkpoint(self._conn, self.path)  # the last connection's checkpoint would mix them
            else:
                self._conn.close()
            self._conn = None
        self._close_header()

    async def _submit(
        self, fn: Callable[[], T], *, closing: bool = False, write: Callable[[sqlite3.Connection], T] | None = None
    ) -> T:
        """Run ``fn`` on the thread. ``write``: ``fn`` is that write's transaction, and the write may instead
        share a transaction with other queued writes."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, err: BaseException | None) -> None:  # on the thread, straight to the loop
            self._finished += 1  # before the caller can see the outcome: its next small write may run inline
            try:
                loop.call_soon_threadsafe(_settle, done, result, err)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        def run() -> None:
            try:
                with self._lock:
                    result = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                deliver(None, err)
            else:
                deliver(result, None)

        if (self._stopping and not closing) or not self._thread.is_alive():
            raise RuntimeError(f"the SQLite file {self.path} is closed")
        self._submitted += 1
        self._queue.put(run if write is None else _Write(write, run, deliver))
        try:
            return await done
        finally:
            self._maybe_checkpoint()


class _Write:
    """A write queued for the thread: ``run`` alone, or ``fn`` inside a group's transaction then ``deliver``."""

    __slots__ = ("deliver", "fn", "run")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        run: Callable[[], None],
        deliver: Callable[[Any, BaseException | None], None],
    ) -> None:
        self.fn, self.run, self.deliver = fn, run, deliver


class _Nothing:
    """No work taken from the queue ahead of time."""


_NOTHING = _Nothing()
_Queued = Callable[[], None] | _Write


class _WriteLockBusy(Exception):
    """The write lock is held by another connection (another process)."""


def _begin_at_once(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` without waiting for another writer; ``_WriteLockBusy`` if there is one."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as err:
        raise _WriteLockBusy() from err
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _backup(conn: sqlite3.Connection, partial: Path) -> None:
    """A complete copy of ``conn``'s database at ``partial``, on disk (fsynced)."""
    partial.unlink(missing_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    copy = sqlite3.connect(partial)
    try:
        conn.backup(copy)
    finally:
        copy.close()
    fd = os.open(partial, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_without_checkpoint(conn: sqlite3.Connection, path: Path) -> None:
    """Close ``conn`` without copying its WAL into ``path``: SQLite's last connection to a file does that as it
    closes, unless another connection holds the file; a read-only one, which never copies a WAL back, holds it
    meanwhile. (Python 3.12's ``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`` says the same; 3.11 has no ``setconfig``.)"""
    try:
        holder = _hold_read_only(path)
    except sqlite3.Error as err:
        # Left open rather than closed into the other file: the agent stops at once (see agent.outbox), and the
        # caller removes the WAL beside the file.
        log.error("The WAL of %s could not be kept out of the file written over it (%s); it is left open", path, err)
        _UNCLOSED.append(conn)
        return
    try:
        conn.close()
    finally:
        holder.close()


def _hold_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` holding the file's shared lock."""
    holder = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        holder.execute("PRAGMA schema_version").fetchone()
    except BaseException:
        holder.close()
        raise
    return holder


_UNCLOSED: list[sqlite3.Connection] = []  # connections not closed (see _close_without_checkpoint)


def _link_new(partial: Path, target: Path) -> None:
    """Give ``partial`` the name ``target``, never over another file (``FileExistsError``); the folder is fsynced."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: a rename, after looking
        if target.exists():
            raise FileExistsError(str(target)) from None
        os.rename(partial, target)
    else:
        partial.unlink()
    if os.name != "nt":
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _settle(done: asyncio.Future[T], result: T | None, err: BaseException | None) -> None:
    if done.cancelled():
        return  # the caller went away; the work itself was done (or rolled back) all the same
    if err is not None:
        done.set_exception(err)
    else:
        done.set_result(result)  # type: ignore[arg-type]


S = TypeVar("S", bound="SqliteFile")


class Opening(Generic[S]):
    """What ``X.open(...)`` returns for the agent's SQLite files: await it, or use it as ``async with``."""

    def __init__(self, make: Callable[[], Awaitable[S]]) -> None:
        self._make = make
        self._opened: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._make().__await__()

    async def __aenter__(self) -> S:
        self._opened = await self._make()
        return self._opened

    async def __aexit__(self, *exc: object) -> None:
        if self._opened is not None:
            await self._opened.close()


class SqliteFile:
    """One of the agent's SQLite files, owned through one ``SqliteThread``.

    ``close()`` is safe twice; any read or write after it raises ``_closed_error()``; a SQLite failure
    becomes ``_failure(verb, err)``: each file names itself in one sentence.
    """

    def __init__(self, db: SqliteThread) -> None:
        self.path = str(db.path)
        self._db = db
        self._closed = False
        # Disk space the running agent keeps for scans (agent.reserve): a write made with ``reserved=True`` that the
        # full disk refuses is made again after each step of it given back, until it is stored or the reserve spent.
        self.reserve: Reserve | None = None
        # The wall ms of a write the disk refused for want of room, while no write that shows room has succeeded
        # since (None: the disk took the last such write): what the agent tells the hub of its disk
        # (protocol.DiskReport.refused_ms). A write made with ``shows_room=False`` (bookkeeping: a sync's answer,
        # an acknowledgement) may fit in pages the file has already and proves nothing of the room new rows need:
        # it clears the refusal only once the disk reserve is whole again (``_reserve_whole``).
        self.disk_refused_ms: int | None = None

    def _closed_error(self) -> Exception:
        raise NotImplementedError

    def _failure(self, verb: str, err: sqlite3.Error) -> Exception:
        raise NotImplementedError

    def _not_usable(self, err: sqlite3.DatabaseError) -> Exception:
        raise NotImplementedError

    async def _start(self, init: Callable[[sqlite3.Connection], None]) -> Self:
        """Connect and run ``init`` (create or check the schema) in the first write transaction; a file that
        is not a usable database says so, and nothing stays open."""
        try:
            await self._db.connect()
            await self._db.write(init)
        except sqlite3.DatabaseError as err:
            await self._db.close()
            raise self._not_usable(err) from err
        except BaseException:
            await self._db.close()
            raise
        return self

    async def close(self) -> None:
        """Wait for writes already started, then close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise self._closed_error()
        try:
            return await self._db.read(fn)
        except sqlite3.Error as err:
            raise self._failure("read", err) from err

    async def _write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        small: bool = False,
        reserved: bool = False,
        shows_room: bool = True,
    ) -> T:
        if self._closed:
            raise self._closed_error()
        while True:
            try:
                result = await self._db.write(fn, small=small)
            except sqlite3.Error as err:
                if reserved and self.reserve is not None and disk_full(err) and await self.reserve.give(self.path):
                    continue  # one step of the reserve given back to the disk: the same write again
                if disk_full(err):
                    self.disk_refused_ms = time.time_ns() // 1_000_000
                raise self._failure("written", err) from err
            if self.disk_refused_ms is not None and (shows_room or self._reserve_whole()):
                self.disk_refused_ms = None
            return result

    def _reserve_whole(self) -> bool:
        """No disk reserve, or it is whole again: the agent wrote it back, which it does only with as much room again
        beside it (``Reserve.keep``), so the disk has room though no row was stored since the refusal."""
        return self.reserve is None or not self.reserve.state().in_use

    async def _outside_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise self._closed_error()
        try:
            return await self._db.outside_transaction(fn)
        except sqlite3.Error as err:
            raise self._failure("written", err) from err
