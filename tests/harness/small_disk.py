"""Real small file systems for tests: a 1 MiB tmpfs filled to its end, and tmpfs mounts made read-only or taken away (root on Linux);
and one SQLite file made full while the disk has room (``sqlite_full``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs) at tmp_path/disk, for a disk that fills up; needs root to mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block; the file that does it (delete it to make room again)."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full
    return ballast


def grow(disk: Path, size: str) -> None:
    """Give the small disk at ``disk`` (mounted by ``small_disk``) ``size`` in all, its files kept: an operator
    who makes room by growing the volume."""
    grown = subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(disk)], capture_output=True, check=False, text=True
    )
    assert grown.returncode == 0, grown.stderr


def sqlite_full(conn: sqlite3.Connection) -> None:
    """The SQLite file of ``conn`` may grow no more (SQLite's own SQLITE_FULL, as a full disk answers) while the
    files beside it can: its free pages filled, its page count capped where it stands.
    ``PRAGMA max_page_count = 1073741823`` on the same connection gives it room again."""
    conn.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for size in (1024, 128, 16, 1):
        try:
            while True:
                conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
        except sqlite3.OperationalError:
            pass


class Mounts:
    """Real tmpfs mounts a test makes, turns read-only, writable, or takes away; all unmounted at its end."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def tmpfs(self, at: Path, size: str = "1m") -> Path:
        """A tmpfs of ``size`` (1 MiB unless told) mounted at ``at`` (made if missing)."""
        at.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(at))
        self.made.append(at)
        return at

    def bind(self, source: Path, at: Path) -> Path:
        """``source`` shown at ``at`` too (``mount --bind``): a share that appears with its files already in it."""
        _mount("--bind", str(source), str(at))
        self.made.append(at)
        return at

    def read_only(self, at: Path) -> None:
        """The file system at ``at`` remounted read-only (refused, busy, while a process holds a file there open
        for writing: use ``read_only_view`` then)."""
        _mount("-o", "remount,ro", str(at))

    def read_only_view(self, at: Path) -> None:
        """``at`` read-only from now on, to every process, whatever they hold open there: a read-only view of the
        same folder mounted over it (``mount --bind`` and ``remount,bind,ro``); ``umount(at)`` takes it away again."""
        self.bind(at, at)
        _mount("-o", "remount,bind,ro", str(at))

    def writable(self, at: Path) -> None:
        _mount("-o", "remount,rw", str(at))

    def umount(self, at: Path) -> None:
        """Taken away at once (``umount -l``): what a share that drops off the network looks like to its users."""
        _mount_command("umount", "-l", str(at))
        self.made.remove(at)


def _mount(*args: str) -> None:
    _mount_command("mount", *args)


def _mount_command(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    """Real tmpfs mounts (``Mounts``) for drop folders on shares and read-only disks; needs root on Linux."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    made = Mounts()
    try:
        yield made
    finally:
        for at in reversed(made.made):
            subprocess.run(["umount", "-l", str(at)], capture_output=True, check=False)
