"""``shelfsync-hub backup``: a consistent copy of the hub database, taken while the hub runs.

* SQLite: SQLite's online backup API, page by page, from one read snapshot
  held for the whole copy (in WAL mode the hub keeps writing meanwhile; the
  copy is the database as it was when the backup began). The copy is written
  beside its destination, checked (``PRAGMA quick_check``), switched out of
  WAL mode so it is one self-contained file, synced, and only then renamed
  into place: a destination path never holds half a backup.
* The half-made copy (``.<name>.partial-<pid>``) is removed when the backup fails or is stopped; a backup killed
  outright (SIGKILL, power loss) cannot remove it, so each backup holds a lock on ``<partial>.lock`` while it
  writes, and the next backup into the same directory removes every partial whose lock it can take: its writer
  is gone. The lock, not the process id, says so: a process id is reused, and asking Windows about one is unsafe.
  A partial with no lock file beside it (left by a version from before the locks) cannot be told from one an older
  version is writing now, so it is not removed: the backup names such files in one sentence, for the operator.
* PostgreSQL: ``pg_dump --format=custom`` (one snapshot of the database,
  taken without stopping anyone), the password handed over in a private
  password file, never on a command line. Restored with ``pg_restore``.

docs/operations.md ("Backup and restore") gives the restore procedures.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from hub.servelock import LOCK_SUFFIX
from hub.storage.base import HubError
from hub.storage.feed import FEED_HOME_KEY
from hub.storage.migrations import size_text
from hub.storage.sqlite import sidefiles
from hub.storage.sqlite.schema import HOME_TOKEN_SUFFIX
from hub.storage.sqlite.store import full_file_system, read_only_file_system
from protocol.oslock import hold_os_lock

SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
STEP_PAGES = 1024  # pages copied per step of the SQLite backup (4 MiB at the default page size)
BUSY_TIMEOUT_MS = 10_000
BACKUP_FILE_MODE = 0o600  # a backup holds every credential's hash and the whole ledger
PROGRESS_EVERY_S = 1.0  # at most one progress line a second (and one at the end)
PG_DUMP_TIMEOUT_S = 24 * 3_600.0
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite keeps beside a live database; the hub needs them
# What the hub keeps beside it: the serving lock (replaced, a second hub would take the new file and serve beside
# the first) and the feed-home token (replaced, the next start would take the database for a restored copy).
HUB_SIDE_FILES = (LOCK_SUFFIX, HOME_TOKEN_SUFFIX)
NOT_REGULAR = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"))  # fmt: skip
PARTIAL_RE = re.compile(r"^\.(.+)\.partial-(\d+)$")  # a copy being written, named after its target and writer
WRITER_LOCK_SUFFIX = ".lock"  # beside each partial: held by its writer while it writes
UNLOCKED_NAMED_MAX = 5  # partials without a lock file named in the sentence about them; the rest counted
PG_TABLE_RE = re.compile(r'dumping contents of table "?([^"\s]+)"?')
# URL parameters libpq (and so pg_dump) understands; asyncpg's server settings (search_path) are handled apart.
LIBPQ_PARAMS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout", "application_name",
     "target_session_attrs", "options", "host", "port", "user", "dbname", "service", "gssencmode", "krbsrvname"}
)  # fmt: skip

Progress = Callable[[str], None]


class BackupError(HubError):
    """The backup could not be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    backend: str  # "sqlite" or "postgresql"
    size_bytes: int
    elapsed_s: float
    schema_version: int | None = None  # SQLite: read from the copy
    events: int | None = None  # SQLite: events in the copy

    def describe(self) -> str:
        what = "" if self.events is None else f", schema version {self.schema_version}, {self.events:,} events"
        return (
            f"backed up the {self.backend} hub database to {self.path} ({self.size_bytes:,} bytes{what}) "
            f"in {self.elapsed_s:.1f} s"
        )


