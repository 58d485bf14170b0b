"""A change-feed cursor kept across a restore of the hub's database is refused (410), not read on.

After a restore the hub hands out again the change ids it had given out since the backup, to other changes; a
consumer resuming from a cursor it kept would skip the new changes numbered below it. Real hub processes on a
real SQLite file (and on PostgreSQL, restored with pg_restore into a new database): take a cursor, back up,
write more, restore, write different changes, then resume with the old cursor.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from protocol import MSGPACK_CONTENT_TYPE, Kind, StockEvent, SyncRequest, encode_sync_request, new_event_id, pack_hlc
from protocol import feed as wire
from tests.harness.clock import RECENT_MS
from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.ops.test_hub_backup import pg_databases  # noqa: F401  (the fixture: two new PostgreSQL databases)

TIMEOUT_S = 10.0


def credential(env: dict[str, str], *args: str) -> tuple[str, str]:
    run = run_hub("agent", "add", *args, env=env)
    assert run.returncode == 0, run.stderr
    fields = dict(line.split(": ", 1) for line in run.stdout.splitlines() if line.startswith(("agent_id", "credential")))
    return fields["agent_id"], fields["credential"]


def sync(url: str, agent: tuple[str, str], location: str, seqs: range, sku: str) -> None:
    agent_id, token = agent
    events = tuple(
        StockEvent(event_id=new_event_id(), agent_id=agent_id, epoch=1, seq=seq, location=location, sku=f"{sku}-{seq}",
                   kind=Kind.RECEIVE, qty=seq, occurred_at=pack_hlc(RECENT_MS + seq, 0), wall_ms=RECENT_MS + seq,
                   source="pos:test")
        for seq in seqs
    )  # fmt: skip
    body = encode_sync_request(SyncRequest(agent_id=agent_id, epoch=1, events=events))
    req = urllib.request.Request(f"{url}/v1/sync", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE})  # fmt: skip
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        assert resp.status == 200


def get(url: str, token: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read()) if "json" in resp.headers.get("Content-Type", "") else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def changes(url: str, token: str, cursor: str | None = None) -> dict[str, Any]:
    status, page = get(f"{url}/v1/changes" + ("" if cursor is None else f"?cursor={cursor}"), token)
    assert status == 200, page
    return page


def before_restore(url: str, reader: str, store: tuple[str, str], backup: Any) -> tuple[str, str, str]:
    """Two changes, a cursor, the backup, two changes more and the cursor after them (and its decimal form)."""
    sync(url, store, "S001", range(1, 3), "SKU-A")
    early = changes(url, reader)["cursor"]
    backup()
    sync(url, store, "S001", range(3, 5), "SKU-A")
    late = changes(url, reader, early)
    assert [c["change_id"] for c in late["changes"]] == [3, 4]
    history = wire.feed_history(late["cursor"].partition(".")[2])
    assert len(history) == 12 and late["cursor"].startswith(f"4.{history}") and early.startswith(f"2.{history}")
    return early, late["cursor"], "4"


def after_restore(url: str, reader: str, other: tuple[str, str], early: str, late: str, legacy: str) -> str:
    """Different changes under the same ids; the old cursors are refused with a sentence; a new read works."""
    sync(url, other, "S002", range(1, 4), "SKU-B")  # changes 3, 4 and 5 of the restored hub: not the ones read
    for cursor in (late, early):
        status, problem = get(f"{url}/v1/changes?cursor={cursor}", reader)
        assert status == 410, (cursor, problem)
        assert problem["code"] == "gone" and "earlier history" in problem["detail"], problem
        assert "restored from a backup" in problem["detail"] and "from the start" in problem["detail"], problem
    status, problem = get(f"{url}/v1/changes/stream", reader, {"Last-Event-ID": late})
    assert status == 410 and "Last-Event-ID" in problem["detail"], problem
    fresh = changes(url, reader)  # read again from the start: what the restored hub holds
    assert [(c["change_id"], c["location"]) for c in fresh["changes"]] == [
        (1, "S001"), (2, "S001"), (3, "S002"), (4, "S002"), (5, "S002")]  # fmt: skip
    assert fresh["cursor"].startswith("5.") and fresh["cursor"].partition(".")[2] != late.partition(".")[2]
    old_form = changes(url, reader, legacy)  # the older, decimal form: taken and answered as before
    assert old_form["cursor"] == "5" and [c["change_id"] for c in old_form["changes"]] == [5]
    return fresh["cursor"]


def backup_to(target: Path, env: dict[str, str]) -> None:
    done = run_hub("backup", "--to", str(target), env=env)
    assert done.returncode == 0, done.stderr


def test_a_cursor_kept_across_a_restore_of_the_sqlite_database_is_refused(tmp_path: Path) -> None:
    db, copy = tmp_path / "hub.db", tmp_path / "backup.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    new_hub_db(db, env=env)
    store, other = credential(env, "--location", "S001"), credential(env, "--location", "S002")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        early, late, legacy = before_restore(served.url, reader, store, lambda: backup_to(copy, env))
        assert served.stop() == 0

    # The restore procedure of docs/operations.md: the old database aside, the backup in its place.
    aside = tmp_path / "replaced"
    aside.mkdir()
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).rename(aside / name)
    shutil.copyfile(copy, db)
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        fresh = after_restore(again.url, reader, other, early, late, legacy)
        assert again.stop() == 0
    assert "begins a new history" in again.log

    with HubProcess(tmp_path / "restarted.log", env=env) as restarted:  # a restart is no restore: cursors hold
        assert changes(restarted.url, reader, fresh)["cursor"] == fresh
        assert restarted.stop() == 0


def test_a_cursor_kept_across_a_pg_restore_into_a_new_database_is_refused(
    tmp_path: Path, pg_databases: tuple[str, str]  # noqa: F811
) -> None:
    live, restored = pg_databases
    dump = tmp_path / "hub.dump"
    env = hub_env(SHELFSYNC_HUB_DB=live, SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    store, other = credential(env, "--location", "S001"), credential(env, "--location", "S002")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        early, late, legacy = before_restore(served.url, reader, store, lambda: backup_to(dump, env))
        assert served.stop() == 0

    # The restore procedure of docs/operations.md: pg_restore into a new, empty database.
    parts = urlsplit(restored)
    no_password = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    done = subprocess.run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={no_password}", str(dump)],
        env={**os.environ, "PGPASSWORD": parts.password or ""}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    renv = {**env, "SHELFSYNC_HUB_DB": restored}
    with HubProcess(tmp_path / "restored.log", env=renv) as again:
        fresh = after_restore(again.url, reader, other, early, late, legacy)
        assert again.stop() == 0
    with HubProcess(tmp_path / "restarted.log", env=renv) as restarted:  # a restart is no restore: cursors hold
        assert changes(restarted.url, reader, fresh)["cursor"] == fresh
        assert restarted.stop() == 0


def put_catalog(url: str, admin: str, items: list[dict[str, Any]]) -> int:
    req = urllib.request.Request(f"{url}/v1/catalog", data=json.dumps({"items": items}).encode(), method="PUT",
                                 headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        return int(json.loads(resp.read())["version"])


def catalog(url: str, token: str, tag: str = "") -> tuple[int, str, list[str]]:
    """The status of GET /v1/catalog (with If-None-Match: ``tag`` when given), its ETag and its SKUs."""
    headers = {"Authorization": f"Bearer {token}", **({"If-None-Match": tag} if tag else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/catalog", headers=headers), timeout=TIMEOUT_S) as r:
            return r.status, str(r.headers["ETag"]), sorted(i["sku"] for i in json.loads(r.read())["items"])
    except urllib.error.HTTPError as err:  # urllib raises a 304 too
        return err.code, str(err.headers["ETag"]), []


def test_a_catalog_etag_kept_across_a_restore_is_not_answered_304(tmp_path: Path) -> None:
    """An agent's cached catalog at version 2, the database restored to version 1, then one other change: the
    catalog is at version 2 again with other items, and the agent's If-None-Match must get them, not a 304."""
    db, copy = tmp_path / "hub.db", tmp_path / "backup.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    new_hub_db(db, env=env)
    _, admin = credential(env, "--role", "admin")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        assert put_catalog(served.url, admin, [{"barcode": "4006381333931", "sku": "PEN-1"}]) == 1
        backup_to(copy, env)
        assert put_catalog(served.url, admin, [{"barcode": "4006381333948", "sku": "PEN-2"}]) == 2
        _, kept, _ = catalog(served.url, reader)  # what the agent caches
        assert catalog(served.url, reader, kept)[0] == 304
        assert served.stop() == 0
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    shutil.copyfile(copy, db)
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        assert put_catalog(again.url, admin, [{"barcode": "4006381333955", "sku": "INK-9"}]) == 2
        status, tag, skus = catalog(again.url, reader, kept)
        assert status == 200, "the restored catalog's version 2 was taken for the one the agent cached"
        assert skus == ["INK-9", "PEN-1"] and tag != kept
        assert catalog(again.url, reader, tag)[0] == 304
        assert again.stop() == 0


