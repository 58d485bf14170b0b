"""A session closed after the night's backup, shown open again once the data_dir is restored from it, and closed
again by the staff: the real hub counts the delivery once."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from agent.outbox import Outbox
from agent.sessions import SessionManager, SessionSpec, SessionStatus, SessionStore, SessionType
from hub import HubStore
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, catalog
from tests.agent.sessions.sessions_hub import running_hub, sync
from tests.harness.sqlite_copy import backup


async def on_hand(hub: HubStore, sku: str) -> int:
    [row] = await hub.counts(location="S001", sku=sku)
    return row.on_hand


def restore(backups: Path, data_dir: Path, *names: str) -> None:
    """Put the night's copies of ``names`` back over the data_dir's files, as a careless restore does."""
    for name in names:
        for suffix in ("-wal", "-shm"):
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backups / name, data_dir / name)


async def test_a_delivery_closed_again_after_a_restore_from_an_older_backup_is_counted_once(tmp_path: Path) -> None:
    """Found: a delivery session open at the night's backup and closed the next morning came back open when the
    data_dir (or only its sessions.sqlite3) was restored from that backup; closed again by the staff it was booked
    again with new ids, its movements derived from the time of the close, and the hub counted the delivery twice.
    A session whose movements the outbox holds already is only marked closed now, and the ids of a session's
    movements do not depend on when it was closed, so a close the outbox no longer knows of either (restored with
    it) reaches the hub as the same movements: counted once."""
    data, backups = tmp_path / "data", tmp_path / "backups"
    data.mkdir()
    backups.mkdir()
    async with running_hub(tmp_path) as (hub, url):
        agent_id, token = await hub.add_agent(["S001"])

        @contextlib.asynccontextmanager
        async def agent():  # type: ignore[no-untyped-def]
            async with (
                Outbox.open(data / "outbox.sqlite3", agent_id=agent_id, location="S001") as outbox,
                SessionStore.open(data / "sessions.sqlite3") as store,
            ):
                yield outbox, SessionManager(store, outbox, catalog=catalog())

        async with agent() as (outbox, sessions):
            delivery = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-1"), by="ana")
            await sessions.scan(delivery.id, APPLE, by="ana", qty=5)
            await sessions.scan(delivery.id, PEAR, by="ana", qty=2)
            for name in ("outbox.sqlite3", "sessions.sqlite3"):
                backup(data / name, backups / name)  # the night's backup
            await sessions.close(delivery.id, by="ana")
            await sync(outbox, url, token)
        assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (5, 2)

        restore(backups, data, "sessions.sqlite3")  # the sessions only: the outbox holds the close
        async with agent() as (outbox, sessions):
            assert (await sessions.get(delivery.id)).status is SessionStatus.OPEN
            closed = await sessions.close(delivery.id, by="bo")
            assert closed.status is SessionStatus.CLOSED
            assert len(await outbox.pending(100)) == 0  # nothing new to send
            await sync(outbox, url, token)
        assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (5, 2)

        restore(backups, data, "sessions.sqlite3", "outbox.sqlite3")  # the whole data_dir
        async with agent() as (outbox, sessions):
            assert (await sessions.get(delivery.id)).status is SessionStatus.OPEN
            await sessions.close(delivery.id, by="bo")
            await sync(outbox, url, token)
        assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (5, 2)
