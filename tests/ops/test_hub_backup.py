"""``shelfsync-hub backup`` while the hub runs and takes writes, then the restore procedure of
docs/operations.md ("Backup and restore"), end to end on SQLite and on PostgreSQL.

A load thread is one agent sending its events in order over real HTTP. A consistent copy holds exactly the
events 1 … k of that agent for some k (never a gap, never half a batch) and the counts those k events make;
after a restore, the agent's resend of k+1 … n brings the restored hub to exactly the original's counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.commands import COMMAND_TIMEOUT_S, hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until
from tests.harness.pg import PG_URL
from tests.harness.small_disk import fill

LOCATION = "S1"
SKUS = ("SKU-A", "SKU-B", "SKU-C", "SKU-D")
PRELOAD_EVENTS = 30_000  # several MiB of database: the SQLite copy takes many steps
PRELOAD_BATCH = 2_000
LOAD_BATCH = 25
LOAD_TIMEOUT_S = 120.0
PG_ADMIN_URL = PG_URL  # the test server's database: the one these tests create theirs from


class SyncLoad:
    """One agent (epoch 1) sending its events in seq order; event i is known to the test for every i."""

    def __init__(self, agent_id: str, token: str) -> None:
        self.agent_id, self.token = agent_id, token
        self.base_ms = wall_ms_now()
        self.events: list[StockEvent] = []
        self.acked = 0  # the hub's mark at its last answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def event(self, seq: int) -> StockEvent:
        while len(self.events) < seq:
            i = len(self.events) + 1
            self.events.append(StockEvent(
                event_id=new_event_id(), agent_id=self.agent_id, epoch=1, seq=i, location=LOCATION,
                sku=SKUS[i % len(SKUS)], kind=Kind.RECEIVE if i % 3 else Kind.SALE, qty=3 if i % 3 else -1,
                occurred_at=pack_hlc(self.base_ms + i // 50, i % 50), wall_ms=self.base_ms + i // 50, source="pos:test",
            ))  # fmt: skip
        return self.events[seq - 1]

    def expected(self, upto: int) -> dict[str, int]:
        """On hand per SKU after events 1 … ``upto``."""
        totals: Counter[str] = Counter()
        for ev in self.events[:upto]:
            totals[ev.sku] += ev.qty
        return dict(totals)

    def send(self, url: str, first: int, last: int) -> int:
        """Events ``first`` … ``last`` in one request; the hub's mark."""
        body = encode_sync_request(SyncRequest(
            agent_id=self.agent_id, epoch=1, events=tuple(self.event(s) for s in range(first, last + 1)),
            acked_seq=first - 1,
        ))  # fmt: skip
        req = urllib.request.Request(f"{url}/v1/sync", data=body, method="POST", headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": MSGPACK_CONTENT_TYPE,
        })  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = decode_sync_response(resp.read())
        assert not answer.rejected, answer.rejected[:1]
        return answer.hwm

    def catch_up(self, url: str, upto: int, batch: int) -> None:
        """Send from the hub's mark to ``upto`` (a restored hub asks for what it lacks)."""
        mark = self.send(url, 1, 0) if self.acked == 0 else self.acked
        while mark < upto:
            mark = self.send(url, mark + 1, min(upto, mark + batch))
        self.acked = mark

    def start(self, url: str) -> None:
        def run() -> None:
            try:
                while not self._stop.is_set():
                    self.acked = self.send(url, self.acked + 1, self.acked + LOAD_BATCH)
            except BaseException as err:  # noqa: BLE001 - reported by stop()
                self.error = err

        self._thread = threading.Thread(target=run, name="sync-load", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=LOAD_TIMEOUT_S)
        assert self.error is None, self.error
        return self.acked