def test_a_copy_written_over_the_same_sqlite_file_begins_a_new_history(tmp_path: Path) -> None:
    """``cp old.db hub.db`` with the hub stopped keeps hub.db's inode: the copy must not pass for the file it replaced.

    The older copy is the operator's own (``cp hub.db old.db`` while the hub was stopped, so it holds the same
    history and the same home as hub.db); a hub database of another hub written over hub.db is refused alike."""
    db, old, other_db = tmp_path / "hub.db", tmp_path / "old.db", tmp_path / "other" / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    new_hub_db(db, env=env)
    store, other = credential(env, "--location", "S001"), credential(env, "--location", "S002")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "first.log", env=env) as served:
        sync(served.url, store, "S001", range(1, 3), "SKU-A")
        early = changes(served.url, reader)["cursor"]
        assert served.stop() == 0
    shutil.copyfile(db, old)  # the operator's copy, the hub stopped
    with HubProcess(tmp_path / "second.log", env=env) as served:
        sync(served.url, store, "S001", range(3, 5), "SKU-A")
        late = changes(served.url, reader, early)["cursor"]
        assert late.startswith("4.") and wire.feed_history(late[2:]) == wire.feed_history(early[2:])
        assert served.stop() == 0
    inode = db.stat().st_ino
    shutil.copyfile(old, db)  # written over the same file, as cp does
    assert db.stat().st_ino == inode
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        fresh = after_restore(again.url, reader, other, early, late, "4")
        assert again.stop() == 0
    assert "begins a new history" in again.log
    with HubProcess(tmp_path / "restarted.log", env=env) as restarted:  # a restart is no restore: cursors hold
        assert changes(restarted.url, reader, fresh)["cursor"] == fresh
        assert restarted.stop() == 0

    # Another hub's database (its own history) written over hub.db: cursors of hub.db's history are refused.
    other_db.parent.mkdir()
    new_hub_db(other_db, env=env)
    shutil.copyfile(other_db, db)
    assert db.stat().st_ino == inode
    with HubProcess(tmp_path / "other.log", env=env) as replaced:
        status, problem = get(f"{replaced.url}/v1/changes?cursor={fresh}", reader)
        assert replaced.stop() == 0
    assert status in (401, 410), problem  # the other hub knows none of hub.db's credentials, or refuses the cursor


