"""``POST /v1/events``'s credential, confirmed inside the transaction that books its events, on both backends over
real HTTP on 127.0.0.1.

A connector's events are booked as an agent's batch is (``hub.auth.ingest_confirmed``): the store's ``ingest``
reads the credential again in the write and books nothing if it was revoked or bound elsewhere since it was
found; the route then asks for it again (401 if revoked, else the events are judged by the new binding). Before,
the route read it once from the head and once more after the body (``authenticate_again``), and never after
that: a credential revoked between that second read and the commit still had its events booked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub.storage import HubStore, open_store
from hub.storage.sqlite.store import SqliteHubStore
from tests.harness.inprocess import serve_hub
from tests.hub.test_catchup_expect import read_answer
from tests.hub.test_sync_credential import counting_lookups, hub, hub_store  # noqa: F401  (fixtures)

T0_MS = 1_764_061_200_000
WAIT_S = 15.0


def move(id_: str, location: str = "WEB", qty: int = 5, sku: str = "SKU-1") -> dict[str, Any]:
    return {"id": id_, "location": location, "sku": sku, "kind": "receive", "qty": qty, "occurred_at": T0_MS}


async def post_events(client: TestClient[Any, Any], token: str, *events: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/v1/events", json={"events": list(events)}, headers={"Authorization": f"Bearer {token}"})
    return resp.status, json.loads(await resp.read())


async def booked(store: HubStore) -> list[tuple[str, str, int]]:
    return [(c.location, c.sku, c.on_hand) for c in await store.counts()]


async def test_a_connector_revoked_while_its_body_arrives_books_nothing(
    hub: TestClient[Any, Any],  # noqa: F811
    hub_store: HubStore,  # noqa: F811
) -> None:
    """The head asks to continue and is found good (``100 Continue``); the operator revokes the credential; then the
    body comes: 401, nothing booked."""
    agent_id, token = await hub_store.add_agent(["WEB"])
    body = json.dumps({"events": [move("order-1:in")]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        assert (await read_answer(reader))[0] == 100
        assert await hub_store.revoke_agent(agent_id)
        writer.write(body)
        await writer.drain()
        status, _, answer = await read_answer(reader)
    finally:
        writer.close()
    assert status == 401 and b"revoked" in answer
    assert await booked(hub_store) == []


def changed_at_the_write(
    store: HubStore, monkeypatch: pytest.MonkeyPatch, change: Callable[[], Awaitable[Any]]
) -> None:
    """``change`` runs as the first ``ingest`` is called: after every check the route makes before it books (the
    lookups from the head and any after the body), before the write's transaction, as an operator's command or
    another hub process sharing the database would change it while the events wait for the writer."""
    ingest = store.ingest
    calls = 0

    async def changed_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await change()
        return await ingest(*args, **kwargs)

    monkeypatch.setattr(store, "ingest", changed_first)


async def test_a_connector_revoked_just_before_its_events_are_written_books_nothing(
    hub: TestClient[Any, Any],  # noqa: F811
    hub_store: HubStore,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revoked after the re-check, before the commit: 401, nothing booked (before: booked, 200)."""
    agent_id, token = await hub_store.add_agent(["WEB"])

    async def revoke() -> None:
        assert await hub_store.revoke_agent(agent_id)

    changed_at_the_write(hub_store, monkeypatch, revoke)
    status, answer = await post_events(hub, token, move("order-1:in"))
    assert status == 401 and "revoked" in answer["detail"], answer
    assert await booked(hub_store) == []


@pytest.mark.parametrize("when", ["found", "written"])
async def test_a_connector_bound_elsewhere_meanwhile_has_its_events_judged_by_the_new_binding(
    hub: TestClient[Any, Any],  # noqa: F811
    hub_store: HubStore,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """Bound from WEB to WEB2 just after the lookup from the head ("found"), or after every check before the
    write ("written"): the WEB movement is refused ``forbidden_location``, the WEB2 one booked. (Before, "found" was
    judged so by the read after the body; "written" had its WEB movement booked under the binding the operator had
    just taken away.)"""
    agent_id, token = await hub_store.add_agent(["WEB"])

    async def rebind(n: int = 1) -> None:
        if n == 1:
            await hub_store.bind_agent(agent_id, ["WEB2"])

    if when == "found":
        counting_lookups(hub_store, monkeypatch, rebind)
    else:
        changed_at_the_write(hub_store, monkeypatch, rebind)
    status, answer = await post_events(hub, token, move("a"), move("b", location="WEB2", sku="SKU-2"))
    assert status == 200, answer
    assert [(e["id"], e["status"], e.get("code")) for e in answer["events"]] == [
        ("a", "rejected", "forbidden_location"),
        ("b", "accepted", None),
    ]
    assert await booked(hub_store) == [("WEB2", "SKU-2", 5)]


async def test_a_connectors_requests_look_up_its_credential_once(
    hub: TestClient[Any, Any],  # noqa: F811
    hub_store: HubStore,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three requests of one connector: one lookup before their transactions, which confirm it themselves (before:
    two a request, from the head and after the body). Revoked, the next is refused 401 with nothing booked."""
    agent_id, token = await hub_store.add_agent(["WEB"])
    asked = counting_lookups(hub_store, monkeypatch)
    for n in range(3):
        status, answer = await post_events(hub, token, move(f"in-{n}"))
        assert status == 200, answer
    assert asked == [token]
    assert await hub_store.revoke_agent(agent_id)
    status, _ = await post_events(hub, token, move("in-3"))
    assert status == 401
    assert await booked(hub_store) == [("WEB", "SKU-1", 15)]
    assert asked == [token, token]  # the cache's entry forgotten, the store asked: gone


async def test_a_connectors_request_reads_its_credential_once_from_the_sqlite_database(tmp_path: Path) -> None:
    """Every statement either SQLite connection of the store runs, by its trace callback: a connector's request
    once its credential is known reads the credential's row once, in the write that books its events (before:
    twice, from the head and after the body, and not in the write)."""
    async with open_store(tmp_path / "hub.db") as store, serve_hub(store) as served:
        assert isinstance(store, SqliteHubStore)
        statements: list[str] = []
        await store._reader.set_trace_callback(statements.append)
        await store._writer.run(lambda conn: conn.set_trace_callback(statements.append))
        _, token = await store.add_agent(["WEB"])
        reads = []
        for n in range(4):
            statements.clear()
            status, answer = await post_events(served.client, token, move(f"in-{n}", qty=1))
            assert status == 200, answer
            reads.append(sum(s.lstrip().startswith("SELECT token_sha256") for s in statements))
    assert reads == [2, 1, 1, 1]  # the first found it in the store too, before its write
