"""A lock held for as long as a process runs one thing: one agent per outbox (``agent.lock``), one hub per SQLite
file (``hub.servelock``).

The lock is the operating system's own (``flock`` on Unix, ``LockFileEx`` on Windows, through the ``filelock``
package, which the agent's and the hub's extras install), so the kernel drops it when the process ends in any way,
SIGKILL and power loss included: the file left behind never blocks the next start.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def hold_os_lock(
    path: Path,
    wait_s: float,
    *,
    taken: Callable[[], Exception],
    failed: Callable[[OSError], Exception],
    make_parent: bool = False,
) -> Iterator[Path]:
    """Hold the lock on ``path`` for the ``with`` block, waiting up to ``wait_s`` for it (``make_parent``: making
    its directory first). Raises ``taken()`` when another process holds it, ``failed(err)`` when the file cannot be
    made or locked."""
    from filelock import FileLock, Timeout  # the extras' package: protocol itself needs none

    lock = FileLock(str(path))
    try:
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=wait_s)
    except Timeout:
        if not path.exists():  # nobody holds it: filelock retries a file it cannot make until its timeout
            raise failed(_why_not_made(path)) from None
        raise taken() from None
    except OSError as err:
        raise failed(err) from err
    try:
        yield path
    finally:
        lock.release()


def _why_not_made(path: Path) -> OSError:
    """The operating system's reason ``path`` cannot be made. The file is not made first instead: a lock that is
    the file itself (filelock's soft lock, where the platform has no file locks) would then be held by nobody."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as err:
        return err
    os.close(fd)  # it can be made now: the directory changed meanwhile
    with contextlib.suppress(OSError):
        os.unlink(path)
    return OSError(f"{path} could not be made while the lock was being taken; try again")
