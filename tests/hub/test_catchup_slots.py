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


def events(agent_id: str, location: str, n: int, first: int = 1) -> tuple[StockEvent, ...]:
    return tuple(
        StockEvent(
            event_id=new_event_id(), agent_id=agent_id, epoch=1, seq=seq, location=location, sku=f"SKU-{seq % 50}",
            kind=Kind.SALE, qty=-1, occurred_at=pack_hlc(RECENT_MS + seq, 0), wall_ms=RECENT_MS + seq,
            source="pos:test",
        )
        for seq in range(first, first + n)
    )


async def test_catch_up_batches_past_the_slots_wait_in_line_past_the_line_come_back_and_a_live_sale_never_waits(
    tmp_path: Path,
) -> None:
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        store = hub.store
        assert isinstance(store, SqliteHubStore)
        slots = hub.app[SLOTS_KEY]
        slots.queue_max = 1  # one batch waits in line here
        stores = [f"S{n}" for n in range(CATCHUP_SLOTS + 2)]
        creds = {loc: await store.add_agent([loc]) for loc in [*stores, "LIVE"]}
        sizes = {**dict.fromkeys(stores, BIG), "LIVE": 1}
        bodies = {
            loc: encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, loc, sizes[loc])))
            for loc, (agent_id, _) in creds.items()
        }
        assert all(len(bodies[loc]) > CATCHUP_BODY_BYTES for loc in stores)
        assert len(bodies["LIVE"]) < CATCHUP_BODY_BYTES

        async def post(loc: str) -> tuple[int, dict[str, str], bytes]:
            async with session.post(f"{hub.url}/v1/sync", data=bodies[loc], headers=headers_of(creds[loc][1])) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        release = threading.Event()

        async def busy(_: InlineConnection) -> None:  # another store's batch under way on the writer
            release.wait(WAIT_S)

        under_way = asyncio.ensure_future(store._write("another store's batch", busy, events=10_000))
        try:
            admitted = [asyncio.ensure_future(post(loc)) for loc in stores[:CATCHUP_SLOTS]]
            deadline = time.monotonic() + WAIT_S
            while slots.running < CATCHUP_SLOTS:
                assert time.monotonic() < deadline, f"only {slots.running} catch-up batches came in"
                await asyncio.sleep(0.01)
            in_line = asyncio.ensure_future(post(stores[-2]))
            while slots.waiting < 1:
                assert time.monotonic() < deadline, "the batch past the slots did not wait in line"
                await asyncio.sleep(0.01)
            status, headers, _ = await post(stores[-1])  # one more, past the line, while the writer is still busy
            refused_before_release = not release.is_set()
            live = asyncio.ensure_future(post("LIVE"))  # a live sale waits for no slot (the writer, once it goes on)
        finally:
            release.set()
            await under_way
        answers: list[Any] = await asyncio.gather(*admitted, in_line)
        live_status, _, _ = await live

        assert refused_before_release, "the batch past the line waited for the writer instead of being answered"
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert live_status == 200
        assert [a[0] for a in answers] == [200] * (CATCHUP_SLOTS + 1)
        assert slots.running == 0 and slots.waiting == 0
        assert sum(c.on_hand for c in await store.counts(location=stores[-1])) == 0  # nothing of it was stored

        status, _, body = await post(stores[-1])  # sent again, as the agent does after Retry-After
        assert status == 200 and decode_sync_response(body).hwm == BIG
        for loc in stores:
            assert sum(c.on_hand for c in await store.counts(location=loc)) == -BIG
        assert sum(c.on_hand for c in await store.counts(location="LIVE")) == -1
        async with session.get(f"{hub.url}/metrics", headers=headers_of(creds["LIVE"][1])) as resp:
            metrics = await resp.text()
        assert "shelfsync_catchup_waited_total 1.0" in metrics and "shelfsync_catchup_refused_total 1.0" in metrics


def headers_of(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}


