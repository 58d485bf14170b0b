"""Another hub's backup restored onto this hub (the wrong file, a test hub's copy): its agents' credentials are
refused, and the cause is that the hub now serves another database, not that the tokens are wrong.

Real HTTP on 127.0.0.1 to hubs in this process over real SQLite files. Hub A and hub B each have their own
database (and id, ``hub_id``, made when the database is created and kept in it). An agent syncs with A; A is
stopped, B's backup (``hub.backup``) is put in place of A's database, and A served again where the agent expects
it: every answer of the hub carries the id of the database it serves (``HUB_ID_HEADER``), the agent kept the one
it last synced with in its outbox, and its 401 says the hub serves another database and not to re-issue the
token. The change feed, the POS report uploads and the catalog download, refused by the same hub, say the same; so
does a PostgreSQL hub served from another database (a second schema of the test server) at the same URL: the id is
the one kept in that database. A hub restored from its own backup, a revoked token, and a hub older than the header
say what they said.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from agent import Kind, Movement, Outbox, Replicator
from agent.catalog import AgentCatalog
from agent.feed import CountFeed
from agent.pos import Observation, PosStore
from agent.reports import ReportSender
from hub import HubSettings, create_app, open_store
from hub.backup import backup
from protocol import SyncResponse
from protocol.routes import HUB_ID_HEADER
from tests.harness.inprocess import ServedHub, hub_in_process, serve_app
from tests.harness.pg import PG_URL, PROBE_TIMEOUT_S, fresh_schema
from tests.hub.test_catchup_expect import read_answer, send_head

WAIT_S = 20.0
EVENTS = 5


def moves(n: int) -> list[Movement]:
    return [Movement("S1", f"SKU-{i % 3}", Kind.SALE, -1, "pos:test") for i in range(n)]


def new_replicator(outbox: Outbox, url: str, token: str) -> Replicator:
    return Replicator(
        outbox, url, token, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S, auth_retry_s=600.0,
        rng=random.Random(7),
    )  # fmt: skip


async def synced(outbox: Outbox, url: str, token: str) -> None:
    """Send the outbox's backlog to the hub at ``url`` and stop."""
    async with new_replicator(outbox, url, token) as replicator:
        await asyncio.wait_for(replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0), WAIT_S)


async def refused(outbox: Outbox, url: str, token: str) -> str:
    """Record one more movement and try to send it; the error the agent reports (its sync state is asserted)."""
    await outbox.record(moves(1))
    async with new_replicator(outbox, url, token) as replicator:
        state = await asyncio.wait_for(replicator.wait_for(lambda s: s.credentials_refused), WAIT_S)
    assert state.sync_state == "credentials_refused"
    assert (await outbox.stats()).last_error == state.last_error  # what `shelfsync-agent status` shows
    return state.last_error or ""


