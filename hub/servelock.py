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
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hub.storage.base import HubError, StoreError
from hub.storage.sqlite.store import not_a_file
from protocol.oslock import hold_os_lock

LOCK_SUFFIX = ".serving.lock"
ACQUIRE_WAIT_S = 1.0  # a hub restarting at once waits this long for the one before it to be gone


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
    path = lock_path(db)
    with hold_os_lock(
        path,
        wait_s,
        taken=lambda: AlreadyServed(
            f"another hub process already serves {db} (it holds {path}); one process serves a SQLite database:"
            " stop the other first, or move to PostgreSQL to run several"
        ),
        failed=lambda err: AlreadyServed(f"the hub cannot take its lock {path} beside {db}: {err.strerror or err}"),
    ):
        yield path
