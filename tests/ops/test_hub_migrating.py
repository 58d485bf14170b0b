"""A hub migrating its database at its start answers probes, and says the database is safe when a step fails.

The hub used to listen only once its migration was done: for the 25-40 s of a big ledger's step every connection
was refused, so a liveness probe (Kubernetes, a load balancer's health check) killed the hub mid-step, and the
next start began the step anew, forever. Now it listens from its start: ``/livez`` answers 200 saying it migrates
and which step, ``/healthz`` (readiness) answers 503 ``migrating``, and every other request 503 with Retry-After.
The step is held at its end here (tests/ops/held_migration.py) until the test has asked, so nothing is timed.

A step that fails (a full disk) used to end the hub with SQLite's words alone; it now says, in one sentence,
which step failed, that the database is still at the version before it, and what to do.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from hub.storage.postgres import schema as postgres_schema
from hub.storage.sqlite import schema as sqlite_schema
from protocol import MSGPACK_CONTENT_TYPE
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.commands import hub_env, run_agent, run_hub
from tests.harness.credentials import Credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, wait_until
from tests.harness.small_disk import fill, grow
from tests.ops.held_migration import FAIL_ENV, HOLD_FILE_ENV, HOLD_KEY_ENV

LATEST = sqlite_schema.SCHEMA_VERSION
NAME = sqlite_schema.MIGRATIONS[LATEST].name
ISSUES_STEP = 11  # the step that indexes import issues: a database full of them needs room for it
ISSUES_STEP_NAME = sqlite_schema.MIGRATIONS[ISSUES_STEP].name
HELD = (sys.executable, str(Path(__file__).with_name("held_migration.py")))
PROBLEM = "application/problem+json"
ASK_TIMEOUT_S = 10.0
SO_FAR_RE = re.compile(r"\d+ s so far")
ISSUES = 800  # import issues in the full-disk test's database (440 KB): the step's -wal takes some 180 KB
ROOM_BYTES = 128 << 10  # left on the full disk: the -shm and the first pages of the -wal


def write_sqlite(db: Path, version: int) -> None:
    """A SQLite hub database at ``version``, in WAL mode, as that hub left it."""
    conn = sqlite3.connect(db, isolation_level=None)
    sqlite_schema.register_step_functions(conn)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for step in range(1, version + 1):
            conn.executescript(
                f"BEGIN;\n{sqlite_schema.MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;"
            )
    finally:
        conn.close()


async def write_postgres(url: str, version: int) -> None:
    """The schema at ``version``, recorded as a hub of that version records it."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, version + 1):
            async with conn.transaction():
                await conn.execute(postgres_schema.MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
    finally:
        await conn.close()


def ask(url: str, method: str = "GET", body: bytes | None = None, kind: str = "") -> tuple[int, Any, Any]:
    """Status, headers and JSON body of one request (an error status is an answer too)."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": kind} if kind else {})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(request, timeout=ASK_TIMEOUT_S) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def phase(url: str) -> str:
    try:
        return str(ask(f"{url}/livez")[2]["status"])
    except (urllib.error.URLError, OSError):
        return "refused"


def untimed(sentence: str) -> str:
    """A sentence of a hub opening its database without the seconds it names (they go on between two answers)."""
    return SO_FAR_RE.sub("N s so far", sentence)


def check_starting(url: str, state: str, *, step: bool) -> None:
    """What a hub still opening its database answers: /livez 200, /healthz 503 ``state``, anything else 503."""
    status, _, live = ask(f"{url}/livez")
    assert status == 200 and live["status"] == state, live
    if step:
        assert live["migration"]["schema_version"] == LATEST and live["migration"]["name"] == NAME, live
        assert f"to schema version {LATEST} ({NAME})" in live["detail"], live
    status, headers, health = ask(f"{url}/healthz")
    assert status == 503 and headers["Content-Type"].startswith(PROBLEM), (status, health)
    assert health["health"] == state and health["code"] == "unavailable", health
    assert int(headers["Retry-After"]) >= 1, dict(headers)
    said = untimed(live["detail"])
    assert untimed(health["detail"]) == said and untimed(health["db"]["error"]) == said, (health, live)
    for method, path, body, kind in (
        ("GET", "/v1/agents", None, ""),
        ("POST", "/v1/sync", b"\x80", MSGPACK_CONTENT_TYPE),
        ("GET", "/", None, ""),
    ):
        status, headers, problem = ask(f"{url}{path}", method, body, kind)
        assert status == 503 and headers["Content-Type"].startswith(PROBLEM), (path, status, problem)
        assert int(headers["Retry-After"]) >= 1 and problem["code"] == "unavailable", (path, problem)
        assert untimed(problem["detail"]).startswith(said) and "try again" in problem["detail"], (path, problem)


def scrape(url: str) -> tuple[int, str, str]:
    """Status, Content-Type and text of ``GET /metrics`` without a credential."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(f"{url}/metrics", timeout=ASK_TIMEOUT_S) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def check_starting_metrics(url: str, state: str, *, step: bool) -> None:
    """``/metrics`` answers 200 while the hub opens its database (Prometheus's ``up`` stays 1: not "down"), with
    the phase and, while migrating, the step."""
    status, kind, text = scrape(url)
    assert status == 200 and kind.startswith("text/plain"), (status, text)
    assert f'shelfsync_hub_starting{{phase="{state}"}} 1.0' in text, text
    others = [p for p in ("opening", "migrating", "waiting") if p != state]
    assert all(f'shelfsync_hub_starting{{phase="{p}"}} 0.0' in text for p in others), text
    if step:
        assert f"shelfsync_hub_migration_schema_version {LATEST}.0" in text, text
        assert "shelfsync_hub_migration_step 1.0" in text and "shelfsync_hub_migration_steps 1.0" in text, text
        assert re.search(r"^shelfsync_hub_migration_step_seconds \d", text, re.MULTILINE), text
    else:
        assert "shelfsync_hub_migration_step " not in text, text
    assert "shelfsync_agent_" not in text, text  # nothing read from a database not open yet, nor behind a credential


def check_serving(url: str) -> None:
    status, _, live = ask(f"{url}/livez")
    assert status == 200 and live == {"status": "ok"}, live
    status, _, health = ask(f"{url}/healthz")
    assert status == 200 and health["db"]["schema_version"] == LATEST, health


def test_a_sqlite_hub_migrating_answers_its_probes_then_serves(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    write_sqlite(db, LATEST - 1)
    released = tmp_path / "released"
    port = free_port()
    env = hub_env(**{HOLD_FILE_ENV: str(released)})
    hub = HubProcess(tmp_path / "hub.log", db=db, port=port, env=env, python=HELD)
    try:
        hub.spawn()
        wait_until("the hub begins its migration", lambda: phase(hub.url) == "migrating")
        check_starting(hub.url, "migrating", step=True)
        check_starting_metrics(hub.url, "migrating", step=True)
        assert "Migrating the hub database" in hub.run_log and "hub listening" not in hub.run_log, hub.run_log
        released.touch()
        hub.wait_ready()
        check_serving(hub.url)
        assert f"Migrated the hub database {db} to schema version {LATEST} ({NAME})" in hub.run_log
        assert hub.stop() == 0
    finally:
        hub.close()


async def test_two_postgres_hubs_one_migrating_one_waiting_both_answer_their_probes(
    pg_url: str, tmp_path: Path
) -> None:
    """The first hub to start migrates; the second waits for the migration lock. Both answer /livez meanwhile."""
    await write_postgres(pg_url, LATEST - 1)
    key = uuid.uuid4().int % (1 << 62)
    holder = await asyncpg.connect(pg_url)
    first = HubProcess(tmp_path / "first.log", db=pg_url, port=free_port(), env=hub_env(**{HOLD_KEY_ENV: str(key)}),
                       python=HELD)  # fmt: skip
    second = HubProcess(tmp_path / "second.log", db=pg_url, port=free_port(), env=hub_env())
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        first.spawn()
        await asyncio.to_thread(wait_until, "the first hub migrates", lambda: phase(first.url) == "migrating")
        second.spawn()
        await asyncio.to_thread(wait_until, "the second hub waits", lambda: phase(second.url) == "waiting")
        await asyncio.to_thread(check_starting, first.url, "migrating", step=True)
        await asyncio.to_thread(check_starting, second.url, "waiting", step=False)
        await asyncio.to_thread(check_starting_metrics, first.url, "migrating", step=True)
        await asyncio.to_thread(check_starting_metrics, second.url, "waiting", step=False)
        await holder.execute("SELECT pg_advisory_unlock($1)", key)
        for hub in (first, second):
            await asyncio.to_thread(hub.wait_ready)
            await asyncio.to_thread(check_serving, hub.url)
        assert "Migrating the hub database" in first.run_log and "Migrating the hub database" not in second.run_log
        assert first.stop() == 0 and second.stop() == 0
    finally:
        await holder.close()
        first.close()
        second.close()


def test_an_agent_says_the_migrating_hubs_own_sentence_once_and_waits_as_it_asks(tmp_path: Path) -> None:
    """Found by running ``shelfsync-agent status`` against a hub migrating its database: it said only "answered
    HTTP 503", and the running agent backed off by its own schedule, not the hub's Retry-After."""
    db = tmp_path / "hub.db"
    write_sqlite(db, LATEST - 1)
    released = tmp_path / "released"
    env = hub_env(**{HOLD_FILE_ENV: str(released), "SHELFSYNC_HUB_ACCESS_LOG": "true"})
    hub = HubProcess(tmp_path / "hub.log", db=db, port=free_port(), env=env, python=HELD)
    config = write_agent_config(tmp_path / "store" / "agent.toml", cred=Credential("store-1", "t-1"), location="S1",
                                hub_url=hub.url)  # fmt: skip
    agent: AgentProcess | None = None
    try:
        hub.spawn()
        wait_until("the hub begins its migration", lambda: phase(hub.url) == "migrating")
        recorded = run_agent("record", "--config", str(config), "--sku", "SKU-1", "--kind", "receive", "--qty", "3")
        assert recorded.returncode == 0, recorded.stderr
        status = run_agent("status", "--json", "--config", str(config))
        report = json.loads(status.stdout)
        assert report["hub_reachable_now"] is False, report
        said = f"the hub is migrating its database to schema version {LATEST} ({NAME})"
        assert report["hub_probe"].startswith(f"answered HTTP 503: {said}"), report["hub_probe"]
        text = run_agent("status", "--config", str(config)).stdout
        assert said in text, text
        agent = AgentProcess(config, tmp_path / "agent.log", [])
        agent.wait_for_log(re.escape(said) + r".*try again in 5 s")  # the hub's Retry-After, in its words
        wait_until("the agent sending again to the migrating hub", lambda: hub.log.count('"POST /v1/sync" 503') >= 3)
        released.touch()
        hub.wait_ready()
        agent.wait_for_log("refused this agent's credentials")  # the hub serves: the next answer is news
        agent.wait_for_log(f"The hub at {hub.url} serves again")
        saying = [line for line in agent.log.splitlines() if said in line]
        assert len(saying) == 1, agent.log  # once for the agent, not once per loop
        assert "as it asks" not in saying[0], saying  # the hub's own "try again in 5 s" says the wait
        assert len(re.findall("serves again", agent.log)) == 1, agent.log
        assert '"type":' not in agent.log, agent.log  # the hub's sentence, not its JSON
    finally:
        if agent is not None:
            assert agent.stop() == 0
        hub.close()


def test_a_full_disk_mid_migration_says_the_database_is_still_at_the_old_version(small_disk: Path) -> None:
    """Step 11's new indexes over import issues need more room than the disk has left: the step is rolled back."""
    built = small_disk.parent / "built.db"  # made beside the small disk: its WAL and checkpoint need room
    write_sqlite(built, ISSUES_STEP - 1)
    with sqlite3.connect(built) as conn:
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO import_issues SELECT 'agent-1', printf('%032d', x), printf('S%059d', x), 'sales.csv', x, "
            "'bad_qty', 'x', x FROM n", (ISSUES,),
        )  # fmt: skip
    conn.close()
    db = small_disk / "hub.db"
    shutil.copyfile(built, db)
    ballast = fill(small_disk)
    os.truncate(ballast, max(0, ballast.stat().st_size - ROOM_BYTES))  # room to open it, not for the step
    done = run_hub("serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0", env=hub_env())
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("shelfsync-hub: "), done.stderr
    assert f"schema version {ISSUES_STEP} ({ISSUES_STEP_NAME})" in said and "disk is full" in said, said
    assert f"still at schema version {ISSUES_STEP - 1}" in said and "free about" in said, said
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (ISSUES_STEP - 1,)
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    conn.close()
    ballast.unlink()
    grow(small_disk, "4m")  # the steps after 11 take more than the 1 MiB disk: the file and its -wal, ~1.1 MB
    done = run_hub("init", "--db", str(db), env=hub_env())
    assert done.returncode == 0 and f"(schema version {LATEST})" in done.stdout, done.stderr


def test_a_failed_postgres_step_says_the_database_is_still_at_the_old_version(pg_url: str) -> None:
    """A statement of a step failing rolls the whole step back: the sentence says so, and which step it was."""
    asyncio.run(write_postgres(pg_url, LATEST - 1))
    done = subprocess.run(
        [*HELD, "-m", "hub", "init", "--db", pg_url], env=hub_env(**{FAIL_ENV: "1"}),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("shelfsync-hub: ") and "division by zero" in said, done.stderr
    assert f"schema version {LATEST} ({NAME}) failed" in said, said
    assert f"still at schema version {LATEST - 1}" in said, said

    async def version() -> int:
        conn = await asyncpg.connect(pg_url)
        try:
            return int(await conn.fetchval("SELECT max(version) FROM schema_migrations"))
        finally:
            await conn.close()

    assert asyncio.run(version()) == LATEST - 1
