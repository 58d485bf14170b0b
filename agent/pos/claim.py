"""One watcher per drop folder: a claim held inside the folder for as long as an agent watches it.

Two agents watching one folder (a network share, say) would each import every
export; the hub keeps events apart by (agent id, event id), so every row would
count twice. The watcher therefore takes a lock on ``.shelfsync-watch.lock``
in the drop folder before it imports anything, and keeps it until it stops. The
lock is the operating system's own (``flock`` on Unix, ``LockFileEx`` on
Windows, through the ``filelock`` package, as for the outbox in agent.lock), so
it goes with the process that held it, however that process ends. Beside it,
``.shelfsync-watch.owner`` names the holder (agent id, computer, process) so
the refusal can say who it is. Both names start with a dot: the watcher never
imports them.

    claim = DropFolderClaim(Path("/srv/pos-drop"), agent_id="store-1")
    claim.take()  # DropFolderTaken if another agent watches the folder
    ...
    claim.release()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from agent.errors import AgentError
from agent.lock import AgentAlreadyRunning
from protocol.values import shown

CLAIM_LOCK_NAME = ".shelfsync-watch.lock"
CLAIM_OWNER_NAME = ".shelfsync-watch.owner"
log = logging.getLogger(__name__)

OWNER_MAX_BYTES = 4096  # an owner record is a few dozen bytes; a bigger file there is not one


class DropFolderTaken(AgentAlreadyRunning):
    """Another agent watches this drop folder; the message is one sentence naming it."""


class DropFolderUnusable(AgentError):
    """The drop folder cannot be claimed for now (read-only, not there, a share not mounted); ``reason`` says why."""

    def __init__(self, folder: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the POS drop folder {folder} cannot be claimed for this agent ({reason})")


@dataclass(frozen=True, slots=True)
class ClaimOwner:
    agent_id: str
    host: str
    pid: int

    def describe(self) -> str:
        return f"agent {shown(self.agent_id)} on {shown(self.host, bare=True)} (process {self.pid})"


def claim_owner(folder: Path) -> ClaimOwner | None:
    """Who the owner record of ``folder`` names, if it can be read."""
    try:
        with open(folder / CLAIM_OWNER_NAME, "rb") as f:
            data = json.loads(f.read(OWNER_MAX_BYTES))
        return ClaimOwner(str(data["agent_id"]), str(data["host"]), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class DropFolderClaim:
    """This agent's claim on a drop folder. ``take()`` and ``release()``; releasing twice is safe."""

    def __init__(self, folder: Path, *, agent_id: str) -> None:
        self.folder = Path(folder)
        self.agent_id = agent_id
        self._lock: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def take(self) -> None:
        """Claim the folder at once, or raise ``DropFolderTaken`` naming the agent that holds it."""
        if self._lock is not None:
            return
        path = self.folder / CLAIM_LOCK_NAME
        lock = FileLock(str(path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = claim_owner(self.folder)
            who = f"another shelfsync agent ({owner.describe()})" if owner else "another shelfsync agent"
            raise DropFolderTaken(
                f"{who} already watches the POS drop folder {self.folder} (it holds {path}), and two agents"
                " watching one folder would count every row twice; give each agent its own drop folder, or set"
                " watch_dir on one of them only"
            ) from None
        except OSError as err:
            raise DropFolderUnusable(self.folder, str(err.strerror or err)) from err
        try:
            self._write_owner()
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / CLAIM_OWNER_NAME)  # a record left by an earlier holder names the wrong one
            # The lock is the claim; the record only names its holder to an agent refused. Refusing to start
            # for it stopped the whole agent whenever the drop folder's disk was full, the hour it matters.
            log.warning(
                "This agent watches the POS drop folder %s, but %s cannot be written there (%s), so another agent"
                " refused the folder is not told which one holds it.",
                self.folder, CLAIM_OWNER_NAME, err.strerror or err,
            )  # fmt: skip
        self._lock = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        with contextlib.suppress(OSError):
            if claim_owner(self.folder) == self._owner():
                os.unlink(self.folder / CLAIM_OWNER_NAME)  # before the lock goes: never another holder's record
        lock.release()

    def _owner(self) -> ClaimOwner:
        return ClaimOwner(self.agent_id, socket.gethostname(), os.getpid())

    def _write_owner(self) -> None:
        """The owner record, written whole under a temporary name and swapped in (a reader never sees half)."""
        owner = self._owner()
        record = json.dumps({"agent_id": owner.agent_id, "host": owner.host, "pid": owner.pid}) + "\n"
        target = self.folder / CLAIM_OWNER_NAME
        tmp = target.with_name(f"{CLAIM_OWNER_NAME}.{owner.pid}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover, or a link planted there: removed, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(record)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a record cut short (disk full) is no record, and no leftover in the folder
            raise
