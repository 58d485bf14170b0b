"""A hub restored from an older copy of its database gets back what it lost
from the real agent (outbox + replicator), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent import Movement, Outbox, Replicator, ReplicatorState
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from tests.harness.clock import RECENT_MS
from tests.harness.inprocess import hub_in_process
from tests.harness.sqlite_copy import backup

WAIT_S = 15.0
LOC = "S001"


def move(kind: Kind, qty: int) -> Movement:
    return Movement(LOC, "SKU-1", kind, qty, "pos:acme")


async def until(replicator: Replicator, predicate: Callable[[ReplicatorState], bool]) -> ReplicatorState:
    return await asyncio.wait_for(replicator.wait_for(predicate), WAIT_S)


async def test_the_agent_resends_what_a_restored_hub_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    live, older = tmp_path / "hub.db", tmp_path / "hub-backup.db"
    async with AsyncExitStack() as serving:
        hub = await serving.enter_async_context(hub_in_process(live))
        agent_id, token = await hub.store.add_agent([LOC])
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox:
            # a long tick: the replicator only sends when there is new data (or it is kicked)
            replicator = Replicator(outbox, hub.url, token, tick_s=3600, retry_base_s=0.01, retry_max_s=0.05)
            async with replicator:
                await outbox.record([move(Kind.RECEIVE, 5), move(Kind.SALE, -1), move(Kind.SALE, -1)])
                await until(replicator, lambda s: s.sent_events >= 3 and s.backlog == 0)
                await asyncio.to_thread(backup, live, older)  # the backup holds seq 1..3
                await outbox.record([move(Kind.RECEIVE, 2), move(Kind.SALE, -1), move(Kind.SALE, -1)])
                await until(replicator, lambda s: s.sent_events >= 6 and s.backlog == 0)
                assert (await outbox.stats()).acked_seq == 6

                # The hub's disk is lost; it is restored from the backup and comes back at another address.
                await serving.aclose()
                hub = await serving.enter_async_context(hub_in_process(older))
                epoch = outbox.epoch
                assert (await hub.store.agent_status(agent_id))[0].hwm == {epoch: 3}
                replicator.update_credentials(token, hub.url)
                # The next batch carries acked_seq 6: the hub answers its own mark, 3, and the agent rewinds.
                await outbox.record([move(Kind.SALE, -1)])
                await until(replicator, lambda s: s.sent_events >= 7 + 4 and s.backlog == 0)
                stats = await outbox.stats()
            assert (stats.last_seq, stats.acked_seq, stats.set_aside) == (7, 7, 0)
        ledger = await hub.store.ledger()
        assert sorted(r.seq for r in ledger) == [1, 2, 3, 4, 5, 6, 7]  # nothing lost, nothing twice
        assert [(c.sku, c.on_hand) for c in await hub.store.counts()] == [("SKU-1", 2)]
        assert (await hub.store.agent_status(agent_id))[0].hwm == {epoch: 7}
    messages = [r.getMessage() for r in caplog.records]
    assert any("was the hub database restored" in m for m in messages)  # the hub noticed
    assert any("resending" in m and "from seq 4" in m for m in messages)  # the agent rewound


async def test_a_sync_ahead_of_the_hub_is_answered_the_hubs_mark_over_http(tmp_path: Path) -> None:
    async with hub_in_process(tmp_path / "hub.db") as hub:
        store = hub.store
        agent_id, token = await store.add_agent([LOC])
        headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}

        events = {
            seq: StockEvent(
                new_event_id(),
                agent_id,
                1,
                seq,
                LOC,
                "SKU-1",
                Kind.RECEIVE,
                1,
                pack_hlc(RECENT_MS + seq, 0),
                RECENT_MS + seq,
                "pos:acme",
            )
            for seq in range(1, 6)
        }
        ev = events.__getitem__

        async def sync(events: list[StockEvent], acked_seq: int) -> Any:
            body = encode_sync_request(SyncRequest(agent_id, 1, tuple(events), acked_seq=acked_seq))
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{hub.url}/v1/sync", data=body, headers=headers) as resp,
            ):
                assert resp.status == 200
                return decode_sync_response(await resp.read())

        assert (await sync([ev(1), ev(2)], 0)).hwm == 2
        answer = await sync([ev(5)], 4)  # the agent holds 4 as acknowledged; this hub has 2
        assert (answer.hwm, answer.duplicates) == (2, 0)
        resent = await sync([ev(3), ev(4), ev(5)], 2)
        assert (resent.hwm, resent.duplicates) == (5, 1)
        assert [c.on_hand for c in await store.counts()] == [5]
