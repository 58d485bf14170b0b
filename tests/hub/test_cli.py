"""``shelfsync-hub`` as real subprocesses (``python -m hub``) against SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from hub.storage import open_store
from hub.storage.postgres import redacted
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
from tests.harness.clock import RECENT_MS
from tests.harness.commands import without_modules
from tests.harness.hub_process import HubProcess
from tests.harness.pg import fresh_schema, schema_tables
from tests.harness.small_disk import Mounts

PROCESS_TIMEOUT_S = 30.0
LISTENING_RE = re.compile(r"hub listening on http://127\.0\.0\.1:(\d+), database (.+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str




async def hub(*args: str, cwd: Path) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT_S)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def new_db(db: Path, cwd: Path, *options: str) -> Path:
    """A new hub database at ``db``, made by ``init`` (the credential commands never create one)."""
    run = await hub("init", "--db", str(db), *options, cwd=cwd)
    assert run.code == 0 and "was created" in run.out, run.err
    return db


def credential_of(run: Run) -> tuple[str, str]:
    assert run.code == 0, run.err
    fields = dict(line.split(": ", 1) for line in run.out.splitlines() if ": " in line and not line.startswith("The "))
    return fields["agent_id"], fields["credential"]


def one_sentence_error(run: Run) -> str:
    """The error line of a failed run: exactly one, the last on stderr (serve may log before it)."""
    assert run.code == 2, (run.out, run.err)
    lines = run.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("shelfsync-hub: ")]
    assert errors == lines[-1:], run.err
    assert "Traceback" not in run.err
    return errors[0]


def served_db(served: HubProcess) -> str:
    """The database the hub said it serves, on its "hub listening on …" line."""
    match = LISTENING_RE.search(served.log)
    assert match, served.log
    return match[2]


def sale_batch(agent_id: str) -> bytes:
    wall_ms = RECENT_MS
    events = tuple(
        StockEvent(
            event_id=new_event_id(),
            agent_id=agent_id,
            epoch=1,
            seq=seq,
            location="S001",
            sku="SKU-1",
            kind=Kind(kind),
            qty=qty,
            occurred_at=pack_hlc(wall_ms + seq, 0),
            wall_ms=wall_ms + seq,
            source="pos:acme",
        )
        for seq, kind, qty in ((1, "receive", 12), (2, "sale", -2))
    )
    return encode_sync_request(SyncRequest(agent_id=agent_id, epoch=1, events=events))


async def test_agent_add_then_serve_then_sync_then_sigterm(tmp_path: Path) -> None:
    db = await new_db(tmp_path / "hub.db", tmp_path)
    added = await hub("agent", "add", "--db", str(db), "--location", "S001", cwd=tmp_path)
    agent_id, token = credential_of(added)
    assert "keeps only a hash" in added.out

    with HubProcess(tmp_path / "hub.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as served:
        assert served_db(served) == str(db)
        assert "the hub runs on uvloop's event loop" in served.log  # the hub's extra installs it on Linux
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROCESS_TIMEOUT_S)) as http:
            async with http.post(
                f"{served.url}/v1/sync",
                data=sale_batch(agent_id),
                headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
            ) as resp:
                assert resp.status == 200, await resp.text()
                answer = decode_sync_response(await resp.read())
            async with http.get(f"{served.url}/healthz") as resp:
                assert resp.status == 200

        assert answer.hwm == 2 and [(c.sku, c.on_hand) for c in answer.counts] == [("SKU-1", 10)]
        assert served.stop() == 0
    log = served.log
    assert f"agent {agent_id} synced 2 events (2 applied, 0 duplicates, 0 rejected)" in log
    assert "hub stopped" in log

    # The commit survived the process: a second hub on the same file reports the agent's mark.
    listed = await hub("agent", "list", "--db", str(db), cwd=tmp_path)
    assert listed.code == 0 and re.search(
        rf"^{re.escape(agent_id)}\s+agent\s+S001\s+\S+\s+1:2\b", listed.out, re.MULTILINE
    ), listed.out


async def test_a_second_hub_on_one_sqlite_file_refuses_to_start_and_the_first_goes_on(tmp_path: Path) -> None:
    """The service started twice, or a manual run beside it: one process serves a SQLite file (hub.servelock)."""
    db = tmp_path / "hub.db"
    with HubProcess(tmp_path / "hub.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as served:
        second = await hub("serve", "--db", f"sqlite://{db}", "--host", "127.0.0.1", "--port", "0", cwd=tmp_path)
        assert one_sentence_error(second) == (
            f"shelfsync-hub: another hub process already serves {db} (it holds {db}.serving.lock); one process"
            " serves a SQLite database: stop the other first, or move to PostgreSQL to run several"
        )
        assert "hub listening" not in second.err
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROCESS_TIMEOUT_S)) as http,
            http.get(f"{served.url}/healthz") as resp,
        ):
            assert resp.status == 200
        assert served.stop() == 0
    # The lock went with the process: the next start serves, and the other commands never needed it.
    listed = await hub("agent", "list", "--db", str(db), cwd=tmp_path)
    assert listed.code == 0, listed.err
    with HubProcess(tmp_path / "again.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as again:
        assert served_db(again) == str(db)
        assert again.stop() == 0


async def test_a_second_hub_on_the_same_file_by_a_symlink_refuses_to_start(tmp_path: Path) -> None:
    """A symlink to the file, or through a linked directory, names the same database: it is one hub's to serve."""
    data = tmp_path / "data"
    data.mkdir()
    db = await new_db(data / "hub.db", tmp_path)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "hub.db").symlink_to(db)
    (tmp_path / "linked").symlink_to(data, target_is_directory=True)
    with HubProcess(tmp_path / "hub.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as served:
        for other in (tmp_path / "srv" / "hub.db", tmp_path / "linked" / "hub.db", Path("data/hub.db")):
            second = await hub("serve", "--db", str(other), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path)
            assert "another hub process already serves" in one_sentence_error(second), other
            assert "hub listening" not in second.err
        assert served.stop() == 0


async def test_a_hub_database_with_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    """SQLite keeps a -wal per name of the file: two names, two logs of one database, which corrupts it."""
    db = await new_db(tmp_path / "hub.db", tmp_path)
    (tmp_path / "hub-link.db").hardlink_to(db)
    for command in (("serve", "--port", "0"), ("agent", "list"), ("init",)):
        for name in (db, tmp_path / "hub-link.db"):
            run = await hub(*command, "--db", str(name), cwd=tmp_path)
            assert "has 2 names (hard links)" in one_sentence_error(run), (command, name)
    assert not (tmp_path / "hub-link.db-wal").exists() and not (tmp_path / "hub.db-wal").exists()
    (tmp_path / "hub-link.db").unlink()  # the one name left: served again
    listed = await hub("agent", "list", "--db", str(db), cwd=tmp_path)
    assert listed.code == 0, listed.err


async def test_a_second_hub_refuses_even_once_the_first_ones_lock_file_is_deleted(tmp_path: Path) -> None:
    """A cleanup deleting hub.db.serving.lock used to let a second hub make a new one and serve beside the first:
    the serving hub also locks the database file itself (hub.servelock)."""
    db = await new_db(tmp_path / "hub.db", tmp_path)
    with HubProcess(tmp_path / "hub.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as served:
        Path(f"{db}.serving.lock").unlink()
        second = await hub("serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path)
        assert one_sentence_error(second) == (
            f"shelfsync-hub: another hub process already serves {db} (it holds the lock on the database file itself,"
            " by this or another name); one process serves a SQLite database: stop the other first, or move to"
            " PostgreSQL to run several"
        )
        assert "hub listening" not in second.err
        assert served.stop() == 0
    with HubProcess(tmp_path / "again.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as again:
        assert again.stop() == 0  # the lock went with the process


async def test_a_second_hub_on_a_hard_link_made_after_the_first_started_is_told_another_serves(tmp_path: Path) -> None:
    """A second name made while the hub runs names another lock file; the lock on the file itself is the same."""
    db = await new_db(tmp_path / "hub.db", tmp_path)
    with HubProcess(tmp_path / "hub.log", "--db", str(db), "--host", "127.0.0.1", "--port", "0", cwd=tmp_path) as served:
        (tmp_path / "hub-link.db").hardlink_to(db)
        second = await hub("serve", "--db", str(tmp_path / "hub-link.db"), "--port", "0", cwd=tmp_path)
        assert "another hub process already serves" in one_sentence_error(second)
        assert not Path(f"{tmp_path / 'hub-link.db'}-wal").exists()  # it opened nothing
        (tmp_path / "hub-link.db").unlink()
        assert served.stop() == 0


async def test_a_directory_given_as_the_database_is_one_sentence(tmp_path: Path) -> None:
    """``--db .`` (or the data directory instead of the file in it): refused, naming the mistake; nothing made."""
    (tmp_path / "data").mkdir()
    for command in (("serve", "--port", "0"), ("init",)):
        for given in (".", "data", str(tmp_path / "data")):
            run = await hub(*command, "--db", given, cwd=tmp_path)
            assert f"the hub database {given} is a directory, not a file" in one_sentence_error(run), (command, given)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data"]


async def test_serve_in_a_directory_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    """Found black-box: serve --db with a mistyped directory made that directory (the lock library makes a lock
    file's parents) and served a new, empty hub in it, which refused every agent; the other commands said the
    directory does not exist."""
    db = tmp_path / "shelfsync-hb" / "hub.db"
    run = await hub("serve", "--db", str(db), "--port", "0", cwd=tmp_path)
    assert one_sentence_error(run) == (
        f"shelfsync-hub: cannot open the hub database {db}: the directory {db.parent} does not exist"
    )
    assert not db.parent.exists()


async def test_a_device_or_fifo_given_as_the_database_is_one_sentence(tmp_path: Path) -> None:
    """Found black-box: serve --db /dev/null (or a FIFO) was refused as "an empty file ... if a restore put it
    there", and init --db /dev/null failed in migration step 1 with "disk I/O error" and "the next start runs the
    step again"."""
    fifo = tmp_path / "hub.fifo"
    os.mkfifo(fifo)
    for given, kind in (("/dev/null", "a character device"), (str(fifo), "a FIFO")):
        for command in (("serve", "--port", "0"), ("init",)):
            run = await hub(*command, "--db", given, cwd=tmp_path)
            assert one_sentence_error(run) == (
                f"shelfsync-hub: the hub database {given} is {kind}, not a file; give the hub's database file"
            ), (given, command)


async def test_a_lock_that_cannot_be_made_says_why_not_that_another_hub_serves(tmp_path: Path) -> None:
    """/proc takes no new file: the lock cannot be made there, which is no other hub serving."""
    run = await hub("serve", "--db", "/proc/hub.db", "--port", "0", cwd=tmp_path)
    assert one_sentence_error(run) == (
        "shelfsync-hub: the hub cannot take its lock /proc/hub.db.serving.lock beside /proc/hub.db: "
        "No such file or directory"
    )


async def test_an_empty_file_in_the_databases_place_is_refused_until_init_makes_it_a_hub(tmp_path: Path) -> None:
    """A restore that copied nothing (a full disk, a failed download) leaves a 0-byte hub.db: served, it would be a
    new, empty hub that refuses every agent's credential. serve and agent refuse it; init makes it a hub."""
    db = tmp_path / "hub.db"
    db.touch()
    for command in (("serve", "--port", "0"), ("agent", "list")):
        run = await hub(*command, "--db", str(db), cwd=tmp_path)
        assert f"the hub database {db} is an empty file" in one_sentence_error(run), command
        assert db.stat().st_size == 0
    made = await hub("init", "--db", str(db), cwd=tmp_path)
    assert made.code == 0, made.err
    listed = await hub("agent", "list", "--db", str(db), cwd=tmp_path)
    assert listed.code == 0 and "no agents yet" in listed.out, listed.err


async def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Found black-box: serve, init and agent list took any SQLite file without a hub schema for a new hub and
    wrote the hub's tables into it (a --db pointed at the agent's outbox, or its backup restored as hub.db from
    the same backup folder): the hub served an empty ledger without a credential, in another program's file."""
    db = tmp_path / "outbox.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB); INSERT INTO events VALUES (1, x'00');"
                       "CREATE TABLE acks (epoch INTEGER); CREATE INDEX acks_epoch ON acks (epoch);")  # fmt: skip
    conn.close()
    before = db.read_bytes()
    for command in (("serve", "--port", "0"), ("init",), ("agent", "list"), ("agent", "add", "--role", "reader")):
        run = await hub(*command, "--db", str(db), cwd=tmp_path)
        assert one_sentence_error(run) == (
            f"shelfsync-hub: cannot open the hub database {db}: it is a SQLite database of something else, not of "
            "a shelfsync hub (it holds the tables acks, events and no hub schema); give the hub's own database "
            "file (--db or its config's db), or a path where no file is yet for a new hub"
        ), command
        assert db.read_bytes() == before, command
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("outbox")) == [
        "outbox.sqlite3", "outbox.sqlite3.serving.lock"
    ]  # fmt: skip


async def test_another_programs_postgresql_schema_is_refused_and_left_as_it_was(pg_url: str, tmp_path: Path) -> None:
    """Found: the PostgreSQL equivalent of the check above was missing. A --db naming another program's database
    (or schema, by search_path) without the hub's schema_migrations had the hub's tables created beside that
    program's, and an empty hub served from there. It is refused, naming a few of its tables; nothing is made."""
    conn = await asyncpg.connect(pg_url)
    try:
        for table in ("orders", "customers", "invoices", "products", "stock_moves", "users"):
            await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text)")
        await conn.execute("INSERT INTO orders VALUES (1, 'an order'); CREATE VIEW open_orders AS SELECT * FROM orders")
    finally:
        await conn.close()
    before = await schema_tables(pg_url)
    for command in (("serve", "--port", "0"), ("init",), ("agent", "list"), ("agent", "add", "--role", "reader")):
        run = await hub(*command, "--db", pg_url, cwd=tmp_path)
        assert one_sentence_error(run) == (
            f"shelfsync-hub: cannot open the hub database {redacted(pg_url)}: its schema"
            f" {pg_url.rsplit('search_path=', 1)[1]} is of something else, not of a shelfsync hub (it holds the"
            " tables customers, invoices, open_orders, orders, products … and not the hub's schema_migrations);"
            " give the hub's own database (--db or its config's db), or an empty schema or database for a new hub"
        ), command
        assert await schema_tables(pg_url) == before, command


