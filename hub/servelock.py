"""One hub process serves a SQLite file: ``serve`` holds a lock beside it for as long as it runs.

A second ``shelfsync-hub serve`` on the same file — the service started twice, a
manual run beside the unit, two configurations naming one file — would run a
second set of the file's background work: each webhook delivery sent twice, two
channel pushers racing to set one level, change-feed waiters of one process
never woken by the other's commits. It refuses to start instead, with one
sentence naming the lock (exit status 2, which the service unit does not
restart). Several hub processes are PostgreSQL's to run: they share their
database by design and take no lock here.

The lock is the operating system's own (``protocol.oslock``): the kernel drops
it when the process ends in any way, and the file left behind never blocks the
next start. The other commands (``backup``, ``agent add``,
``export`` …) open the database beside a running hub as before.

The lock file alone can be deleted while the hub runs (a cleanup script, an
operator tidying the directory), and a second hub would then make a new one
and serve beside the first; a second name (a hard link) made after the start
names another lock file. So on Linux the hub also locks one byte of the
database file itself (``DB_LOCK_OFFSET``): the lock is on the file, whatever
its names, and goes only with the file. It is an open-file-description lock
(``F_OFD_SETLK``): SQLite's own locks on the file are the process's POSIX locks,
which any close of the file in the process drops; this one is dropped only
when the hub closes its own descriptor, and it conflicts with no lock SQLite
takes, because its byte lies far beyond SQLite's (bytes 0x40000000 to
0x400001FF of the database: PENDING, RESERVED and the SHARED range). Elsewhere
(Windows, macOS) the lock file is the lock: Windows does not delete a file
another process holds open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from hub.storage.base import HubError, StoreError
from hub.storage.sqlite.store import DB_FILE_MODE, not_a_file
from protocol.oslock import hold_os_lock

LOCK_SUFFIX = ".serving.lock"
ACQUIRE_WAIT_S = 1.0  # a hub restarting at once waits this long for the one before it to be gone
# The byte of the database file the serving hub locks: 2**62, far past SQLite's locks at 1 GiB (os_unix.c's
# PENDING_BYTE 0x40000000, RESERVED_BYTE, SHARED_FIRST .. SHARED_FIRST + 510) and past any database's size.
DB_LOCK_OFFSET = 1 << 62


class AlreadyServed(HubError):
    """Another hub process serves this SQLite file; the message is one sentence."""


def lock_path(db: str | Path) -> Path:
    """The lock file of a SQLite hub database: ``hub.db.serving.lock`` beside it, by its real path.

    Resolved as SQLite resolves the names of its side files: a symlink to the file, a linked directory or a
    relative path name one database, whose second hub must find the first one's lock."""
    path = Path(os.path.realpath(db))
    return path.with_name(path.name + LOCK_SUFFIX)


@contextlib.contextmanager
def hold_serving_lock(db: str | Path, *, wait_s: float = ACQUIRE_WAIT_S) -> Iterator[Path]:
    """Hold the serving lock of the SQLite database ``db`` for the ``with`` block; ``AlreadyServed`` if another
    process holds it."""
    if Path(db).is_dir():  # checked before a lock is made beside it
        raise StoreError(not_a_file(db))
    parent = Path(db).parent
    if not parent.is_dir():  # the lock would make it (filelock makes a lock file's parents), and a hub in it
        raise StoreError(f"cannot open the hub database {db}: the directory {parent} does not exist")
    path = lock_path(db)
    with hold_os_lock(
        path,
        wait_s,
        taken=lambda: AlreadyServed(
            f"another hub process already serves {db} (it holds {path}); one process serves a SQLite database:"
            " stop the other first, or move to PostgreSQL to run several"
        ),
        failed=lambda err: AlreadyServed(f"the hub cannot take its lock {path} beside {db}: {err.strerror or err}"),
    ), _hold_file_lock(db, wait_s):
        yield path


def _ofd_lock_command() -> int | None:
    """``F_OFD_SETLK`` where the platform has it (Linux) and ``struct flock`` has the 64-bit layout packed below."""
    if not sys.platform.startswith("linux") or struct.calcsize("l") != 8:
        return None
    import fcntl

    return getattr(fcntl, "F_OFD_SETLK", None)


def _flock(kind: int, offset: int) -> bytes:
    """A ``struct flock`` of one byte at ``offset`` (l_type, l_whence, l_start, l_len, l_pid; 32 bytes on 64-bit)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)


@contextlib.contextmanager
def _hold_file_lock(db: str | Path, wait_s: float) -> Iterator[None]:
    """Hold the serving lock on the database file itself (see the module doc); nothing where it cannot be had."""
    command = _ofd_lock_command()
    if command is None:
        yield
        return
    import fcntl
    import time

    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    try:  # the file serve creates: SQLite opens a new, empty file as a new database
        try:
            fd, created = os.open(db, flags | os.O_CREAT | os.O_EXCL, DB_FILE_MODE), True
        except FileExistsError:
            fd, created = os.open(db, flags), False
    except OSError as err:
        raise AlreadyServed(f"the hub cannot open {db} to lock it: {err.strerror or err}") from err
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.fcntl(fd, command, _flock(fcntl.F_WRLCK, DB_LOCK_OFFSET))
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise AlreadyServed(f"the hub cannot lock {db}: {err.strerror or err}") from err
                if time.monotonic() >= deadline:
                    raise AlreadyServed(
                        f"another hub process already serves {db} (it holds the lock on the database file itself, "
                        "by this or another name); one process serves a SQLite database: stop the other first, or "
                        "move to PostgreSQL to run several"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        if created:
            _remove_if_still_empty(db, fd)
        os.close(fd)  # drops the lock: the store, closed before, holds no SQLite lock a close could drop


def _remove_if_still_empty(db: str | Path, fd: int) -> None:
    """Remove the database file this start created when it is still empty: the start failed before the store made
    a hub database of it (the port taken, say), and left there it would be refused at the next start as an empty
    file. Called with the lock held, so no other hub is about to use it."""
    with contextlib.suppress(OSError):
        held, named = os.fstat(fd), os.stat(db)
        same = (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
        if same and held.st_size == 0 and not any(os.path.exists(f"{db}{side}") for side in ("-wal", "-journal")):
            os.unlink(db)
