"""Bundles over real HTTP on 127.0.0.1: recipes (admin PUT, reader GETs), and a bundle's movements from an
agent's sync and from a channel connector's ``POST /v1/events`` booked on its parts, counted like any SKU."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub import paging
from hub.resolver import component_event_id
from protocol import Kind, event_id_hex
from tests.hub.feed_helpers import Hub, running_hub, running_hub_at


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


@pytest.fixture
async def admin(hub: Hub) -> str:
    return (await hub.store.add_agent([], role="admin"))[1]


async def put(hub: Hub, token: str, sku: str, body: Any, status: int = 200, *, raw: bytes | None = None) -> Any:
    kwargs: dict[str, Any] = {"data": raw, "headers": {**hub.auth(token), "Content-Type": "application/json"}}
    if raw is None:
        kwargs = {"json": body, "headers": hub.auth(token)}
    resp = await hub.client.put(f"/v1/bundles/{sku}", **kwargs)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def counts(hub: Hub, location: str) -> dict[str, tuple[int, int, int]]:
    rows = (await hub.get_json(f"/v1/locations/{location}/counts"))["counts"]
    return {r["sku"]: (r["on_hand"], r["reserved"], r["available"]) for r in rows}


async def test_an_admin_sets_a_recipe_and_any_credential_reads_it(hub: Hub, admin: str) -> None:
    answer = await put(hub, admin, "KIT", {"components": {"C": 1, "A": 2}})
    assert answer["changed"] is True
    bundle = answer["bundle"]
    assert (bundle["sku"], bundle["version"], bundle["components"], bundle["parts"]) == ("KIT", 1, {"A": 2, "C": 1},
                                                                                         {"A": 2, "C": 1})  # fmt: skip
    assert bundle["set_by"].startswith("agent-") and bundle["valid_from"].endswith("Z")
    again = await put(hub, admin, "KIT", {"components": {"A": 2, "C": 1}})
    assert again["changed"] is False and again["bundle"]["version"] == 1
    await put(hub, admin, "KIT", {"components": {"A": 3}})
    one = await hub.get_json("/v1/bundles/KIT")  # a reader
    assert one["bundle"]["version"] == 2 and one["bundle"]["parts"] == {"A": 3}
    assert [(v["version"], v["components"]) for v in one["versions"]] == [(1, {"A": 2, "C": 1}), (2, {"A": 3})]
    listed = await hub.get_json("/v1/bundles")
    assert [b["sku"] for b in listed["bundles"]] == ["KIT"] and listed["next"] is None


async def test_only_an_admin_may_set_a_recipe(hub: Hub) -> None:
    _, agent = await hub.store.add_agent(["S1"])
    for token, role in ((hub.reader, "reader"), (agent, "agent")):
        body = await put(hub, token, "KIT", {"components": {"A": 1}}, status=403)
        assert body["detail"] == (
            f"a{'n' if role == 'agent' else ''} {role} credential cannot set a bundle's recipe; "
            "only admin credentials can"
        )
    assert (await hub.get_json("/v1/bundles"))["bundles"] == []


@pytest.mark.parametrize(
    ("sku", "body", "raw", "needle"),
    [
        ("KIT", None, b"{", "the body is not valid JSON"),
        ("KIT", {"items": {"A": 1}}, None, 'one field, components: component SKU -> units, e.g. {"components"'),
        ("KIT", {"components": [["A", 1]]}, None, "one field, components"),
        ("KIT", {"components": {}}, None, "at least one component"),
        ("KIT", {"components": {"A": 0}}, None, "the units of component A must be a whole number from 1 to 10000"),
        ("KIT", {"components": {"A": 1.5}}, None, "whole number"),
        ("KIT", {"components": {"KIT": 1}}, None, "bundle KIT names itself"),
        ("KIT%0A", {"components": {"A": 1}}, None, "sku 'KIT\\n' is not a SKU"),
    ],
)
async def test_a_bad_recipe_is_400_with_one_sentence(
    hub: Hub, admin: str, sku: str, body: Any, raw: bytes | None, needle: str
) -> None:
    answer = await put(hub, admin, sku, body, status=400, raw=raw)
    assert answer["code"] == "bad_request" and needle in answer["detail"]
    assert (await hub.get_json("/v1/bundles"))["bundles"] == []


async def test_a_cycle_or_a_sku_with_stock_of_its_own_is_409_and_nothing_changes(hub: Hub, admin: str) -> None:
    await put(hub, admin, "KIT", {"components": {"A": 2}})
    await put(hub, admin, "DUO", {"components": {"KIT": 1, "B": 1}})
    body = await put(hub, admin, "KIT", {"components": {"DUO": 1}}, status=409)
    assert body["detail"] == (
        "the recipes would put a bundle inside itself: KIT → DUO → KIT; change this recipe or the other one "
        "first; the recipe was not changed"
    )
    agent = await hub.agent("S1", "LOOSE")
    await agent.sync((Kind.RECEIVE, 4))
    body = await put(hub, admin, "LOOSE", {"components": {"A": 1}}, status=409)
    assert "LOOSE holds stock of its own (4 on hand, 0 reserved, 0 in transit at S1)" in body["detail"]
    assert [b["sku"] for b in (await hub.get_json("/v1/bundles"))["bundles"]] == ["DUO", "KIT"]
    assert (await hub.get_json("/v1/bundles/KIT"))["bundle"]["components"] == {"A": 2}
    missing = await hub.get_json("/v1/bundles/LOOSE", status=404)
    assert missing["detail"] == (
        "'LOOSE' is not a bundle; PUT /v1/bundles/{sku} with its components makes it one"
    )


async def test_bundles_page_by_sku_and_a_tampered_cursor_is_400(hub: Hub, admin: str) -> None:
    for sku in ("K3", "K1", "K2"):
        await put(hub, admin, sku, {"components": {"A": 1}})
    first = await hub.get_json("/v1/bundles?limit=2")
    assert [b["sku"] for b in first["bundles"]] == ["K1", "K2"] and first["next"]
    second = await hub.get_json(f"/v1/bundles?limit=2&cursor={first['next']}")
    assert [b["sku"] for b in second["bundles"]] == ["K3"] and second["next"] is None
    bad = await hub.get_json(f"/v1/bundles?cursor={first['next'][:-2]}", status=400)
    assert "cursor is not one this hub gave out for the bundles" in bad["detail"]
    elsewhere = paging.encode("counts", ["S1", "K1"])  # a cursor another route gave out is refused too
    assert (await hub.get_json(f"/v1/bundles?cursor={elsewhere}", status=400))["code"] == "bad_request"
    assert (await hub.get_json("/v1/bundles?limit=0", status=400))["code"] == "bad_request"


async def get_tagged(hub: Hub, path: str, tag: str | None = None) -> tuple[int, str, Any]:
    """GET ``path`` (with ``If-None-Match: tag``): the status, the ETag and the JSON answer (None for a 304)."""
    headers = hub.auth() | ({"If-None-Match": tag} if tag else {})
    async with hub.client.get(path, headers=headers) as resp:
        assert resp.status in (200, 304), await resp.text()
        return resp.status, resp.headers["ETag"], (await resp.json() if resp.status == 200 else None)


async def bundle_list_etag_follows_every_change(hub: Hub, admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list's ETag moves with every bundle change, a nested one too, and an unchanged page's 304 is answered
    without reading a bundle (agents ask every minute: it read every bundle each time to hash the answer)."""
    read, bundles = [], hub.store.bundles

    async def spied(**kwargs: Any) -> Any:
        read.append(kwargs)
        return await bundles(**kwargs)

    monkeypatch.setattr(hub.store, "bundles", spied)
    status, empty, body = await get_tagged(hub, "/v1/bundles")
    assert status == 200 and body == {"bundles": [], "next": None}
    await put(hub, admin, "K1", {"components": {"A": 1}})
    status, one, body = await get_tagged(hub, "/v1/bundles", empty)
    assert status == 200 and one != empty and [b["sku"] for b in body["bundles"]] == ["K1"]

    read.clear()
    for tag in (one, f"W/{one}", f"{empty}, {one}", "*"):
        assert (await get_tagged(hub, "/v1/bundles", tag))[:2] == (304, one)
    assert read == [], "a 304 read the bundles"

    await put(hub, admin, "K1", {"components": {"A": 1}})  # the same recipe again: nothing changed
    assert (await get_tagged(hub, "/v1/bundles", one))[:2] == (304, one)
    await put(hub, admin, "K2", {"components": {"K1": 2}})
    status, two, body = await get_tagged(hub, "/v1/bundles", one)
    assert status == 200 and two not in (one, empty) and body["bundles"][1]["parts"] == {"A": 2}
    await put(hub, admin, "K1", {"components": {"A": 3}})  # K2's parts move with it
    status, three, body = await get_tagged(hub, "/v1/bundles", two)
    assert status == 200 and three not in (one, two) and body["bundles"][1]["parts"] == {"A": 6}

    status, page1, body = await get_tagged(hub, "/v1/bundles?limit=1")  # each page has a tag of its own
    status, page2, _ = await get_tagged(hub, f"/v1/bundles?limit=1&cursor={body['next']}")
    assert len({page1, page2, three}) == 3
    assert (await get_tagged(hub, f"/v1/bundles?limit=1&cursor={body['next']}", page1))[0] == 200


