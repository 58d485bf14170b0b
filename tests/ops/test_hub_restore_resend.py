"""A hub restored from a backup taken before its agents' last syncs: what each agent acknowledged since comes back
from its outbox, and what an outbox no longer holds (retention purged it) is said, not passed over.

Real HTTP on 127.0.0.1 to hubs in this process over real SQLite files, the backup made with ``hub.backup``, the
restore procedure of docs/operations.md, agents as outboxes and replicators (``agent.Outbox``, ``agent.Replicator``)
and ``shelfsync-agent status`` as a real process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

import protocol.codec
from agent import Kind, Movement, Outbox, Replicator
from hub.backup import backup
from hub.storage.postgres.store import redacted
from tests.harness.inprocess import ServedHub, hub_in_process
from tests.harness.pg import PG_URL, fresh_schema

WAIT_S = 20.0


def moves(n: int, sku: str) -> list[Movement]:
    return [Movement("S1", sku, Kind.SALE, -1, "pos:test") for _ in range(n)]


async def synced(outbox: Outbox, url: str, token: str, *, feed: bool = False) -> None:
    """Send the outbox's backlog to the hub at ``url`` and stop (``feed``: following the change feed, as the agent
    does: the answers say the hub's change numbering)."""
    replicator = Replicator(
        outbox, url, token, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S, rng=random.Random(7), feed=feed
    )
    async with replicator:
        await asyncio.wait_for(replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0), WAIT_S)


async def counts(hub: ServedHub, token: str) -> dict[str, int]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.get(f"{hub.url}/v1/locations/S1/counts", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return {row["sku"]: row["on_hand"] for row in (await resp.json())["counts"]}


async def lost_listed(hub: ServedHub, token: str, query: str = "") -> list[dict[str, Any]]:
    """The ``agent_movements_lost`` entries of the hub's exceptions list (``query``: more of its parameters)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.get(
            f"{hub.url}/v1/exceptions?kind=agent_movements_lost{query}", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["exceptions"])


async def listed_once_told(
    outbox: Outbox, hub: ServedHub, agent_token: str, reader: str, *, feed: bool = False
) -> list[dict[str, Any]]:
    """Run the outbox's replicator until the hub lists what it lacks of it (the report goes with the request after
    the answer that showed it, a handshake if nothing else waits), then the list (``feed``: as ``synced``)."""
    replicator = Replicator(
        outbox, hub.url, agent_token, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S, rng=random.Random(7),
        tick_s=0.05, feed=feed,
    )  # fmt: skip
    async with replicator, asyncio.timeout(WAIT_S):
        while not (listed := await lost_listed(hub, reader)):
            await asyncio.sleep(0.05)
        await replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0)
    return listed


async def dismiss_lost(hub: ServedHub, token: str, agent_id: str) -> tuple[int, Any]:
    """POST /v1/agents/{agent_id}/lost/dismiss: its status and its JSON answer."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(
            f"{hub.url}/v1/agents/{agent_id}/lost/dismiss", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, await resp.json()


def restore(copy: Path, db: Path) -> None:
    """The restore procedure of docs/operations.md: the hub stopped, its files moved aside, the copy in place."""
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if stale.exists():
            stale.rename(stale.with_name(stale.name + ".old"))
    shutil.copyfile(copy, db)


