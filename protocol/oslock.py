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
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))  # filelock takes a file it cannot make for one held
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise taken() from None
    except OSError as err:
        raise failed(err) from err
    try:
        yield path
    finally:
        lock.release()
