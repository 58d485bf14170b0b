"""Two hubs on one PostgreSQL database, each with its own pool and its own watch of the stores' clocks, served over
real HTTP on 127.0.0.1: what one hub finds of its own clock reaches the events the other holds meanwhile.

As in tests/hub/test_quarantine_hub_clock.py, the hub's clock "two days ahead" is its stores' clocks two days
behind it (their ``sent_ms``); both hubs share the machine's clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from hub import clock_window
from hub.storage.postgres.ingest import PostgresIngest
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.inprocess import hub_in_process
from tests.harness.pg import PG_URL
from tests.hub.test_quarantine_hub_clock import HUB_AHEAD_MS, STEP_S, WINDOW_S, Stores, paused_ingest


@pytest.fixture
async def two_hubs(pg_url: str) -> AsyncIterator[tuple[Stores, Stores]]:
    """Hub A and hub B over one schema, each its own app and pool; the same agents at both."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(hub_in_process(pg_url, clock_window_s=WINDOW_S))
        b = await stack.enter_async_context(hub_in_process(pg_url, clock_window_s=WINDOW_S))
        tokens = {}
        for n in range(1, 7):
            agent_id, token = await a.store.add_agent([f"S{n}"], agent_id=f"store-{n}")
            tokens[agent_id] = token
        admin_id, admin = await a.store.add_agent([], role="admin")
        _, reader = await a.store.add_agent([], role="reader")
        seq = itertools.count(1)
        yield Stores(a, tokens, admin, admin_id, reader, seq), Stores(b, tokens, admin, admin_id, reader, seq)


def paused_in_transaction(
    monkeypatch: pytest.MonkeyPatch, agent_id: str
) -> tuple[asyncio.Event, asyncio.Event, list[int]]:
    """Hold ``agent_id``'s next write inside its transaction, once its held events are inserted and before its
    commit: returns (entered, go, [the server pid of that transaction's connection])."""
    entered, go, pid = asyncio.Event(), asyncio.Event(), []
    insert: Callable[..., Awaitable[None]] = PostgresIngest.insert_quarantined

    async def held_back(self: PostgresIngest, rows: Any, *args: Any, **kwargs: Any) -> None:
        await insert(self, rows, *args, **kwargs)
        if rows and rows[0].event.agent_id == agent_id and not go.is_set():
            pid.append(self.conn.get_server_pid())
            entered.set()
            await go.wait()

    monkeypatch.setattr(PostgresIngest, "insert_quarantined", held_back)
    return entered, go, pid


