"""Disk space kept for scans: a file beside the outbox that the agent gives back when the disk is full.

A scan is acknowledged only once it is on disk. On a full disk, the outbox and the session store refuse it, and
what a person scanned lived on only in memory: the agent's (a bound scanner's scans, kept for the session's page)
or the handheld's (its unsent scans), and a restart or a power cut lost it. So the running agent keeps a file of
``size`` bytes beside the outbox, ``outbox.sqlite3.reserve``, written with random bytes (a compressing or
deduplicating file system keeps no room for zeros, and a sparse file none at all) and flushed. When SQLite says the
disk is full while it writes a scan (``SqliteFile._write(..., reserved=True)``: a scanner's movement, a session's
line), the agent cuts ``step`` bytes off the end of the file and writes the scan again, one step after another,
until the scan is stored or the file is gone: only then is a scan refused, as before. Giving it back a step at a
time leaves little for any other writer on the disk (a POS import, another program) to take: each step is room for
thousands of scans.

The first step given back says so in one ERROR (the disk is full, the reserve is in use, free disk space); the last
in another (the reserve is spent, scans are refused). ``state()`` is read from the file itself, so ``status`` run
as another process tells the same. Every ``CHECK_S`` the agent puts back what was given once the disk has room for
it and as much again (one INFO line): it is not taken back from a disk that has only that room, to be given up
again by the next scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".reserve"  # beside the outbox: outbox.sqlite3.reserve
STEP_BYTES = 1 << 20  # given back at a time on a full disk (over 2,000 scans)
CHECK_S = 10.0  # how often the running agent looks whether it can put back what was given
WRITE_BYTES = 64 << 10  # written at a time when the file is made


def reserve_path(outbox: Path) -> Path:
    return Path(f"{outbox}{SUFFIX}")


@dataclass(frozen=True, slots=True)
class ReserveState:
    """The reserve as its file holds it: configured ``size`` bytes, ``held`` of them on disk now (``status``)."""

    size: int
    held: int

    @property
    def in_use(self) -> bool:
        """Part of it was given back to a full disk (or it could not be made whole)."""
        return self.held < self.size

    @property
    def spent(self) -> bool:
        return self.size > 0 and self.held == 0


def reserve_state(outbox: Path, size: int) -> ReserveState:
    """How much of the reserve beside ``outbox`` is on disk, read from its file (any process)."""
    try:
        held = reserve_path(outbox).stat().st_size
    except OSError:
        held = 0
    return ReserveState(size, min(held, size))


class Reserve:
    """The reserve of one running agent (see the module doc). ``keep()`` makes it whole when it can, ``give()``
    gives one step back, ``run()`` puts back what was given while the agent runs."""

    def __init__(self, outbox: Path, size: int, *, step: int = STEP_BYTES) -> None:
        self.path = reserve_path(outbox)
        self.size = size
        self.step = step
        self._lock = asyncio.Lock()
        self._said_in_use = False
        self._started = False
        self._why = ""  # why the last keep() did not make it whole

    def on_disk_of(self, path: Path) -> bool:
        """Whether ``path`` (a file beside the outbox, or to be made there) is on the reserve's file system: room
        given back on another helps no write to it."""
        try:
            return os.stat(path.parent).st_dev == os.stat(self.path.parent).st_dev
        except OSError:
            return False

    def state(self) -> ReserveState:
        return reserve_state(self.path.with_name(self.path.name.removesuffix(SUFFIX)), self.size)

    async def start(self) -> None:
        """At the agent's start: make the reserve whole, or say why it is not."""
        whole = await self.keep()
        self._started = True
        if not whole:
            self._said_in_use = True
            state = self.state()
            log.error(
                "The disk reserve %s could not be made whole (%s; %s of %s MiB kept): scans a full disk refuses are"
                " refused sooner; free disk space, and the agent makes it whole once there is room.",
                self.path, self._why, f"{state.held / (1 << 20):g}", f"{self.size / (1 << 20):g}",
            )  # fmt: skip

    async def keep(self) -> bool:
        """Write the reserve up to its size, with room for as much again beside it (else leave it as it is);
        True when it is whole."""
        async with self._lock:
            return await asyncio.to_thread(self._keep)

    def _keep(self) -> bool:
        held = self.state().held
        if held >= self.size:
            with contextlib.suppress(OSError):
                if self.path.stat().st_size > self.size:  # reserve_mib made smaller
                    os.truncate(self.path, self.size)
            return True
        before = held
        missing = self.size - held
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as err:
            self._why = str(err)
            return False
        if free < 2 * missing:  # room for it alone: the next scan would give it back at once
            self._why = f"{free:,} bytes free, and it needs {missing:,} with as much again beside it"
            return False
        try:
            with self.path.open("ab") as out:
                while held < self.size:
                    n = min(WRITE_BYTES, self.size - held)
                    out.write(os.urandom(n))
                    held += n
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                os.truncate(self.path, before)
            self._why = str(err)
            log.debug("The disk reserve %s could not be written back whole: %s", self.path, err)
            return False
        self._said_in_use = False
        if self._started:  # not the first making of it
            log.info(
                "There is room on the disk again: the disk reserve %s holds its %s MiB again for scans a full"
                " disk would refuse.",
                self.path, f"{self.size / (1 << 20):g}",
            )  # fmt: skip
        return True

    async def give(self, writing: str) -> bool:
        """The disk refused a scan's write to ``writing``: give one step of the reserve back (True), or say the
        reserve is spent (False: nothing left to give)."""
        async with self._lock:
            return await asyncio.to_thread(self._give, writing)

    def _give(self, writing: str) -> bool:
        held = self.state().held
        if held <= 0:
            return False
        left = max(0, held - self.step)
        try:
            if left:
                os.truncate(self.path, left)
            else:
                self.path.unlink()
        except OSError as err:
            log.error("The disk reserve %s could not be given back to the full disk: %s", self.path, err)
            return False
        if not self._said_in_use:
            self._said_in_use = True
            log.error(
                "The disk of %s is full: the agent gives back its disk reserve (%s, %s MiB) to store the scans it"
                " takes meanwhile; once the reserve is spent, scans are refused. Free disk space now.",
                writing, self.path, f"{self.size / (1 << 20):g}",
            )  # fmt: skip
        if not left:
            log.error(
                "The disk reserve %s is spent (the last of it was given back to the full disk): the next scan the"
                " disk refuses is refused. Free disk space.",
                self.path,
            )  # fmt: skip
        return True

    async def run(self) -> None:
        """``start()``, then put back what was given whenever there is room for it (every ``CHECK_S``), until
        cancelled."""
        await self.start()
        while True:
            await asyncio.sleep(CHECK_S)
            if self.state().in_use:
                try:
                    await self.keep()
                except Exception:  # a bug must not end the agent: the next look tries again
                    log.exception("Putting back the disk reserve %s failed.", self.path)