async def test_a_database_on_a_read_only_file_system_says_so(tmp_path: Path, mounts: Mounts) -> None:
    """Found black-box: init, agent list and backup of a hub database on a read-only mount (a snapshot, a share
    mounted ro) said only "unable to open database file": SQLite writes a -shm file beside a WAL database even to
    read it, and nothing said so."""
    data = mounts.tmpfs(tmp_path / "ro", size="2m")  # a new hub's file and its WAL: over 1 MiB since schema 20
    db = await new_db(data / "hub.db", tmp_path)
    mounts.read_only(data)
    for command, given in ((("agent", "list"), db), (("init",), db), (("init",), data / "new.db")):
        run = await hub(*command, "--db", str(given), cwd=tmp_path)
        error = one_sentence_error(run)
        assert f"cannot open the hub database {given}: the file system of {data} is read-only" in error, command
    run = await hub("backup", "--db", str(db), "--to", str(tmp_path / "copy.db"), cwd=tmp_path)
    error = one_sentence_error(run)
    assert f"cannot read the hub database {db}: the file system of {data} is read-only" in error
    assert "copy hub.db" in error and not (tmp_path / "copy.db").exists()


async def test_reader_and_admin_need_no_location(tmp_path: Path) -> None:
    db = await new_db(tmp_path / "hub.db", tmp_path)
    for role in ("reader", "admin"):
        run = await hub("agent", "add", "--db", str(db), "--role", role, cwd=tmp_path)
        agent_id, token = credential_of(run)
        assert f"role: {role}" in run.out and len(token) >= 20 and agent_id