def get_json(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def hub_counts(url: str, token: str) -> dict[str, int]:
    rows = get_json(f"{url}/v1/locations/{LOCATION}/counts", token)["counts"]
    return {r["sku"]: r["on_hand"] for r in rows}


def hub_mark(url: str, token: str, agent_id: str) -> int:
    (agent,) = [a for a in get_json(f"{url}/v1/agents", token)["agents"] if a["agent_id"] == agent_id]
    return int(agent["epochs"][-1]["hwm"]) if agent["epochs"] else 0


def credential(env: dict[str, str], *args: str) -> tuple[str, str]:
    if "://" not in env["SHELFSYNC_HUB_DB"] and not Path(env["SHELFSYNC_HUB_DB"]).exists():  # a new SQLite file
        new_hub_db(env["SHELFSYNC_HUB_DB"], env=env)
    run = run_hub("agent", "add", *args, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    fields = dict(line.split(": ", 1) for line in lines if line.startswith(("agent_id: ", "credential: ")))
    return fields["agent_id"], fields["credential"]


def backup_under_load(env: dict[str, str], served: HubProcess, load: SyncLoad, to: Path) -> tuple[int, int, str]:
    """The backup command run while ``load`` writes: (mark before, mark after, its stdout)."""
    load.catch_up(served.url, PRELOAD_EVENTS, PRELOAD_BATCH)
    load.start(served.url)
    wait_until("the load committing", lambda: load.acked >= PRELOAD_EVENTS + 10 * LOAD_BATCH, LOAD_TIMEOUT_S)
    before = load.acked
    run = run_hub("backup", "--to", str(to), env=env)
    after = load.acked
    wait_until("more load after the backup", lambda: load.acked > after + 4 * LOAD_BATCH, LOAD_TIMEOUT_S)
    load.stop()
    assert run.returncode == 0, run.stderr
    assert after > before, "the hub took no writes while the backup ran"
    return before, after, run.stdout + run.stderr


def check_restored(url: str, token: str, load: SyncLoad, before: int, after: int, final: dict[str, int]) -> None:
    """The restored hub holds a whole prefix 1 … k of the agent's events and their counts; resent the rest,
    it counts exactly what the original counts."""
    k = hub_mark(url, token, load.agent_id)
    assert before <= k <= after and k % LOAD_BATCH == PRELOAD_EVENTS % LOAD_BATCH  # a whole batch, never half
    assert hub_counts(url, token) == load.expected(k)
    load.acked = k
    load.catch_up(url, len(load.events), PRELOAD_BATCH)
    assert hub_counts(url, token) == final == load.expected(len(load.events))


# --- SQLite -------------------------------------------------------------------------------------


def test_sqlite_backup_under_write_load_then_restore_into_a_new_hub(tmp_path: Path) -> None:
    db = tmp_path / "live" / "hub.db"
    db.parent.mkdir()
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    agent_id, token = credential(env, "--location", LOCATION)
    load = SyncLoad(agent_id, token)
    backups = tmp_path / "backups"
    backups.mkdir()
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        before, after, said = backup_under_load(env, served, load, backups)
        final = hub_counts(served.url, token)
        assert served.stop() == 0
    assert final == load.expected(load.acked)

    (copy,) = backups.glob("hub-*.db")  # --to a directory: a timestamped file in it
    assert [p.name for p in backups.iterdir()] == [copy.name]  # no partial file, no -wal beside it
    assert "shelfsync-hub backup: copied" in said and "(100%)" in said
    assert f"backed up the sqlite hub database to {copy}" in said
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # a backup is private: it holds every credential's hash
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    assert f"{events:,} events" in said

    # The restore procedure of docs/operations.md: the copy becomes the database of a new hub.
    restored = tmp_path / "restored" / "hub.db"
    restored.parent.mkdir()
    shutil.copyfile(copy, restored)
    renv = hub_env(SHELFSYNC_HUB_DB=str(restored), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    with HubProcess(tmp_path / "restored.log", env=renv) as again:
        assert hub_mark(again.url, token, agent_id) == events  # every event of the copy, and only whole batches
        check_restored(again.url, token, load, before, after, final)
        assert again.stop() == 0


def test_the_backup_replaces_a_file_only_once_the_new_copy_is_whole(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    credential(env, "--location", LOCATION)
    target = tmp_path / "nightly.db"
    target.write_bytes(b"yesterday's copy")
    run = run_hub("backup", "--to", str(target), env=env)
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (1,)
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.db", "hub.db.feed-home", "nightly.db"]


def test_a_backup_never_replaces_a_live_database_given_as_its_target(tmp_path: Path) -> None:
    """Found black-box: with --db and --to swapped (backup --db nightly.db --to hub.db), the backup replaced the
    served hub.db with the older copy; the hub noticed, saved its own and restarted on the old copy, and a stopped
    hub's database was simply overwritten. A backup copy is never in WAL mode, a hub database (or another program's
    in WAL mode) always is: such a target is refused, whether a hub serves it or not."""
    live = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(live))
    credential(env, "--location", LOCATION)
    old = tmp_path / "nightly.db"
    assert run_hub("backup", "--to", str(old), env=env).returncode == 0
    credential(env, "--location", "S2")  # the live database moves on from the copy
    expected = (
        f"the backup cannot replace {live}: it is a database in use (in WAL mode), not a backup copy, which never "
        "is; check --db and --to"
    )
    with HubProcess(tmp_path / "hub.log", env=env, port=0) as served:
        _refused(run_hub("backup", "--db", str(old), "--to", str(live)), expected)
        assert served.proc is not None and served.proc.poll() is None  # still serving its own database
        assert served.stop() == 0
    before = live.read_bytes()
    _refused(run_hub("backup", "--db", str(old), "--to", str(live)), expected)  # a stopped hub's too
    assert live.read_bytes() == before
    assert "S2" in run_hub("agent", "list", env=env).stdout


def test_a_backup_never_reads_a_wal_that_was_not_written_for_its_database(tmp_path: Path) -> None:
    """Found black-box: a restored copy with the old database's -wal left beside it (the restore's first step
    forgotten) was refused by serve and the agent commands, but backup --db on it replayed that -wal into the copy
    and into the restored file itself (SQLite checkpoints at its close): the mix the hub refuses was made for
    good, and the -wal that told of it was gone."""
    live = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(live))
    credential(env, "--location", LOCATION)
    old = tmp_path / "nightly.db"
    assert run_hub("backup", "--to", str(old), env=env).returncode == 0
    with HubProcess(tmp_path / "hub.log", env=env, port=0) as served:
        credential(env, "--location", "S2")  # the running hub's -wal now holds a credential the copy lacks
        restored = tmp_path / "restored" / "hub.db"
        restored.parent.mkdir()
        shutil.copyfile(old, restored)
        shutil.copyfile(f"{live}-wal", f"{restored}-wal")  # the old database's -wal, as a killed hub left it
        before = restored.read_bytes()
        run = run_hub("backup", "--db", str(restored), "--to", str(tmp_path / "copy.db"))
        _refused(run, f"the hub database {restored} has a -wal file beside it that was not written for it")
        assert restored.read_bytes() == before and Path(f"{restored}-wal").exists()
        assert not (tmp_path / "copy.db").exists()
        live_copy = run_hub("backup", "--db", str(live), "--to", str(tmp_path / "live.db"))  # its own -wal: read
        assert live_copy.returncode == 0, live_copy.stderr
        assert served.stop() == 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "there is no hub database at"),
        ("not-a-hub", "is not a shelfsync hub database"),
        ("onto-itself", "cannot be written over the database it copies"),
        ("no-directory", "the directory"),
        ("unknown-scheme", "unknown database URL scheme 'mysql'"),
    ],
)
def test_a_backup_that_cannot_be_made_is_one_sentence(tmp_path: Path, case: str, expected: str) -> None:
    db, to = tmp_path / "hub.db", tmp_path / "copy.db"
    if case != "missing":
        new_hub_db(db)  # an empty hub database
    if case == "not-a-hub":
        db = tmp_path / "other.db"
        with sqlite3.connect(db) as other:
            other.execute("CREATE TABLE t (x)")
        other.close()
    elif case == "onto-itself":
        to = db
    elif case == "no-directory":
        to = tmp_path / "no" / "copy.db"
    target = "mysql://u:secret@h/db" if case == "unknown-scheme" else str(db)
    run = run_hub("backup", "--db", target, "--to", str(to))
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and expected in lines[0], run.stderr
    assert "secret" not in run.stderr and "Traceback" not in run.stderr


