"""The local count cache while a full disk refuses to store the hub's acknowledgements, and once it takes them again:
the real hub on 127.0.0.1 over a real SQLite file, the agent's outbox on another, whose writes of the hub's answers
fail as a full disk fails them (``OutboxFull``: the outbox's own error for a write the disk refused) while its
replicator sends on past the answers it could not store (``after_seq``, docs/design.md "A full disk at the store").
A file made full by SQLite itself (``tests.harness.small_disk.sqlite_full``) still takes an answer, which changes
rows in place, so the refusal is made where the outbox stores the answer.

Found: the first answer stored after such a run moved the acknowledged mark past batches whose answers (and their
counts) were never stored, so their movements were neither pending nor in the cached hub count: 10 received, then 5
more received, and the count staff saw was 10 until the next sync of that SKU."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent import Movement, Outbox, Replicator
from agent.errors import OutboxFull
from agent.outbox import AnswerResult
from hub import HubSettings, create_app, open_store
from protocol import Kind, SyncResponse
from tests.harness.inprocess import serve_app

LOC = "S001"
WAIT_S = 30.0
FAST: dict[str, Any] = {
    "batch_size": 1, "tick_s": 0.05, "retry_base_s": 0.01, "retry_max_s": 0.05, "timeout_s": 10.0,
    "heartbeat_s": 0.1, "rng": random.Random(7),
}  # fmt: skip


async def eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.02)
    assert await check(), what


async def test_the_count_staff_see_holds_every_movement_once_while_the_disk_refuses_acknowledgements_and_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        async with (
            serve_app(app) as hub,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox,
        ):

            async def on_hand(sku: str) -> int:
                return (await outbox.counts.local_count(LOC, sku)).on_hand

            async def at_hub() -> int:
                (status,) = await store.agent_status(agent_id)
                return status.hwm.get(outbox.epoch, 0)

            await outbox.record([Movement(LOC, "A", Kind.RECEIVE, 10, "scanner:dock")])
            async with Replicator(outbox, hub.url, token, **FAST) as replicator:
                await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            assert (await outbox.stats()).acked_seq == 1 and await on_hand("A") == 10

            await outbox.record([Movement(LOC, "A", Kind.RECEIVE, 5, "scanner:dock")])  # seq 2, a batch of its own
            await outbox.record([Movement(LOC, "B", Kind.SALE, -1, "pos:acme")])  # seq 3
            disk = FullDisk(outbox)
            async with Replicator(outbox, hub.url, token, **FAST):
                await eventually("the hub holds seq 3", lambda: _equal(at_hub, 3))
                assert (await outbox.stats()).acked_seq == 1 and disk.refused >= 2, "no acknowledgement was stored"
                assert "is not stored; the events after seq 2 are sent meanwhile" in caplog.text
                # Sent on past an acknowledgement it could not store: each movement counted once.
                assert (await on_hand("A"), await on_hand("B")) == (15, -1)

                disk.full = False  # room again
                await eventually("an acknowledgement is stored", lambda: _acked(outbox, 3))
                # The mark moved past batches whose answers were never stored: their counts are stored with it.
                assert (await on_hand("A"), await on_hand("B")) == (15, -1)
                a = await outbox.counts.local_count(LOC, "A")
                assert a.pending_events == 0 and a.hub_as_of_ms is not None
            hub_a = await outbox.counts.hub_count(LOC, "A")
            assert hub_a is not None and hub_a.on_hand == 15  # the hub's own count, as it answered batch 2


class FullDisk:
    """While ``full``, the outbox refuses to store a hub's answer as it does when the disk refuses the write."""

    def __init__(self, outbox: Outbox) -> None:
        self.full = True
        self.refused = 0
        apply_answer = outbox.apply_answer

        async def store(resp: SyncResponse, **kw: Any) -> AnswerResult:
            if self.full:
                self.refused += 1
                raise OutboxFull(f"the outbox {outbox.path} could not be written: the disk is full")
            return await apply_answer(resp, **kw)

        outbox.apply_answer = store  # type: ignore[method-assign]


async def _equal(value: Callable[[], Awaitable[int]], want: int) -> bool:
    return await value() == want


async def _acked(outbox: Outbox, seq: int) -> bool:
    return (await outbox.stats()).acked_seq >= seq