async def agent_status(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 3, err  # no agent runs on this outbox
    return out.decode()


async def test_movements_an_outbox_purged_before_the_hub_was_restored_are_said_lost_not_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: the agent logged that it was resending every event from the restored hub's mark ("resending 2 events
    from seq 6") while retention had purged seqs 6 to 9; the hub took seqs 10 and 11 on top of its mark, so those
    four movements were gone from its counts for good and nothing anywhere said so. Now the agent counts what its
    outbox no longer holds of what the hub had acknowledged, says so as an ERROR (count the stock again), and
    `status` shows it. A second agent, within its retention, brings back all it synced since the backup."""
    caplog.set_level(logging.WARNING)
    db, data = tmp_path / "hub.db", tmp_path / "data"
    data.mkdir()
    purged_path, kept_path = data / "outbox.sqlite3", tmp_path / "kept.sqlite3"
    async with hub_in_process(db) as hub:
        port = hub.port
        purged_id, purged_token = await hub.store.add_agent(["S1"])
        kept_id, kept_token = await hub.store.add_agent(["S1"])
        async with (
            Outbox.open(purged_path, agent_id=purged_id, location="S1") as purged,
            Outbox.open(kept_path, agent_id=kept_id, location="S1") as kept,
        ):
            await purged.record(moves(5, "SKU-P"))
            await kept.record(moves(3, "SKU-K"))
            await synced(purged, hub.url, purged_token)
            await synced(kept, hub.url, kept_token)
            copy = backup(str(db), tmp_path / "backup.db").path
            await purged.record(moves(4, "SKU-P"))  # seqs 6-9, acknowledged after the backup
            await kept.record(moves(4, "SKU-K"))
            await synced(purged, hub.url, purged_token)
            await synced(kept, hub.url, kept_token)
        never_restored = await counts(hub, kept_token)
    assert never_restored == {"SKU-P": -9, "SKU-K": -7}
    async with Outbox.open(purged_path, agent_id=purged_id, location="S1", retention_s=0.0):
        pass  # retention passed for this store: its acknowledged rows are purged as it opens
    restore(copy, db)
    caplog.clear()
    async with hub_in_process(db, port=port) as hub:
        assert await counts(hub, kept_token) == {"SKU-P": -5, "SKU-K": -3}
        async with (
            Outbox.open(purged_path, agent_id=purged_id, location="S1") as purged,
            Outbox.open(kept_path, agent_id=kept_id, location="S1") as kept,
        ):
            await purged.record(moves(2, "SKU-P"))  # seqs 10-11: never synced before
            await synced(purged, hub.url, purged_token)
            await synced(kept, hub.url, kept_token)
            stats = await purged.stats()
        restored = await counts(hub, kept_token)
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "{purged_id}"\nlocation = "S1"\ndata_dir = "{data}"\nhub_url = "{hub.url}"\n'
            f'token = "{purged_token}"\n',
            encoding="utf-8",
        )
        shown = await agent_status(config)
    assert restored["SKU-K"] == never_restored["SKU-K"]  # within retention: every movement came back
    assert restored["SKU-P"] == -7  # seqs 6-9 are nowhere to send from: the hub lacks them, and it is said
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "below the 9 it acknowledged before" in error and "4 of the movements it acknowledged from seq 6 to 9 are no" \
        " longer in this outbox" in error and "count the store's stock again" in error, error
    (resent,) = [r.getMessage() for r in caplog.records if "resending" in r.getMessage()]  # the other agent only
    assert resent.endswith("below the 7 it acknowledged before (restored from a backup, or another hub?); resending"
                           " 4 events from seq 4."), resent
    assert (stats.hub_lacks, stats.hub_lacks_seqs, stats.acked_seq, stats.backlog) == (4, "6-9", 11, 0)
    said_old(caplog, str(db))
    assert "\nhub LACKS    4 acknowledged movements (of seq 6-9) since its mark went back at " in shown, shown


def said_old(caplog: pytest.LogCaptureFixture, where: str) -> None:
    """The restored hub's start said how old its copy is, and what comes back of what was recorded since."""
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("The newest store agent sync")]
    assert said.startswith(f"The newest store agent sync {where} holds is from "), said
    assert " h before this start: each agent sends again what it recorded since, while it still holds it" in said