def _refused(run: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and expected in lines[0], run.stderr
    assert run.stdout == "" and "Traceback" not in run.stderr


def test_the_live_databases_wal_shm_and_journal_are_never_a_backup_target(tmp_path: Path) -> None:
    """The hub runs, so its -wal and -shm exist: replacing them loses what it acknowledged at the next hard stop."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    agent_id, token = credential(env, "--location", LOCATION)
    load = SyncLoad(agent_id, token)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        load.catch_up(served.url, 200, 50)
        wal, shm = tmp_path / "hub.db-wal", tmp_path / "hub.db-shm"
        before = {p: (p.stat().st_ino, p.stat().st_size) for p in (wal, shm)}
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "by-symlink").symlink_to(wal)
        os.link(wal, tmp_path / "elsewhere" / "by-hard-link")
        (tmp_path / "linked-dir").symlink_to(tmp_path)
        targets = [wal, shm, tmp_path / "hub.db-journal", tmp_path / "elsewhere" / "by-symlink",
                   tmp_path / "elsewhere" / "by-hard-link", tmp_path / "linked-dir" / "hub.db-wal"]  # fmt: skip
        for target in targets:
            _refused(run_hub("backup", "--to", str(target), env=env), "cannot be written over the database it copies")
        assert {p: (p.stat().st_ino, p.stat().st_size) for p in (wal, shm)} == before
        assert not (tmp_path / "hub.db-journal").exists()
        assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
        load.catch_up(served.url, 250, 50)
        assert served.kill() is not None  # a hard stop: the hub's next start replays its own WAL
    with HubProcess(tmp_path / "again.log", env=env) as again:
        assert hub_mark(again.url, token, agent_id) == 250
        assert hub_counts(again.url, token) == load.expected(250)
        assert again.stop() == 0


def test_the_serving_lock_and_the_feed_home_file_are_never_a_backup_target(tmp_path: Path) -> None:
    """Renamed over the serving lock, a backup would leave the running hub's lock on a file no name leads to, and a
    second hub would take the new one and serve the file beside it; over the feed-home file, it would begin a new
    feed history of a database never restored."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    credential(env, "--location", LOCATION)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        for name in ("hub.db.serving.lock", "hub.db.feed-home"):
            target = tmp_path / name
            before = (target.stat().st_ino, target.read_bytes())
            _refused(run_hub("backup", "--to", str(target), env=env), "cannot be written over")
            assert (target.stat().st_ino, target.read_bytes()) == before
        second = run_hub("serve", env=env)
        assert second.returncode == 2 and "another hub process already serves" in second.stderr, second.stderr
        assert served.stop() == 0


def test_a_target_that_is_not_a_regular_file_is_refused_not_replaced(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    credential(env, "--location", LOCATION)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "to-the-pipe").symlink_to(fifo)
    for target in (fifo, tmp_path / "to-the-pipe"):
        _refused(run_hub("backup", "--to", str(target), env=env), f"cannot write the backup to {target}: it is a FIFO")
        assert stat.S_ISFIFO(os.stat(target).st_mode)  # still the FIFO: nothing was renamed over it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.db", "hub.db.feed-home", "pipe", "to-the-pipe"]


def test_a_trailing_slash_names_a_directory_that_must_exist(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    credential(env, "--location", LOCATION)
    missing = tmp_path / "backups"
    run = run_hub("backup", "--to", f"{missing}/", env=env)
    _refused(run, f"cannot write the backup to {missing}/: the directory {missing} does not exist")
    assert not missing.exists()
    missing.mkdir()
    run = run_hub("backup", "--to", f"{missing}/", env=env)
    assert run.returncode == 0, run.stderr
    assert [p.name.startswith("hub-") for p in missing.iterdir()] == [True]


SIGNAL_MID_COPY_TRIES = 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_backup_stopped_by_a_signal_leaves_no_partial_copy(tmp_path: Path, sig: signal.Signals) -> None:
    """systemctl stop (or the unit's timeout) sends SIGTERM, a closed terminal SIGHUP: the copy half made is
    removed, as after Ctrl+C, and the command says it was stopped."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    new_hub_db(db, env=env)
    with sqlite3.connect(db) as conn:  # 40 MiB: ten steps of the copy
        conn.execute("CREATE TABLE ballast (b BLOB)")
        conn.executemany("INSERT INTO ballast VALUES (?)", ((os.urandom(1 << 20),) for _ in range(40)))
    conn.close()
    backups = tmp_path / "backups"
    backups.mkdir()
    for _ in range(SIGNAL_MID_COPY_TRIES):
        proc = subprocess.Popen([sys.executable, "-m", "hub", "backup", "--to", str(backups / "copy.db")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            assert "shelfsync-hub backup: copied 1,024 of" in first, first
            proc.send_signal(signal.SIGSTOP)  # held mid-copy: the signal arrives while the copy is half made
            finished = (backups / "copy.db").exists()  # unless the copy outran this test (a loaded machine)
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not finished:
            break
        for made in backups.iterdir():
            made.unlink()
    else:
        pytest.fail(f"the backup finished before the signal in {SIGNAL_MID_COPY_TRIES} tries; nothing was shown")
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1] == f"shelfsync-hub: stopped by {sig.name}", err
    assert out == "" and list(backups.iterdir()) == []


def test_the_partial_copy_of_a_killed_backup_is_removed_by_the_next_one_and_a_live_ones_kept(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a power cut) leaves ``.copy.db.partial-PID``, which no handler removes: the next
    backup into the directory removes it, its writer's lock being free; a partial whose writer holds it stays."""
    from filelock import FileLock

    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    new_hub_db(db, env=env)
    with sqlite3.connect(db) as conn:  # 40 MiB: ten steps of the copy
        conn.execute("CREATE TABLE ballast (b BLOB)")
        conn.executemany("INSERT INTO ballast VALUES (?)", ((os.urandom(1 << 20),) for _ in range(40)))
    conn.close()
    backups = tmp_path / "backups"
    backups.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "hub", "backup", "--to", str(backups / "copy.db")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "shelfsync-hub backup: copied 1,024 of" in first, first
        proc.kill()
        proc.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    orphan = backups / f".copy.db.partial-{proc.pid}"
    assert orphan.exists()
    live = backups / ".other.db.partial-1"  # a backup still at work: it holds its lock
    live.write_bytes(b"half")
    with FileLock(str(live) + ".lock"):
        run = run_hub("backup", "--to", f"{backups}/", env=env)
        assert run.returncode == 0, run.stderr
        assert not orphan.exists() and not Path(f"{orphan}.lock").exists()
        assert live.exists()
    assert sorted(p.name for p in backups.iterdir() if not p.name.startswith(".other")) == [
        p.name for p in backups.iterdir() if p.name.startswith("hub-")
    ]


def test_a_damaged_backup_put_in_place_is_refused_at_the_first_start_not_served(tmp_path: Path) -> None:
    """A copy damaged since it was made (a bad disk, a torn transfer) is checked when the hub finds it restored:
    one sentence, exit status 2, the file untouched; not served until a request reaches the damaged pages.

    Found: a copy cut short (half of it copied: a full disk, a transfer stopped midway) was refused with SQLite's
    words alone (`cannot open the hub database …: database disk image is malformed`), which said neither that the
    file was damaged nor what to do. Now it is said damaged, and cut short: how long it is and should be."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0")
    credential(env, "--location", LOCATION)
    copy = tmp_path / "copy.db"
    assert run_hub("backup", "--to", str(copy), env=env).returncode == 0
    with sqlite3.connect(copy) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    whole = copy.read_bytes()
    with open(copy, "r+b") as f:  # the events table's first page overwritten: the rest of the file reads well
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    damaged = copy.read_bytes()
    for name in ("hub.db", "hub.db.feed-home"):
        (tmp_path / name).unlink()
    shutil.copyfile(copy, db)
    run = run_hub("serve", env=env, timeout_s=COMMAND_TIMEOUT_S)
    errors = [line for line in run.stderr.splitlines() if line.startswith("shelfsync-hub: ")]
    assert run.returncode == 2 and errors == run.stderr.strip().splitlines()[-1:], run.stderr
    assert f"the hub database {db} is damaged" in errors[0] and "restore another backup" in errors[0], errors
    assert "hub listening" not in run.stderr
    kept = db.read_bytes()
    assert kept[(root - 1) * page_size : root * page_size] == damaged[(root - 1) * page_size : root * page_size]

    cut = (len(whole) // page_size // 2) * page_size
    for name in ("hub.db", "hub.db.feed-home"):
        (tmp_path / name).unlink(missing_ok=True)
    db.write_bytes(whole[:cut])
    for command in (("serve",), ("agent", "list")):
        run = run_hub(*command, env=env, timeout_s=COMMAND_TIMEOUT_S)
        sentence = (
            f"shelfsync-hub: the hub database {db} is damaged: it is {cut:,} bytes, shorter than the {len(whole):,}"
            " its header says (a copy cut short: a full disk, a copy stopped midway), and SQLite reads it as"
            " malformed (database disk image is malformed); restore another backup (docs/operations.md, Backup and"
            " restore)"
        )
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1:] == [sentence], (command, run.stderr)
        assert db.read_bytes() == whole[:cut]  # left as it was


def without_file_override() -> list[str]:
    """The command prefix that runs a command without root's power over file modes (none needed when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("runs as root without setpriv, so a file mode refuses nothing")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_a_path_the_user_may_not_use_is_one_sentence_saying_whose_command_it_is(tmp_path: Path) -> None:
    """The backup run as the operator's own user, not the service's: the database or the target directory is
    closed to it. One sentence naming the file and the user to run as; no bare errno."""
    service = tmp_path / "service"
    service.mkdir()
    db = service / "hub.db"
    new_hub_db(db)
    open_dir = tmp_path / "backups"
    open_dir.mkdir()
    prefix = without_file_override()
    for given_db, to, closed in ((db, open_dir / "copy.db", db), (tmp_path / "mine.db", service / "copy.db", service)):
        if given_db != db:
            shutil.copyfile(db, given_db)
        os.chmod(service, 0o700)
        os.chown(service, 65534, 65534) if os.geteuid() == 0 else None
        try:
            run = subprocess.run([*prefix, sys.executable, "-m", "hub", "backup", "--db", str(given_db), "--to", str(to)],
                                 env=hub_env(), capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S)  # fmt: skip
        finally:
            os.chown(service, os.getuid(), os.getgid()) if os.geteuid() == 0 else None
            os.chmod(service, 0o755)
        _refused(run, "permission denied")
        assert "[Errno" not in run.stderr and "the user the hub runs as" in run.stderr, run.stderr
        assert str(closed) in run.stderr or str(closed.parent) in run.stderr or str(to) in run.stderr, run.stderr
    assert list(open_dir.iterdir()) == []


def test_a_backup_to_a_full_disk_names_that_disk_and_keeps_the_last_good_copy(tmp_path: Path, small_disk: Path) -> None:
    """Found black-box: a backup onto a full 1 MiB file system said "copied 0 of 0 pages (0%)" and then "the backup
    of hub.db failed: database or disk is full", which reads as the hub's own disk being full."""
    db = tmp_path / "hub.db"
    new_hub_db(db)
    last = small_disk / "nightly.db"
    assert run_hub("backup", "--db", str(db), "--to", str(last)).returncode == 0
    before = last.read_bytes()
    fill(small_disk)
    run = run_hub("backup", "--db", str(db), "--to", str(last))
    _refused(run, f"cannot write the backup to {last}: the file system of {small_disk} is full")
    assert "the copy takes about" in run.stderr, run.stderr
    assert last.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast", "nightly.db"]


def test_an_empty_target_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    credential(env, "--location", LOCATION)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _refused(run_hub("backup", "--to", "", env=env, cwd=cwd), "--to is empty")
    assert list(cwd.iterdir()) == []


# --- PostgreSQL ---------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}", query=""))


@pytest.fixture
def pg_databases(pg_server: str) -> Iterator[tuple[str, str]]:
    """Two new databases on the test server (the live hub's and the one it is restored into), dropped after."""
    names = [f"shelfsync_bk_{uuid.uuid4().hex[:12]}", f"shelfsync_rs_{uuid.uuid4().hex[:12]}"]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def drop(name: str) -> None:
        # Not DROP ... WITH (FORCE): an autovacuum worker in the database belongs to no role we are a member of,
        # and FORCE then refuses outright ("must be a member of the role whose process is being terminated").
        # Plain DROP asks autovacuum to leave and waits for it; our own leftover sessions we end ourselves.
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            for _ in range(50):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
                    name,
                )
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    return
                except asyncpg.ObjectInUseError:
                    await asyncio.sleep(0.2)
            raise AssertionError(f"database {name} stayed in use for 10 s after the test")
        finally:
            await conn.close()

    for name in names:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(PG_ADMIN_URL, names[0]), _with_database(PG_ADMIN_URL, names[1])
    finally:
        for name in names:
            asyncio.run(drop(name))


def test_postgres_backup_under_write_load_then_pg_restore_into_a_fresh_database(
    tmp_path: Path, pg_databases: tuple[str, str]
) -> None:
    live, fresh = pg_databases
    password = urlsplit(live).password or ""
    env = hub_env(SHELFSYNC_HUB_DB=live, SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    agent_id, token = credential(env, "--location", LOCATION)
    load = SyncLoad(agent_id, token)
    dump = tmp_path / "hub.dump"
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        before, after, said = backup_under_load(env, served, load, dump)
        final = hub_counts(served.url, token)
        hub_id = get_json(f"{served.url}/healthz", token)["db"]["hub_id"]
        assert served.stop() == 0
    assert "shelfsync-hub backup: dumping table" in said and f"backed up the postgresql hub database to {dump}" in said
    assert f":{password}@" not in said and stat.S_IMODE(dump.stat().st_mode) == 0o600  # a backup is private

    # The restore procedure of docs/operations.md: pg_restore into a new, empty database.
    parts = urlsplit(fresh)
    restore_env = {**os.environ, "PGPASSWORD": password}
    no_password = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    done = subprocess.run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={no_password}", str(dump)],
        env=restore_env, capture_output=True, check=False, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    renv = hub_env(SHELFSYNC_HUB_DB=fresh, SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    with HubProcess(tmp_path / "restored.log", env=renv) as again:
        assert get_json(f"{again.url}/healthz", token)["db"]["hub_id"] == hub_id  # the same hub, restored
        check_restored(again.url, token, load, before, after, final)
        assert again.stop() == 0


def test_pg_dump_gets_the_password_in_a_private_file_never_on_its_command_line(tmp_path: Path) -> None:
    """A stand-in pg_dump on PATH records what it was given: argv without the password, PGPASSFILE with it."""
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    seen = tmp_path / "seen.json"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, stat, sys\n"
        "f = os.environ.get('PGPASSFILE')\n"
        "info = {'argv': sys.argv[1:], 'passfile': open(f).read() if f else None,\n"
        "        'mode': stat.S_IMODE(os.stat(f).st_mode) if f else None, 'pgpassword': os.environ.get('PGPASSWORD')}\n"
        f"open({str(seen)!r}, 'w').write(json.dumps(info))\n"
        "out = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--file='))\n"
        "open(out, 'wb').write(b'PGDMP')\n"
        "print('pg_dump: dumping contents of table \"public.events\"', file=sys.stderr)\n"
    )
    fake.chmod(0o755)
    env = hub_env(
        PATH=f"{fake.parent}:{os.environ['PATH']}", PGPASSWORD="leaked-from-elsewhere",
        SHELFSYNC_HUB_DB="postgresql://hub:pa%3As%5Cw0rd@db.example:5432/hub?sslmode=require&search_path=shop",
    )  # fmt: skip
    run = run_hub("backup", "--to", str(tmp_path / "hub.dump"), env=env)
    assert run.returncode == 0, run.stderr
    info = json.loads(seen.read_text())
    assert not any("pa:s" in a or "pa%3As" in a for a in info["argv"])
    assert "--dbname=postgresql://hub@db.example:5432/hub?sslmode=require" in info["argv"]
    assert "--schema=shop" in info["argv"] and "--format=custom" in info["argv"]
    assert info["passfile"] == "*:*:*:*:pa\\:s\\\\w0rd\n" and info["mode"] == 0o600
    assert info["pgpassword"] is None  # a stray PGPASSWORD of the caller is not passed on
    assert not Path(next(a for a in info["argv"] if a.startswith("--file=")).split("=", 1)[1]).exists()  # renamed
    assert (tmp_path / "hub.dump").read_bytes() == b"PGDMP"
    assert "pa:s" not in run.stdout + run.stderr


def test_a_failing_pg_dump_is_one_sentence_with_its_reason(tmp_path: Path) -> None:
    env = hub_env(SHELFSYNC_HUB_DB="postgresql://nobody:wrong-password@127.0.0.1:1/none")
    run = run_hub("backup", "--to", str(tmp_path / "hub.dump"), env=env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1
    assert "pg_dump of postgresql://nobody@127.0.0.1:1/none failed" in lines[0]
    assert "wrong-password" not in run.stderr and not list(tmp_path.iterdir())


def test_a_partial_copy_with_no_writer_lock_is_named_and_left_as_it_is(tmp_path: Path) -> None:
    """A partial an older shelfsync left (``.NAME.partial-PID``, from before the writer locks) was never removed and
    never mentioned: it stayed forever, unseen, as large as the database. Nothing says its writer is gone — its
    process id may be reused or another host's, an older backup may be writing it now — so it is left as it is,
    and the backup names it in one sentence for the operator."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db))
    new_hub_db(db, env=env)
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / ".hub-old.db.partial-4242"  # an older shelfsync's: no lock file beside it
    old.write_bytes(b"half")
    week_ago = time.time() - 7 * 86_400
    os.utime(old, (week_ago, week_ago))
    run = run_hub("backup", "--to", f"{backups}/", env=env)
    assert run.returncode == 0, run.stderr
    assert old.read_bytes() == b"half"
    said = [line for line in run.stderr.splitlines() if ".hub-old.db.partial-4242" in line]
    assert said == [
        (
            f"shelfsync-hub backup: left as they are: 1 half-made backup(s) in {backups} with no writer lock beside "
            "them (.hub-old.db.partial-4242), made by an older shelfsync, which may still be writing one; remove them "
            "once no backup of an older shelfsync runs into this directory"
        )
    ], run.stderr


def test_a_hub_database_on_a_full_disk_is_said_to_be_on_a_full_disk_and_leaves_nothing_behind(
    tmp_path: Path, small_disk: Path
) -> None:
    """Found black-box: the hub's disk filled up (the hub stopped), and the operator's first commands — a backup to
    another disk, the credentials' list — said only "the backup of hub.db failed: disk I/O error" and "cannot open
    the hub database hub.db: disk I/O error": SQLite cannot make the -shm file it needs to read a database in WAL
    mode. Each try also left a `.hub.db.feed-home.<pid>` file behind on that disk."""
    made = new_hub_db(tmp_path / "hub.db")  # a hub database at rest (its -wal checkpointed away) …
    db = small_disk / "hub.db"
    for name in ("hub.db", "hub.db.feed-home"):  # … moved onto the small disk, as its own directory
        shutil.copy2(Path(made).with_name(name), small_disk / name)
    fill(small_disk)
    to = tmp_path / "rescue.db"
    run = run_hub("backup", "--db", str(db), "--to", str(to))
    _refused(run, f"cannot read the hub database {db}: the file system of {small_disk} is full (")
    assert "SQLite writes a -shm file beside a database in WAL mode even to read it; free space there" in run.stderr
    assert not to.exists()
    for command in (("agent", "list"), ("agent", "add", "--id", "s1", "--location", "S1"), ("init",)):
        run = run_hub(*command, "--db", str(db))
        _refused(run, f"cannot open the hub database {db}: the file system of {small_disk} is full (")
        assert "free space there" in run.stderr, run.stderr
    assert sorted(p.name for p in small_disk.iterdir() if p.name.startswith(".")) == []
    (small_disk / "ballast").unlink()  # room again: every command works on the database as it was
    assert run_hub("backup", "--db", str(db), "--to", str(to)).returncode == 0
    assert run_hub("agent", "list", "--db", str(db)).returncode == 0
