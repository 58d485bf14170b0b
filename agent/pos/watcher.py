"""The drop folder: exports appear, are imported once complete, and are filed with a report.

A file is taken once it has *settled* — its size and modification time
unchanged for ``settle_s`` — so a POS still writing it, or a slow copy over
the network, is never read half-way. Writers that can should write to a
temporary name (``export.csv.part``, ``.tmp``) and rename when done: only
names matching ``patterns`` are considered at all. A file whose last line has no
line break yet has the rows before that line imported once it settles
(``hold_last_line``: the import is ``held``, its checkpoint kept) and stays in the
folder; the line waits until it ends (the file changes and settles again) or the
file stays unchanged ``unfinished_line_s`` (five minutes): a till paused in the
middle of a row, taken, had the cut row recorded and the whole row again. Either
way the import of the rest goes on from the checkpoint and files the file with
one report. After those minutes its last line is imported as it stands (an export that simply ends
without a line break), and the event it became is remembered while the filed
copy is watched: a till that finishes that row even later has it booked as the
same event (``CutRow``), never as a second one; as it differs, it is quarantined.

After the import the file moves to ``processed/`` (or ``failed/`` when it
could not be read, or every row was quarantined) with ``<name>.report.json``
beside it (a report the disk refuses, full, is kept in the POS store and
written as soon as it can be, after a restart too). A symbolic link is never read through (it could point anywhere on
the computer): it goes to ``failed/`` itself, with a report saying why; so
does a pipe, socket or device named like an export, never opened. Every
file name reaches the log through ``protocol.values.shown``: escaped, bounded.
Movements are committed before the move, so a crash in between
only means the file is imported again — every row a duplicate.

A writer that paused longer than ``settle_s`` with its file still open goes on
writing into the filed copy (a move keeps the open file). So the watcher keeps
an eye on what it filed, for ``FILED_WATCH_S`` and at most ``FILED_WATCH_MAX``
files: one that grows or changes there is imported again once it settles, its
report is rewritten, and one warning says so. The import that filed it kept its
checkpoint (agent.pos.importer): what was appended is read from there, the rows
before it are not read again; a copy whose first bytes changed is read whole
(the rows already recorded are duplicates). A copy written again in place, its
inode, size and time kept, is told by its inode's change time (POSIX) and, up to
``CONTENT_CHECK_MAX_BYTES``, by comparing it whole with its import's digest every
``CONTENT_CHECK_S`` (``_rewritten``). A copy whose last line has no line
break is watched until that line ends, ``FILED_UNFINISHED_WATCH_S`` at most: a
till that finishes the row an hour later still has it noticed. What is watched
is kept in the POS store (``filed_watch``), so a restart of the agent goes on
watching it, and a copy written on while the agent was stopped is imported at
its start.

One agent watches a folder: ``start`` claims it (agent.pos.claim) before it
imports anything, and a second agent's watcher refuses to start with one
sentence naming the first (``DropFolderTaken``), so no row is counted twice.

Notifications are armed on the folder itself: when it is moved away and a new
one made at its path, they would follow the old one. Each turn compares the
folder's (device, inode) with the one watched and, when another folder sits
there, claims it and arms notifications on it again.

A drop folder that cannot be used — read-only, not there and not to be made,
a share not mounted yet, or one that turns read-only or drops away while the
agent runs — never stops the agent: one error says which folder and why and
that it is tried again every ``folder_retry_s``; the watcher imports nothing
meanwhile (``state()`` says it waits for its folder), and once the folder can
be used it claims it and imports what is there. Only a path that is a file,
not a folder, is refused at ``start``: no retry makes it one.

The loop has the agent's one shape: wait for a folder change (watchfiles)
or a tick, take one settled file, import it; if the outbox or store fails,
back off exponentially with jitter up to a cap, warn once, and say once when
it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import watchfiles

from agent.pos.claim import DropFolderClaim, DropFolderTaken, DropFolderUnusable
from agent.pos.config import PosConfigError
from agent.pos.errors import PosImportError
from agent.pos.importer import HELD, PosImporter
from agent.pos.model import CutRow, ImportReport
from agent.pos.store import FiledWatch
from protocol import wall_ms_now
from protocol.retry import EQUAL_JITTER, Backoff, Streak, TurnFailed, run_turns
from protocol.values import shown

log = logging.getLogger(__name__)

PROCESSED_DIR = "processed"
FAILED_DIR = "failed"
REPORT_SUFFIX = ".report.json"
RESCAN_S = 10.0  # a full listing of the folder, in case a notification was missed
TICK_MIN_S = 0.05
TICK_MAX_S = 1.0
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
WATCH_DEBOUNCE_MS = 200
FILED_WATCH_S = 600.0  # how long a filed file is watched for a writer that was not done with it
FILED_WATCH_MAX = 200  # the most filed files watched at once (the oldest are forgotten first)
HEAD_BYTES = 4096  # a watched copy's first bytes, whose digest tells another file with its inode, size and time
# A watched copy whose inode, size and time stay the same may still be written again in place (a tool that keeps
# the time, a file system that keeps it to the second): on POSIX its inode's change time tells, and a copy of at
# most CONTENT_CHECK_MAX_BYTES is read whole and compared with its import's digest every CONTENT_CHECK_S, at most
# CONTENT_CHECK_BUDGET_BYTES of copies each time (the rest take turns).
CONTENT_CHECK_S = 10.0
CONTENT_CHECK_MAX_BYTES = 16 << 20
CONTENT_CHECK_BUDGET_BYTES = 64 << 20
FILED_UNFINISHED_WATCH_S = 86_400.0  # how long a filed file whose last line has no line break is watched for it
# A filed file's watch is timed on the monotonic clock while the agent runs; its end is kept on the wall clock for
# after a restart. The wall clock jumping by more than this (NTP putting right a clock hours off) has the ends kept
# written again from the monotonic time left, so a restart after the jump neither cuts the watch short nor
# lengthens it.
WALL_JUMP_MS = 1_000
BUSY_WARN_S = 600.0  # a file changing this long without settling is said once: it is not imported meanwhile
PROGRESS_LOG_MIN_BYTES = 1 << 20  # a smaller export is imported within seconds: its one summary line is enough
PROGRESS_LOG_S = 30.0  # how often a long import says how far it got
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart")

ReportFn = Callable[[ImportReport, Path], None]  # the report, and where the file is now (its old path if gone)

WATCHING = "watching"
WAITING_FOR_FOLDER = "waiting_for_folder"


@dataclass(frozen=True, slots=True)
class HeldFile:
    """A file in the drop folder whose complete rows are imported and whose last line (no line break) is held."""

    file_name: str
    rows_read: int  # the rows imported so far (the import's ``rows_read``)
    held_since_ms: int  # wall-clock ms when its last line was first held
    hold_ends_ms: int | None  # when the line is taken as it stands if the file stays unchanged (None: it changed
    # since and is imported again, from its checkpoint, once it settles)

    def to_json(self) -> dict[str, str | int | None]:
        return {
            "file_name": self.file_name, "rows_read": self.rows_read, "held_since_ms": self.held_since_ms,
            "hold_ends_ms": self.hold_ends_ms,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class PosFolderState:
    """What the drop folder's watcher is doing, for the agent's status: ``watching`` it, or
    ``waiting_for_folder`` with the ``problem`` that keeps it from the folder; and the files ``held``."""

    watch_dir: Path
    state: str
    problem: str | None = None
    held: tuple[HeldFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "watch_dir": str(self.watch_dir), "state": self.state, "problem": self.problem,
            "held": [h.to_json() for h in self.held],
        }  # fmt: skip


@dataclass(slots=True)
class _Held:
    since_ms: int  # wall-clock ms when its last line was first held
    rows_read: int  # by its latest held import


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic seconds when size and mtime last changed
    mid_line: bool | None = None  # whether it ends in the middle of a line (None: not looked at yet)
    first: float | None = None  # monotonic seconds when it was first seen changing (None: ``since``)
    busy_said: bool = False  # whether the log said it has been changing for BUSY_WARN_S already
    held: bool = False  # its complete rows are imported as it is now, its last line (no line break) held


@dataclass(slots=True)
class _Filed:
    """A file the watcher imported and filed away, watched for a while in case it is still being written."""

    name: str  # its name in the drop folder (the report's file_name)
    digests: tuple[str, ...]  # its content's digest at each import so far (its quarantined rows are kept once)
    dev: int
    ino: int
    size: int
    mtime_ns: int
    until: float  # monotonic seconds when it is forgotten, unless it changed
    changed: _Seen | None = None  # how it looks since it changed, until it settles and is imported again
    cuts: tuple[CutRow, ...] = ()  # rows booked from its last line without a line break, by its imports so far
    import_id: int | None = None  # the import whose checkpoint the next import of it goes on from
    mid_line: bool = False  # its last line has no line break: watched until it ends (FILED_UNFINISHED_WATCH_S)
    head: str | None = None  # the digest of its first HEAD_BYTES (``_head``); None: not known
    ctime_ns: int | None = None  # its inode's change time (``_change_time``); None: not told
    checked: float = float("-inf")  # monotonic seconds when its content was last compared with its import's digest


@dataclass(frozen=True, slots=True)
class _Carried:
    """An export imported in the drop folder that could not be filed away (Windows refuses to move a file the POS
    holds open): what its next import goes on from, as for a filed copy (``_Filed``). Kept in the POS store's
    ``filed_watch`` too, under its path in the drop folder, for after a restart."""

    ident: tuple[int, int]  # (device, inode) of the file imported: another file under its name is a new export
    import_id: int | None  # the import whose checkpoint the next import of it goes on from
    cuts: tuple[CutRow, ...]  # rows booked from its last line without a line break, by its imports so far
    digests: tuple[str, ...]  # its content's digest at each import so far


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """Which file sits at ``path`` and in what state: (device, inode, size, mtime); None if there is none.

    The entry itself, never what a link points to (``lstat``): a file swapped for a link is a change.
    """
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _head(path: Path) -> str | None:
    """The digest of the file's first ``HEAD_BYTES``; None when it cannot be read (then it is not judged by them).

    A file deleted and another written at its path at once can get the inode the first one freed, and on a file
    system that keeps times to the second (or two) the same modification time too: of the same size, only its
    bytes tell it from the first. A till that writes on appends: its first bytes stay."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return hashlib.blake2b(os.read(fd, HEAD_BYTES), digest_size=16).hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _change_time(st: os.stat_result) -> int | None:
    """The inode's change time: set by every write and by every change of its times (``os.utime``), never to a
    time a program chooses. None on Windows, where ``st_ctime`` is the file's creation time."""
    return None if os.name == "nt" else st.st_ctime_ns