def copy_outbox(source: Path, target: Path) -> None:
    """The outbox file as it is now, closed (a VM snapshot of the store PC)."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
        else:
            Path(f"{target}{suffix}").unlink(missing_ok=True)


def pg_restore(dump: Path, url: str) -> None:
    """The restore procedure of docs/operations.md: pg_restore into a new, empty database."""
    parts = urlsplit(url)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    no_password = urlunsplit(parts._replace(netloc=netloc, query=""))
    done = subprocess.run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={no_password}", str(dump)],
        env={**os.environ, "PGPASSWORD": parts.password or ""}, capture_output=True, check=False, text=True,
        timeout=WAIT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@asynccontextmanager
async def restorable(backend: str, tmp_path: Path) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """The hub database, and a step whose first call backs it up (``hub.backup``) and whose second restores that
    backup in its place, the hub stopped (SQLite: the copy onto the same path, docs/operations.md; PostgreSQL: the
    hub's schema dropped and the dump restored into it with pg_restore as docs/operations.md says, which makes
    its tables anew: docs/operations.md's new database costs seconds to drop)."""
    made: list[bool] = []
    if backend == "sqlite":
        db, copy = tmp_path / "hub.db", tmp_path / "backup.db"

        async def sqlite_step() -> None:
            backup(str(db), copy) if not made else restore(copy, db)
            made.append(True)

        yield str(db), sqlite_step
        return
    async with fresh_schema() as url:
        dump = tmp_path / "hub.dump"

        async def pg_step() -> None:
            if made:
                conn = await asyncpg.connect(PG_URL, timeout=WAIT_S)
                try:
                    await conn.execute(f'DROP SCHEMA "{url.rsplit("search_path=", 1)[1]}" CASCADE')
                finally:
                    await conn.close()
                pg_restore(dump, url)
            else:
                backup(url, dump)
            made.append(True)

        yield url, pg_step


async def test_an_epoch_begun_after_the_backup_does_not_hide_what_the_restored_hub_lacks_below_its_base(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: an outbox that forked after the hub's backup was made (its store PC rolled back to a snapshot: the
    hub held more than it) continued in a new epoch from its acknowledged mark, seq 7. The restored hub had never
    seen that epoch and took its base on trust, so seqs 6 and 7, acknowledged after the backup in the old epoch
    and still in the outbox, were never sent again: gone from its counts without a word. Now a new epoch's base
    above every mark the hub holds for that agent is not taken: the hub answers its own highest mark, and the
    agent rewinds and sends the rest again (the hub counts each event once)."""
    path, snapshot = tmp_path / "outbox.sqlite3", tmp_path / "snapshot.sqlite3"
    async with restorable(backend, tmp_path) as (db, step):
        caplog.set_level(logging.WARNING, logger="hub.storage")
        await rolled_back_then_restored(db, step, path, snapshot)
    said_old(caplog, db if backend == "sqlite" else redacted(db))


async def rolled_back_then_restored(db: str, step: Callable[[], Awaitable[None]], path: Path, snapshot: Path) -> None:
    async with hub_in_process(db) as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(5, "SKU-A"))  # seqs 1-5: in the backup
            await synced(outbox, hub.url, token)
        await step()  # the backup
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(2, "SKU-B"))  # seqs 6-7: acknowledged after the backup
            await synced(outbox, hub.url, token)
        copy_outbox(path, snapshot)
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(2, "SKU-C"))  # seqs 8-9: lost with the rollback, held by this hub only
            await synced(outbox, hub.url, token)
        copy_outbox(snapshot, path)  # the store PC rolled back
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(2, "SKU-D"))
            await synced(outbox, hub.url, token)  # the hub holds seq 9: the outbox forks at 7
            assert (await outbox.stats()).epoch_base == 7
    await step()  # the restore
    async with hub_in_process(db, port=port) as hub:
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await synced(outbox, hub.url, token)
            stats = await outbox.stats()
        restored = await counts(hub, token)
    assert restored == {"SKU-A": -5, "SKU-B": -2, "SKU-D": -2}, restored  # SKU-C went with the rollback alone
    assert (stats.acked_seq, stats.backlog, stats.hub_lacks) == (9, 0, None)


async def test_movements_acknowledged_to_an_agent_id_before_a_rebind_and_lost_with_a_restore_are_said_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: an outbox rebound to a new agent id (``shelfsync-agent rebind``) continues from what the hub had
    acknowledged to its old id. A hub restored from a backup made before those acknowledgements has no mark of the
    new id and takes its base on trust, so the old id's movements acknowledged after the backup were gone from its
    counts without a word (they cannot be sent again as the new id: the hub would count twice those it holds).
    Now the agent sees the restored hub's change numbering below the answer that acknowledged them, says so as an
    ERROR (count the stock again), and `status` shows a hub LACKS line. A rebind without a restore says nothing."""
    caplog.set_level(logging.WARNING)
    db, data = tmp_path / "hub.db", tmp_path / "data"
    data.mkdir()
    path = data / "outbox.sqlite3"
    async with hub_in_process(db) as hub:
        port = hub.port
        old_id, old_token = await hub.store.add_agent(["S1"])
        new_id, new_token = await hub.store.add_agent(["S1"])
        _, reader = await hub.store.add_agent([], role="reader")
        async with Outbox.open(path, agent_id=old_id, location="S1") as outbox:
            await outbox.record(moves(3, "SKU-A"))  # seqs 1-3: in the backup
            await synced(outbox, hub.url, old_token, feed=True)
            copy = backup(str(db), tmp_path / "backup.db").path
            await outbox.record(moves(2, "SKU-B"))  # seqs 4-5: acknowledged to the old id after the backup
            await synced(outbox, hub.url, old_token, feed=True)
            await outbox.rebind(new_id)
            await outbox.record(moves(1, "SKU-C"))  # seq 6: the new id's
            await synced(outbox, hub.url, new_token, feed=True)
            assert (await outbox.stats()).hub_lacks is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a rebind alone loses nothing
        assert await counts(hub, new_token) == {"SKU-A": -3, "SKU-B": -2, "SKU-C": -1}
    restore(copy, db)
    caplog.clear()
    async with hub_in_process(db, port=port) as hub:
        async with Outbox.open(path, agent_id=new_id, location="S1") as outbox:
            (listed,) = await listed_once_told(outbox, hub, new_token, reader, feed=True)  # an idle agent tells it too
            stats = await outbox.stats()
        restored = await counts(hub, new_token)
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "{new_id}"\nlocation = "S1"\ndata_dir = "{data}"\nhub_url = "{hub.url}"\n'
            f'token = "{new_token}"\n',
            encoding="utf-8",
        )
        shown = await agent_status(config)
    assert restored == {"SKU-A": -3, "SKU-C": -1}, restored  # the new id's seq 6 came back; seqs 4-5 cannot
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        f"when it acknowledged agent {old_id}'s movements up to seq 5 before this outbox was rebound to {new_id}"
        in error
        and "it lacks at least the 2 movements of seq 4 to 5" in error
        and "count the store's stock again" in error
    ), error
    assert (stats.hub_lacks, stats.hub_lacks_seqs, stats.hub_lacks_of, stats.acked_seq) == (2, "4-5", old_id, 6)
    data = listed["data"]
    assert (data["agent_id"], data["first_seq"], data["last_seq"], data["lost"], data["at_least"], data["of_agent"]) == (
        new_id, 4, 5, 2, True, old_id
    )  # fmt: skip
    assert listed["detail"].startswith(
        f"S1's agent {new_id}: the hub lacks at least 2 movements of that store (seqs 4 to 5, sent as agent {old_id}"
        f" before the outbox was rebound to {new_id}), found at 20"
    ), listed["detail"]
    assert (
        f"\nhub LACKS    at least 2 movements (of seq 4-5) agent {old_id} had acknowledged before the rebind" in shown
    ), shown


