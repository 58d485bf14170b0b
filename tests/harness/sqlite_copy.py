"""A consistent copy of an SQLite file that may be open and written meanwhile, as a backup tool takes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def backup(live: Path | str, copy: Path | str) -> None:
    """Copy ``live`` to ``copy`` with SQLite's online backup (``copy`` replaced whole)."""
    src, dst = sqlite3.connect(live), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