def backup(db: str, to: str | os.PathLike[str], progress: Progress | None = None) -> BackupResult:
    """Copy the hub database ``db`` (a SQLite path or URL, or a PostgreSQL URL) to ``to``.

    ``to`` may be an existing directory (a path ending in ``/`` must be one): the copy is then named
    ``hub-<UTC time>.db`` (``.dump`` for PostgreSQL) inside it. An existing regular file at ``to`` is replaced,
    but only once the new copy is whole; anything else there (a device, a FIFO, a socket) is refused, and so is
    the database itself or a file SQLite keeps beside it, and any database in WAL mode (a copy never is)."""
    say = progress or (lambda line: None)
    started = time.monotonic()
    if db.startswith(POSTGRES_SCHEMES):
        target = _target(os.fspath(to), ".dump")
        _check_not_in_use(target)
        size = _pg_dump(db, target, say)
        return BackupResult(target, "postgresql", size, time.monotonic() - started)
    path = _sqlite_path(db)
    target = _target(os.fspath(to), ".db")
    _check_not_live(target, path)
    _check_not_in_use(target)
    version, events, size = _sqlite_backup(path, target, say)
    return BackupResult(target, "sqlite", size, time.monotonic() - started, version, events)


def _target(to: str, suffix: str) -> Path:
    if not to:
        raise BackupError("--to is empty; give the file or the directory the backup goes to")
    path = Path(to)
    if to.endswith(("/", os.sep)) and not path.is_dir():  # Path() drops the slash; the operator meant a directory
        raise BackupError(f"cannot write the backup to {to}: the directory {path} does not exist")
    if path.is_dir():
        return path / time.strftime(f"hub-%Y%m%dT%H%M%SZ{suffix}", time.gmtime())
    if not path.parent.is_dir():
        raise BackupError(f"cannot write the backup to {path}: the directory {path.parent} does not exist")
    try:
        mode = os.stat(path).st_mode  # through a symlink: what the name leads to
    except FileNotFoundError:
        return path  # a new file (or a dangling symlink, replaced by the copy)
    except OSError as err:
        raise BackupError(f"cannot write the backup to {path}: {err.strerror or err}") from err
    for is_kind, kind in NOT_REGULAR:
        if is_kind(mode):
            raise BackupError(
                f"cannot write the backup to {path}: it is {kind}, not a file, and is never replaced; "
                "give a new file or a directory"
            )
    return path


def _check_not_in_use(target: Path) -> None:
    """Refuse to replace a database in WAL mode: the --db and --to of a restore swapped into a backup's."""
    if _in_wal_mode(target):
        raise BackupError(
            f"the backup cannot replace {target}: it is a database in use (in WAL mode), not a backup copy, which "
            "never is; check --db and --to"
        )


def _in_wal_mode(path: Path) -> bool:
    """Whether ``path`` is a SQLite database in WAL mode: a hub's live database, or another program's, never a
    copy made by ``backup`` (switched out of WAL mode)."""
    header = sidefiles.header(path)  # None: no database, or one that cannot be read (the copy's error says why)
    return header is not None and header[18:20] == sidefiles.WAL_MODE


def _check_not_live(target: Path, source: Path) -> None:
    """Refuse ``target`` when it is the database or a file SQLite or the hub keeps beside it, by any name or link."""
    sides = (*SQLITE_SIDE_FILES, *HUB_SIDE_FILES)
    live = [source, *(source.with_name(source.name + side) for side in sides)]
    real = Path(os.path.realpath(source))  # SQLite names its side files after the resolved path, and so does the hub
    live += [real, *(real.with_name(real.name + side) for side in sides)]
    where = os.path.realpath(target)
    for path in live:
        same = where == os.path.realpath(path)
        with contextlib.suppress(OSError):  # a side file that does not exist now
            same = same or os.path.samefile(target, path)
        if same:
            raise BackupError(
                f"the backup cannot be written over the database it copies ({source}) or the -wal, -shm, "
                "-journal, .serving.lock or .feed-home file beside it; choose another path"
            )