async def purged_then_restored(
    db: str, step: Callable[[], Awaitable[None]], path: Path
) -> tuple[int, str, str, str, str]:
    """A hub backed up after an outbox's seqs 1-5, acknowledging seqs 6-9 after the backup, the outbox purging them
    (retention passed), the hub restored: the hub's port, the agent's id and token, a reader's and an admin's
    token."""
    async with hub_in_process(db) as hub:
        port = hub.port
        agent_id, token = await hub.store.add_agent(["S1"])
        _, reader = await hub.store.add_agent([], role="reader")
        _, admin = await hub.store.add_agent([], role="admin")
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(5, "SKU-P"))
            await synced(outbox, hub.url, token)
            await step()  # the backup
            await outbox.record(moves(4, "SKU-P"))  # seqs 6-9, acknowledged after the backup
            await synced(outbox, hub.url, token)
            assert await lost_listed(hub, reader) == []  # nothing lost while the hub holds them
    async with Outbox.open(path, agent_id=agent_id, location="S1", retention_s=0.0):
        pass  # retention passed for this store: its acknowledged rows are purged as it opens
    await step()  # the restore
    return port, agent_id, token, reader, admin


async def test_movements_the_restored_hub_lacks_for_good_are_listed_in_its_exceptions_until_dismissed(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: the loss showed only at the store (the agent's ERROR and its status' hub LACKS line); the hub's
    operators, who watch GET /v1/exceptions and the dashboard, never learned that movements of that store were
    gone, so nobody counted its stock again. Now the agent reports them with its next sync request and the hub
    lists an ``agent_movements_lost`` exception naming the store, the seqs, how many and when, saying to count the
    store's stock again (the hub cannot know the SKUs), once, however often the report comes."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "outbox.sqlite3"
    async with restorable(backend, tmp_path) as (db, step):
        port, agent_id, token, reader, admin = await purged_then_restored(db, step, path)
        async with hub_in_process(db, port=port) as hub:
            async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
                epoch = outbox.epoch
                (entry,) = await listed_once_told(outbox, hub, token, reader)
                assert outbox.lost is not None and outbox.lost.found_ms == entry["data"]["found_ms"]
            async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
                assert await listed_once_told(outbox, hub, token, reader) == [entry]  # told again by a new run: once
            assert await lost_listed(hub, reader, "&location=S1") == [entry]
            assert await lost_listed(hub, reader, "&location=S2") == []
            restored = await counts(hub, token)
            status, refused = await dismiss_lost(hub, reader, agent_id)
            assert status == 403, refused
            assert await dismiss_lost(hub, admin, agent_id) == (
                200, {"agent_id": agent_id, "dismissed": [{"first_seq": 6, "last_seq": 9, "lost": 4, "at_least": False}]}
            )  # fmt: skip  (the store was counted again)
            assert await lost_listed(hub, reader) == []
            async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
                await outbox.record(moves(1, "SKU-N"))
                await synced(outbox, hub.url, token)  # a new run tells the hub again: dismissed, it stays so
            assert await lost_listed(hub, reader) == []
            status, none = await dismiss_lost(hub, admin, agent_id)
            assert status == 404 and "has no lost movements listed" in none["detail"], none
    assert restored == {"SKU-P": -5}  # seqs 6-9 are lost: what the entry says
    assert (entry["kind"], entry["location"], entry["sku"]) == ("agent_movements_lost", "S1", None)
    data = entry["data"]
    assert (data["agent_id"], data["epoch_text"], data["first_seq"], data["last_seq"], data["lost"]) == (
        agent_id, str(epoch), 6, 9, 4
    )  # fmt: skip
    assert (data["at_least"], data["of_agent"], data["locations"]) == (False, None, ["S1"])
    detail = entry["detail"]
    assert detail.startswith(
        f"S1's agent {agent_id}: the hub lacks 4 movements of that store (seqs 6 to 9), found at 20"
    ), detail
    assert "The hub cannot tell which SKUs they moved" in detail and "count S1's stock again, then dismiss" in detail
    assert detail.endswith(f"(POST /v1/agents/{agent_id}/lost/dismiss)."), detail
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]  # the agent's, as before
    assert "4 of the movements it acknowledged from seq 6 to 9 are no longer in this outbox" in error, error