def resume_after_a_snapshot_restore(url: str, reader: str, other: tuple[str, str], kept: str) -> None:
    """The restored hub numbers three other changes 3 to 5: the cursor of change 4 is refused (410, the history
    sentence), not answered 400 and then 200 with change 5 alone (changes 3 and 4 skipped for good)."""
    status, problem = get(f"{url}/v1/changes?cursor={kept}", reader)
    assert status == 410, problem  # the restored hub has two changes: cursor 4 names none of them
    sync(url, other, "S002", range(1, 4), "SKU-B")
    for cursor in (kept, kept.partition(".")[0] + "." + wire.feed_history(kept.partition(".")[2])):
        status, problem = get(f"{url}/v1/changes?cursor={cursor}", reader)
        if cursor != kept:  # the history alone (a cursor from before changes were named): taken, as before
            assert status == 200, problem
            continue
        assert status == 410, (cursor, problem)
        assert problem["code"] == "gone" and "earlier history" in problem["detail"], problem
        assert "from the start" in problem["detail"], problem
    status, problem = get(f"{url}/v1/changes/stream", reader, {"Last-Event-ID": kept})
    assert status == 410 and "Last-Event-ID" in problem["detail"], problem
    fresh = changes(url, reader)  # read again from the start: every change the restored hub holds
    assert [(c["change_id"], c["location"]) for c in fresh["changes"]] == [
        (1, "S001"), (2, "S001"), (3, "S002"), (4, "S002"), (5, "S002")]  # fmt: skip
    assert changes(url, reader, fresh["cursor"])["changes"] == []  # a cursor of this hub's own is taken


