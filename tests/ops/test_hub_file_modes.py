"""The files a hub writes hold its credentials' hashes and the business's ledger: made by the hub outside systemd,
under the default umask (0022), they are its owner's alone (docs/operations.md, "Files the hub writes"). An
existing database keeps its mode; one every user may read is said in one WARNING."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.commands import run_hub
from tests.harness.hub_process import HubProcess

OPEN_UMASK = 0o022  # the default umask of a login shell: files 0644


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The hub's commands run under the default umask, as an operator's shell starts them outside systemd."""
    old = os.umask(OPEN_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_hub_served_under_the_default_umask_writes_files_only_its_owner_can_read(
    tmp_path: Path, open_umask: None
) -> None:
    db = tmp_path / "hub.db"
    with HubProcess(tmp_path / "hub.log", db=db, port=0):
        added = run_hub("agent", "add", "--db", str(db), "--location", "S1")
        assert added.returncode == 0, added.stderr
        written = {p.name: mode(p) for p in tmp_path.iterdir() if p.name.startswith("hub.db") and p.is_file()}
        assert {"hub.db", "hub.db-wal", "hub.db-shm", "hub.db.feed-home"} <= set(written), written
        files = {name: m for name, m in written.items() if not name.endswith(".serving.lock")}
        assert files == dict.fromkeys(files, 0o600), files
    backed = run_hub("backup", "--db", str(db), "--to", str(tmp_path / "copy.db"))
    assert backed.returncode == 0, backed.stderr
    assert mode(tmp_path / "copy.db") == 0o600
    assert "readable by every user" not in backed.stderr + added.stderr


def test_init_under_the_default_umask_makes_a_database_only_its_owner_can_read(
    tmp_path: Path, open_umask: None
) -> None:
    db = tmp_path / "hub.db"
    done = run_hub("init", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert (mode(db), mode(tmp_path / "hub.db.feed-home")) == (0o600, 0o600)


def test_an_existing_database_keeps_its_mode_and_one_every_user_may_read_is_warned_of(
    tmp_path: Path, open_umask: None
) -> None:
    db = tmp_path / "hub.db"
    assert run_hub("init", "--db", str(db)).returncode == 0
    os.chmod(db, 0o640)  # as docs/operations.md restores one: the hub's group may read it
    listed = run_hub("agent", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    assert mode(db) == 0o640 and "readable by every user" not in listed.stderr
    os.chmod(db, 0o644)  # copied in by hand under the default umask
    listed = run_hub("agent", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    warned = [line for line in listed.stderr.splitlines() if "readable by every user" in line]
    assert len(warned) == 1, listed.stderr
    assert "WARNING" in warned[0] and str(db) in warned[0] and f"chmod o-rwx {db}" in warned[0], warned[0]
    assert mode(db) == 0o644  # the operator's to change