def _digest(path: Path) -> str | None:
    """The SHA-256 of the whole file (what an import's report keeps), not through a link; None when it cannot be
    read (then it is not judged by it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _say_rewritten(where: str) -> None:
    log.info(
        "%s holds other bytes than when it was imported, though its size and modification time are the same (written "
        "again in place); it is imported again once it settles.",
        where,
    )


def _link_target(path: Path) -> str | None:
    """What ``path`` points to if it is a symbolic link, else None."""
    try:
        return os.readlink(path)
    except OSError:  # not a link, or not there
        return None


def _ends_mid_line(path: Path, size: int) -> bool:
    """Whether the file's last line has no line break yet: what a till still writing its export leaves.

    The zero bytes of a UTF-16 or UTF-32 line break are passed over, and so is a DOS end-of-file mark
    (Ctrl-Z). A file that cannot be read is not judged here: the import says why it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        os.lseek(fd, max(size - 8, 0), os.SEEK_SET)
        tail = os.read(fd, 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    return not tail.rstrip(b"\x00\x1a").endswith((b"\n", b"\r"))


def _candidate(st: os.stat_result) -> bool:
    """A regular file to import, or anything else but a folder to refuse (filed under failed/ unread): a
    symbolic link, a pipe, a socket, a device. Ignored, a pipe named like an export sat there unexplained."""
    return not stat.S_ISDIR(st.st_mode)


class _ProgressLog:
    """How far a long import got, in the log every ``PROGRESS_LOG_S``: a 1,000,000-line export takes minutes,
    and without it the log said nothing between "1 change detected" and the summary, as if the agent hung."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.started = time.monotonic()
        self.next_at = self.started + PROGRESS_LOG_S
        log.info("Importing %s (%s); how far it got is logged every %.0f s.", name, _mib(size), PROGRESS_LOG_S)

    def __call__(self, bytes_read: int, size: int, rows: int) -> None:
        now = time.monotonic()
        if now < self.next_at or size <= 0:
            return
        self.next_at = now + PROGRESS_LOG_S
        elapsed = max(now - self.started, 1e-3)
        left_s = elapsed * (size - bytes_read) / bytes_read if bytes_read else None
        log.info(
            "Importing %s: %d%% read (%s of %s), %s rows so far (%s rows/s), %s.",
            self.name, bytes_read * 100 // size, _mib(bytes_read), _mib(size), f"{rows:,}",
            f"{rows / elapsed:,.0f}", "time left unknown" if left_s is None else f"about {_duration(left_s)} left",
        )  # fmt: skip


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def _duration(seconds: float) -> str:
    """A duration for a person: "45 s", "3 min 20 s", "2 h 5 min"."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _name(path: Path) -> str:
    """A file name for a log line: escaped and bounded (a name can hold a newline or a terminal escape)."""
    return shown(path.name, bare=True)


class PosFolderWatcher:
    """Imports exports dropped into ``folder``. ``async with`` starts and stops it."""

    def __init__(
        self,
        importer: PosImporter,
        folder: Path,
        *,
        settle_s: float | None = None,
        unfinished_line_s: float | None = None,
        patterns: tuple[str, ...] | None = None,
        force_polling: bool | None = None,
        on_report: ReportFn | None = None,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        folder_retry_s: float | None = None,
    ) -> None:
        config = importer.config
        self.importer = importer
        self.folder = Path(folder)
        self.settle_s = config.settle_s if settle_s is None else settle_s
        self.unfinished_line_s = config.unfinished_line_s if unfinished_line_s is None else unfinished_line_s
        self.patterns = tuple(p.casefold() for p in (patterns or config.patterns))
        self.force_polling = config.force_polling if force_polling is None else force_polling
        self.on_report = on_report
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.folder_retry_s = config.folder_retry_s if folder_retry_s is None else folder_retry_s
        self._streak = Streak(Backoff(retry_base_s, retry_max_s, jitter=EQUAL_JITTER))
        self._pending: dict[Path, _Seen] = {}
        # imported but could not be filed away: its size and mtime then, and its report (filed with it later)
        self._unmovable: dict[Path, tuple[int, int, ImportReport]] = {}
        self._carried: dict[Path, _Carried] = {}  # imported but not filed away: what its next import goes on from
        self._reports_owed: dict[Path, str] = {}  # filed away, its report (JSON) not written yet (disk full)
        self._filed: dict[Path, _Filed] = {}  # filed away lately, by where it is now; oldest first
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._importing: Path | None = None  # the file of the turn under way (or of the failed one)
        self._last_rescan = float("-inf")
        self._unlistable: str | None = None  # why the folder cannot be listed, once said (said again only if new)
        self._claim: DropFolderClaim | None = None
        self._folder_id: tuple[int, int] | None = None  # (device, inode) of the folder being watched
        self._watch_task: asyncio.Task[None] | None = None
        # The notifications' own stop: watchfiles sets the event it is given when its task is cancelled, so
        # handing it ``_stop`` stopped the whole watcher, silently, when a replaced folder's watch was cancelled.
        self._watch_stop = asyncio.Event()
        self._folder_link: str | None = None  # where the folder's path pointed at start, if it was a link
        self._refused_link: str | None = None  # a link that replaced the folder since, once said
        self._waiting: str | None = None  # why the folder cannot be used now (None: it is watched)
        self._said_waiting: str | None = None  # the last such problem the log said (said again only if new)
        self._next_try = 0.0  # monotonic seconds when a folder that cannot be used is tried again
        self._held: dict[Path, _Held] = {}  # files whose last line is held (the log said so once a file)
        self._content_round = float("-inf")  # monotonic seconds when the watched copies' content was last compared
        self._wall_offset_ms: int | None = None  # the wall clock's ms minus the monotonic clock's, as last seen

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Claim the folder and start watching it; ``DropFolderTaken`` if another agent watches it already,
        ``PosConfigError`` if the path is a file. A folder that cannot be used now is waited for (``state()``)."""
        if self._task is None:
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.stat(self.folder).st_mode):
                    raise PosConfigError(
                        f"[pos] watch_dir {self.folder} is a file, not a folder; name the folder the POS drops its"
                        " exports into"
                    )
            if self._claim is None:
                self._claim = DropFolderClaim(self.folder, agent_id=self.importer.outbox.agent_id)
            try:
                self._take_folder()
            except DropFolderUnusable as err:
                self._wait_for_folder(err.reason)
            await self._load_owed_reports()
            await self._load_filed()
            self._stop.clear()
            self._task = asyncio.create_task(self.run(), name=f"pos-watch:{self.folder}")

    def state(self) -> PosFolderState:
        """Whether the folder is watched, or waited for and why (the local API's status shows it)."""
        problem = self._waiting or self._unlistable
        return PosFolderState(
            self.folder, WATCHING if problem is None else WAITING_FOR_FOLDER, problem, self._held_files()
        )

    def _held_files(self) -> tuple[HeldFile, ...]:
        """The files in the folder whose last line is held, by name (one gone or not listed any more is not)."""
        now, now_ms = time.monotonic(), wall_ms_now()
        limit = max(self.unfinished_line_s, self.settle_s)
        listed = []
        for path, held in self._held.items():
            if (seen := self._pending.get(path)) is None:
                continue
            ends = round(now_ms + (seen.since + limit - now) * 1000) if seen.held else None
            listed.append(HeldFile(path.name, held.rows_read, held.since_ms, ends))
        return tuple(sorted(listed, key=lambda h: h.file_name))

    def _take_folder(self) -> None:
        """Make the folder if it is not there, claim it, make processed/ and failed/ in it; ``DropFolderUnusable``
        (with the claim let go) when the disk refuses any of it, ``DropFolderTaken`` if another agent holds it."""
        assert self._claim is not None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise DropFolderUnusable(self.folder, "it is a file, not a folder") from None
        except OSError as err:
            raise DropFolderUnusable(self.folder, str(err.strerror or err)) from err
        self._claim.take()
        try:
            for sub in (PROCESSED_DIR, FAILED_DIR):
                (self.folder / sub).mkdir(exist_ok=True)
            if (problem := self._unwritable()) is not None:
                raise DropFolderUnusable(self.folder, problem)
        except OSError as err:
            self._claim.release()
            raise DropFolderUnusable(self.folder, str(err.strerror or err)) from err
        except DropFolderUnusable:
            self._claim.release()
            raise
        self._folder_id = self._current_folder_id()
        self._folder_link = _link_target(self.folder)

    def _unwritable(self) -> str | None:
        """Why the agent cannot file exports away in the folder now (read-only, not allowed), or None.

        A share remounted read-only, or a disk the system turned read-only after an error, still lists and
        reads: without this look the agent imported exports it could not move out, again at every start."""
        try:
            effective = os.access in os.supports_effective_ids
            if os.access(self.folder, os.W_OK | os.X_OK, effective_ids=effective):
                return None
            read_only = bool(os.statvfs(self.folder).f_flag & os.ST_RDONLY) if hasattr(os, "statvfs") else False
        except OSError:
            return None  # gone or unreadable: the listing says so (_rescan), a new folder there is claimed
        return os.strerror(errno.EROFS if read_only else errno.EACCES)

    def _wait_for_folder(self, problem: str) -> None:
        """Import nothing until the folder can be used; tried again every ``folder_retry_s``. Said once per problem."""
        self._waiting = problem
        self._pending.clear()  # listed in a folder this agent no longer holds: listed again once it does
        self._next_try = time.monotonic() + self.folder_retry_s
        if problem != self._said_waiting:
            self._said_waiting = problem
            log.error(
                "The POS drop folder %s cannot be used (%s); the agent runs on without POS imports and tries again "
                "every %s s.",
                self.folder, problem, f"{self.folder_retry_s:g}",
            )  # fmt: skip

    async def _lose_folder(self, problem: str) -> None:
        """The folder watched turned unusable (read-only, a share gone): let it go and wait for it."""
        await self._stop_watch()
        if self._claim is not None:
            self._claim.release()
        self._wait_for_folder(problem)

    async def _try_folder_again(self) -> float:
        """While waiting: claim the folder if it can be used now (0: import at once), else how long to wait."""
        now = time.monotonic()
        if now < self._next_try:
            return min(self._next_try - now, self.folder_retry_s)
        try:
            self._take_folder()
        except DropFolderUnusable as err:
            self._wait_for_folder(err.reason)
            return self.folder_retry_s
        except DropFolderTaken as err:  # another agent took it meanwhile: it imports the folder; this one waits
            self._wait_for_folder(str(err))
            return self.folder_retry_s
        self._waiting = self._said_waiting = None
        self._refused_link = None
        self._last_rescan = float("-inf")
        self._unlistable = None
        self._start_watch()
        log.info("The POS drop folder %s can be used now; watching it.", self.folder)
        return 0.0

    async def stop(self) -> None:
        """Stop watching; an import under way is cancelled (what it committed stays, the file stays). Safe twice."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._claim is not None:
            self._claim.release()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Turn after turn (``protocol.retry.run_turns``): take one settled file and import it, or wait for a
        folder change or a tick; when the outbox or store fails, the file stays and the import is retried."""
        if self._waiting is None:
            log.info("Watching %s for POS exports (%s).", self.folder, ", ".join(self.patterns))
            self._start_watch()
        try:
            await run_turns(self._turn, wait=self._wait, failed=self._failed, running=lambda: not self._stop.is_set())
        finally:
            await self._stop_watch()

    def _start_watch(self) -> None:
        self._watch_stop = asyncio.Event()
        self._watch_task = asyncio.create_task(self._watch(self._watch_stop))

    async def _stop_watch(self) -> None:
        self._watch_stop.set()
        watch, self._watch_task = self._watch_task, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _turn(self) -> float:
        """Import one settled file (0: look for the next at once), or how long to wait for one."""
        if self._waiting is not None:
            return await self._try_folder_again()
        if self._replaced_by_link():
            return TICK_MAX_S
        if self._folder_replaced():
            await self._rearm()
            if self._stop.is_set() or self._waiting is not None:
                return 0.0
        if (problem := self._unwritable()) is not None:
            await self._lose_folder(problem)
            return 0.0
        await self._write_owed_reports()
        now = time.monotonic()
        if now - self._last_rescan >= RESCAN_S:
            await self._file_unmovable()
            self._rescan(now)
        path = self._settled(now)
        for gone in [p for p in self._held if p not in self._pending]:  # deleted, moved away, or the folder lost
            del self._held[gone]
        if path is not None:
            self._importing = path
            await self._import(path)
            return 0.0
        await self._keep_ends_after_a_jump(now)
        filed = await self._changed_filed(now)
        if filed is not None:
            self._importing = filed
            await self._import_again(filed)
            return 0.0
        return self._tick_s()

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        if after_failure:  # the backoff: folder changes are noted meanwhile, none cuts it short
            await asyncio.sleep(delay_s)
        elif delay_s > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay_s)

    async def _failed(self, failure: TurnFailed) -> float:
        name = _name(self._importing) if self._importing is not None else "?"
        if self._streak.failed(failure):
            log.log(
                failure.level, "Importing %s failed, retrying with backoff: %s", name, failure, exc_info=failure.cause
            )
        return self._streak.delay_s()

    def _tick_s(self) -> float:
        if self._pending or self._reports_owed or any(f.changed is not None for f in self._filed.values()):
            return min(TICK_MAX_S, max(TICK_MIN_S, self.settle_s / 4))
        if self._filed or self._watch_task is None or self._watch_task.done():
            return TICK_MAX_S  # a filed file may grow; or notifications ended (the folder itself moved away)
        return RESCAN_S

    def _current_folder_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.folder)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _replaced_by_link(self) -> bool:
        """Whether a symbolic link sits at ``folder`` now where there was none (or another) at start: never
        followed, as no link in the folder is. Followed, ``rm -rf drop; ln -s /somewhere drop`` made the agent
        import — and move into processed/ — the exports of any folder on the computer. Said once."""
        target = _link_target(self.folder)
        if target is None or target == self._folder_link:
            if self._refused_link is not None and target is None:
                self._refused_link = None  # gone again: a folder made there is watched (_folder_replaced)
            return False
        self._pending.clear()  # listed through the link, maybe: none of it is the drop folder's
        if target != self._refused_link:
            self._refused_link = target
            log.error(
                "The POS drop folder %s was replaced by a symbolic link (to %s); the agent does not follow it and "
                "imports nothing until a real folder is there again.",
                self.folder, shown(target),
            )  # fmt: skip
        return True

    def _folder_replaced(self) -> bool:
        """Whether another folder sits at ``folder`` now (moved away and made anew, say): its notifications
        were armed on the old one. A folder missing for now is not replaced yet (the rescan warns of it)."""
        now_id = self._current_folder_id()
        return now_id is not None and self._folder_id is not None and now_id != self._folder_id

    async def _rearm(self) -> None:
        """Watch the folder that replaced the old one: claim it, notifications on it, and list it at once."""
        self._folder_id = self._current_folder_id()
        await self._stop_watch()
        if self._claim is not None:
            self._claim.release()  # held on the old folder
            try:
                self._take_folder()
            except DropFolderTaken as err:  # another agent claimed the new folder first
                log.error("The POS drop folder %s was replaced and this agent stops watching it: %s.", self.folder, err)
                self._stop.set()
                return
            except DropFolderUnusable as err:  # a share gone, its read-only mount point left: tried again later
                self._wait_for_folder(err.reason)
                return
        self._last_rescan = float("-inf")
        self._unlistable = None  # the warning below says what became of the folder that could not be listed
        self._start_watch()
        log.warning("The POS drop folder %s was replaced by a new folder; watching the new one now.", self.folder)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Turn folder notifications into pending files (until ``stop``); the rescan tick covers any missed."""
        try:
            async for changes in watchfiles.awatch(
                self.folder, stop_event=stop, recursive=False, force_polling=self.force_polling,
                debounce=WATCH_DEBOUNCE_MS, step=50,
            ):
                now = time.monotonic()
                folder_gone = False
                for change, name in changes:
                    path = Path(name)
                    if change == watchfiles.Change.deleted:
                        self._pending.pop(path, None)
                        folder_gone = folder_gone or path == self.folder
                    elif self._wanted(path):
                        self._note(path, now)
                self._wake.set()
                if folder_gone:  # these notifications follow the old folder wherever it went: _turn re-arms
                    return
        except (OSError, RuntimeError) as err:
            log.warning("Folder notifications for %s stopped (%s); still checking it every %.0f s.", self.folder, err, RESCAN_S)

    def _wanted(self, path: Path) -> bool:
        if path.parent != self.folder:
            return False
        name = path.name.casefold()
        if name.startswith((".", "~")) or name.endswith(TEMPORARY_SUFFIXES):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)

    def _note(self, path: Path, now: float) -> None:
        try:
            st = path.lstat()  # the entry itself: a link is noted as a link, never by what it points to
        except OSError:
            self._pending.pop(path, None)
            return
        if not _candidate(st):
            return
        unmovable = self._unmovable.get(path)
        if unmovable is not None and unmovable[:2] == (st.st_size, st.st_mtime_ns):
            return
        seen = self._pending.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._pending[path] = self._changed(path, seen, st, now)

    def _changed(self, path: Path, seen: _Seen | None, st: os.stat_result, now: float) -> _Seen:
        """How ``path`` looks now that it changed; says once when it has been changing for ``BUSY_WARN_S``.

        A POS that appends to one export all day never lets it settle, so nothing of it was imported until
        the evening, and the log did not say why the hub saw no sales."""
        first = now if seen is None else seen.since if seen.first is None else seen.first
        said = seen is not None and seen.busy_said
        if not said and now - first >= BUSY_WARN_S:
            said = True
            log.warning(
                "%s has been changing for %s without staying unchanged for %s s; it is imported once it does "
                "(a POS that writes its export under a temporary name and renames it when done is imported at once).",
                _name(path), _duration(now - first), f"{self.settle_s:g}",
            )  # fmt: skip
        return _Seen(st.st_size, st.st_mtime_ns, now, first=first, busy_said=said)

    def _rescan(self, now: float) -> None:
        self._last_rescan = now
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    wanted = not entry.is_dir(follow_symlinks=False)
                    if path not in self._pending and wanted and self._wanted(path):
                        self._note(path, now)
        except OSError as err:
            reason = str(err.strerror or err)
            if reason != self._unlistable:  # once, not at every rescan while the folder is gone
                log.warning("The POS drop folder %s cannot be listed: %s", self.folder, reason)
            self._unlistable = reason
        else:
            if self._unlistable is not None:
                log.info("The POS drop folder %s can be listed again.", self.folder)
            self._unlistable = None

    def _settled(self, now: float) -> Path | None:
        """One pending file whose size and mtime have not changed for settle_s, if any."""
        for path in list(self._pending):
            seen = self._pending[path]
            try:
                st = path.lstat()
            except OSError:
                del self._pending[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self._pending[path] = self._changed(path, seen, st, now)
            elif (st.st_size or not stat.S_ISREG(st.st_mode)) and now - seen.since >= self.settle_s:
                if stat.S_ISREG(st.st_mode) and self._still_mid_line(path, seen, now) and seen.held:
                    continue  # its complete rows are imported: the last line waits to end, or unfinished_line_s
                return path  # an empty file is still being written; a pipe or socket never has a size
        return None

    def _still_mid_line(self, path: Path, seen: _Seen, now: float) -> bool:
        """Whether a settled file ends in the middle of a line and has not stayed unchanged for
        ``unfinished_line_s`` yet. Taken at once, a till that paused mid-line (``…,SKU-9,1,sale,R1`` of ``R12``)
        had its cut row recorded as a sale of its own, and the whole row again once it went on writing; taken
        after ten times settle_s, so did a till that paused longer than that."""
        if seen.mid_line is None:
            seen.mid_line = _ends_mid_line(path, seen.size)
        return seen.mid_line and now - seen.since < max(self.unfinished_line_s, self.settle_s)

    async def _keep_ends_after_a_jump(self, now: float) -> None:
        """The wall clock jumped since the last turn: keep the watches' ends again as the monotonic time left."""
        now_ms = wall_ms_now()
        offset = now_ms - round(now * 1000)
        before, self._wall_offset_ms = self._wall_offset_ms, offset
        if before is None or abs(offset - before) <= WALL_JUMP_MS or not self._filed:
            return
        ends = {str(dest): now_ms + round(max(filed.until - now, 0) * 1000) for dest, filed in self._filed.items()}
        try:
            await self.importer.store.filed_ends(ends)
        except PosImportError as err:
            self._wall_offset_ms = before  # tried again next turn
            log.warning("The wall clock jumped, and when the filed exports' watches end could not be kept: %s", err)
            return
        log.info(
            "The wall clock jumped %s h; the %s watched filed export(s) are watched as long as before, also after"
            " a restart.",
            f"{(offset - before) / 3_600_000:+,.1f}", f"{len(ends):,}",
        )  # fmt: skip

    async def _changed_filed(self, now: float) -> Path | None:
        """A filed file that changed after it was filed and has settled again, if any; forgets the rest in time."""
        due = self._content_due(now)
        for dest in list(self._filed):
            filed = self._filed[dest]
            try:
                st = dest.lstat()
            except OSError:  # archived or deleted by someone: nothing more to watch
                await self._forget_filed(dest)
                continue
            if (st.st_dev, st.st_ino) != (filed.dev, filed.ino) or not stat.S_ISREG(st.st_mode):
                await self._forget_filed(dest)  # another file under that name now: not ours to import
                continue
            state = (st.st_size, st.st_mtime_ns)
            if filed.changed is None:
                if (
                    state == (filed.size, filed.mtime_ns) and not self._other_head(dest, filed)
                    and not await self._rewritten(dest, filed, st, now, due=dest in due)
                ):  # fmt: skip
                    if now >= filed.until:
                        if filed.mid_line:
                            log.info(
                                "The last line of %s/%s still has no line break after %s; the agent stops watching "
                                "the file, and a row the POS finishes there later is not noticed.",
                                dest.parent.name, _name(dest), _duration(FILED_UNFINISHED_WATCH_S),
                            )  # fmt: skip
                        await self._forget_filed(dest)
                    continue
                filed.changed = _Seen(st.st_size, st.st_mtime_ns, now)
            elif state != (filed.changed.size, filed.changed.mtime_ns):
                filed.changed = _Seen(st.st_size, st.st_mtime_ns, now)
            elif now - filed.changed.since >= self.settle_s and not self._still_mid_line(dest, filed.changed, now):
                return dest
        return None

    def _content_due(self, now: float) -> set[Path]:
        """The watched copies whose content is compared with their import's digest this turn: every
        ``CONTENT_CHECK_S``, those of at most ``CONTENT_CHECK_MAX_BYTES``, the longest unchecked first, up to
        ``CONTENT_CHECK_BUDGET_BYTES`` together."""
        if now - self._content_round < CONTENT_CHECK_S:
            return set()
        self._content_round = now
        due: set[Path] = set()
        budget = CONTENT_CHECK_BUDGET_BYTES
        for dest, filed in sorted(self._filed.items(), key=lambda item: item[1].checked):
            known = filed.digests and filed.digests[-1]  # none: an import that failed before it read the file
            if known and filed.changed is None and filed.size <= min(CONTENT_CHECK_MAX_BYTES, budget):
                due.add(dest)
                budget -= filed.size
        return due

    async def _rewritten(self, dest: Path, filed: _Filed, st: os.stat_result, now: float, *, due: bool) -> bool:
        """Whether ``dest``, of the inode, size and time ``filed`` was, holds other bytes than its import read: written
        again in place, its size and time kept. Read whole when its inode's change time moved (a change of its
        permissions, say, moves it too: then its bytes are the same, and that is noted) or when its turn is ``due``."""
        ctime = _change_time(st)
        told = ctime is not None and filed.ctime_ns is not None and ctime != filed.ctime_ns
        known = filed.digests[-1] if filed.digests else ""
        if not told and not (due and known):
            return False
        filed.checked = now
        digest = await asyncio.to_thread(_digest, dest)
        if digest is None or (known and digest == known) or (not known and not told):
            filed.ctime_ns = ctime
            return False
        _say_rewritten(f"{dest.parent.name}/{_name(dest)}")
        return True

    @staticmethod
    async def _rewritten_unfiled(path: Path, report: ImportReport, size: int) -> bool:
        """Whether ``path``, imported (``report``) but not filed away, of the size and time it had then, holds other
        bytes than that import read: compared whole when it is at most ``CONTENT_CHECK_MAX_BYTES``."""
        if not report.sha256 or size > CONTENT_CHECK_MAX_BYTES:
            return False
        digest = await asyncio.to_thread(_digest, path)
        if digest is None or digest == report.sha256:
            return False
        _say_rewritten(_name(path))
        return True

    @staticmethod
    def _other_head(dest: Path, filed: _Filed) -> bool:
        """Whether ``dest``, of the inode, size and time ``filed`` was, begins with other bytes: another file."""
        if filed.head is None:
            return False
        head = _head(dest)
        return head is not None and head != filed.head

    async def _watch_filed(
        self,
        dest: Path,
        name: str,
        digests: tuple[str, ...],
        *,
        import_id: int | None,
        changed: bool = False,
        cuts: tuple[CutRow, ...] = (),
    ) -> None:
        """Watch ``dest``, filed after ``import_id`` (which kept its checkpoint), and keep that in the POS store."""
        try:
            st = dest.lstat()
        except OSError:
            await self._drop_checkpoint(import_id)
            return
        if not stat.S_ISREG(st.st_mode):  # a link filed under failed/ is never read
            await self._drop_checkpoint(import_id)
            return
        mid_line = _ends_mid_line(dest, st.st_size)
        head = _head(dest)
        watch_s = max(FILED_WATCH_S, FILED_UNFINISHED_WATCH_S) if mid_line else FILED_WATCH_S
        before = self._filed.pop(dest, None)
        if before is not None and before.import_id != import_id:
            # another export filed under its name, the copy watched there deleted before the watcher looked again:
            # the checkpoint that copy's import kept is of no more use
            await self._forget_filed(dest, before.import_id)
        self._filed[dest] = _Filed(
            name, digests, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, time.monotonic() + watch_s,
            _Seen(-1, -1, time.monotonic()) if changed else None, cuts, import_id, mid_line, head, _change_time(st),
            time.monotonic(),
        )  # fmt: skip
        kept = FiledWatch(
            str(dest), name, import_id, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            wall_ms_now() + round(watch_s * 1000), digests, cuts, head, _change_time(st),
        )  # fmt: skip
        try:
            await self.importer.store.watch_filed(kept)
        except PosImportError as err:
            log.warning(
                "%s is watched for a writer that was not done with it, but not after a restart: %s", _name(dest), err
            )
        while len(self._filed) > FILED_WATCH_MAX:  # the oldest first, one whose last line is cut the last
            oldest = next(iter(self._filed))
            gone = next((p for p, f in self._filed.items() if not f.mid_line), oldest)
            if self._filed[gone].mid_line:
                log.warning(
                    "The last line of %s/%s still has no line break, but %s filed exports are watched already; the "
                    "agent stops watching it, the oldest, and a row the POS finishes there later is not noticed.",
                    gone.parent.name, _name(gone), f"{FILED_WATCH_MAX:,}",
                )  # fmt: skip
            await self._forget_filed(gone)

    async def _forget_filed(self, dest: Path, import_id: int | None = None) -> None:
        """Watch ``dest`` no more; the checkpoint kept for it (``import_id`` when it is not watched now) is dropped."""
        filed = self._filed.pop(dest, None)
        try:
            await self.importer.store.unwatch_filed(str(dest), filed.import_id if filed is not None else import_id)
        except PosImportError as err:  # kept there: dropped at the next start
            log.warning("The POS store could not note that %s is not watched any more: %s", _name(dest), err)

    async def _drop_checkpoint(self, import_id: int | None) -> None:
        """The checkpoint ``import_id`` kept for a file that is not watched after all (gone, or not a file)."""
        if import_id is None:
            return
        try:
            await self.importer.store.forget_checkpoint(import_id)
        except PosImportError as err:  # kept there: dropped at the next start
            log.warning("The POS store could not drop the checkpoint of import #%d: %s", import_id, err)

    async def _load_filed(self) -> None:
        """Watch again what was watched when the agent stopped; a file written on meanwhile is imported again once it
        settles. The files whose last line has no line break yet are said in one line."""
        try:
            kept = await self.importer.store.filed_watches()
        except PosImportError as err:
            log.error("The filed POS exports watched before the agent stopped cannot be read, so they are not: %s", err)
            return
        now, now_ms = time.monotonic(), wall_ms_now()
        cut: list[str] = []
        for w in kept:
            dest = Path(w.dest)
            try:
                st = dest.lstat()
            except OSError:
                st = None
            same = st is not None and (st.st_dev, st.st_ino) == (w.dev, w.ino) and stat.S_ISREG(st.st_mode)
            if dest.parent == self.folder:  # imported, not filed away (_Carried): its import goes on from there
                if same:
                    self._carried[dest] = _Carried((w.dev, w.ino), w.import_id, w.cuts, w.digests)
                elif (moved := self._moved_away(w.dev, w.ino)) is not None:  # filed, its watch not kept yet
                    await self._watch_filed(
                        moved, w.file_name, w.digests, import_id=w.import_id, changed=True, cuts=w.cuts
                    )  # fmt: skip
                    await self._forget_carried(dest, None)
                else:
                    await self._forget_filed(dest, w.import_id)
                continue
            if (
                st is None or (st.st_dev, st.st_ino) != (w.dev, w.ino) or not stat.S_ISREG(st.st_mode)
                or dest.parent.parent != self.folder
            ):  # fmt: skip
                await self._forget_filed(dest, w.import_id)  # moved away, deleted, another file there, another folder
                continue
            head = _head(dest) if w.head is not None else None
            changed = (st.st_size, st.st_mtime_ns) != (w.size, w.mtime_ns) or (head is not None and head != w.head)
            mid_line = _ends_mid_line(dest, w.size)
            # kept on the wall clock: by an agent whose clock was ahead (put right since), a year away, say
            left_s = min(max(w.until_ms - now_ms, 0) / 1000, max(FILED_WATCH_S, FILED_UNFINISHED_WATCH_S))
            # written again in place meanwhile, its size and time kept: its first turn compares its content
            self._filed[dest] = _Filed(
                w.file_name, w.digests, w.dev, w.ino, w.size, w.mtime_ns, now + left_s,
                _Seen(-1, -1, now) if changed else None, w.cuts, w.import_id, mid_line, w.head, w.ctime_ns,
            )  # fmt: skip
            if mid_line and (changed or w.until_ms > now_ms):
                cut.append(f"{dest.parent.name}/{_name(dest)}")
        if cut:
            log.info(
                "Watching %s again whose last line had no line break yet, for a till that finishes it: %s.",
                "1 filed export" if len(cut) == 1 else f"{len(cut)} filed exports", ", ".join(cut),
            )  # fmt: skip

    def _moved_away(self, dev: int, ino: int) -> Path | None:
        """Where in processed/ or failed/ the file (``dev``, ``ino``) sits, if it does: an agent killed after it
        filed an export, before it kept the watch of it (the report is written when it is imported again)."""
        for sub in (PROCESSED_DIR, FAILED_DIR):
            with contextlib.suppress(OSError), os.scandir(self.folder / sub) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_file(follow_symlinks=False) and entry.inode() == ino and entry.stat().st_dev == dev:
                            return Path(entry.path)
        return None

    # --- one unit of work -----------------------------------------------------------
    async def _import(self, path: Path) -> None:
        # The entry can leave ``_pending`` while the import awaits: a notification that the file was deleted
        # or moved away (by a person, or another program sharing the folder) drops it. Never index it after.
        seen = self._pending[path]
        before = _identity(path)
        # Ending in the middle of a line, unchanged for less than unfinished_line_s: a till may have paused in the
        # middle of its last row. The rows before that line are imported now; the line is held (the file too).
        try:
            regular = stat.S_ISREG(path.lstat().st_mode)
        except OSError:
            regular = False  # gone: the import says so
        hold = regular and self._still_mid_line(path, seen, time.monotonic())
        progress = _ProgressLog(_name(path), seen.size) if seen.size >= PROGRESS_LOG_MIN_BYTES else None
        carried = await self._carried_for(path, before)
        try:
            report = await self.importer.import_file(
                path, follow_links=False, on_progress=progress, hold_last_line=hold, keep_checkpoint=True,
                go_on_from=carried.import_id if carried is not None else None,
                cut_rows=carried.cuts if carried is not None else (),
                seen_under=carried.digests if carried is not None else (),
            )  # fmt: skip
        except PosImportError as err:  # the outbox or store cannot be written: the file stays, retry later
            raise TurnFailed(str(err)) from err
        except Exception as err:  # a surprise in one file must not stop the folder, nor be retried forever
            log.exception("Importing %s failed unexpectedly; it goes to %s/.", _name(path), FAILED_DIR)
            report = ImportReport(path.name, "", seen.size, "", "", "failed", error=f"unexpected error: {err!r}"[:500])
        else:
            if ended := self._streak.succeeded():
                log.info("POS imports work again after %d failed attempts.", ended)
        after = _identity(path)
        if after is not None and after != before:
            # Replaced or written to while it was read: what sits there now was not (all) imported. Leave it
            # to settle and import it again; the rows already recorded come back as duplicates.
            log.warning("%s changed while it was being imported; it is imported again once it settles.", _name(path))
            self._pending[path] = _Seen(-1, -1, time.monotonic())
            return
        if report.status == HELD:
            if (now := self._pending.get(path)) is not None:
                now.held = True  # imported again once it changes and settles, or stays unchanged long enough
            if (held := self._held.get(path)) is not None:
                held.rows_read = report.rows_read
            else:
                self._held[path] = _Held(wall_ms_now(), report.rows_read)
                log.info(
                    "%s ends in the middle of a line, as if the POS were still writing it: its %s complete rows are "
                    "imported, and its last line is held until it ends or the file has not changed for %s s.",
                    _name(path), f"{report.rows_read:,}", f"{max(self.unfinished_line_s, self.settle_s):g}",
                )  # fmt: skip
            return
        self._held.pop(path, None)
        self._pending.pop(path, None)
        await self._finish(path, report, seen)

    async def _finish(self, path: Path, report: ImportReport, seen: _Seen) -> None:
        """File the export away with its report, and tell whoever listens."""
        carried = self._carried.pop(path, None)
        self._unmovable.pop(path, None)  # imported again since it could not be filed: this report replaces it
        ident = _identity(path)
        if ident is None:  # exists() would follow a link: a dangling one is still there to file away
            outcome = f"it was not imported: {report.error}" if report.status == "failed" else "its rows are recorded"
            log.warning("%s disappeared from %s while it was being imported; %s.", _name(path), self.folder, outcome)
            await self._drop_checkpoint(report.import_id)
            if carried is not None:
                await self._forget_carried(path, None)
            if self.on_report is not None:  # what it recorded is real: whoever listens still hears of it
                self.on_report(report, path)
            return
        failed = report.status != "imported"
        cuts = self._cuts(carried.cuts if carried is not None else (), report)
        digests = (*(carried.digests if carried is not None else ()), report.sha256)
        now = _Carried((ident[0], ident[1]), report.import_id, cuts, digests)
        if cuts:  # an agent killed before its filed copy is watched would forget the rows booked from cut lines
            await self._keep_carried(path, report.file_name, now)
        try:
            dest = self._file_away(path, FAILED_DIR if failed else PROCESSED_DIR)
        except OSError as err:
            self._unmovable[path] = (seen.size, seen.mtime_ns, report)
            log.error(
                "%s was imported but cannot be moved out of %s: %s", _name(path), self.folder, err.strerror or err
            )
            if not cuts:
                await self._keep_carried(path, report.file_name, now)
            dest = path
        else:
            await self._report_beside(dest, report)
            await self._watch_filed(dest, report.file_name, digests, import_id=report.import_id, cuts=cuts)
            if carried is not None or cuts:
                await self._forget_carried(path, None)  # its checkpoint is the filed copy's now
        if self.on_report is not None:
            self.on_report(report, dest)

    async def _carried_for(self, path: Path, now: tuple[int, int, int, int] | None) -> _Carried | None:
        """What the import of ``path`` (``now``: its identity) goes on from, when an import of it could not file it
        away; None for another file under its name (the checkpoint kept for the one before is dropped)."""
        carried = self._carried.get(path)
        if carried is None or (now is not None and (now[0], now[1]) == carried.ident):
            return carried
        del self._carried[path]
        await self._forget_carried(path, carried.import_id)
        return None

    async def _keep_carried(self, path: Path, name: str, carried: _Carried) -> None:
        """``path`` could not be filed away: what its next import goes on from (``_Carried``), kept for a restart."""
        self._carried[path] = carried
        st = _identity(path)
        size, mtime_ns = (st[2], st[3]) if st is not None else (0, 0)
        kept = FiledWatch(
            str(path), name, carried.import_id, *carried.ident, size, mtime_ns,
            wall_ms_now() + round(FILED_UNFINISHED_WATCH_S * 1000), carried.digests, carried.cuts,
        )  # fmt: skip
        try:
            await self.importer.store.watch_filed(kept)
        except PosImportError as err:
            log.warning("Where the next import of %s goes on from is not kept for a restart: %s", _name(path), err)

    async def _forget_carried(self, path: Path, import_id: int | None) -> None:
        """``path``'s ``_Carried`` is of no more use; its checkpoint (``import_id``, None: kept) is dropped too."""
        self._carried.pop(path, None)
        try:
            await self.importer.store.unwatch_filed(str(path), import_id)
        except PosImportError as err:  # kept there: dropped at the next start
            log.warning("The POS store could not note that %s is imported: %s", _name(path), err)

    async def _file_unmovable(self) -> None:
        """File away, with the report of their import, the exports that could not be moved out when they were
        imported (the folder had turned read-only). Left in place, they stayed until the next start imported them
        again. One that changed since is imported again instead, from where its import ended, with the rows it booked
        from a last line without a line break (``_Carried``): a till that holds its export open, so that it cannot be
        moved, and finishes the row it paused in has that row noticed, never booked a second time."""
        for path, (size, mtime_ns, report) in list(self._unmovable.items()):
            now = _identity(path)
            if now is None or now[2:] != (size, mtime_ns) or await self._rewritten_unfiled(path, report, size):
                del self._unmovable[path]
                if now is None:  # gone: nothing to go on from
                    await self._forget_carried(path, report.import_id)
                continue
            sub = FAILED_DIR if report.status != "imported" else PROCESSED_DIR
            try:
                dest = self._file_away(path, sub)
            except OSError:
                continue  # still refused: said when it was imported
            del self._unmovable[path]
            carried = self._carried.get(path)
            cuts, digests = (carried.cuts, carried.digests) if carried is not None else ((), (report.sha256,))
            await self._report_beside(dest, report)
            await self._watch_filed(dest, report.file_name, digests, import_id=report.import_id, cuts=cuts)
            if carried is not None:
                await self._forget_carried(path, None)  # its checkpoint is the filed copy's now
            log.info("%s, imported before, is filed in %s/ now.", _name(path), sub)

    async def _import_again(self, dest: Path) -> None:
        """A filed file changed after it was filed (its writer was not done): import it again, in place.

        The import goes on from the checkpoint the one before kept (only what was appended is read), or reads the
        file from its start when its first bytes changed (the rows already recorded come back as duplicates). Its
        report, for the whole file, is rewritten; if the verdict changed (a file that failed half-written reads
        well now) it moves to the other folder with its report.
        """
        filed = self._filed[dest]
        before = _identity(dest)
        size = before[2] if before is not None else 0
        progress = _ProgressLog(_name(dest), size) if size >= PROGRESS_LOG_MIN_BYTES else None
        try:
            report = await self.importer.import_file(
                dest, name=filed.name, follow_links=False, seen_under=filed.digests, on_progress=progress,
                cut_rows=filed.cuts, keep_checkpoint=True, go_on_from=filed.import_id,
            )  # fmt: skip
        except PosImportError as err:  # the outbox or store cannot be written: it stays watched, retry later
            raise TurnFailed(str(err)) from err
        except Exception:  # a surprise in one file must not stop the folder, nor be retried forever
            log.exception("Importing %s again after it changed failed unexpectedly; it stays where it is.", _name(dest))
            await self._forget_filed(dest)
            return
        else:
            if ended := self._streak.succeeded():
                log.info("POS imports work again after %d failed attempts.", ended)
        self._filed.pop(dest, None)
        after = _identity(dest)
        if after is None:
            log.warning("%s disappeared while it was being imported again; its rows are recorded.", _name(dest))
            await self._forget_filed(dest)
            await self._drop_checkpoint(report.import_id)
            return
        if after != before:  # still being written: once it settles it is imported again, and then reported
            await self._watch_filed(
                dest, filed.name, (*filed.digests, report.sha256), import_id=report.import_id, changed=True,
                cuts=self._cuts(filed.cuts, report),
            )  # fmt: skip
            return
        sub = FAILED_DIR if report.status != "imported" else PROCESSED_DIR
        try:
            moved = dest if dest.parent.name == sub else self._file_away(dest, sub)
        except OSError as err:
            log.error("%s was imported again but cannot be moved to %s/: %s", _name(dest), sub, err.strerror or err)
            moved = dest
        if moved != dest:
            if self._reports_owed.pop(dest, None) is not None:
                await self._report_paid(dest)  # the verdict it replaces is owed no longer
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest.with_name(dest.name + REPORT_SUFFIX))  # the verdict it replaces
        await self._report_beside(moved, report)
        if moved != dest:
            await self._forget_filed(dest)
        more = report.recorded_now
        log.warning(
            "%s changed after it was imported and filed in %s/; it was imported again and %s more rows were recorded.",
            _name(dest), dest.parent.name, f"{more:,}",
        )  # fmt: skip
        await self._watch_filed(
            moved, filed.name, (*filed.digests, report.sha256), import_id=report.import_id,
            cuts=self._cuts(filed.cuts, report),
        )  # fmt: skip
        if self.on_report is not None:
            self.on_report(report, moved)

    def _cuts(self, before: tuple[CutRow, ...], report: ImportReport) -> tuple[CutRow, ...]:
        """The rows booked from a last line without a line break so far: the first booking of a line stands."""
        cut = report.cut_row
        if cut is None or any(c.line == cut.line for c in before):
            return before
        log.info(
            "The last line of %s (line %d) has no line break; it did not change for %s s, so it was imported as it "
            "stands. If the POS finishes it later, the finished row is not booked a second time.",
            shown(report.file_name, bare=True), cut.line, f"{max(self.unfinished_line_s, self.settle_s):g}",
        )  # fmt: skip
        return (*before, cut)

    def _file_away(self, path: Path, sub: str) -> Path:
        """Move the entry (a link itself, never its target) into ``sub/``; where it is now.

        Links are followed nowhere: ``sub/`` must be a real folder, names are taken only when nothing —
        not even a dangling link — holds them, and the report is created new (``O_EXCL``), so a link
        planted in the drop folder cannot make the agent write anywhere else.
        """
        target_dir = self.folder / sub
        target_dir.mkdir(exist_ok=True)
        if not stat.S_ISDIR(target_dir.lstat().st_mode):
            raise OSError(errno.ENOTDIR, f"{sub}/ is a link or a file, not a folder; the agent files nothing there")
        dest = target_dir / path.name
        n = 1
        while os.path.lexists(dest) or os.path.lexists(dest.with_name(dest.name + REPORT_SUFFIX)):
            dest = target_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.replace(path, dest)
        return dest

    async def _report_beside(self, dest: Path, report: ImportReport) -> None:
        """Write ``dest``'s report; when the disk refuses it (full), say so once and write it once it can.

        The file is filed already: without this it sat in ``processed/`` with no report ever, and the log
        said it could not be moved out of the drop folder. What is owed is kept in the POS store too: kept
        only in memory, it was lost when the agent restarted before the disk had room again."""
        text = report.to_json()
        try:
            self._write_report(dest, text)
        except OSError as err:
            self._reports_owed[dest] = text
            log.error(
                "%s is filed in %s/ but its report cannot be written there (%s); it is written as soon as it can be.",
                _name(dest), dest.parent.name, err.strerror or err,
            )  # fmt: skip
            await self._owe_report(dest, text)
        else:
            if self._reports_owed.pop(dest, None) is not None:
                await self._report_paid(dest)

    async def _write_owed_reports(self) -> None:
        """Try again the reports a full disk refused; say once when one is written after all."""
        for dest, text in list(self._reports_owed.items()):
            if _identity(dest) is None:  # moved away or deleted meanwhile: nowhere to put it
                del self._reports_owed[dest]
                await self._report_paid(dest)
                continue
            try:
                self._write_report(dest, text)
            except OSError:
                continue  # still refused: said once already
            del self._reports_owed[dest]
            await self._report_paid(dest)
            log.info("The report of %s is written in %s/ now.", _name(dest), dest.parent.name)

    async def _load_owed_reports(self) -> None:
        """The reports still owed when the agent last stopped (kept in the POS store): written by the first turn."""
        try:
            owed = await self.importer.store.reports_owed()
        except PosImportError as err:
            log.error("The reports owed to filed POS exports cannot be read, so they are not written: %s", err)
            return
        for dest, text in owed:
            self._reports_owed.setdefault(Path(dest), text)

    async def _owe_report(self, dest: Path, text: str) -> None:
        try:
            await self.importer.store.owe_report(str(dest), text)
        except PosImportError as err:
            log.error(
                "The report owed to %s cannot be kept in the POS store either (%s); it is lost if the agent stops "
                "before it is written.",
                _name(dest), err,
            )  # fmt: skip

    async def _report_paid(self, dest: Path) -> None:
        try:
            await self.importer.store.report_paid(str(dest))
        except PosImportError as err:  # still owed there: the next start writes the same report again
            log.warning("The POS store could not note that the report of %s is written: %s", _name(dest), err)

    @staticmethod
    def _write_report(dest: Path, text: str) -> None:
        """``<dest>.report.json``, created new and swapped in: a link planted there is replaced, not written through."""
        report_path = dest.with_name(dest.name + REPORT_SUFFIX)
        tmp = report_path.with_name(report_path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover, or a link planted there: removed, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, report_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a report cut short (disk full) is no report: none is left half-written
            raise