async def test_agent_without_location_is_refused(tmp_path: Path) -> None:
    run = await hub("agent", "add", "--db", str(tmp_path / "hub.db"), cwd=tmp_path)
    assert "needs at least one --location" in one_sentence_error(run)


async def test_bad_location_code_is_refused(tmp_path: Path) -> None:
    run = await hub("agent", "add", "--db", str(tmp_path / "hub.db"), "--location", "S 001", cwd=tmp_path)
    assert "'S 001' is not a location code" in one_sentence_error(run)


async def test_revoke_then_revoke_again(tmp_path: Path) -> None:
    db = await new_db(tmp_path / "hub.db", tmp_path)
    agent_id, _ = credential_of(await hub("agent", "add", "--db", str(db), "--location", "S001", cwd=tmp_path))

    first = await hub("agent", "revoke", "--db", str(db), agent_id, cwd=tmp_path)
    assert first.code == 0 and f"revoked {agent_id}" in first.out

    again = await hub("agent", "revoke", "--db", str(db), agent_id, cwd=tmp_path)
    assert f"no active credential {agent_id}" in one_sentence_error(again)


async def test_list_of_an_empty_hub_says_how_to_add(tmp_path: Path) -> None:
    run = await hub("agent", "list", "--db", str(await new_db(tmp_path / "hub.db", tmp_path)), cwd=tmp_path)
    assert run.code == 0 and "no agents yet" in run.out


