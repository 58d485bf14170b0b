"""Whether the SQLite hub database file is the one its -wal and its feed-home token belong to, read from the file
alone, never through SQLite's own view of it.

SQLite ties no -wal to its database: a -wal beside a file is replayed into it at the next open, whatever file it
was written for. A restored copy put in place with the old database's -wal beside it (the restore's first step
forgotten, or a hub killed before it could remove its -wal) used to receive the old database's last commits: a
mix of two databases. And a copy written over the file in place (``cp backup.db hub.db``) while the hub runs
keeps the inode the hub watches, while SQLite goes on reading the hub's own -wal over it.

Two marks tell a file apart from the one a -wal was written for, read before SQLite opens it:

* the file's header (bytes 18 and 19): 2 in WAL mode; a copy made by ``shelfsync-hub backup`` is a self-contained
  rollback-journal file (1), which no -wal belongs to;
* the database's home (``meta.feed_history_home``: ``sqlite:<dev>:<ino>:<token>``) as the file alone holds it (read
  with ``immutable=1``, which ignores the -wal): it must name this file's inode and a token the feed-home token
  file holds (``hub.storage.sqlite.schema``). Each open checkpoints its new home into the file before it lets go of
  the old token, so a file at rest carries a token the token file holds.

The home is compared only when nobody has the database open (nobody holds a lock on its -shm, asked with
``F_GETLK``, Linux): a -wal in use is the live database's, and a hub's home being checkpointed meanwhile would be
read half-way.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import sys
from pathlib import Path
from urllib.parse import quote

from hub.storage.feed import FEED_HOME_KEY

HEADER_BYTES = 100
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MODE = b"\x02\x02"  # header bytes 18 and 19 (write and read format versions) of a database in WAL mode
ROLLBACK_MODE = b"\x01\x01"
WAL_MAGIC = (0x377F0682, 0x377F0683)  # the first 4 bytes of a -wal, big-endian
WAL_HEADER_BYTES = 32
SHM_DMS_BYTE = 128  # os_unix.c: every connection holds a read lock on this byte of the -shm while it is open
TOKEN_FILE_SUFFIX = ".feed-home"


def header(path: Path) -> bytes | None:
    """The first 100 bytes of the database file; None when it has fewer or cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(HEADER_BYTES)
    except OSError:
        return None
    return data if len(data) == HEADER_BYTES and data.startswith(SQLITE_MAGIC) else None


def home_in_file(path: Path) -> str | None:
    """The database's home as the file alone holds it (its -wal ignored); None when it has none. Raises
    ``sqlite3.Error`` when the file cannot be read as a database (it is being written, say)."""
    conn = sqlite3.connect(f"file:{quote(os.fspath(path))}?immutable=1", uri=True)
    try:
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if has_meta is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (FEED_HOME_KEY,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


UNREADABLE = object()  # home_in_file_apart: the file could not be read as a database
HOME_READ_TIMEOUT_S = 10.0
_HOME_READER = """
import json, sqlite3, sys, urllib.parse
try:
    conn = sqlite3.connect("file:" + urllib.parse.quote(sys.argv[1]) + "?immutable=1", uri=True)
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (sys.argv[2],)).fetchone() if has_meta else None
    print(json.dumps({"home": None if row is None else str(row[0])}))
except sqlite3.Error:
    print(json.dumps({}))
"""


async def home_in_file_apart(path: Path) -> str | None | object:
    """``home_in_file`` read by a child process, for a process that has the database open (see ``wal_in_use``
    for why it may not read the file itself); ``UNREADABLE`` when it cannot be told."""
    import asyncio
    import json

    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _HOME_READER, os.fspath(path), FEED_HOME_KEY,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return UNREADABLE
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), HOME_READ_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return UNREADABLE
    try:
        answer = json.loads(out)
    except ValueError:
        return UNREADABLE
    if not isinstance(answer, dict) or "home" not in answer:
        return UNREADABLE
    home = answer["home"]
    return home if home is None or isinstance(home, str) else UNREADABLE


def token_file(path: Path) -> Path:
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + TOKEN_FILE_SUFFIX)


def file_tokens(path: Path) -> list[str] | None:
    """The tokens the feed-home token file beside ``path`` holds; None when there is none or it cannot be read."""
    try:
        return token_file(path).read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return None


def own_place(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"sqlite:{st.st_dev}:{st.st_ino}"


def foreign_home(path: Path, home: str | None, tokens: list[str] | None) -> str | None:
    """Why ``home`` (as the file holds it) is not this file's, or None. A home of the older form (the inode alone)
    and a file without a token file are judged by the inode alone."""
    if home is None:
        return None  # a new database, or a copy made by backup (whose header says so)
    place = own_place(path)
    if home.count(":") >= 3:
        where, _, token = home.rpartition(":")
    else:
        where, token = home, ""
    if place is not None and where != place:
        return "it was copied from another file"
    if token and tokens is not None and token not in tokens:
        return f"it holds an older home token than {token_file(path).name}"
    return None


def wal_in_use(path: Path) -> bool | None:
    """Whether another process has the database open (holds its lock on the -shm); None: cannot tell here.

    Only for a process that has not opened the database itself: closing the descriptor opened to ask drops the
    process's own POSIX locks on the -shm."""
    if not sys.platform.startswith("linux") or struct.calcsize("l") != 8:
        return None
    import fcntl

    shm = path.with_name(path.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no one has it open: an open connection keeps its -shm
    except OSError:
        return None
    try:
        asked = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, SHM_DMS_BYTE, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, asked)
    except OSError:
        return None
    finally:
        os.close(fd)
    return bool(struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK)


def has_wal(path: Path) -> bool:
    """Whether a -wal SQLite would replay lies beside ``path``: a valid header and at least one frame after it."""
    wal = path.with_name(path.name + "-wal")
    try:
        with open(wal, "rb") as f:
            head = f.read(WAL_HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == WAL_HEADER_BYTES and struct.unpack(">I", head[:4])[0] in WAL_MAGIC and size > WAL_HEADER_BYTES


def foreign_wal(path: Path) -> str | None:
    """Why the -wal beside the database ``path`` was not written for it (a restore or a copy put it there), or None
    when it is its own, there is none, or it cannot be told."""
    if not has_wal(path):
        return None
    head = header(path)
    if head is None:
        return None  # a new database (SQLite begins it from its -wal) or no database: SQLite says so
    if head[18:20] == ROLLBACK_MODE:
        return "the database is a self-contained copy (such as shelfsync-hub backup makes), which no -wal belongs to"
    if wal_in_use(path) is not False:
        return None  # the live database's -wal, or this platform cannot tell
    try:
        home = home_in_file(path)
    except sqlite3.Error:
        return None
    why = foreign_home(path, home, file_tokens(path))
    return None if why is None else f"the database is a restored or copied file ({why})"


def keep_aside(path: Path, suffix: str) -> list[Path]:
    """Rename the -wal and -shm beside ``path`` to ``<name><suffix>-wal`` / ``-shm`` (kept, never deleted)."""
    kept = []
    for side in ("-wal", "-shm"):
        source = path.with_name(path.name + side)
        target = path.with_name(path.name + suffix + side)
        with contextlib.suppress(FileNotFoundError):
            os.replace(source, target)
            kept.append(target)
    return kept
