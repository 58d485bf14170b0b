"""The sync route's credential, confirmed inside the batch's own transaction, on both backends over real HTTP.

A sync's identity may come from the hub's ``IdentityCache`` (hub.auth): the store's ``ingest`` reads the
credential again with the batch's first read and writes nothing if it was revoked or bound elsewhere since it
was found. Before, the credential was read once before the transaction and never after: a credential revoked
while its batch waited for a turn, or decoded, still had the batch booked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub.auth import IdentityCache
from hub.storage import HubStore, open_store
from hub.storage.base import AgentIdentity
from protocol import Kind
from tests.harness.inprocess import serve_hub
from tests.harness.pg import fresh_schema
from tests.hub.test_app import body_of, error_of, event, post_sync, sync_ok


@pytest.fixture
async def hub_store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "postgres":
        async with fresh_schema("synccred") as url, open_store(url) as store:
            yield store
    else:
        async with open_store(tmp_path / "hub.db") as store:
            yield store


@pytest.fixture
async def hub(hub_store: HubStore) -> AsyncIterator[TestClient[Any, Any]]:
    async with serve_hub(hub_store) as served:
        yield served.client


def counting_lookups(store: HubStore, monkeypatch: pytest.MonkeyPatch, then: Any = None) -> list[str]:
    """Each token the store is asked to authenticate, in order; ``then(n)`` runs after the n-th lookup (1-based)
    has found its identity, before the request goes on."""
    asked: list[str] = []
    authenticate = store.authenticate

    async def counted(token: str) -> AgentIdentity | None:
        asked.append(token)
        found = await authenticate(token)
        if then is not None:
            await then(len(asked))
        return found

    monkeypatch.setattr(store, "authenticate", counted)
    return asked


async def test_a_credential_revoked_after_it_was_found_books_nothing_of_its_batch(
    hub: TestClient[Any, Any], hub_store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoked between the lookup and the batch's transaction: 401, and not one movement, mark or sync booked
    (before: the batch was booked, answered 200)."""
    agent_id, token = await hub_store.add_agent(["S001"])

    async def revoke(n: int) -> None:
        if n == 1:
            assert await hub_store.revoke_agent(agent_id)

    counting_lookups(hub_store, monkeypatch, revoke)
    err = await error_of(await post_sync(hub, token, body_of(agent_id, [event(agent_id, 1)])), 401, "unauthorized")
    assert "revoked" in err["detail"]
    assert await hub_store.counts() == []
    (status,) = await hub_store.agent_status(agent_id)
    assert (status.hwm, status.last_sync_ms) == ({}, None)


async def test_a_credential_bound_elsewhere_after_it_was_found_has_its_batch_checked_against_the_new_locations(
    hub: TestClient[Any, Any], hub_store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound from S001 to S002 between the lookup and the transaction: the batch is checked again as the
    credential is now, so its S001 movement is refused ``forbidden_location`` and its S002 one booked (before:
    both booked, S001's under a binding the operator had just taken away)."""
    agent_id, token = await hub_store.add_agent(["S001"])

    async def rebind(n: int) -> None:
        if n == 1:
            await hub_store.bind_agent(agent_id, ["S002"])

    asked = counting_lookups(hub_store, monkeypatch, rebind)
    answer = await sync_ok(
        hub, token, body_of(agent_id, [event(agent_id, 1), event(agent_id, 2, location="S002", sku="SKU-2")])
    )
    assert [r.code for r in answer.rejected] == ["forbidden_location"]
    assert answer.hwm == 2
    assert [(c.location, c.sku, c.on_hand) for c in await hub_store.counts()] == [("S002", "SKU-2", 5)]
    assert len(asked) == 2  # found, then found again once the transaction said it changed


async def test_an_agents_batches_look_up_its_credential_once_and_reads_every_time(
    hub: TestClient[Any, Any], hub_store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three syncs of one agent: one lookup before their transactions (each confirms it itself). A reader's
    three reads: three lookups, as every route but the sync asks the store each time. Revoked, the next sync is
    refused 401 by its transaction, with nothing booked."""
    agent_id, token = await hub_store.add_agent(["S001"])
    _, reader = await hub_store.add_agent([], role="reader")
    asked = counting_lookups(hub_store, monkeypatch)
    for seq in (1, 2, 3):
        await sync_ok(hub, token, body_of(agent_id, [event(agent_id, seq)]))
    assert asked == [token]
    for _ in range(3):
        assert (await hub.get("/v1/locations/S001/counts", headers={"Authorization": f"Bearer {reader}"})).ok
    assert asked == [token, reader, reader, reader]
    assert await hub_store.revoke_agent(agent_id)
    await error_of(await post_sync(hub, token, body_of(agent_id, [event(agent_id, 4)])), 401, "unauthorized")
    assert [(c.sku, c.on_hand) for c in await hub_store.counts()] == [("SKU-1", 15)]
    assert asked == [token, reader, reader, reader, token]  # the cache's entry forgotten, the store asked: gone


async def test_a_token_of_the_same_agent_id_but_another_secret_is_refused_though_the_right_one_is_cached(
    hub: TestClient[Any, Any], hub_store: HubStore
) -> None:
    """The cache is keyed by the whole token's hash: a token naming a cached agent id with a guessed secret is
    looked up, and refused."""
    agent_id, token = await hub_store.add_agent(["S001"])
    await sync_ok(hub, token, body_of(agent_id, [event(agent_id, 1, kind=Kind.RECEIVE.value)]))
    forged = token.rsplit(".", 1)[0] + ".x" + token.rsplit(".", 1)[1][1:]
    await error_of(await post_sync(hub, forged, body_of(agent_id, [event(agent_id, 2)])), 401, "unauthorized")
    assert [(c.sku, c.on_hand) for c in await hub_store.counts()] == [("SKU-1", 5)]


def test_the_identity_cache_forgets_the_least_recently_used_and_the_old() -> None:
    now = [100.0]
    cache = IdentityCache(frozenset({"sync"}), max_entries=2, max_age_s=60.0, clock=lambda: now[0])
    a, b, c = (AgentIdentity(f"agent-{n}", frozenset({"S1"})) for n in "abc")
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") == a  # a used last: b goes when c comes
    cache.put("c", c)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (a, None, c)
    now[0] += 61
    assert (cache.get("a"), cache.get("c")) == (None, None)
    cache.put("a", a)
    cache.forget("a")
    assert cache.get("a") is None