async def test_credential_commands_refuse_a_database_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped --db used to create an empty hub database there, and agent add handed out a credential that no
    serving hub knows; like backup, the credential commands (and catalog import --db) now refuse it."""
    db = await new_db(tmp_path / "hub.db", tmp_path)
    agent_id, _ = credential_of(await hub("agent", "add", "--db", str(db), "--location", "S001", cwd=tmp_path))
    typo = tmp_path / "hbu.db"
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("barcode,sku\n4006381333931,SKU-1\n")
    for args in (
        ("agent", "add", "--db", str(typo), "--location", "S002"),
        ("agent", "add", "--db", str(typo), "--role", "reader"),
        ("agent", "add", "--db", f"sqlite://{typo}", "--id", "store-2", "--location", "S002", "--hub-url",
         "http://127.0.0.1:8470"),
        ("agent", "list", "--db", str(typo)),
        ("agent", "revoke", "--db", str(typo), agent_id),
        ("catalog", "import", str(catalog), "--db", str(typo)),
    ):  # fmt: skip
        run = await hub(*args, cwd=tmp_path)
        error = one_sentence_error(run)
        assert f"there is no hub database at {typo};" in error and "init --db" in error, args
        assert "credential" not in run.out and "token" not in run.out, args
        assert not typo.exists() and not typo.with_name("hbu.db-wal").exists(), args
    listed = await hub("agent", "list", "--db", str(db), cwd=tmp_path)  # the real database: as it was
    assert listed.code == 0 and agent_id in listed.out and "S002" not in listed.out


async def test_init_creates_a_database_once_and_then_finds_it_ready(tmp_path: Path) -> None:
    db = await new_db(tmp_path / "hub.db", tmp_path)
    again = await hub("init", "--db", str(db), cwd=tmp_path)
    assert again.code == 0 and f"the hub database {db} is ready (schema version" in again.out


async def test_config_file_with_unknown_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "hub.db"\nprot = 9000\n')
    run = await hub("serve", "--config", str(config), cwd=tmp_path)
    assert "unknown key(s) 'prot'" in one_sentence_error(run)


async def test_serve_without_db_is_refused(tmp_path: Path) -> None:
    run = await hub("serve", "--port", "0", cwd=tmp_path)
    assert "no database given" in one_sentence_error(run)


async def test_serve_on_a_taken_port_is_refused_and_leaves_no_empty_database_behind(tmp_path: Path) -> None:
    """Found by starting a new hub on a port another one held: the refused start left hub.db as an empty file
    (made to lock it), and every later start on a free port was refused as "an empty file ... if a restore put
    it there", blaming a restore that never happened."""
    db = tmp_path / "hub.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await hub("serve", "--db", str(db), "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in one_sentence_error(run)
    assert not db.exists()
    held = tmp_path / "held.db"
    held.touch()  # an empty file that was there before the start is the operator's: left as it was
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await hub("serve", "--db", str(held), "--port", str(port), cwd=tmp_path)
    assert f"the hub database {held} is an empty file" in one_sentence_error(run)
    assert held.exists() and held.stat().st_size == 0
    served = HubProcess(tmp_path / "hub.log", db=db, port=0)  # the next start, on a free port, serves the new database
    served.start()
    assert served.stop() == 0