def paused_before_the_finding(monkeypatch: pytest.MonkeyPatch, agent_id: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``agent_id``'s next write inside its transaction, its clock window judged, before it reads what the hub
    found of its own clock (as a write waiting for its locks): returns (entered, go)."""
    entered, go = asyncio.Event(), asyncio.Event()
    read: Callable[[PostgresIngest], Awaitable[Any]] = PostgresIngest.hub_clock_finding

    async def held_back(self: PostgresIngest) -> Any:
        if self._pre is not None and self._pre.agent_id == agent_id and not go.is_set():
            entered.set()
            await go.wait()
        return await read(self)

    monkeypatch.setattr(PostgresIngest, "hub_clock_finding", held_back)
    return entered, go


async def done_or_blocked(chores: asyncio.Future[Any], blocker_pid: int) -> str:
    """Wait until hub A's ``chores`` are done ("done") or one of its statements waits for the transaction of
    ``blocker_pid`` ("blocked"), whichever comes first."""
    conn = await asyncpg.connect(PG_URL)
    try:
        async with asyncio.timeout(STEP_S):
            while True:
                if chores.done():
                    return "done"
                if await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", blocker_pid
                ):
                    return "blocked"
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_what_one_hub_holds_while_another_finds_its_clock_off_is_released_with_the_others(
    two_hubs: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: with several hubs on one PostgreSQL, a sync judged by hub B just before hub A found the hub's clock
    two days ahead, and written after A marked what it held, stayed unmarked (B's own watch had not noticed): held
    for an operator, while the same sale of A's stores was released at its own time. Now A's finding is kept in the
    database: a held event's write reads it in its transaction, and A's marking waits for a write under way.

    store-1's sync at B is paused before its transaction, store-4's inside it (its held row written, not
    committed); B's other stores (5 and 6) have right clocks, so B cannot tell whose clock is wrong."""
    a, b = two_hubs
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)  # each hub looks at the skews at every sync
    for agent_id in ("store-5", "store-6"):
        await b.sync(agent_id, f"S{agent_id[-1]}", behind_ms=0)
    before, go_before = paused_ingest(b.store, "store-1")
    first = asyncio.create_task(b.sync("store-1", "S1"))
    await asyncio.wait_for(before.wait(), STEP_S)
    inside, go_inside, pid = paused_in_transaction(monkeypatch, "store-4")
    fourth = asyncio.create_task(b.sync("store-4", "S4"))
    await asyncio.wait_for(inside.wait(), STEP_S)

    try:
        await a.sync("store-2", "S2")  # one store alone at A: it cannot tell yet
        second = await a.sync("store-3", "S3")  # a second agrees: A finds the hub's clock two days ahead
        assert [r.code for r in second.rejected] == ["quarantined"]
        # A marks what it held; store-4's held row is not committed yet: A waits for it
        chores = asyncio.ensure_future(a.chores_done())
        assert await done_or_blocked(chores, pid[0]) == "blocked"
        go_inside.set()
        assert [r.code for r in (await asyncio.wait_for(fourth, STEP_S)).rejected] == ["quarantined"]
        await chores
        go_before.set()  # store-1's sync is written after A marked: it reads A's finding
        assert [r.code for r in (await asyncio.wait_for(first, STEP_S)).rejected] == ["quarantined"]
        await b.chores_done()
    finally:  # a failed step leaves neither sync waiting for the test's end
        go_inside.set()
        go_before.set()

    held = await b.held()
    assert sorted(q["agent_id"] for q in held) == ["store-1", "store-2", "store-3", "store-4"]
    assert all(q["hub_clock_off_ms"] is not None and abs(q["hub_clock_off_ms"] - HUB_AHEAD_MS) < 60_000
               for q in held), held  # fmt: skip
    assert await b.release(b"") == (200, {"released": 4, "left": 0})
    assert await a.held() == []


async def test_a_hub_whose_stores_put_the_clock_right_releases_nothing_another_holds_meanwhile(
    two_hubs: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: hub B, whose first two stores put the hub's clock right, releases what is held because of the hub's
    clock (as a hub restarted after its clock was set right does); that release, slow on a loaded machine, read the
    held events after hub A had held store-3's knowing its clock two days ahead and before A's marking of the
    others (store-2's, store-4's) was written: it released store-3's alone, while the same sales of the other stores
    stayed held until the hub's clock is right. Now an event held knowing the hub's clock off is marked only with
    the finding kept in the database, and a release reads that finding with the held events: the hub's clock found
    off since, it releases nothing."""
    a, b = two_hubs
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)
    slow, go_release = asyncio.Event(), asyncio.Event()
    release: Callable[..., Awaitable[tuple[int, int]]] = b.store.release_hub_clock

    async def held_back(*args: Any, **kwargs: Any) -> tuple[int, int]:
        slow.set()
        await go_release.wait()
        return await release(*args, **kwargs)

    b.store.release_hub_clock = held_back  # type: ignore[method-assign]
    for agent_id in ("store-5", "store-6"):  # B's clock looks right to its stores: B releases what is held for it
        await b.sync(agent_id, f"S{agent_id[-1]}", behind_ms=0)
    await asyncio.wait_for(slow.wait(), STEP_S)
    before, go_before = paused_ingest(b.store, "store-1")
    first = asyncio.create_task(b.sync("store-1", "S1"))
    await asyncio.wait_for(before.wait(), STEP_S)
    inside, go_inside, pid = paused_in_transaction(monkeypatch, "store-4")
    fourth = asyncio.create_task(b.sync("store-4", "S4"))
    await asyncio.wait_for(inside.wait(), STEP_S)

    try:
        await a.sync("store-2", "S2")
        second = await a.sync("store-3", "S3")  # A finds the hub's clock two days ahead
        assert [r.code for r in second.rejected] == ["quarantined"]
        chores = asyncio.ensure_future(a.chores_done())
        assert await done_or_blocked(chores, pid[0]) == "blocked"  # A's marking waits for store-4's write
        go_release.set()  # B's release reads what is held now
        await b.chores_done()
        go_inside.set()
        assert [r.code for r in (await asyncio.wait_for(fourth, STEP_S)).rejected] == ["quarantined"]
        await chores
        go_before.set()
        assert [r.code for r in (await asyncio.wait_for(first, STEP_S)).rejected] == ["quarantined"]
        await b.chores_done()
    finally:
        go_release.set()
        go_inside.set()
        go_before.set()

    held = await b.held()
    assert sorted(q["agent_id"] for q in held) == ["store-1", "store-2", "store-3", "store-4"], "none released"
    assert all(q["hub_clock_off_ms"] is not None and abs(q["hub_clock_off_ms"] - HUB_AHEAD_MS) < 60_000
               for q in held), held  # fmt: skip
    assert await a.held("?status=applied") == []


async def test_one_written_after_another_hub_found_the_clock_right_again_is_released_by_its_own(
    two_hubs: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same sync at B, judged before A found the hub's clock off and written only after A found it right again
    and released what it held because of it: marked as it is written, and released then by B, at its own time."""
    a, b = two_hubs
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)
    for agent_id in ("store-5", "store-6"):
        await b.sync(agent_id, f"S{agent_id[-1]}", behind_ms=0)
    before, go = paused_before_the_finding(monkeypatch, "store-1")
    first = asyncio.create_task(b.sync("store-1", "S1"))
    try:
        await asyncio.wait_for(before.wait(), STEP_S)
        for behind_ms in (HUB_AHEAD_MS, 0):  # A finds the hub's clock two days ahead, then right again
            for agent_id in ("store-2", "store-3"):
                await a.sync(agent_id, f"S{agent_id[-1]}", behind_ms=behind_ms)
            await a.chores_done()
        assert [q["agent_id"] for q in await a.held("?status=applied")] == ["store-3", "store-2"], "released by A"
        go.set()
        assert [r.code for r in (await asyncio.wait_for(first, STEP_S)).rejected] == ["quarantined"]
        await b.chores_done()
    finally:
        go.set()

    assert await a.held() == [], [(q["hub_clock_off_ms"], q["detail"]) for q in await a.held()]
    released = await a.held("?status=applied")
    assert sorted((q["agent_id"], q["resolved_by"]) for q in released) == [
        ("store-1", "hub"), ("store-2", "hub"), ("store-3", "hub")
    ]  # fmt: skip


