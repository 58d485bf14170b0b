"""The channels' routes on a real hub over 127.0.0.1, its channels pushing to the Shopify and Square emulators
and to a signed-webhook receiver: status, divergences, mapping refresh, reconcile-now."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.channels import parse_channels
from hub.channels.reconcile import Reconciler
from hub.storage import HubStore
from protocol.retry import Backoff
from tests.channels.emulators.shopify import ShopifyEmulator, Variant
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import wait_until
from tests.channels.test_webhook_channel import SECRET, Receiver
from tests.harness.inprocess import hub_in_process


@dataclass
class Hub:
    url: str
    store: HubStore
    shopify: ShopifyEmulator
    square: SquareEmulator
    receiver: Receiver
    tokens: dict[str, str]  # role -> token
    ids: dict[str, Any]  # the channels' locations and items

    async def call(self, method: str, path: str, role: str | None = "reader", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.request(method, self.url + path, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=20), **kw) as resp:  # fmt: skip
                return resp.status, await resp.json(content_type=None)

    async def move(self, kind: str, qty: int, location: str, sku: str) -> None:
        event = {"id": uuid.uuid4().hex, "location": location, "sku": sku, "kind": kind, "qty": qty,
                 "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}  # fmt: skip
        status, answer = await self.call("POST", "/v1/events", "agent", json={"events": [event]})
        assert status == 200 and answer["applied"] == 1, answer

    async def channels(self) -> dict[str, dict[str, Any]]:
        status, answer = await self.call("GET", "/v1/channels")
        assert status == 200, answer
        return {c["name"]: c for c in answer["channels"]}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with ShopifyEmulator() as shopify, SquareEmulator() as square, Receiver() as receiver:
        online = shopify.add_location()
        a: Variant = shopify.add_variant("A", stocked_at=[online])
        sq_loc = square.add_location()
        sq_a = square.add_variation("A")
        env = {"SHOP": shopify.token, "SQ": square.token, "HOOK": SECRET}
        specs = parse_channels(
            [
                {"name": "web", "kind": "shopify", "url": shopify.url, "secret_env": "SHOP", "pool": {"S1": online}},
                {"name": "pos", "kind": "square", "url": square.url, "secret_env": "SQ", "pool": {"S1": sq_loc},
                 "retry_max_s": 0.2},
                {"name": "feed", "kind": "webhook", "url": receiver.url, "secret_env": "HOOK", "pool": {"S1": "web"}},
            ],
            environ=env,
        )  # fmt: skip
        db = tmp_path / "hub.db"
        async with hub_in_process(db, channels=specs) as served:
            store = served.store
            tokens = {role: (await store.add_agent([] if role != "agent" else ["S1"], role=role))[1]
                      for role in ("agent", "reader", "admin")}  # fmt: skip
            await store.add_agent(["S1"])
            h = Hub(served.url, store, shopify, square, receiver, tokens,
                    {"online": online, "a": a, "sq_loc": sq_loc, "sq_a": sq_a})  # fmt: skip
            await h.move("receive", 9, "S1", "A")
            await h.move("receive", 4, "S1", "LONELY")  # no channel item carries it

            def out(level: int) -> Callable[[], Awaitable[bool]]:
                async def shown() -> bool:
                    return (shopify.available(a.item_id, online), square.quantity(sq_a, sq_loc),
                            receiver.levels.get(("A", "web"))) == (level, level, level)  # fmt: skip

                return shown

            # The first level may go out with a pusher's start-up push, which samples no lag; the second is
            # a change after that, carried by the change feed, so every channel then has a lag sample.
            await wait_until(out(9), "every channel shows A at 9")
            await h.move("receive", 1, "S1", "A")
            await wait_until(out(10), "every channel shows A at 10")

            async def caught_up() -> bool:  # and each pusher has stored what its channel confirmed
                return all(c["queue"] == 0 and c["lag"]["samples"] >= 1 for c in (await h.channels()).values())

            await wait_until(caught_up, "every channel caught up with a lag sample")
            yield h


async def test_the_status_of_every_channel(hub: Hub) -> None:
    channels = await hub.channels()
    assert list(channels) == ["web", "pos", "feed"]
    web_, pos, feed = channels["web"], channels["pos"], channels["feed"]
    assert (web_["kind"], pos["kind"], feed["kind"]) == ("shopify", "square", "webhook")
    for c in (web_, pos, feed):
        assert c["connected"] is True and c["last_error"] is None and c["failures"] == 0
        assert c["last_push"] is not None and c["lag"]["last_ms"] >= 0
        assert c["lag"]["p50_ms"] <= c["lag"]["p99_ms"]
        assert c["divergences_open"] == 0 and c["refused"] == 0
    assert web_["unmapped"] == {"count": 1, "skus": ["LONELY"]} and pos["unmapped"]["skus"] == ["LONELY"]
    assert feed["unmapped"]["count"] == 0  # a webhook carries every SKU
    throttle = web_["throttle"]
    assert (throttle["maximum_available"], throttle["restore_rate"]) == (1000.0, 100.0) and throttle["at"]
    assert pos["throttle"] is None
    assert (web_["reconcile_s"], feed["reconcile_s"]) == (900.0, 0)
    assert web_["last_reconciliation"] is None and "token" not in str(channels)
    # each channel's settings as it runs, null where a key belongs to another kind
    settings = {name: c["settings"] for name, c in channels.items()}
    assert (settings["web"]["reason"], settings["web"]["batch_max"], settings["web"]["api_version"]) == (
        "correction", 250, "2026-01",
    )  # fmt: skip
    assert (settings["web"]["unbooked_sale_wait_s"], settings["feed"]["order_match_window_s"]) == (None, None)
    assert (settings["pos"]["unbooked_sale_wait_s"], settings["pos"]["order_match_window_s"]) == (3600.0, 600.0)
    assert (settings["pos"]["retry_max_s"], settings["pos"]["reason"]) == (0.2, None)
    assert (settings["feed"]["reconcile_s"], settings["feed"]["api_version"], settings["feed"]["batch_max"]) == (
        0, None, 1_000,
    )  # fmt: skip
    assert settings["feed"]["url"] == hub.receiver.url and settings["feed"]["secret"] == "environment variable HOOK"
    assert SECRET not in str(channels)


async def test_a_failing_channel_shows_its_error_and_queue_then_recovers(hub: Hub) -> None:
    hub.square.faults.queue(*["http_500"] * 1000)
    await hub.move("sale", -1, "S1", "A")

    async def failing() -> bool:
        pos = (await hub.channels())["pos"]
        return pos["failures"] >= 1 and pos["queue"] >= 1 and pos["connected"] is False

    await wait_until(failing, "the Square channel reports its failure")
    pos = (await hub.channels())["pos"]
    assert "HTTP 500" in pos["last_error"] and (await hub.channels())["web"]["last_error"] is None
    while hub.square.faults.pending:
        hub.square.faults.next()

    async def recovered() -> bool:
        pos = (await hub.channels())["pos"]
        return pos["queue"] == 0 and pos["connected"] is True and pos["last_error"] is None

    await wait_until(recovered, "the Square channel recovered")
    assert hub.square.quantity(hub.ids["sq_a"], hub.ids["sq_loc"]) == 9


async def test_a_drift_found_by_reconcile_now_is_listed_paged_and_corrected(hub: Hub) -> None:
    online, a = hub.ids["online"], hub.ids["a"]
    hub.shopify.drift(a.item_id, online, 2)
    hub.square.drift(hub.ids["sq_a"], hub.ids["sq_loc"], 3)
    status, answer = await hub.call("POST", "/v1/channels/web/reconcile", "admin")
    assert status == 200, answer
    assert answer["checked"] == 1 and [(d["sku"], d["channel_level"], d["hub_level"]) for d in answer["divergences"]] == [
        ("A", 2, 10)
    ]
    assert (await hub.call("POST", "/v1/channels/pos/reconcile", "admin"))[0] == 200

    async def corrected() -> bool:
        return all(c["divergences_open"] == 0 for c in (await hub.channels()).values())

    await wait_until(corrected, "both corrections confirmed")
    assert hub.shopify.available(a.item_id, online) == 10
    assert hub.square.quantity(hub.ids["sq_a"], hub.ids["sq_loc"]) == 10
    assert (await hub.channels())["web"]["last_reconciliation"]["diverged"] == 1

    hub.shopify.drift(a.item_id, online, 0)
    assert (await hub.call("POST", "/v1/channels/web/reconcile", "admin"))[0] == 200
    status, page = await hub.call("GET", "/v1/channels/web/divergences?limit=1")
    assert status == 200 and [d["id"] for d in page["divergences"]] == [2] and page["next"]
    status, rest = await hub.call("GET", f"/v1/channels/web/divergences?limit=1&cursor={page['next']}")
    (first,) = rest["divergences"]
    assert (first["id"], first["channel_level"], first["hub_level"], first["last_pushed"]) == (1, 2, 10, 10)
    assert (first["item_id"], first["channel_location"], first["location"]) == (a.item_id, online, "S1")
    assert first["difference"] == -8 and first["found_at"] and first["corrected_at"] and rest["next"] is None
    status, answer = await hub.call("GET", f"/v1/channels/pos/divergences?cursor={page['next']}")
    assert status == 400 and "cursor" in answer["detail"]  # another channel's cursor
    status, answer = await hub.call("GET", "/v1/exceptions")
    kinds = [e["kind"] for e in answer["exceptions"]]
    assert kinds.count("channel_divergence") == 3


async def test_reconcile_now_leaves_a_register_sale_standing_until_its_order_reaches_the_hub(hub: Hub) -> None:
    """A sale rung up at a Square register, its order not yet at the hub: reconcile-now pushed the hub's 10 over
    Square's 9, an oversell until the order came back. Square's record shows the hub's count less that sale: no
    divergence, nothing pushed; the sale reaching the hub then brings the hub's level to Square's."""
    sq_a, sq_loc = hub.ids["sq_a"], hub.ids["sq_loc"]
    hub.square.register_sale(sq_a, sq_loc, 1)
    status, answer = await hub.call("POST", "/v1/channels/pos/reconcile", "admin")
    assert status == 200, answer
    assert (answer["checked"], answer["divergences"]) == (1, [])
    assert (await hub.channels())["pos"]["divergences_open"] == 0
    assert hub.square.quantity(sq_a, sq_loc) == 9
    await hub.move("sale", -1, "S1", "A")  # the sale reaches the hub

    async def settled() -> bool:
        pos = (await hub.channels())["pos"]
        return pos["queue"] == 0 and hub.square.quantity(sq_a, sq_loc) == 9

    await wait_until(settled, "the hub's level of A is Square's")
    status, answer = await hub.call("POST", "/v1/channels/pos/reconcile", "admin")
    assert status == 200 and answer["divergences"] == []


async def test_mapping_refresh_tells_the_channel_the_new_items(hub: Hub) -> None:
    online = hub.ids["online"]
    lonely = hub.shopify.add_variant("LONELY", stocked_at=[online])
    status, answer = await hub.call("POST", "/v1/channels/web/mapping/refresh", "admin")
    assert status == 200, answer
    assert (answer["mapped"], answer["unmapped"], answer["findings"]) == (2, 0, [])

    async def out() -> bool:
        return hub.shopify.available(lonely.item_id, online) == 4

    await wait_until(out, "the newly mapped item got its level without any movement")
    assert (await hub.channels())["web"]["unmapped"] == {"count": 0, "skus": []}


async def test_refusals_of_the_routes_are_one_sentence(hub: Hub) -> None:
    assert (await hub.call("GET", "/v1/channels", None))[0] == 401
    status, answer = await hub.call("GET", "/v1/channels", "agent")
    assert status == 403 and "cannot read the channels" in answer["detail"]
    status, answer = await hub.call("POST", "/v1/channels/web/reconcile", "reader")
    assert status == 403 and "only admin" in answer["detail"]
    assert (await hub.call("POST", "/v1/channels/web/mapping/refresh", "reader"))[0] == 403
    status, answer = await hub.call("GET", "/v1/channels/nope/divergences")
    assert status == 404 and answer["detail"] == "there is no channel named 'nope'; the channels are: feed, pos, web"
    status, answer = await hub.call("POST", "/v1/channels/feed/reconcile", "admin")
    assert status == 409 and "cannot be read back" in answer["detail"]
    status, answer = await hub.call("GET", "/v1/channels/web/divergences?cursor=bm9wZQ")
    assert status == 400 and "send the next value" in answer["detail"]
    status, answer = await hub.call("GET", "/v1/channels?x=1")
    assert status == 400 and "unknown query parameter" in answer["detail"]
    hub.square.faults.queue("http_503")  # the listing cannot be read: nothing changes
    status, answer = await hub.call("POST", "/v1/channels/pos/mapping/refresh", "admin")
    assert status == 503 and "not refreshed" in answer["detail"] and "\n" not in answer["detail"]
    assert (await hub.channels())["pos"]["mapped"] == 1


async def test_reconcile_now_asked_while_the_reconciler_loop_is_dead_reconciles_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request made while a channel's reconciler loop is dead (waiting to be started again) is not left to the
    loop's next due time: the route reconciles in the request itself and answers what it found."""
    monkeypatch.setattr("hub.leases.ENDED_BACKOFF", Backoff(600.0, 600.0))  # dead for the whole test
    died: list[str] = []

    async def dies(self: Reconciler) -> None:
        died.append(self.spec.name)
        raise RuntimeError("the channel state answered nonsense")

    monkeypatch.setattr(Reconciler, "run", dies)
    async with SquareEmulator() as square:
        loc, vid = square.add_location(), square.add_variation("A")
        spec = parse_channels([{"name": "pos", "kind": "square", "url": square.url, "secret_env": "SQ",
                                "pool": {"S1": loc}}], environ={"SQ": square.token})  # fmt: skip
        async with hub_in_process(tmp_path / "hub.db", channels=spec) as served:
            _, admin = await served.store.add_agent([], role="admin")
            await served.store.add_agent(["S1"])
            await wait_until(lambda: _done(died == ["pos"]), "the reconciler loop died")
            square.drift(vid, loc, 3)
            async with (
                aiohttp.ClientSession(trust_env=False) as session,
                session.post(f"{served.url}/v1/channels/pos/reconcile", headers={"Authorization": f"Bearer {admin}"},
                             timeout=aiohttp.ClientTimeout(total=20)) as resp,
            ):  # fmt: skip
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
    assert answer["checked"] == 1 and died == ["pos"], "reconciled in the request, the loop still dead"


async def _done(value: bool) -> bool:
    return value
