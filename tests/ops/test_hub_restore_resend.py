"""A hub restored from a backup taken before its agents' last syncs: what each agent acknowledged since comes back
from its outbox, and what an outbox no longer holds (retention purged it) is said, not passed over.

Real HTTP on 127.0.0.1 to hubs in this process over real SQLite files, the backup made with ``hub.backup``, the
restore procedure of docs/operations.md, agents as outboxes and replicators (``agent.Outbox``, ``agent.Replicator``)
and ``shelfsync-agent status`` as a real process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest

from agent import Kind, Movement, Outbox, Replicator
from hub.backup import backup
from tests.harness.inprocess import ServedHub, hub_in_process

WAIT_S = 20.0


def moves(n: int, sku: str) -> list[Movement]:
    return [Movement("S1", sku, Kind.SALE, -1, "pos:test") for _ in range(n)]


async def synced(outbox: Outbox, url: str, token: str) -> None:
    """Send the outbox's backlog to the hub at ``url`` and stop."""
    replicator = Replicator(
        outbox, url, token, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S, rng=random.Random(7)
    )
    async with replicator:
        await asyncio.wait_for(replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0), WAIT_S)


async def counts(hub: ServedHub, token: str) -> dict[str, int]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.get(f"{hub.url}/v1/locations/S1/counts", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return {row["sku"]: row["on_hand"] for row in (await resp.json())["counts"]}


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
    caplog.set_level(logging.WARNING, logger="agent.outbox")
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
    assert "\nhub LACKS    4 acknowledged movements (of seq 6-9) since its mark went back at " in shown, shown
