"""The held events of a wrong clock, over real HTTP on 127.0.0.1, on each backend: the race between a sync and the
hub noticing its own clock is wrong, and releasing at once what the hub could not attribute to either clock.

The hub's clock "two days ahead" is the stores' clocks two days behind it (their ``sent_ms``): the hub judges its
own clock by nothing else. The stores' syncs are ``POST /v1/sync`` as an agent sends them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, clock_window
from hub.app import CLOCK_CHORES_KEY
from hub.storage.base import IngestResult
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
from tests.harness.inprocess import ServedHub, hub_in_process
from tests.harness.pg import fresh_schema

DAY_MS = 86_400_000
HUB_AHEAD_MS = 2 * DAY_MS
WINDOW_S = 60
STEP_S = 30.0  # what one step of a test may take at most (a sync, the hub's chores); never a timing assertion


@dataclass
class Stores:
    served: ServedHub
    tokens: dict[str, str]  # agent id -> its token
    admin: str
    admin_id: str
    reader: str
    seq: itertools.count[int]

    @property
    def client(self) -> TestClient[Any, Any]:
        return self.served.client

    @property
    def store(self) -> HubStore:
        return self.served.store

    async def sync(self, agent_id: str, location: str, *, behind_ms: int = HUB_AHEAD_MS, stamp_ms: int = 0) -> Any:
        """POST /v1/sync a sale stamped a minute ago (and ``stamp_ms`` more) by a store whose clock is ``behind_ms``
        behind the hub's."""
        store_now = wall_ms_now() - behind_ms
        at_ms = store_now - 60_000 + stamp_ms
        event = StockEvent(new_event_id(), agent_id, 1, next(self.seq), location, "SKU-1", Kind.SALE, -1,
                           pack_hlc(at_ms, 0), at_ms, "api:test")  # fmt: skip
        body = encode_sync_request(SyncRequest(agent_id, 1, (event,), sent_ms=store_now))
        headers = {"Authorization": f"Bearer {self.tokens[agent_id]}", "Content-Type": MSGPACK_CONTENT_TYPE}
        async with self.client.post("/v1/sync", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return decode_sync_response(await resp.read())

    async def chores_done(self) -> None:
        """Wait for the hub's background marking and releasing (hub.app.ClockChores) to finish."""
        await asyncio.wait_for(self.served.app[CLOCK_CHORES_KEY].close(self.served.app), STEP_S)

    async def held(self, query: str = "") -> list[dict[str, Any]]:
        async with self.client.get(f"/v1/quarantine{query}", headers={"Authorization": f"Bearer {self.reader}"}) as r:
            assert r.status == 200, await r.text()
            rows: list[dict[str, Any]] = (await r.json())["quarantine"]
            return rows

    async def release(self, body: bytes | dict[str, Any], token: str | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token or self.admin}", "Content-Type": "application/json"}
        async with self.client.post("/v1/quarantine/release", data=data, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The hub's database: a SQLite file, or a fresh PostgreSQL schema."""
    if backend == "postgres":
        async with fresh_schema("held") as url:
            yield url
    else:
        yield str(tmp_path / "hub.db")


@pytest.fixture
async def stores(hub_db: str) -> AsyncIterator[Stores]:
    async with hub_in_process(hub_db, clock_window_s=WINDOW_S) as served:
        tokens = {}
        for location in ("S1", "S2", "S3"):
            agent_id, token = await served.store.add_agent([location], agent_id=f"store-{location[1:]}")
            tokens[agent_id] = token
        admin_id, admin = await served.store.add_agent([], role="admin")
        _, reader = await served.store.add_agent([], role="reader")
        yield Stores(served, tokens, admin, admin_id, reader, itertools.count(1))


def paused_ingest(store: HubStore, agent_id: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``agent_id``'s next ingest after the sync route decided its clock window and before it writes:
    returns (entered, go)."""
    entered, go = asyncio.Event(), asyncio.Event()
    ingest: Callable[..., Awaitable[IngestResult]] = store.ingest

    async def held_back(who: Any, *args: Any, **kwargs: Any) -> IngestResult:
        if who.agent_id == agent_id and not go.is_set():
            entered.set()
            await go.wait()
        return await ingest(who, *args, **kwargs)

    store.ingest = held_back  # type: ignore[method-assign]
    return entered, go


async def test_a_sync_checked_before_the_hub_noticed_and_written_after_its_marking_is_released_with_the_others(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a sync whose clock window the hub decided just before it noticed its own clock was two days ahead,
    and that was written just after the hub marked what it had held because of its clock, stayed unmarked: held
    for an operator, while the same sale of the other store was released at its own time. Now a sync written
    after the hub noticed, that held events without knowing, has them marked as the others were."""
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)  # the hub looks at the skews at every sync
    entered, go = paused_ingest(stores.store, "store-1")
    first = asyncio.create_task(stores.sync("store-1", "S1"))  # one store alone: the hub cannot tell yet
    await asyncio.wait_for(entered.wait(), STEP_S)
    second = await stores.sync("store-2", "S2")  # a second store agrees: the hub's clock is the wrong one
    assert [r.code for r in second.rejected] == ["quarantined"]
    await stores.chores_done()  # the hub marked what it held before it noticed (store-1's is not written yet)
    go.set()
    answer = await asyncio.wait_for(first, STEP_S)
    assert [r.code for r in answer.rejected] == ["quarantined"]
    await stores.chores_done()

    held = await stores.held()
    assert sorted(q["agent_id"] for q in held) == ["store-1", "store-2"]
    assert all(q["hub_clock_off_ms"] is not None for q in held), held
    assert all(abs(q["hub_clock_off_ms"] - HUB_AHEAD_MS) < 60_000 for q in held), held
    assert await stores.release(b"") == (200, {"released": 2, "left": 0})
    assert await stores.held() == []


async def test_one_written_after_the_hubs_clock_is_right_again_is_released_as_it_is_marked(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same sync, written only after the hub's clock looked right again and the hub had released what it held
    because of it: marked after its write, and released then, at its own time."""
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)
    entered, go = paused_ingest(stores.store, "store-1")
    first = asyncio.create_task(stores.sync("store-1", "S1"))
    await asyncio.wait_for(entered.wait(), STEP_S)
    await stores.sync("store-2", "S2")  # the hub finds its clock two days ahead
    await stores.chores_done()
    for agent_id, location in (("store-2", "S2"), ("store-3", "S3")):  # its clock is right again, by theirs
        await stores.sync(agent_id, location, behind_ms=0)
    await stores.chores_done()
    assert [q["agent_id"] for q in await stores.held("?status=applied")] == ["store-2"], "released by the hub"
    go.set()
    answer = await asyncio.wait_for(first, STEP_S)
    assert [r.code for r in answer.rejected] == ["quarantined"]
    await stores.chores_done()

    assert await stores.held() == []
    released = await stores.held("?status=applied")
    assert sorted((q["agent_id"], q["resolved_by"]) for q in released) == [("store-1", "hub"), ("store-2", "hub")]


async def test_one_judged_knowing_the_clock_off_and_written_after_it_was_right_again_is_released_as_written(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a sync whose clock window the hub decided knowing its clock two days ahead, and that was written only
    after the hub found its clock right again and released what it held because of it (the sync waiting for its
    turn meanwhile), stayed held, marked, with nothing left to release it. Now it is released as it is written, at
    its own time, and the hub's clock stays found right."""
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)
    for agent_id, location in (("store-1", "S1"), ("store-2", "S2")):
        await stores.sync(agent_id, location)  # the hub finds its clock two days ahead
    await stores.chores_done()
    entered, go = paused_ingest(stores.store, "store-1")
    late = asyncio.create_task(stores.sync("store-1", "S1"))  # judged knowing the hub's clock off
    try:
        await asyncio.wait_for(entered.wait(), STEP_S)
        for agent_id, location in (("store-2", "S2"), ("store-3", "S3")):  # its clock is right again, by theirs
            await stores.sync(agent_id, location, behind_ms=0)
        await stores.chores_done()
        assert sorted(q["agent_id"] for q in await stores.held("?status=applied")) == ["store-1", "store-2"]
        go.set()
        assert [r.code for r in (await asyncio.wait_for(late, STEP_S)).rejected] == ["quarantined"]
        await stores.chores_done()
    finally:
        go.set()

    assert await stores.held() == [], [(q["agent_id"], q["hub_clock_off_ms"]) for q in await stores.held()]
    released = await stores.held("?status=applied")
    assert sorted((q["agent_id"], q["resolved_by"]) for q in released) == [
        ("store-1", "hub"), ("store-1", "hub"), ("store-2", "hub")
    ]  # fmt: skip


async def test_what_the_hub_could_not_attribute_is_released_for_one_store_or_all_as_the_admin_found(
    stores: Stores,
) -> None:
    """Found: a lone store's clock three hours ahead of the hub's (nobody can tell which of the two is wrong), or
    stores whose clocks disagree with each other: what the hub held of them had no ``hub_clock_off_ms``, and an
    admin resolved each one by one. Now the admin, having checked both clocks, releases them together, of one
    store or of all: at the hub's time of receipt (the store's clock was wrong) or at their own time (the hub's
    was), and the answer says what was applied."""
    for _ in range(3):
        await stores.sync("store-1", "S1", behind_ms=-3 * 3_600_000)  # three hours ahead, the only store syncing
    await stores.sync("store-2", "S2", behind_ms=5 * 3_600_000)  # five hours behind: it agrees with nobody
    await stores.sync("store-3", "S3", behind_ms=0, stamp_ms=36_525 * DAY_MS)  # a right clock, a stamp typed wrong
    pending = await stores.held()
    assert sorted(q["agent_id"] for q in pending) == ["store-1"] * 3 + ["store-2", "store-3"]
    assert all(q["hub_clock_off_ms"] is None for q in pending), "the hub could not tell whose clock was wrong"

    for body, needle in (
        ({"agent_id": "store-1"}, 'or {"wrong_clock": "hub"} or {"wrong_clock": "store"} with an optional "agent_id"'),
        ({"wrong_clock": "store", "action": "discard"}, "the body must be empty or {}"),
        ({"wrong_clock": "both"}, 'wrong_clock must be "hub" or "store": whose clock an admin found wrong, got "both"'),
        ({"wrong_clock": "store", "agent_id": 7}, "agent_id must be a string (GET /v1/agents lists them), got 7"),
        ({"wrong_clock": "store", "agent_id": None}, "agent_id must be a string (GET /v1/agents lists them), got null"),
        ({"wrong_clock": "store", "agent_id": "store 9"}, "'store 9' is not an agent id; an agent id is ASCII letters"),
        (b'{"wrong_clock": "store"', "the body is not valid JSON"),
    ):
        status, err = await stores.release(body)  # type: ignore[arg-type]
        assert status == 400 and needle in err["detail"], (body, err)
    status, err = await stores.release({"wrong_clock": "store", "agent_id": "store-9"})
    assert status == 404 and err["detail"] == "there is no agent store-9 at this hub; GET /v1/agents lists them"
    status, err = await stores.release({"wrong_clock": "store"}, stores.reader)
    assert status == 403 and "reader credential cannot release held events" in err["detail"]
    assert len(await stores.held()) == 5, "no refused request released anything"

    status, answer = await stores.release({"wrong_clock": "store", "agent_id": "store-1"})
    assert (status, answer) == (200, {
        "released": 3, "left": 0, "wrong_clock": "store", "agent_id": "store-1",
        "detail": "Applied 3 held movement(s) of store-1, each at the hub's time of receipt (the store's clock was "
                  "the wrong one).",
    })  # fmt: skip
    received = {q["event_id"]: q["received_at_ms"] for q in pending if q["agent_id"] == "store-1"}
    booked = [e for e in await stores.store.ledger(location="S1")]
    assert sorted(e.occurred_at for e in booked) == sorted(pack_hlc(ms, 0) for ms in received.values())
    assert {e.attrs["applied_by"] for e in booked} == {stores.admin_id}
    assert sorted(q["agent_id"] for q in await stores.held()) == ["store-2", "store-3"]

    status, err = await stores.release({"wrong_clock": "hub"})  # every store's: the hub's clock was wrong?
    assert status == 409 and err["detail"] == (
        "the held movements' stores put the hub's clock 5.0 hours ahead (store-2) and right (store-3) when "
        "they sent them: it cannot have been wrong by both; release them store by store (agent_id), and those of a "
        "store whose clock was the wrong one with wrong_clock store; nothing was changed"
    ), err
    status, answer = await stores.release({"wrong_clock": "hub", "agent_id": "store-2"})
    assert (status, answer["released"], answer["left"]) == (200, 1, 0), answer
    [own] = await stores.store.ledger(location="S2")
    [was] = [q for q in pending if q["agent_id"] == "store-2"]
    assert (own.occurred_at, own.attrs["released_by"]) == (was["occurred_at"], stores.admin_id), "at its own time"

    status, answer = await stores.release({"wrong_clock": "hub"})  # what is left agrees with itself
    assert status == 200 and (answer["released"], answer["left"], answer["agent_id"]) == (0, 1, None), answer
    assert answer["detail"] == (
        "Applied 0 held movement(s) of every store, each at its own time (the hub's clock was the wrong one); 1 stay "
        "pending for one by one (GET /v1/quarantine): outside the clock window even by the store's clock, without "
        "the store's clock, or refused."
    )
    assert [q["agent_id"] for q in await stores.held()] == ["store-3"], "a century ahead by its own clock too"

    status, answer = await stores.release({"wrong_clock": "store", "agent_id": "store-2"})
    assert (status, answer["released"], answer["left"]) == (200, 0, 0)
    assert answer["detail"] == (
        "Nothing of store-2 is held that the hub could not attribute to its own clock; nothing was changed."
    )
    applied = await stores.held("?status=applied")
    assert sorted((q["agent_id"], q["resolved_by"]) for q in applied) == [
        ("store-1", stores.admin_id)] * 3 + [("store-2", stores.admin_id)]  # fmt: skip


async def test_a_release_saying_the_hubs_clock_was_wrong_is_refused_when_the_other_stores_sided_with_it(
    stores: Stores, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a held event did not keep whether the other stores put the hub's clock right when it was held, so an
    admin's ``{"wrong_clock": "hub"}`` applied a store's sale stamped two days back at that time although the two
    other stores had sided with the hub's clock. Now the held event keeps how many did (``hub_clock_vouched``), and
    such a release is refused with nothing changed, and the CSV export shows it (its last column). Found next: an
    admin sure the hub's clock was wrong all the same had no way to apply it at its own time; now one store's are,
    with ``"override_vouched": true``, logged naming the admin."""
    monkeypatch.setattr(clock_window, "HUB_CLOCK_LOOK_S", 0.0)
    for agent_id, location in (("store-2", "S2"), ("store-3", "S3")):
        await stores.sync(agent_id, location, behind_ms=0)
    answer = await stores.sync("store-1", "S1")  # its clock two days behind, the others right
    assert [r.code for r in answer.rejected] == ["quarantined"]
    [row] = await stores.held()
    assert (row["agent_id"], row["hub_clock_off_ms"], row["hub_clock_vouched"]) == ("store-1", None, 2)

    for body in ({"wrong_clock": "hub", "agent_id": "store-1"}, {"wrong_clock": "hub"}):
        status, problem = await stores.release(body)
        assert status == 409, problem
        assert "1 of store-1 (at least 2 other store(s) sided with the hub)" in problem["detail"], problem
        assert "wrong_clock store" in problem["detail"] and "nothing was changed" in problem["detail"], problem
    assert [q["id"] for q in await stores.held()] == [row["id"]]
    async with stores.client.get("/v1/quarantine?format=csv", headers={"Authorization": f"Bearer {stores.reader}"}) as r:
        [header, cells] = list(csv.reader(io.StringIO(await r.text())))
    vouched_at = header.index("hub_clock_vouched")
    assert (header[vouched_at - 1 : vouched_at + 1], cells[vouched_at], cells[0]) == (
        ["attrs", "hub_clock_vouched"], "2", str(row["id"])
    ), "added after the columns before 1.12"  # fmt: skip
    assert await vouched(stores) == {"store-1": 2}, "which store's a release as the hub's clock wrong refuses"

    # An admin sure the hub's clock was wrong all the same says so for one store's, in so many words.
    for body in (
        {"wrong_clock": "hub", "override_vouched": True},  # every store's: never
        {"wrong_clock": "store", "agent_id": "store-1", "override_vouched": True},
        {"wrong_clock": "hub", "agent_id": "store-1", "override_vouched": "yes"},
        {"wrong_clock": "hub", "agent_id": "store-1", "override_vouched": 1},
    ):
        status, problem = await stores.release(body)
        assert status == 400 and "override_vouched must be true, and goes only with" in problem["detail"], problem
    assert [q["id"] for q in await stores.held()] == [row["id"]], "nothing released by a refused override"
    with caplog.at_level(logging.WARNING, logger="hub.storage.store"):
        status, released = await stores.release({"wrong_clock": "hub", "agent_id": "store-1", "override_vouched": True})
    assert (status, released["released"], released["left"]) == (200, 1, 0), released
    assert f"{stores.admin_id} overrode what up to 2 other store(s) said of the hub's clock (right) when 1 held " \
        "movement(s) of store-1 were held" in caplog.text
    [own] = await stores.store.ledger(location="S1")
    assert (own.occurred_at, own.attrs["released_by"]) == (row["occurred_at"], stores.admin_id), "at its own time"
    [applied] = await stores.held("?status=applied")
    assert applied["hub_clock_vouched"] == 2
    assert await vouched(stores) == {}, "only what is pending"


async def vouched(stores: Stores) -> dict[str, int]:
    """GET /v1/quarantine's pending.vouched, as the dashboard reads it."""
    async with stores.client.get("/v1/quarantine", headers={"Authorization": f"Bearer {stores.reader}"}) as r:
        assert r.status == 200, await r.text()
        return dict((await r.json())["pending"]["vouched"])