async def test_a_chunked_catch_up_batch_is_judged_by_its_bytes_not_let_past_the_cap(tmp_path: Path) -> None:
    """A body sent chunked announces no Content-Length: it is a catch-up batch all the same, and waits its turn."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        agent_id, token = await hub.store.add_agent(["S1"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        assert len(body) > CATCHUP_BODY_BYTES
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 0, 0  # no catch-up batch is taken now: every one is asked to come back

        async def chunks() -> Any:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        async with session.post(f"{hub.url}/v1/sync", data=chunks(), headers=headers_of(token)) as resp:
            status, retry_after = resp.status, resp.headers.get("Retry-After")
        assert status == 429 and retry_after is not None and int(retry_after) >= 1
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == 0  # nothing of it was stored


async def test_one_agent_cannot_take_every_slot(tmp_path: Path) -> None:
    """A broken or hostile agent sending many catch-up batches at once holds at most its pipeline's two; another
    store's batch is still taken."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        store = hub.store
        assert isinstance(store, SqliteHubStore)
        greedy_id, greedy_token = await store.add_agent(["GREEDY"])
        other_id, other_token = await store.add_agent(["OTHER"])
        greedy = encode_sync_request(SyncRequest(greedy_id, 1, events(greedy_id, "GREEDY", BIG)))
        other = encode_sync_request(SyncRequest(other_id, 1, events(other_id, "OTHER", BIG)))
        slots = hub.app[SLOTS_KEY]

        async def post(body: bytes, token: str) -> tuple[int, dict[str, str], bytes]:
            async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(token)) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        release = threading.Event()

        async def busy(_: InlineConnection) -> None:  # another store's batch under way on the writer
            release.wait(WAIT_S)

        under_way = asyncio.ensure_future(store._write("another store's batch", busy, events=10_000))
        try:
            flood = [asyncio.ensure_future(post(greedy, greedy_token)) for _ in range(CATCHUP_SLOTS)]
            deadline = time.monotonic() + WAIT_S
            while sum(f.done() for f in flood) < CATCHUP_SLOTS - 2 and slots.running < CATCHUP_SLOTS:
                assert time.monotonic() < deadline, "the greedy agent's batches were neither taken nor refused"
                await asyncio.sleep(0.01)
            others = asyncio.ensure_future(post(other, other_token))
            while slots.running < 3 and not others.done():
                assert time.monotonic() < deadline, "the other store's batch was neither taken nor refused"
                await asyncio.sleep(0.01)
        finally:
            release.set()
            await under_way
        greedy_answers: list[Any] = await asyncio.gather(*flood)
        status, _, body = await others

        assert status == 200 and decode_sync_response(body).hwm == BIG
        assert sorted(a[0] for a in greedy_answers) == [200, 200] + [429] * (CATCHUP_SLOTS - 2)
        refused = next(a for a in greedy_answers if a[0] == 429)
        assert int(refused[1]["Retry-After"]) >= 1 and greedy_id.encode() in refused[2]
        assert slots.running == 0
        assert sum(c.on_hand for c in await store.counts(location="GREEDY")) == -BIG  # the same batch, stored once


async def test_a_body_announced_big_and_sent_slowly_or_never_holds_no_slot(tmp_path: Path) -> None:
    """Clients with a valid token announce catch-up batches and trickle a few bytes: a slot is taken only once a
    body has arrived, so an honest store's catch-up goes through meanwhile; without a token nothing is read."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        _, slow_token = await hub.store.add_agent(["SLOW"])
        agent_id, token = await hub.store.add_agent(["S1"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        slots = hub.app[SLOTS_KEY]
        slow = []
        for credential in [slow_token] * (CATCHUP_SLOTS + 1) + [None]:
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            auth = f"Authorization: Bearer {credential}\r\n" if credential else ""
            writer.write(
                f"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {MSGPACK_CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:1000]
            )
            await writer.drain()
            slow.append((reader, writer))
        try:
            async with asyncio.timeout(WAIT_S):
                unauthenticated = await slow[-1][0].readline()  # answered without its body
            assert unauthenticated.split()[1] == b"401"
            async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(token)) as resp:
                status, answer = resp.status, await resp.read()
            assert slots.running == 0 and slots.waiting == 0
        finally:
            for _, writer in slow:
                writer.close()
        assert status == 200 and decode_sync_response(answer).hwm == BIG


async def test_a_slot_is_given_back_whatever_becomes_of_its_batch(tmp_path: Path) -> None:
    """With one slot and no line: a catch-up batch that does not decode, one sent with another agent's
    credential, and one whose client goes away midway each leave the slot free for the next."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        agent_id, token = await hub.store.add_agent(["S1"])
        other_id, other_token = await hub.store.add_agent(["S2"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 1, 0

        async def post(data: bytes, credential: str) -> int:
            async with session.post(f"{hub.url}/v1/sync", data=data, headers=headers_of(credential)) as resp:
                await resp.read()
                return resp.status

        assert await post(b"\xc1" * (CATCHUP_BODY_BYTES + 1), token) == 400  # not msgpack
        assert await post(body, other_token) == 403  # names agent S1, sent with S2's credential
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(
            f"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {MSGPACK_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        await writer.drain()
        writer.close()  # gone midway
        await writer.wait_closed()
        assert await post(body, token) == 200
        assert slots.running == 0 and slots.waiting == 0
        assert other_id != agent_id


async def test_a_batch_waiting_in_line_that_is_cancelled_takes_no_slot_with_it() -> None:
    """The hub stopping cancels batches in line: one cancelled while waiting leaves the line, and one cancelled
    just as a slot was handed to it passes the slot on."""
    from hub.catchup import CatchUpSlots

    slots = CatchUpSlots(total=1, queue_max=2)
    big = CATCHUP_BODY_BYTES + 1
    held, go = asyncio.Event(), asyncio.Event()

    async def batch(agent_id: str) -> None:
        async with slots.take(agent_id, big):
            held.set()
            await go.wait()

    async def first_batch() -> None:
        async with slots.take("A", big):
            held.set()
            await go.wait()
        third.cancel()  # the slot was handed to C as A left, and C has not run since

    first = asyncio.ensure_future(first_batch())
    await held.wait()
    second, third = asyncio.ensure_future(batch("B")), asyncio.ensure_future(batch("C"))
    while slots.waiting < 2:
        await asyncio.sleep(0)
    second.cancel()  # cancelled in line
    await asyncio.gather(second, return_exceptions=True)
    assert slots.waiting == 1 and slots.running == 1
    go.set()
    await first
    assert (await asyncio.gather(third, return_exceptions=True))[0].__class__ is asyncio.CancelledError
    assert slots.running == 0 and slots.waiting == 0
    go.clear()
    fourth = asyncio.ensure_future(batch("D"))
    held.clear()
    await asyncio.wait_for(held.wait(), WAIT_S)  # the slot is there to take
    go.set()
    await fourth
    assert slots.running == 0
