"""Paging never skips or repeats: cursors on the ledger and the counts, over real HTTP, on both backends.

Bursts of hundreds of events on ONE timestamp (and on a few) are walked page by page with small limits;
every row must come exactly once, in the order of the full key. Tampered cursors are a 400 with a sentence.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pg_testing import fresh_schema, pg_server

from hub import HubSettings, HubStore, create_app, open_store
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, event_id_hex, new_event_id, pack_hlc

FIXTURES = (pg_server,)  # used by name below
NOW_MS = time.time_ns() // 1_000_000 - 60_000  # inside the hub's clock window


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_server")  # skips (fails in CI) without a server
    return str(request.param)


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


@pytest.fixture
async def client(store: HubStore) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(store, HubSettings(db="unused-by-create-app"))
    c: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await c.start_server()
    yield c
    await c.close()


async def agent(store: HubStore, locations: list[str]) -> tuple[AgentIdentity, str]:
    _, token = await store.add_agent(locations)
    who = await store.authenticate(token)
    assert who is not None
    return who, token


def ev(who: AgentIdentity, seq: int, at_ms: int, *, sku: str = "SKU-1", location: str = "S001",
       qty: int = 1, event_id: bytes | None = None, counter: int = 0) -> StockEvent:  # fmt: skip
    return StockEvent(
        event_id or new_event_id(), who.agent_id, 1, seq, location, sku, Kind.RECEIVE, qty,
        pack_hlc(at_ms, counter), at_ms, "api:test",
    )  # fmt: skip


async def walk(client: TestClient[Any, Any], token: str, path: str, items: str, **query: Any) -> list[dict[str, Any]]:
    """Every row of a paged route, following ``next`` until it is null (bounded)."""
    rows: list[dict[str, Any]] = []
    params = {k: str(v) for k, v in query.items()}
    for _ in range(5_000):
        resp = await client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        body = await resp.json()
        assert resp.status == 200, body
        rows += body[items]
        if body["next"] is None:
            return rows
        assert len(body[items]) == int(params.get("limit", 1000))
        params = {k: v for k, v in params.items() if k != "before"} | {"cursor": body["next"]}
    raise AssertionError("the walk did not end")


def order_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["occurred_at"], row["agent_id"], row["seq"], row["event_id"])


async def burst(store: HubStore) -> tuple[str, list[StockEvent]]:
    """520 events of two agents on ONE stamp, 90 on three more, a conflicting resend (a rejection sharing
    its event's full order key) and a refused location: one ledger to walk."""
    a, token = await agent(store, ["S001", "S002"])
    b, _ = await agent(store, ["S001"])
    events = [ev(a, seq, NOW_MS, sku=f"SKU-{seq % 7}") for seq in range(1, 301)]
    events_b = [ev(b, seq, NOW_MS, sku=f"SKU-{seq % 5}", location="S001") for seq in range(1, 221)]
    later = [ev(a, 300 + i, NOW_MS + 1 + i % 3, location="S002") for i in range(1, 91)]
    for batch in (events[:150], events[150:], later):
        assert not (await store.ingest(a, 1, batch)).rejected
    assert not (await store.ingest(b, 1, events_b)).rejected
    first = events[0]
    conflict = ev(a, first.seq, NOW_MS, sku=first.sku, qty=99, event_id=first.event_id)
    forbidden = ev(b, 221, NOW_MS, location="S002")
    assert (await store.ingest(a, 1, [conflict])).rejected
    assert (await store.ingest(b, 1, [forbidden])).rejected
    return token, events + events_b + later


@pytest.mark.parametrize("limit", [7, 64])
async def test_walking_the_ledger_sees_every_event_once_in_order(
    store: HubStore, client: TestClient[Any, Any], limit: int
) -> None:
    token, events = await burst(store)
    rows = await walk(client, token, "/v1/ledger", "events", limit=limit)
    applied = [r for r in rows if r["effect"] != "rejected"]
    assert sorted(r["event_id"] for r in applied) == sorted(event_id_hex(e.event_id) for e in events)
    assert len({r["event_id"] for r in applied}) == len(applied)  # none twice
    assert sum(r["effect"] == "rejected" for r in rows) == 2  # the conflict and the refused location
    keys = [order_key(r) for r in rows]
    assert keys == sorted(keys, reverse=True)  # newest first in resolution order
    whole = await client.get("/v1/ledger", params={"limit": "10000"}, headers={"Authorization": f"Bearer {token}"})
    assert [r["event_id"] for r in (await whole.json())["events"]] == [r["event_id"] for r in rows]


async def test_filtered_walks_are_whole_too(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, events = await burst(store)
    for query, expect in (
        ({"location": "S002"}, [e for e in events if e.location == "S002"]),
        ({"sku": "SKU-3"}, [e for e in events if e.sku == "SKU-3"]),
    ):
        rows = await walk(client, token, "/v1/ledger", "events", limit=9, **query)
        applied = [r["event_id"] for r in rows if r["effect"] != "rejected"]
        assert sorted(applied) == sorted(event_id_hex(e.event_id) for e in expect), query


async def test_before_starts_a_walk_that_skips_nothing(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, events = await burst(store)
    before = pack_hlc(NOW_MS + 1, 0)  # the ONE-stamp burst and nothing after it
    rows = await walk(client, token, "/v1/ledger", "events", limit=11, before=before)
    applied = [r["event_id"] for r in rows if r["effect"] != "rejected"]
    assert sorted(applied) == sorted(event_id_hex(e.event_id) for e in events if e.occurred_at < before)


async def test_a_cursor_and_before_together_are_refused(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    first = await (await client.get("/v1/ledger", params={"limit": "3"}, headers=auth)).json()
    resp = await client.get("/v1/ledger", params={"cursor": first["next"], "before": "5"}, headers=auth)
    assert resp.status == 400 and "cursor or before" in (await resp.json())["error"]["message"]


async def test_walking_counts_sees_every_count_once(store: HubStore, client: TestClient[Any, Any]) -> None:
    a, token = await agent(store, ["S001", "S002", "S003"])
    events = [
        ev(a, i + 1, NOW_MS, location=f"S00{1 + i % 3}", sku=f"SKU-{i // 3:03d}") for i in range(3 * 40)
    ]
    assert not (await store.ingest(a, 1, events)).rejected
    at_one = await walk(client, token, "/v1/locations/S002/counts", "counts", limit=6)
    assert [r["sku"] for r in at_one] == [f"SKU-{i:03d}" for i in range(40)]
    of_one = await walk(client, token, "/v1/skus/SKU-007/counts", "counts", limit=2)
    assert [r["location"] for r in of_one] == ["S001", "S002", "S003"]
    everything = await walk(client, token, "/v1/counts", "counts", limit=7)
    assert [(r["location"], r["sku"]) for r in everything] == sorted((e.location, e.sku) for e in events)


async def test_tampered_cursors_are_400_with_one_sentence(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    ledger_next = (await (await client.get("/v1/ledger", params={"limit": "3"}, headers=auth)).json())["next"]
    counts_next = (await (await client.get("/v1/counts", params={"limit": "1"}, headers=auth)).json())["next"]
    flipped = ledger_next[:10] + ("A" if ledger_next[10] != "A" else "B") + ledger_next[11:]
    for path, cursor in (
        ("/v1/ledger", flipped),
        ("/v1/ledger", ledger_next[:-3]),
        ("/v1/ledger", ledger_next + "AA"),
        ("/v1/ledger", counts_next),  # another route's
        ("/v1/counts", ledger_next),
        ("/v1/locations/S001/counts", "not a cursor"),
        ("/v1/skus/SKU-1/counts", "%%%"),
        ("/v1/ledger", ""),
        ("/v1/ledger", "x" * 5_000),
        ("/v1/ledger", "\u00e9\u2028"),
    ):
        resp = await client.get(path, params={"cursor": cursor}, headers=auth)
        body = await resp.json()
        assert resp.status == 400, (path, cursor, body)
        message = body["error"]["message"]
        assert "cursor" in message and message.count(". ") == 0 and "\n" not in message
    good = await client.get("/v1/ledger", params={"cursor": ledger_next}, headers=auth)
    assert good.status == 200
