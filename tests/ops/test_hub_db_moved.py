"""The SQLite hub database deleted, or a backup put in its place, while the hub runs (a restore onto a running hub).

SQLite goes on writing to the file it opened, so the hub used to acknowledge syncs into a file nothing would open
again: deleted, the ledger was gone at the next start (a new, empty hub); replaced, the hub served and backed up
two different databases. Now it notices within seconds, stops serving, saves what it holds and exits 1 (its
service starts it again on the file its path names).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

from hub.server import DB_FILE_CHECK_S
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, decode_sync_response, encode_sync_request
from tests.harness.clock import RECENT_MS
from tests.harness.commands import run_hub
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.hub.event_factory import EventFactory

EXIT_WAIT_S = 30.0  # the hub checks its file every 2 s


class Store:
    """One agent sending its next events over real HTTP, as the hub acknowledges them."""

    def __init__(self, credential: Credential) -> None:
        self.credential = credential
        self.events = EventFactory(credential.agent_id, 1, "S1", "A", base_ms=RECENT_MS)

    def sync(self, hub: HubProcess, n: int) -> int:
        """Send the next ``n`` events; the hub's acknowledged mark."""
        batch = tuple(self.events(Kind.RECEIVE, 1, at_ms=self.events.seq + 1) for _ in range(n))
        request = urllib.request.Request(
            f"{hub.url}/v1/sync",
            data=encode_sync_request(SyncRequest(self.credential.agent_id, 1, batch)),
            headers={"Authorization": f"Bearer {self.credential.token}", "Content-Type": MSGPACK_CONTENT_TYPE},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return decode_sync_response(answer.read()).hwm


def events_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def exit_status(hub: HubProcess) -> int:
    assert hub.proc is not None
    try:
        return hub.proc.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the hub went on serving a database whose file is gone: {hub.run_log[-2000:]}") from None


def test_a_hub_database_deleted_while_the_hub_runs_is_written_back_and_the_hub_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    store = Store(add_credential(db, "S1"))
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0)
    try:
        hub.start()
        assert store.sync(hub, 4) == 4
        db.unlink()  # a cleanup script, a wrong rm
        assert store.sync(hub, 2) == 6  # acknowledged: it must survive
        assert exit_status(hub) == 1  # it used to serve on, and start empty next time
        assert "was deleted while the hub ran" in hub.run_log
        assert "back to" in hub.run_log and "(6 events)" in hub.run_log
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()  # the old WAL is not read into it
        assert events_in(db) == 6
        hub.start()  # as its service does
        assert store.sync(hub, 1) == 7  # the same hub, nothing lost
        assert hub.stop() == 0
    finally:
        hub.close()
    assert events_in(db) == 7


def test_a_backup_put_back_while_the_hub_runs_stops_it_and_keeps_what_it_held(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    store = Store(add_credential(db, "S1"))
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0)
    try:
        hub.start()
        assert store.sync(hub, 3) == 3
        backup = run_hub("backup", "--db", str(db), "--to", str(tmp_path / "backup.db"))
        assert backup.returncode == 0, backup.stderr
        assert store.sync(hub, 3) == 6
        # docs/operations.md's restore, without its first step (systemctl stop shelfsync-hub); the -wal and
        # -shm files of the running hub are left where they are, too
        os.replace(tmp_path / "backup.db", db)
        assert exit_status(hub) == 1
        log = hub.run_log
        assert "was replaced while the hub ran" in log and "(6 events) is saved as" in log
        (saved,) = tmp_path.glob("hub.db.replaced-*")
        assert events_in(saved) == 6  # every acknowledged event, for the operator
        assert not Path(f"{db}-wal").exists()  # the running hub's WAL would have been read into the backup
        assert events_in(db) == 3  # the backup, as the operator put it there
        hub.start()  # on the backup: agents send again what it lacks (tests/faults/test_faults_restore.py)
        assert hub.stop() == 0
    finally:
        hub.close()


