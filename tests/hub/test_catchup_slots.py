"""After a regional outage: at most ``CATCHUP_SLOTS`` catch-up batches at once in a hub process (hub/catchup.py).

Real HTTP on 127.0.0.1 to a hub over a real SQLite file. The writer is held busy (another store's batch under
way) while catch-up batches arrive: the ones past the cap are answered ``429`` with ``Retry-After`` at once,
before their body is read, and nothing of them is stored; a live store's small batch is never refused; once
the writer goes on, everything admitted commits, and the refused batch sent again commits too, once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from hub.catchup import CATCHUP_BODY_BYTES, CATCHUP_SLOTS, SLOTS_KEY
from hub.storage.sqlite.store import SqliteHubStore
from hub.storage.sqlite.writer import InlineConnection
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

BIG = 5_000  # events in a catch-up batch here: its body is over CATCHUP_BODY_BYTES
WAIT_S = 10.0  # the longest any wait below takes


def events(agent_id: str, location: str, n: int) -> tuple[StockEvent, ...]:
    return tuple(
        StockEvent(
            event_id=new_event_id(), agent_id=agent_id, epoch=1, seq=seq, location=location, sku=f"SKU-{seq % 50}",
            kind=Kind.SALE, qty=-1, occurred_at=pack_hlc(RECENT_MS + seq, 0), wall_ms=RECENT_MS + seq,
            source="pos:test",
        )
        for seq in range(1, n + 1)
    )


async def test_catch_up_batches_past_the_cap_are_asked_to_come_back_and_a_live_sale_is_not(tmp_path: Path) -> None:
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        store = hub.store
        assert isinstance(store, SqliteHubStore)
        stores = [f"S{n}" for n in range(CATCHUP_SLOTS + 1)]
        creds = {loc: await store.add_agent([loc]) for loc in [*stores, "LIVE"]}
        sizes = {**dict.fromkeys(stores, BIG), "LIVE": 1}
        bodies = {
            loc: encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, loc, sizes[loc])))
            for loc, (agent_id, _) in creds.items()
        }
        assert all(len(bodies[loc]) > CATCHUP_BODY_BYTES for loc in stores)
        assert len(bodies["LIVE"]) < CATCHUP_BODY_BYTES

        async def post(loc: str) -> tuple[int, dict[str, str], bytes]:
            headers = {"Authorization": f"Bearer {creds[loc][1]}", "Content-Type": MSGPACK_CONTENT_TYPE}
            async with session.post(f"{hub.url}/v1/sync", data=bodies[loc], headers=headers) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        release = threading.Event()

        async def busy(_: InlineConnection) -> None:  # another store's batch under way on the writer
            release.wait(WAIT_S)

        under_way = asyncio.ensure_future(store._write("another store's batch", busy, events=10_000))
        admitted = [asyncio.ensure_future(post(loc)) for loc in stores[:CATCHUP_SLOTS]]
        slots = hub.app[SLOTS_KEY]
        deadline = time.monotonic() + WAIT_S
        while slots.running < CATCHUP_SLOTS:
            assert time.monotonic() < deadline, f"only {slots.running} catch-up batches came in"
            await asyncio.sleep(0.01)

        status, headers, _ = await post(stores[-1])  # one more, while the writer is still busy
        released_before = release.is_set()
        live = asyncio.ensure_future(post("LIVE"))
        release.set()
        await under_way
        answers: list[Any] = await asyncio.gather(*admitted, live)

        assert not released_before, "the batch past the cap waited for the writer instead of being answered"
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert [a[0] for a in answers] == [200] * (CATCHUP_SLOTS + 1)
        assert slots.running == 0
        assert sum(c.on_hand for c in await store.counts(location=stores[-1])) == 0  # nothing of it was stored

        status, _, body = await post(stores[-1])  # sent again, as the agent does after Retry-After
        assert status == 200 and decode_sync_response(body).hwm == BIG
        for loc in stores:
            assert sum(c.on_hand for c in await store.counts(location=loc)) == -BIG
        assert sum(c.on_hand for c in await store.counts(location="LIVE")) == -1