async def test_the_bundle_list_etag_is_its_version_and_a_304_reads_no_bundle(
    hub: Hub, admin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await bundle_list_etag_follows_every_change(hub, admin, monkeypatch)


async def test_the_bundle_list_etag_is_its_version_and_a_304_reads_no_bundle_postgres(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_hub_at(pg_url) as hub:
        admin = (await hub.store.add_agent([], role="admin"))[1]
        await bundle_list_etag_follows_every_change(hub, admin, monkeypatch)


async def one_bundle_etag_follows_every_change(hub: Hub, admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /v1/bundles/{sku}``'s 304 is answered from the bundles' version, as the list's: it read the bundle
    and every version of its recipe to hash the answer, only to send no body."""
    read: list[str] = []
    for name in ("bundles", "bundle_versions"):
        real = getattr(hub.store, name)

        async def spied(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            read.append(_name)
            return await _real(*args, **kwargs)

        monkeypatch.setattr(hub.store, name, spied)
    await put(hub, admin, "K1", {"components": {"A": 1}})
    await put(hub, admin, "K2", {"components": {"K1": 2}})
    status, k1, body = await get_tagged(hub, "/v1/bundles/K1")
    assert status == 200 and body["bundle"]["parts"] == {"A": 1}
    status, k2, body = await get_tagged(hub, "/v1/bundles/K2")
    assert status == 200 and k2 != k1 and body["bundle"]["parts"] == {"A": 2}
    read.clear()
    for tag in (k1, f"W/{k1}", f"{k2}, {k1}"):
        assert (await get_tagged(hub, "/v1/bundles/K1", tag))[:2] == (304, k1)
    assert read == [], "a 304 read the bundle"
    assert (await get_tagged(hub, "/v1/bundles/K1", k2))[0] == 200  # another bundle's tag is not this one's
    await put(hub, admin, "K1", {"components": {"A": 3}})  # K2's parts move with it
    status, moved, body = await get_tagged(hub, "/v1/bundles/K2", k2)
    assert status == 200 and moved != k2 and body["bundle"]["parts"] == {"A": 6}
    missing = await hub.client.get("/v1/bundles/NOPE", headers=hub.auth() | {"If-None-Match": "*"})
    assert missing.status == 404, "no bundle is not an unchanged one"


async def test_one_bundles_etag_is_the_bundles_version_and_a_304_reads_no_bundle(
    hub: Hub, admin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await one_bundle_etag_follows_every_change(hub, admin, monkeypatch)


async def test_one_bundles_etag_is_the_bundles_version_and_a_304_reads_no_bundle_postgres(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_hub_at(pg_url) as hub:
        admin = (await hub.store.add_agent([], role="admin"))[1]
        await one_bundle_etag_follows_every_change(hub, admin, monkeypatch)


async def test_a_bundle_sold_through_an_agents_sync_moves_its_parts_and_is_counted_like_any_sku(
    hub: Hub, admin: str
) -> None:
    agent = await hub.agent("S1")
    await agent.sync((Kind.RECEIVE, 10, "A"), (Kind.RECEIVE, 3, "C"))
    await put(hub, admin, "KIT", {"components": {"A": 2, "C": 1}})
    kit_sale = agent.events(Kind.SALE, -1, at_ms=3, sku="KIT")
    answer = await agent.send([kit_sale])
    assert answer.rejected == ()
    assert {(c.sku, c.on_hand, c.available) for c in answer.counts} == {("A", 8, 8), ("C", 2, 2), ("KIT", 2, 2)}
    assert await counts(hub, "S1") == {"A": (8, 0, 8), "C": (2, 0, 2), "KIT": (2, 0, 2)}
    (kit,) = (await hub.get_json("/v1/skus/KIT/counts"))["counts"]
    assert (kit["location"], kit["on_hand"], kit["available"]) == ("S1", 2, 2)
    ledger = (await hub.get_json("/v1/ledger?location=S1"))["events"]
    sale = next(e for e in ledger if e["sku"] == "KIT")
    assert (sale["effect"], sale["expansion"]) == ("expanded", {"recipe_version": 1, "parts": {"A": 2, "C": 1}})
    parts = {e["sku"]: e for e in ledger if e["attrs"].get("bundle_event") == sale["event_id"]}
    assert {sku: (e["qty"], e["effect"], e["attrs"]["per_bundle"]) for sku, e in parts.items()} == {
        "A": (-2, "applied", 2), "C": (-1, "applied", 1)}  # fmt: skip
    assert all(e["expansion"] is None for e in parts.values())
    assert sale["event_id"] == event_id_hex(kit_sale.event_id)
    assert parts["A"]["event_id"] == event_id_hex(component_event_id(kit_sale, "A"))
    resent = await agent.send([kit_sale])  # the agent resends: nothing is booked twice
    assert (resent.duplicates, resent.rejected) == (1, ())
    assert await counts(hub, "S1") == {"A": (8, 0, 8), "C": (2, 0, 2), "KIT": (2, 0, 2)}


async def test_a_count_of_a_bundle_is_answered_rejected_and_listed_in_exceptions(hub: Hub, admin: str) -> None:
    agent = await hub.agent("S1")
    await agent.sync((Kind.RECEIVE, 10, "A"))
    await put(hub, admin, "KIT", {"components": {"A": 2}})
    answer = await agent.sync((Kind.COUNT, 3, "KIT"))
    (refused,) = answer.rejected
    assert refused.code == "invalid_bundle" and "count its parts instead" in refused.reason
    (exc,) = (await hub.get_json("/v1/exceptions"))["exceptions"]
    assert (exc["kind"], exc["sku"], exc["data"]["code"]) == ("rejected_event", "KIT", "invalid_bundle")
    assert await counts(hub, "S1") == {"A": (10, 0, 10), "KIT": (5, 0, 5)}


async def test_a_channel_connectors_bundle_order_books_its_parts(hub: Hub, admin: str) -> None:
    _, connector = await hub.store.add_agent(["WEB"])
    await put(hub, admin, "KIT", {"components": {"A": 2, "C": 1}})

    async def post(*events: dict[str, Any]) -> Any:
        resp = await hub.client.post("/v1/events", json={"events": list(events)}, headers=hub.auth(connector))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    def move(id_: str, sku: str, kind: str, qty: int, **extra: Any) -> dict[str, Any]:
        at = "2025-11-25T09:00:00Z"
        return {"id": id_, "location": "WEB", "sku": sku, "kind": kind, "qty": qty, "occurred_at": at, **extra}

    await post(move("in-a", "A", "receive", 9), move("in-c", "C", "receive", 9))
    reserved = await post(move("order-7:reserve", "KIT", "reserve", 2, ref="order-7"))
    assert reserved["applied"] == 1
    assert await counts(hub, "WEB") == {"A": (9, 4, 5), "C": (9, 2, 7), "KIT": (4, 2, 2)}
    sold = move("order-7:sale", "KIT", "sale", -2, ref="order-7")
    await post(sold)
    assert await counts(hub, "WEB") == {"A": (5, 0, 5), "C": (7, 0, 7), "KIT": (2, 0, 2)}
    again = await post(sold)  # the channel sends its order again
    assert again["duplicates"] == 1 and await counts(hub, "WEB") == {"A": (5, 0, 5), "C": (7, 0, 7), "KIT": (2, 0, 2)}
    ledger = (await hub.get_json("/v1/ledger?location=WEB&sku=A"))["events"]
    sale = next(e for e in (await hub.get_json("/v1/ledger?location=WEB&sku=KIT"))["events"] if e["kind"] == "sale")
    assert sale["attrs"] == {"api_id": "order-7:sale"} and sale["effect"] == "expanded"
    (part,) = [e for e in ledger if e["attrs"].get("bundle_event") == sale["event_id"]]
    assert (part["kind"], part["qty"], part["ref"], part["attrs"]["api_id"]) == ("sale", -4, "order-7", "order-7:sale")