def test_a_backup_copied_over_the_file_in_place_stops_the_hub_and_nothing_more_goes_into_it(tmp_path: Path) -> None:
    """``cp backup.db hub.db`` while the hub runs keeps the inode the hub watched, and SQLite went on reading the
    hub's -wal over the backup's pages (and copying it in at its checkpoints): a mix of two databases, served.
    Now the hub notices within seconds, stops, copies nothing more into the file and keeps its -wal aside."""
    db = tmp_path / "hub.db"
    store = Store(add_credential(db, "S1"))
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0)
    try:
        hub.start()
        assert store.sync(hub, 3) == 3
        backup = run_hub("backup", "--db", str(db), "--to", str(tmp_path / "backup.db"))
        assert backup.returncode == 0, backup.stderr
        assert store.sync(hub, 3) == 6
        for _ in range(2):  # other commands' opens draw new home tokens and checkpoint them: not a copy
            assert run_hub("agent", "add", "--db", str(db), "--location", "S2").returncode == 0
        time.sleep(3 * DB_FILE_CHECK_S)
        assert hub.running and store.sync(hub, 0) == 6, hub.run_log
        inode = db.stat().st_ino
        shutil.copyfile(tmp_path / "backup.db", db)  # in place: the same file, written over
        assert db.stat().st_ino == inode
        assert exit_status(hub) == 1  # it used to serve on, a mix of the backup and its -wal
        log = hub.run_log
        assert "was written over in place while the hub ran" in log, log
        assert db.read_bytes() == (tmp_path / "backup.db").read_bytes()  # not one page of its -wal went in
        assert not Path(f"{db}-wal").exists()
        kept_all = list(tmp_path.glob("hub.db.overwritten-*-wal"))
        assert len(kept_all) == 1, (sorted(p.name for p in tmp_path.iterdir()), log[-3000:])
        (kept,) = kept_all
        assert kept.stat().st_size > 0
        hub.start()  # on the backup, as restored: agents send again what it lacks
        assert "begins a new history" in hub.run_log  # taken for the restored copy it is
        assert hub.stop() == 0
    finally:
        hub.close()
    assert events_in(db) == 3


def killed_with_its_wal(tmp_path: Path, db: Path, store: Store) -> None:
    """Serve ``db``, sync, SIGKILL the hub: its -wal stays beside the file, holding its last commits."""
    hub = HubProcess(tmp_path / "killed.log", db=db, port=0)
    try:
        hub.start()
        assert store.sync(hub, 3) > 0
        hub.kill()
    finally:
        hub.close()
    assert Path(f"{db}-wal").stat().st_size > 32


def test_a_stale_wal_beside_a_restored_copy_is_refused_not_replayed_into_it(tmp_path: Path) -> None:
    """The restore's first step forgotten after a hub was killed: the old database's -wal beside the restored
    copy used to be replayed into it at the next start. The hub refuses, in one sentence, and changes nothing."""
    db = tmp_path / "hub.db"
    store = Store(add_credential(db, "S1"))
    assert run_hub("backup", "--db", str(db), "--to", str(tmp_path / "backup.db")).returncode == 0
    plain = tmp_path / "plain.db"
    shutil.copyfile(db, plain)  # a copy taken with cp while no hub ran: in WAL mode, with its home of then
    killed_with_its_wal(tmp_path, db, store)
    wal = Path(f"{db}-wal").read_bytes()
    for restored in (tmp_path / "backup.db", plain):
        shutil.copyfile(restored, tmp_path / "restored.db")
        os.replace(tmp_path / "restored.db", db)  # docs/operations.md's restore, without moving the -wal aside
        run = run_hub("serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0")
        errors = [line for line in run.stderr.splitlines() if line.startswith("shelfsync-hub: ")]
        assert run.returncode == 2 and errors == run.stderr.strip().splitlines()[-1:], (restored, run.stderr)
        assert "has a -wal file beside it that was not written for it" in errors[0], errors
        assert f"mv {db}-wal {db}-shm replaced/" in errors[0]
        assert db.read_bytes() == restored.read_bytes() and Path(f"{db}-wal").read_bytes() == wal  # untouched
    Path(f"{db}-wal").unlink()  # moved aside, as the sentence says
    Path(f"{db}-shm").unlink(missing_ok=True)
    assert events_in(db) == 0  # the plain copy, as it was taken: the -wal's events are not in it


def test_a_hub_killed_with_its_own_wal_starts_again_with_every_event(tmp_path: Path) -> None:
    """Its own -wal is the file's: replayed as SQLite always does, nothing refused."""
    db = tmp_path / "hub.db"
    store = Store(add_credential(db, "S1"))
    killed_with_its_wal(tmp_path, db, store)
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0)
    try:
        hub.start()
        assert store.sync(hub, 1) == 4
        assert hub.stop() == 0
    finally:
        hub.close()
    assert events_in(db) == 4