async def test_serve_on_a_host_name_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    run = await hub("serve", "--db", str(tmp_path / "hub.db"), "--host", "256.1.1.1", "--port", "0", cwd=tmp_path)
    error = one_sentence_error(run)
    assert "cannot listen on 256.1.1.1:0: the host name 256.1.1.1 cannot be resolved" in error
    assert "unknown error" not in error.lower()


async def test_a_postgresql_database_without_the_postgres_extra_is_one_sentence(tmp_path: Path) -> None:
    """A hub installed as shelfsync[hub] has no asyncpg: every command that opens the database says which extra."""
    url = "postgresql://hub:secret@127.0.0.1:1/shelfsync"
    for args in (("serve", "--port", "0"), ("agent", "list")):
        proc = await asyncio.create_subprocess_exec(
            *without_modules(["asyncpg"], "hub", *args, "--db", url), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT_S)
        assert proc.returncode is not None
        error = one_sentence_error(Run(proc.returncode, out.decode(), err.decode()))
        assert "a postgresql:// database needs the asyncpg package" in error, args
        assert "install shelfsync[postgres]" in error and "secret" not in error


async def test_serve_reads_settings_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "hub.toml"
    config.write_text('[hub]\ndb = "hub.db"\nhost = "127.0.0.1"\nport = 0\nmax_body_bytes = 1000\n')
    await new_db(tmp_path / "etc" / "hub.db", tmp_path, "--config", str(config))  # relative to the config file
    _, token = credential_of(await hub("agent", "add", "--config", str(config), "--location", "S001", cwd=tmp_path))

    with HubProcess(tmp_path / "hub.log", "--config", str(config), cwd=tmp_path) as served:
        assert served_db(served) == str(tmp_path / "etc" / "hub.db")

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROCESS_TIMEOUT_S)) as http,
            http.post(
                f"{served.url}/v1/sync",
                data=b"\x00" * 2000,
                headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
            ) as resp,
        ):
            assert resp.status == 413  # max_body_bytes = 1000 from the file
        assert served.stop() == 0