def test_a_cursor_kept_across_a_sqlite_snapshot_put_back_in_place_is_refused(tmp_path: Path) -> None:
    """hub.db and hub.db.feed-home copied aside with the hub stopped and copied back in place (a directory
    snapshot, or files restored keeping the inode): same history, and the same change ids for other changes."""
    db, aside = tmp_path / "hub.db", tmp_path / "snapshot"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    new_hub_db(db, env=env)
    store, other = credential(env, "--location", "S001"), credential(env, "--location", "S002")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "first.log", env=env) as served:
        sync(served.url, store, "S001", range(1, 3), "SKU-A")
        assert served.stop() == 0
    aside.mkdir()
    names = [p.name for p in tmp_path.iterdir() if p.name.startswith("hub.db") and p.name != "hub.db.serving.lock"]
    assert "hub.db.feed-home" in names
    for name in names:
        shutil.copyfile(tmp_path / name, aside / name)
    with HubProcess(tmp_path / "second.log", env=env) as served:
        sync(served.url, store, "S001", range(3, 5), "SKU-A")
        kept = changes(served.url, reader)["cursor"]
        assert kept.startswith("4.")
        assert served.stop() == 0
    inode = db.stat().st_ino
    for p in tmp_path.iterdir():
        if p.name.startswith("hub.db-"):
            p.unlink()
    for name in names:
        shutil.copyfile(aside / name, tmp_path / name)  # written back over the same files, as cp does
    assert db.stat().st_ino == inode
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        resume_after_a_snapshot_restore(again.url, reader, other, kept)
        assert again.stop() == 0
    assert "begins a new history" not in again.log  # the hub cannot tell it from a restart: the cursor tells


def test_a_cursor_kept_across_a_physical_pg_restore_is_refused(
    tmp_path: Path,
    pg_databases: tuple[str, str],  # noqa: F811
) -> None:
    """A physical copy (pg_basebackup, a point-in-time recovery) keeps the cluster's and the tables' ids, so the
    feed keeps its history: simulated by rolling the feed back to its second change, as such a restore does."""
    live, _ = pg_databases
    env = hub_env(SHELFSYNC_HUB_DB=live, SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_RATE_LIMIT_PER_S="0")
    store, other = credential(env, "--location", "S001"), credential(env, "--location", "S002")
    _, reader = credential(env, "--role", "reader")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        sync(served.url, store, "S001", range(1, 3), "SKU-A")
        sync(served.url, store, "S001", range(3, 5), "SKU-A")
        kept = changes(served.url, reader)["cursor"]
        assert kept.startswith("4.")
        assert served.stop() == 0

    async def roll_back() -> None:
        conn = await asyncpg.connect(live, timeout=10)
        try:
            async with conn.transaction():
                assert await conn.fetchval("SELECT count(*) FROM change_runs WHERE first_id > 2") == 1
                await conn.execute("DELETE FROM change_runs WHERE first_id > 2")
                await conn.execute("UPDATE change_counter SET last_id = 2")
        finally:
            await conn.close()

    asyncio.run(roll_back())
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        resume_after_a_snapshot_restore(again.url, reader, other, kept)
        assert again.stop() == 0
    assert "begins a new history" not in again.log