async def test_a_credential_another_hub_redated_is_judged_by_its_new_date(
    two_hubs: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: when hub A finds the hub's clock two days ahead it dates the credentials made meanwhile by the
    stores' time, but hub B keeps the old creation time in its identity cache: a connector's push of a sale
    stamped now by the stores' clock (no ``sent_ms``, so nothing else holds it), applied at A, was held at B as
    "2.0 days before its credential was created". Now a write that holds an event for that rule reads the
    credential's creation time again in its transaction and judges by it."""
    a, b = two_hubs
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)

    async def push(hub: Stores, agent_id: str) -> Any:
        """A sale stamped now by the stores' clock (two days behind the hub's), sent without the sender's clock."""
        at_ms = wall_ms_now() - HUB_AHEAD_MS
        event = StockEvent(new_event_id(), agent_id, 1, next(hub.seq), f"S{agent_id[-1]}", "SKU-1", Kind.SALE, -1,
                           pack_hlc(at_ms, 0), at_ms, "api:test")  # fmt: skip
        headers = {"Authorization": f"Bearer {hub.tokens[agent_id]}", "Content-Type": MSGPACK_CONTENT_TYPE}
        body = encode_sync_request(SyncRequest(agent_id, 1, (event,)))
        async with hub.client.post("/v1/sync", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return decode_sync_response(await resp.read())

    await b.sync("store-1", "S1", behind_ms=0)  # B finds store-1's credential, dated by the hub's clock, and keeps it
    for agent_id in ("store-2", "store-3"):
        await a.sync(agent_id, f"S{agent_id[-1]}")  # two stores agree: A finds the hub's clock two days ahead
    await a.chores_done()
    fresh = await a.store.authenticate(a.tokens["store-1"])
    assert fresh is not None and fresh.created_ms is not None
    assert abs(wall_ms_now() - HUB_AHEAD_MS - fresh.created_ms) < 60_000, "A dated it by the stores' time"

    at_b = await push(b, "store-1")
    assert at_b.rejected == (), [r.reason for r in at_b.rejected]
    at_a = await push(a, "store-4")
    assert at_a.rejected == (), [r.reason for r in at_a.rejected]
    assert sorted(q["agent_id"] for q in await b.held()) == ["store-2", "store-3"], "only A's, for the hub's clock"
