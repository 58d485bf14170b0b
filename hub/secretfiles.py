"""Files an operator gives the hub a secret in — ``database_url_file`` (the database's password), ``tls_key``, a
webhook's or a channel's ``secret_file`` — checked as they are read: one readable by every user of the machine is
said in one WARNING, at every start and every command that reads it, so a ``cp`` or an ``echo >`` under the default
umask (0644) does not leave the password open without anyone knowing. Nothing is refused: the hub reads it as ever.
Group read is fine (docs/operations.md: owner root, group shelfsync, mode 0640). POSIX only; Windows has no mode
bits that say this.

Public API::

    warn_if_open(fd, path, what)    # fd: the open file's descriptor; what: "the database's password" …
    warn_if_path_open(path, what)   # the same, by the file's name (a file another part of the process holds open)
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def warn_if_open(fd: int, path: str | Path, what: str) -> None:
    """One WARNING when the file open at ``fd`` (read from ``path``) may be read by every user of this machine."""
    if os.name != "posix":
        return
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return
    _warn(mode, path, what)


def warn_if_path_open(path: str | Path, what: str) -> None:
    """``warn_if_open`` by the file's name, for a file this process must not open and close a descriptor of (a
    SQLite database: closing any descriptor of it drops the locks SQLite holds on it in this process)."""
    if os.name != "posix":
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    _warn(mode, path, what)


def _warn(mode: int, path: str | Path, what: str) -> None:
    if mode & stat.S_IROTH:
        log.warning(
            "%s is readable by every user of this machine (mode %04o), and it holds %s: make it readable by its "
            "owner and the hub's group only (chmod o-rwx %s)",
            path, stat.S_IMODE(mode), what, path,
        )  # fmt: skip