async def hub_ids(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two hubs' databases, each made by serving it once: A's path, a backup of B, and their ids."""
    ids = []
    for name in ("a", "b"):
        async with hub_in_process(tmp_path / f"{name}.db") as hub:
            ids.append(str((await hub.store.health())["hub_id"]))
    assert ids[0] != ids[1]
    copy = backup(str(tmp_path / "b.db"), tmp_path / "b-backup.db").path
    return tmp_path / "a.db", copy, ids[0], ids[1]


def restore(copy: Path, db: Path) -> None:
    """The restore procedure of docs/operations.md: the hub stopped, its files moved aside, the copy in place."""
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if stale.exists():
            stale.rename(stale.with_name(stale.name + ".old"))
    shutil.copyfile(copy, db)


async def test_an_agent_refused_by_a_hub_restored_from_another_hubs_backup_is_told_the_database_changed(
    tmp_path: Path,
) -> None:
    db, other, id_a, id_b = await hub_ids(tmp_path)
    outbox_path = tmp_path / "outbox.sqlite3"
    async with hub_in_process(db) as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        async with Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(EVENTS))
            await synced(outbox, hub.url, token)
    restore(other, db)
    async with hub_in_process(db, port=port) as hub:
        assert (await hub.store.health())["hub_id"] == id_b
        async with Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:  # the agent restarted
            error = await refused(outbox, hub.url, token)
    assert error.startswith(
        f"the hub at {hub.url}/v1/sync now serves another database (id {id_b}; this agent last synced with {id_a}):"
        " its database may have been restored from another hub's backup; restore this hub's own backup,"
        " do not re-issue the token (HTTP 401: the credential is unknown or has been revoked); nothing is sent until"
        " the hub serves its own database again"
    ), error


@asynccontextmanager
async def two_databases(backend: str, tmp_path: Path) -> AsyncIterator[tuple[str, str, Callable[[], None], str, str]]:
    """Two hubs' databases on ``backend``, each made by serving it once: what the hub serves first, what it serves
    after ``switch()`` (SQLite: the same path, B's backup restored onto it; PostgreSQL: a second schema, another
    hub's database), and their ids."""
    if backend == "sqlite":
        db, copy, id_a, id_b = await hub_ids(tmp_path)
        yield str(db), str(db), lambda: restore(copy, db), id_a, id_b
        return
    async with fresh_schema() as first, fresh_schema() as second:
        ids = []
        for url in (first, second):
            async with hub_in_process(url) as hub:
                ids.append(str((await hub.store.health())["hub_id"]))
        kept = []
        for url in (first, second):  # the id is the one the database keeps, read here past the hub
            conn = await asyncpg.connect(PG_URL, timeout=PROBE_TIMEOUT_S)
            try:
                schema = url.rsplit("search_path=", 1)[1]
                kept.append(await conn.fetchval(f"SELECT value FROM \"{schema}\".meta WHERE key = 'hub_id'"))
            finally:
                await conn.close()
        assert ids == kept and ids[0] != ids[1], (ids, kept)
        yield first, second, lambda: None, ids[0], ids[1]


async def test_the_sync_the_change_feed_and_the_reports_say_the_hub_serves_another_database(
    backend: str, tmp_path: Path
) -> None:
    """Found: only the sync said it; the change feed said its credential was refused, the report uploads and then
    the catalog download that the credentials were refused (a token to re-issue, which would attach the store to
    the other hub's database)."""
    async with two_databases(backend, tmp_path) as (first, second, switch, id_a, id_b):
        outbox_path = tmp_path / "outbox.sqlite3"
        async with hub_in_process(first) as hub:
            port = hub.port
            agent_id, token = await hub.store.add_agent(["S1"])
            async with Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:
                await outbox.record(moves(EVENTS))
                await synced(outbox, hub.url, token)
        switch()
        async with (
            hub_in_process(second, port=port) as hub,
            Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox,
            PosStore.open(tmp_path / "pos-import.sqlite") as store,
        ):
            assert (await hub.store.health())["hub_id"] == id_b
            sync_error = await refused(outbox, hub.url, token)
            async with CountFeed(outbox, hub.url, token, retry_base_s=0.01, retry_max_s=0.05) as feed:
                feed_error = (await asyncio.wait_for(feed.wait_for(lambda s: s.failures >= 1), WAIT_S)).last_error
            await store.add_observations([Observation("S1", "SKU-1", "shopify", 3, 1_709_650_000_000, "inv.csv")])
            async with ReportSender(
                store, hub.url, token, agent_id=agent_id, location="S1", outbox=outbox, auth_retry_s=600.0
            ) as sender:
                report_error = (await asyncio.wait_for(sender.wait_for(lambda s: s.failures >= 1), WAIT_S)).last_error
            assert len(await store.pending_observations()) == 1  # nothing dropped: sent once the hub is its own
            async with AgentCatalog(
                hub_url=hub.url, token=token, agent_id=agent_id, location="S1", outbox=outbox, retry_base_s=0.01
            ) as catalog:
                await catalog.wait_for(lambda: catalog.last_error is not None, timeout_s=WAIT_S)
                catalog_error = catalog.last_error
    said = (
        f" now serves another database (id {id_b}; this agent last synced with {id_a}): its database may have been"
        " restored from another hub's backup; restore this hub's own backup, do not re-issue the token (HTTP 401: "
    )
    assert sync_error.startswith(f"the hub at {hub.url}/v1/sync{said}"), sync_error
    assert (feed_error or "").startswith(f"the hub at {hub.url}/v1/changes{said}"), feed_error
    assert (feed_error or "").endswith(
        "; the count cache learns counts from sync answers only until the hub serves its own database again"
    ), feed_error
    assert (report_error or "").startswith(f"the hub at {hub.url}/v1/observations{said}"), report_error
    assert (catalog_error or "").startswith(f"the hub at {hub.url}/v1/catalog{said}"), catalog_error


async def agent_status(config: Path, *options: str) -> str:
    """``shelfsync-agent status`` as a real process: what it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", "--config", str(config), *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 3, err  # no agent runs on this outbox
    return out.decode()


async def test_status_says_the_hub_serves_another_database_though_the_agent_has_not_tried_it(tmp_path: Path) -> None:
    """Found: `shelfsync-agent status` said the hub was reachable and nothing else while the agent was stopped (or
    had not sent since): its probe's answer names the hub's database, and the outbox the one it last synced with."""
    db, other, id_a, id_b = await hub_ids(tmp_path)
    outbox_path = tmp_path / "data" / "outbox.sqlite3"
    outbox_path.parent.mkdir()
    async with hub_in_process(db) as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        async with Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(EVENTS))
            await synced(outbox, hub.url, token)
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "{agent_id}"\nlocation = "S1"\ndata_dir = "{outbox_path.parent}"\n'
            f'hub_url = "{hub.url}"\ntoken = "{token}"\n',
            encoding="utf-8",
        )
        same = json.loads(await agent_status(config, "--json"))
    restore(other, db)
    async with hub_in_process(db, port=port) as hub:
        report = json.loads(await agent_status(config, "--json"))
        shown = await agent_status(config)
    assert same["hub_database"] is None and same["hub_probe"] == "ok", same
    said = (
        f"the hub at {hub.url} now serves another database (id {id_b}; this agent last synced with {id_a}): its"
        " database may have been restored from another hub's backup; restore this hub's own backup, do not"
        " re-issue the token"
    )
    assert report["hub_database"] == said and report["hub_probe"] == "ok", report
    assert f"\nhub database {said}\n" in shown, shown


async def test_a_hub_restored_from_its_own_backup_and_a_revoked_token_say_the_credentials_were_refused(
    tmp_path: Path,
) -> None:
    """The same hub's own backup keeps its id: the agent syncs on; a token revoked then is the token's fault."""
    db = tmp_path / "a.db"
    async with hub_in_process(db) as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(EVENTS))
            await synced(outbox, hub.url, token)
            own = backup(str(db), tmp_path / "a-backup.db").path
            await outbox.record(moves(1))
            await synced(outbox, hub.url, token)
    restore(own, db)
    outbox_path = tmp_path / "outbox.sqlite3"
    async with (
        hub_in_process(db, port=port) as hub,
        Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox,
    ):
        await outbox.record(moves(1))
        await synced(outbox, hub.url, token)  # the restored hub is the same hub
        await hub.store.revoke_agent(agent_id)
        error = await refused(outbox, hub.url, token)
    assert error.startswith(f"the hub at {hub.url}/v1/sync refused this agent's credentials (HTTP 401: "), error
    assert "another database" not in error


async def test_a_hub_that_sends_no_id_is_refused_as_before(tmp_path: Path) -> None:
    """A hub older than the header: nothing is stored, and a refusal says what it said before."""
    db, other, _, _ = await hub_ids(tmp_path)

    async def no_id(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.popall(HUB_ID_HEADER, None)

    @asynccontextmanager
    async def older_hub(port: int = 0) -> AsyncIterator[ServedHub]:
        async with open_store(str(db)) as store:
            app = create_app(store, HubSettings(db=str(db)))
            app.on_response_prepare.append(no_id)  # after the hub's own: as a hub older than the header answers
            async with serve_app(app, port=port) as served:
                yield served

    outbox_path = tmp_path / "outbox.sqlite3"
    async with older_hub() as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        async with Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(EVENTS))
            await synced(outbox, hub.url, token)
    restore(other, db)
    async with older_hub(port) as hub, Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox:
        error = await refused(outbox, hub.url, token)
    assert error.startswith(f"the hub at {hub.url}/v1/sync refused this agent's credentials (HTTP 401: "), error


async def test_every_answer_names_the_database_of_the_hub_as_healthz_does_whoever_asks(tmp_path: Path) -> None:
    """The id is public (``GET /healthz`` shows it): an unknown token, a known agent's and none are answered with
    the same one, so it tells nothing of which agents exist."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        _, token = await hub.store.add_agent(["S1"])
        hub_id = str((await hub.store.health())["hub_id"])
        async with aiohttp.ClientSession() as session:
            seen = []
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {token}"}):
                for method, path in (("GET", "/healthz"), ("POST", "/v1/sync"), ("GET", "/v1/changes")):
                    async with session.request(method, hub.url + path, headers=headers, data=b"") as answer:
                        seen.append((answer.status, answer.headers.get(HUB_ID_HEADER)))
        reader, writer = await send_head(hub.port, "nope", 400_000)  # a catch-up batch refused from its head
        try:
            status, headers, _ = await read_answer(reader)
        finally:
            writer.close()
        seen.append((status, headers.get(HUB_ID_HEADER.lower())))
    assert {hub_id_seen for _, hub_id_seen in seen} == {hub_id}, seen
    assert {status for status, _ in seen} >= {200, 401}, seen


async def test_the_outbox_keeps_the_hub_id_it_last_synced_with_at_each_url_and_says_when_it_changed(
    tmp_path: Path,
) -> None:
    """An answer from another database at the same URL is reported (the replicator logs it); at another URL (a
    hub_url changed on purpose) it is a new hub, nothing to say; an answer without an id changes nothing."""
    url, elsewhere = "http://hub.example:8470/v1/sync", "http://other.example:8470/v1/sync"
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location="S1") as outbox:
        await outbox.record(moves(2))

        async def answered(hub_id: str | None, at: str, hwm: int) -> str | None:
            resp = SyncResponse(outbox.agent_id, outbox.epoch, hwm, server_time_ms=1_700_000_000_000)
            return (await outbox.apply_answer(resp, clock_skew_ms=0, hub_id=hub_id, hub_url=at)).hub_id_before

        assert await outbox.synced_hub_id(url) is None
        assert await answered("a" * 32, url, 1) is None
        assert await answered(None, url, 1) is None  # an older hub's answer: the id kept is not forgotten
        assert await outbox.synced_hub_id(url) == "a" * 32 and await outbox.synced_hub_id(elsewhere) is None
        assert await answered("b" * 32, url, 2) == "a" * 32
        assert await answered("c" * 32, elsewhere, 2) is None
        assert await outbox.synced_hub_id(elsewhere) == "c" * 32 and await outbox.synced_hub_id(url) is None