async def test_a_hub_older_than_the_report_of_lost_movements_still_gets_the_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub from before API 1.13 refuses a sync request carrying ``lost`` (400, unknown field): the agent says so
    once, sends without it from then on, and its events still arrive; its own ERROR and status still say what is
    lost."""
    caplog.set_level(logging.INFO, logger="agent")
    older = protocol.codec._REQUEST_KEYS - {"lost"}  # what a 1.12 hub reads: the real hub, its codec as it was
    monkeypatch.setattr(protocol.codec, "_REQUEST_KEYS", older)
    db, copy, path = tmp_path / "hub.db", tmp_path / "backup.db", tmp_path / "outbox.sqlite3"

    async def step() -> None:
        backup(str(db), copy) if not copy.exists() else restore(copy, db)

    port, agent_id, token, reader, _ = await purged_then_restored(str(db), step, path)
    async with hub_in_process(db, port=port) as hub:
        async with Outbox.open(path, agent_id=agent_id, location="S1") as outbox:
            await outbox.record(moves(2, "SKU-P"))  # seqs 10-11, sent after the answer that shows the loss
            await synced(outbox, hub.url, token)
            await outbox.record(moves(1, "SKU-N"))
            await synced(outbox, hub.url, token)
            stats = await outbox.stats()
        assert await counts(hub, token) == {"SKU-P": -7, "SKU-N": -1}
        assert await lost_listed(hub, reader) == []
    assert (stats.hub_lacks, stats.hub_lacks_seqs, stats.acked_seq, stats.backlog) == (4, "6-9", 12, 0)
    said = "does not read the agent's report of movements"
    refused = [r.getMessage() for r in caplog.records if said in r.getMessage()]
    assert len(refused) == 2 and "count this store's stock again" in refused[0], refused  # once each run of synced()