# --- SQLite -------------------------------------------------------------------------


def _sqlite_path(db: str) -> Path:
    if db.startswith(SQLITE_SCHEME):
        db = db[len(SQLITE_SCHEME) :]
    elif "://" in db:
        scheme = db.split("://", 1)[0][:20]  # not the URL: it may hold a password
        raise BackupError(f"unknown database URL scheme {scheme!r}; use a SQLite file path or a postgresql:// URL")
    path = Path(db)
    if not path.is_file():
        raise BackupError(f"there is no hub database at {path}; give the file the hub serves (--db or its config's db)")
    return path


def _partial(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


class _PartialBusy(Exception):
    """Its writer holds the partial's lock."""


@contextlib.contextmanager
def _writing(partial: Path, say: Progress) -> Iterator[None]:
    """Hold ``partial``'s writer lock while the copy is written into it; first remove what killed backups left in
    its directory (``remove_orphaned_partials``), and name the partials no lock tells about (``unlocked_partials``)."""
    remove_orphaned_partials(partial.parent)
    unlocked = unlocked_partials(partial.parent)
    if unlocked:
        named = ", ".join(p.name for p in unlocked[:UNLOCKED_NAMED_MAX])
        more = f" and {len(unlocked) - UNLOCKED_NAMED_MAX} more" if len(unlocked) > UNLOCKED_NAMED_MAX else ""
        say(
            f"left as they are: {len(unlocked)} half-made backup(s) in {partial.parent} with no writer lock beside "
            f"them ({named}{more}), made by an older shelfsync, which may still be writing one; remove them once no "
            "backup of an older shelfsync runs into this directory"
        )
    lock = partial.with_name(partial.name + WRITER_LOCK_SUFFIX)
    try:
        with hold_os_lock(lock, 0, taken=_PartialBusy, failed=lambda err: err):
            yield
    except _PartialBusy:
        raise BackupError(f"another backup writes {partial} (it holds {lock}); wait for it to end") from None
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def unlocked_partials(directory: Path) -> list[Path]:
    """The half-made copies in ``directory`` with no writer lock beside them: a version from before the locks
    wrote them, and it may be writing one now. Neither their process id (reused, in another PID namespace or on
    another host sharing the directory, unsafe to ask Windows about) nor their age (a pg_dump may wait an hour
    on a lock without writing) says their writer is gone, so they are named, never removed."""
    try:
        names = {entry.name for entry in os.scandir(directory)}
    except OSError:
        return []
    return [
        directory / name for name in sorted(names)
        if PARTIAL_RE.match(name) is not None and name + WRITER_LOCK_SUFFIX not in names
    ]  # fmt: skip


def remove_orphaned_partials(directory: Path) -> list[Path]:
    """Remove the half-made copies in ``directory`` whose writer is gone: those whose writer lock can be taken
    (and a lock file whose writer was killed before it made its partial)."""
    removed: list[Path] = []
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except OSError:
        return removed
    locked = {name.removesuffix(WRITER_LOCK_SUFFIX) for name in names if name.endswith(WRITER_LOCK_SUFFIX)}
    for name in sorted(locked):  # a partial without its lock file was not made by a backup that holds one
        if PARTIAL_RE.match(name) is None:
            continue
        partial = directory / name
        lock = partial.with_name(name + WRITER_LOCK_SUFFIX)
        try:
            with hold_os_lock(lock, 0, taken=_PartialBusy, failed=lambda err: err):
                for leftover in (partial, *(partial.with_name(name + side) for side in SQLITE_SIDE_FILES)):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
                        removed.append(leftover)
            lock.unlink(missing_ok=True)
        except (_PartialBusy, OSError):
            continue  # its writer is still at work, or the lock cannot be had: left as it is
    return removed


def _sqlite_backup(source: Path, target: Path, say: Progress) -> tuple[int, int, int]:
    partial = _partial(target)
    why = sidefiles.foreign_wal(source)  # as the hub's own open does (hub.storage.sqlite.store)
    if why is not None:
        raise BackupError(
            f"the hub database {source} has a -wal file beside it that was not written for it ({why}); SQLite would "
            f"copy it into the backup and into the database; move {source.name}-wal and {source.name}-shm aside "
            f"(mkdir -p replaced && mv {source}-wal {source}-shm replaced/), then back it up"
        )
    try:
        src = sqlite3.connect(source, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        raise BackupError(f"cannot open the hub database {source}: {err}") from err
    try:
        with contextlib.closing(src):
            src.execute("PRAGMA query_only = ON")
            src.execute("BEGIN")  # one read snapshot for every step: the hub's commits meanwhile are not copied
            version = _check_hub_database(src, source)
            with _writing(partial, say):
                with _removed_on_failure(partial):
                    _private_file(partial)
                    copy = sqlite3.connect(partial, isolation_level=None)
                with _removed_on_failure(partial), contextlib.closing(copy) as dst:
                    src.backup(dst, pages=STEP_PAGES, progress=_page_progress(say), sleep=0)
                    src.execute("COMMIT")
                    # The copy, once restored, is the feed a little in the past: its first start begins a new
                    # history of the change feed, so that cursors read since are refused (hub.storage.feed).
                    dst.execute("DELETE FROM meta WHERE key = ?", (FEED_HOME_KEY,))
                    dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
                    check = dst.execute("PRAGMA quick_check").fetchone()
                    if check != ("ok",):
                        why = check[0] if check else "no answer"
                        raise BackupError(f"the copy of {source} failed its check ({why})")
                    events = int(dst.execute("SELECT count(*) FROM events").fetchone()[0])
                    dst.close()
                    _fsync(partial)
                    os.replace(partial, target)
                    _fsync(target.parent)
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
            raise BackupError(_disk_full(source, target)) from err
        if read_only_file_system(source.parent):
            raise BackupError(
                f"cannot read the hub database {source}: the file system of {source.parent} is read-only, and SQLite "
                f"writes a -shm file beside a database in WAL mode even to read it; copy {source.name} (and its -wal "
                "file, if there is one) to a writable disk and back that copy up"
            ) from err
        if (free := full_file_system(source.parent)) is not None:
            raise BackupError(
                f"cannot read the hub database {source}: the file system of {source.parent} is full "
                f"({size_text(free)} free), and SQLite writes a -shm file beside a database in WAL mode even to read "
                f"it; free space there, or copy {source.name} (and its -wal file, if there is one) to a disk with room "
                "and back that copy up"
            ) from err
        raise BackupError(f"the backup of {source} failed: {err}") from err
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise BackupError(_disk_full(source, target)) from err
        raise BackupError(f"cannot write the backup to {target}: {err.strerror or err}") from err
    return version, events, target.stat().st_size


def _disk_full(source: Path, target: Path) -> str:
    """What to say when the copy filled its disk: which one (not the hub's, which SQLite's "database or disk is
    full" suggests), and how much the copy takes; nothing was replaced."""
    try:
        need, free = source.stat().st_size, shutil.disk_usage(target.parent).free
        sizes = f" ({size_text(free)} free; the copy takes about {size_text(need)}, as much as the database)"
    except OSError:
        sizes = ""
    return (
        f"cannot write the backup to {target}: the file system of {target.parent} is full{sizes}; nothing there was "
        "replaced: free space there, or give --to on another disk"
    )


def _check_hub_database(src: sqlite3.Connection, source: Path) -> int:
    version = int(src.execute("PRAGMA user_version").fetchone()[0])
    has_meta = src.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if version < 1 or has_meta is None:
        raise BackupError(f"{source} is not a shelfsync hub database (no hub schema in it)")
    return version


def _page_progress(say: Progress) -> Callable[[int, int, int], None]:
    last = [0.0]

    def report(status: int, remaining: int, total: int) -> None:
        now = time.monotonic()
        if not total or remaining and now - last[0] < PROGRESS_EVERY_S:
            return  # no total: the step failed before it read the database (its error says why)
        last[0] = now
        done = total - remaining
        say(f"copied {done:,} of {total:,} pages ({100 * done // max(total, 1)}%)")

    return report


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for leftover in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def _private_file(path: Path) -> None:
    """Create ``path`` empty, readable by its owner only (the copy is then written into it)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, BACKUP_FILE_MODE))
    os.chmod(path, BACKUP_FILE_MODE)  # whatever the umask made of it


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- PostgreSQL ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgTarget:
    """What pg_dump and pg_restore are given: a URL without the password, the password, the schema."""

    url: str  # libpq URL, no password in it
    password: str | None
    schema: str | None  # the search_path the hub works in, when its URL names one
    shown: str  # for messages


def pg_target(url: str) -> PgTarget:
    """Split a hub's PostgreSQL URL (asyncpg's form) into what libpq tools take."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        shape = "postgresql://user@host:5432/db"
        raise BackupError(f"the database URL cannot be read ({err}); it looks like {shape}") from None
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username is not None:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    schema = None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "search_path":
            schema = value.split(",")[0].strip().strip('"') or None
        elif key == "password":
            password = value
        elif key in LIBPQ_PARAMS:
            kept.append((key, value))
        else:
            raise BackupError(f"pg_dump cannot take the database URL parameter {key!r}; leave it out for the backup")
    clean = urlunsplit(("postgresql", netloc, parts.path, urlencode(kept), ""))
    return PgTarget(clean, password, schema, clean)


@contextlib.contextmanager
def pg_environment(target: PgTarget) -> Iterator[dict[str, str]]:
    """The environment for pg_dump/pg_restore: the password in a private password file (PGPASSFILE)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    if target.password is None:
        yield env
        return
    fd, name = tempfile.mkstemp(prefix="shelfsync-pgpass-")  # mode 0600: libpq ignores a file others can read
    try:
        escaped = target.password.replace("\\", "\\\\").replace(":", "\\:")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"*:*:*:*:{escaped}\n")
        yield {**env, "PGPASSFILE": name}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed; install PostgreSQL's client tools of the server's version "
            "(Debian: apt install postgresql-client)"
        )
    return found


def _pg_dump(url: str, target_path: Path, say: Progress) -> int:
    target = pg_target(url)
    partial = _partial(target_path)
    command = [pg_tool("pg_dump"), "--format=custom", "--verbose", "--no-password", f"--file={partial}"]
    if target.schema:
        command.append(f"--schema={target.schema}")
    command.append(f"--dbname={target.url}")
    first_error = last_line = ""  # what says why, if pg_dump fails
    with pg_environment(target) as env, _writing(partial, say), _removed_on_failure(partial):
        _private_file(partial)  # pg_dump writes into it and keeps its mode
        try:
            proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, errors="replace")  # fmt: skip
        except OSError as err:
            raise BackupError(f"cannot start pg_dump: {err.strerror or err}") from err
        assert proc.stderr is not None
        tables = 0
        with proc:
            for line in proc.stderr:
                line = line.strip()
                found = PG_TABLE_RE.search(line)
                if found:
                    tables += 1
                    say(f"dumping table {found.group(1)} ({tables} so far)")
                elif line:
                    last_line = line
                    if "error:" in line and not first_error:
                        first_error = line  # the first error pg_dump names is the cause; later ones follow from it
            code = proc.wait(PG_DUMP_TIMEOUT_S)
        if code != 0:
            why = (first_error or last_line).removeprefix("pg_dump: ").removeprefix("error: ") or f"exit status {code}"
            raise BackupError(f"pg_dump of {target.shown} failed: {why}")
        _fsync(partial)
        os.replace(partial, target_path)
        _fsync(target_path.parent)
    say(f"dumped {tables} tables")
    return target_path.stat().st_size