@pytest.mark.parametrize("argv", [("--db", "hub.db", "serve"), ("--bogus",)])
async def test_an_option_before_the_command_is_named_not_taken_for_the_command(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    """`--db hub.db serve` said "invalid choice: 'hub.db'": the option given, which belongs after the command, is
    named instead."""
    run = await hub(*argv, cwd=tmp_path)
    assert run.code == 2 and f"{argv[0]} before the command" in run.err, run.err


@pytest.fixture
async def any_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A hub database made by ``init`` on either backend: a SQLite file, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        yield str(await new_db(tmp_path / "hub.db", tmp_path))
        return
    async with fresh_schema() as url:
        run = await hub("init", "--db", url, cwd=tmp_path)
        assert run.code == 0, run.err
        yield url


async def test_bind_changes_the_locations_of_a_credential_in_place(any_db: str, tmp_path: Path) -> None:
    agent_id, _ = credential_of(await hub("agent", "add", "--db", any_db, "--location", "S001", cwd=tmp_path))
    run = await hub("agent", "bind", "--db", any_db, agent_id, "--location", "S002", "--location", "S001", cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.out == f"{agent_id} is now bound to S001, S002 (was S001).\n"
    moved = await hub("agent", "bind", "--db", any_db, agent_id, "--location", "S002", cwd=tmp_path)
    assert moved.out == f"{agent_id} is now bound to S002 (was S001, S002).\n", moved.err
    listed = await hub("agent", "list", "--db", any_db, cwd=tmp_path)
    row = next(line for line in listed.out.splitlines() if line.startswith(agent_id))
    assert row.split()[1:3] == ["agent", "S002"]


async def test_bind_refuses_an_unknown_a_revoked_or_a_reader_credential_and_a_bad_location(
    any_db: str, tmp_path: Path
) -> None:
    agent_id, _ = credential_of(await hub("agent", "add", "--db", any_db, "--location", "S001", cwd=tmp_path))
    reader, _ = credential_of(await hub("agent", "add", "--db", any_db, "--role", "reader", cwd=tmp_path))
    unknown = await hub("agent", "bind", "--db", any_db, "store-9", "--location", "S002", cwd=tmp_path)
    assert "no credential store-9 is known to this hub" in one_sentence_error(unknown)
    bad = await hub("agent", "bind", "--db", any_db, agent_id, "--location", "S 002", cwd=tmp_path)
    assert "'S 002' is not a location code" in one_sentence_error(bad)
    cased = await hub("agent", "bind", "--db", any_db, agent_id, "--location", "s001", cwd=tmp_path)
    assert "the location s001 differs from the location S001 only in case" in one_sentence_error(cased)
    none = await hub("agent", "bind", "--db", any_db, agent_id, cwd=tmp_path)
    assert "needs at least one --location" in one_sentence_error(none)
    read = await hub("agent", "bind", "--db", any_db, reader, "--location", "S002", cwd=tmp_path)
    assert f"{reader} is a reader credential" in one_sentence_error(read)
    assert (await hub("agent", "revoke", "--db", any_db, agent_id, cwd=tmp_path)).code == 0
    revoked = await hub("agent", "bind", "--db", any_db, agent_id, "--location", "S002", cwd=tmp_path)
    assert f"the credential {agent_id} is revoked" in one_sentence_error(revoked)
    listed = await hub("agent", "list", "--db", any_db, cwd=tmp_path)
    row = next(line for line in listed.out.splitlines() if line.startswith(agent_id))
    assert "S001" in row and "S002" not in row


async def test_quarantine_release_applies_what_the_hub_could_not_attribute_for_one_store(
    any_db: str, tmp_path: Path
) -> None:
    """A lone store's clock three hours ahead: the hub could not tell whose clock was wrong, so its held sales have
    no hub_clock_off_ms. ``quarantine release --wrong-clock store --agent ID`` applies that store's at the hub's
    time of receipt and says so; another store's stays."""
    window_ms = 60_000
    async with open_store(any_db) as store:
        held = {}
        for location in ("S001", "S002"):
            agent_id, token = await store.add_agent([location])
            who = await store.authenticate(token)
            assert who is not None
            store_now = wall_ms_now() + 3 * 3_600_000
            sale = StockEvent(new_event_id(), agent_id, 1, 1, location, "SKU-1", Kind.SALE, -1,
                              pack_hlc(store_now, 0), store_now, "api:test")  # fmt: skip
            vouched = 2 if location == "S002" else None  # two other stores put the hub's clock right then
            result = await store.ingest(who, 1, [sale], clock_window_ms=window_ms, sent_ms=store_now,
                                        hub_clock_vouched=vouched)  # fmt: skip
            assert [r.code for r in result.rejected] == ["quarantined"]
            held[location] = agent_id
    alone = await hub("quarantine", "release", "--db", any_db, "--agent", held["S001"], cwd=tmp_path)
    assert alone.code == 2 and "--agent goes with --wrong-clock: say whose clock was wrong (hub or store)" in alone.err
    unknown = await hub("quarantine", "release", "--db", any_db, "--wrong-clock", "store", "--agent", "store-9",
                        cwd=tmp_path)  # fmt: skip
    assert "there is no agent store-9 at this hub; GET /v1/agents lists them" in one_sentence_error(unknown)
    run = await hub("quarantine", "release", "--db", any_db, "--wrong-clock", "store", "--agent", held["S001"],
                    cwd=tmp_path)  # fmt: skip
    assert run.code == 0, run.err
    assert run.out == (
        f"Applied 1 held movement(s) of {held['S001']}, each at the hub's time of receipt (the store's clock was the "
        "wrong one).\n"
    )
    async with open_store(any_db) as store:
        [left] = await store.quarantine()
        [applied] = await store.quarantine(status="applied")
    by = f"{getpass.getuser()} (shelfsync-hub)"  # the OS user running the command (its own test: --by)
    assert (left.agent_id, applied.agent_id, applied.resolved_by) == (held["S002"], held["S001"], by)

    # S002's was held while two other stores put the hub's clock right: "hub" is refused unless said in so many words
    refused = await hub("quarantine", "release", "--db", any_db, "--wrong-clock", "hub", "--agent", held["S002"],
                        cwd=tmp_path)  # fmt: skip
    assert "at least 2 other store(s) sided with the hub" in one_sentence_error(refused)
    for args in (("--wrong-clock", "hub"), ("--wrong-clock", "store", "--agent", held["S002"])):
        careless = await hub("quarantine", "release", "--db", any_db, *args, "--override-vouched", cwd=tmp_path)
        assert careless.code == 2 and "--override-vouched goes only with --wrong-clock hub and --agent" in careless.err
    async with open_store(any_db) as store:
        assert [q.agent_id for q in await store.quarantine()] == [held["S002"]], "nothing refused was released"
    sure = await hub("quarantine", "release", "--db", any_db, "--wrong-clock", "hub", "--agent", held["S002"],
                     "--override-vouched", cwd=tmp_path)  # fmt: skip
    assert sure.code == 0, sure.err
    assert sure.out.startswith(f"Applied 1 held movement(s) of {held['S002']}, each at its own time"), sure.out
    assert f"{by} overrode what up to 2 other store(s) said of the hub's clock" in sure.err
    async with open_store(any_db) as store:
        assert await store.quarantine() == []
        [own] = await store.ledger(location="S002")
    assert (own.occurred_at, own.attrs["released_by"]) == (left.occurred_at, by), "at its own time"
