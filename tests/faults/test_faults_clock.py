"""The agent's clock an hour fast, then jumping back: order, counts and marks stay right.

The agent side runs in this process with its wall clock injected (the
outbox and its hybrid logical clock take ``wall_clock_ms``); the hub is a
real process. The clock first runs an hour fast, then jumps back an hour
and the outbox is reopened (as after a reboot that fixed the clock). A
count is recorded after the jump: it must be ordered after every movement
recorded before it, though their wall times are an hour later — otherwise
the hub would apply those movements on top of the count.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from itertools import pairwise

from agent import Movement, Outbox, Replicator
from protocol import Kind, unpack_hlc, wall_ms_now
from tests.faults.helpers import Store, scale, verify
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json

HOUR_MS = 3_600_000
SKEW_SLACK_MS = 120_000
SYNC_WAIT_S = 60.0


class SkewedClock:
    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def __call__(self) -> int:
        return wall_ms_now() + self.offset_ms


async def record_and_sync(store: Store, clock: SkewedClock, movements: list[Movement]) -> None:
    outbox = await Outbox.open(store.outbox, agent_id=store.cred.agent_id, location=store.location, wall_clock_ms=clock)
    replicator = Replicator(outbox, store.hub_url, store.cred.token, tick_s=0.2, retry_base_s=0.05, retry_max_s=0.5)
    async with outbox, replicator:
        for start in range(0, len(movements), 7):
            await outbox.record(movements[start : start + 7])
        synced = replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0 and s.sent_events > 0)
        await asyncio.wait_for(synced, SYNC_WAIT_S)


def test_a_clock_an_hour_fast_then_jumping_back_keeps_order_and_counts(hub: HubProcess, make_store: Callable[..., Store]) -> None:
    n = scale(60, 600)
    store = make_store(hub, hub.url)
    hub.start()
    clock = SkewedClock(+HOUR_MS)
    before = [Movement(store.location, "SKU-A", Kind.RECEIVE, 3, "api:test") for _ in range(n)]
    asyncio.run(record_and_sync(store, clock, before))

    skew = get_json(f"{hub.url}/v1/agents", store.cred.token)
    mine = next(a for a in skew["agents"] if a["agent_id"] == store.cred.agent_id)
    assert abs(mine["clock_skew_ms"] + HOUR_MS) < SKEW_SLACK_MS, f"the hub sees the agent an hour ahead: {mine}"

    clock.offset_ms = 0  # the clock jumps back an hour; the agent restarts
    after = [Movement(store.location, "SKU-A", Kind.COUNT, 50, "api:test", reason="cycle_count")]
    after += [Movement(store.location, "SKU-A", Kind.SALE, -1, "api:test") for _ in range(n)]
    asyncio.run(record_and_sync(store, clock, after))

    with sqlite3.connect(store.outbox) as conn:
        stamps = [row[0] for row in conn.execute("SELECT occurred_at FROM events ORDER BY seq")]
    assert len(stamps) == 2 * n + 1
    assert all(b > a for a, b in pairwise(stamps)), "the hybrid clock never goes backwards, across the jump and the restart"
    assert unpack_hlc(stamps[-1])[0] > wall_ms_now() + HOUR_MS // 2, "after the jump it keeps counting from the fast time"

    verify(hub, [store], expected={(store.location, "SKU-A"): 50 - n})
    ledger = get_json(f"{hub.url}/v1/ledger?location={store.location}&limit=10000", store.cred.token)["events"]
    effects = {(row["kind"], row["effect"]) for row in ledger}
    assert effects == {("receive", "superseded"), ("count", "applied"), ("sale", "applied")}, (
        "every receipt is ordered before the count (the count already saw it), every sale after it"
    )
    count = next(row for row in ledger if row["kind"] == "count")
    assert count["variance"] == 50 - 3 * n, "the count saw every receipt recorded before it"
