"""One running agent per outbox: a lock held for the life of ``run`` on a file beside the outbox.

``shelfsync-agent run`` takes the lock before it opens anything and keeps it
until it exits; a second ``run`` on the same outbox (the same configuration
started twice, or two configurations naming one outbox) refuses to start with
one sentence. The lock is the operating system's own (``flock`` on Unix,
``LockFileEx`` on Windows, through the ``filelock`` package), so the kernel
drops it when the process ends in any way, SIGKILL and power loss included:
the file left behind never blocks the next start.

Only ``run`` needs it. ``record`` and ``import`` write the outbox next to a
running agent through SQLite's own locking (each write one ``BEGIN
IMMEDIATE``), and ``status`` only asks whether the lock is held
(``agent_running``) to tell a stopped agent from a running one. They do not
create an outbox while an agent runs on its path
(``refuse_new_outbox_beside_agent``): the file is missing because it was
deleted under the agent, which writes it back from its open copy, or the
agent is starting and has not created it yet; they wait for the agent's
file, and a new one there would stand in its way.

    with hold_agent_lock(config.agent.outbox):
        ...  # AgentAlreadyRunning if another process holds it
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from agent.errors import AgentError, OutboxError
from protocol.oslock import hold_os_lock

LOCK_SUFFIX = ".lock"
OUTBOX_APPEAR_WAIT_S = 10.0  # record/import beside an agent without an outbox: its start-up or write-back, at most
OUTBOX_APPEAR_POLL_S = 0.05
ACQUIRE_WAIT_S = 1.0  # how long ``run`` waits for the lock: covers ``status`` peeking at it at that moment


class AgentAlreadyRunning(AgentError):
    """Another process runs an agent on this outbox; the message is one sentence."""


def lock_path(outbox: Path) -> Path:
    """The lock file of an outbox: ``outbox.sqlite3.lock`` beside it."""
    return outbox.with_name(outbox.name + LOCK_SUFFIX)


@contextlib.contextmanager
def hold_agent_lock(outbox: Path, *, wait_s: float = ACQUIRE_WAIT_S) -> Iterator[Path]:
    """Hold the agent lock of ``outbox`` for the ``with`` block; ``AgentAlreadyRunning`` if it is taken."""
    path = lock_path(outbox)
    with hold_os_lock(
        path,
        wait_s,
        taken=lambda: AgentAlreadyRunning(
            f"another shelfsync agent is already running on the outbox {outbox} (it holds {path});"
            " stop that one first, or give this one its own outbox"
        ),
        failed=lambda err: AgentError(f"the agent lock {path} cannot be taken ({err.strerror or err})"),
        make_parent=True,
    ):
        yield path


DATA_DIR_LOCK_NAME = "shelfsync-agent-files.lock"  # in the outbox's directory


@contextlib.contextmanager
def hold_data_dir_lock(outbox: Path, *, wait_s: float = ACQUIRE_WAIT_S) -> Iterator[Path]:
    """Hold the lock of the directory the outbox is in, whose other files are the agent's own too: its sessions,
    scan journal, POS import store and catalog cache are named beside the outbox, not after it. Two agents with
    two outboxes in one directory (a second config copied with another ``outbox``) shared them: each listed,
    scanned into and closed the other's sessions, booking them in its own outbox for a location it may not
    write. ``AgentAlreadyRunning`` if another agent runs there."""
    path = outbox.with_name(DATA_DIR_LOCK_NAME)
    with hold_os_lock(
        path,
        wait_s,
        taken=lambda: AgentAlreadyRunning(
            f"another shelfsync agent is already running with its outbox in {outbox.parent} (it holds {path}), and"
            " the sessions, scan journal and catalog cache there would be both agents'; give this one its own"
            " data_dir"
        ),
        failed=lambda err: AgentError(f"the agent lock {path} cannot be taken ({err.strerror or err})"),
        make_parent=True,
    ):
        yield path


def agent_running(outbox: Path) -> bool:
    """Whether some process holds the agent lock of ``outbox`` now (peeks without waiting)."""
    return lock_held(lock_path(outbox))


def lock_held(path: Path) -> bool:
    """Whether some process holds the file lock at ``path`` now (peeks without waiting)."""
    if not path.exists():
        return False
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


async def refuse_new_outbox_beside_agent(outbox: Path, wait_s: float = OUTBOX_APPEAR_WAIT_S) -> None:
    """``OutboxError`` when there is no outbox at ``outbox`` while an agent runs on it (see the module doc).

    An agent that is starting holds its lock a moment before it creates the outbox, and one whose outbox was
    deleted writes it back within its check's period: either way the file appears, so this waits up to
    ``wait_s`` for it before refusing."""
    deadline = time.monotonic() + wait_s
    while not outbox.exists() and agent_running(outbox):
        if time.monotonic() >= deadline:
            raise OutboxError(
                f"there is no outbox at {outbox} although an agent runs on it (it was deleted and the agent has not"
                f" written it back within {wait_s:g} s: see its log); nothing was recorded"
            )
        await asyncio.sleep(OUTBOX_APPEAR_POLL_S)
