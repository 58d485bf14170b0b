"""End to end: a Shopify store-pickup order reserves the pickup store's unit, and the store learns it.

Real processes on 127.0.0.1: the hub (``python -m hub serve --config hub.toml`` with a Shopify channel that
takes order webhooks) and the store's agent (``python -m agent run``); the Shopify emulator (GraphQL Admin API
2026-01 and its signed webhooks) in the test. The store receives 5 units; a customer orders 1 for pickup at
the store online; Shopify posts ``orders/create``. The hub reserves the unit at the store (not at the
warehouse that also sells online), Shopify's level for the store drops to 4, and the store agent's local count
cache holds the reservation without any movement of the store's own: the agent follows the hub's change feed
for its location (agent.feed). Then the store sells one at its till and Shopify's level drops to 3.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.helpers import wait_until
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

STORE = "S1"
SKU = "SKU-1"


def _record(config: Path, kind: str, qty: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "agent", "record", "--config", str(config), "--sku", SKU, "--kind", kind, "--qty", str(qty)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _hub_count(url: str, token: str) -> dict[str, Any]:
    rows = get_json(f"{url}/v1/skus/{SKU}/counts", token)["counts"]
    return next((r for r in rows if r["location"] == STORE), {"on_hand": 0, "reserved": 0, "available": 0})


def _agent_count(outbox: Path) -> tuple[int, int] | None:
    """(on_hand, reserved) of the store's SKU in the agent's local count cache, read-only."""
    if not outbox.exists():
        return None
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5) as db:
        try:
            row = db.execute("SELECT on_hand, reserved FROM counts WHERE location = ? AND sku = ?", (STORE, SKU)).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else (int(row[0]), int(row[1]))


async def test_a_shopify_pickup_order_reserves_the_stores_unit_and_the_store_agent_learns_it(tmp_path: Path) -> None:
    async with ShopifyOrdersEmulator() as shopify:
        warehouse, store = shopify.add_location(), shopify.add_location()
        variant = shopify.add_variant(SKU, stocked_at=[warehouse, store])
        db = tmp_path / "hub.db"
        agent_cred = add_credential(db, STORE)
        reader = add_credential(db, role="reader")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        (tmp_path / "hub.toml").write_text(
            f'[hub]\ndb = "hub.db"\nhost = "127.0.0.1"\nport = {port}\n\n'
            f'[[channel]]\nname = "web"\nkind = "shopify"\nurl = "{shopify.url}"\nsecret_env = "SHOP_TOKEN"\n'
            f'webhook_secret_env = "SHOP_WEBHOOK_SECRET"\norder_location = "WH1"\ncoalesce_s = 0.05\n'
            f'pool = {{ WH1 = "{warehouse}", {STORE} = "{store}" }}\n',
            encoding="utf-8",
        )
        env = {**os.environ, "SHOP_TOKEN": shopify.token, "SHOP_WEBHOOK_SECRET": shopify.webhook_secret}
        env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy")}
        hub = HubProcess(tmp_path / "hub.log", "--config", str(tmp_path / "hub.toml"), env=env)
        agent_dir = tmp_path / "store"
        agent_dir.mkdir()
        config = write_agent_config(agent_dir / "agent.toml", cred=agent_cred, location=STORE, hub_url=url)
        agent = None
        try:
            await asyncio.to_thread(hub.start)  # in a thread: the emulator answers the hub from this loop
            assert hub.url == url
            agent = AgentProcess(config, agent_dir / "agent.log")
            await asyncio.to_thread(_record, config, "receive", 5)  # the store's delivery
            await wait_until(
                lambda: _at(asyncio.to_thread(_hub_count, url, reader.token), "on_hand", 5), "the hub counts the delivery"
            )
            await wait_until(lambda: _level(shopify, variant.item_id, store, 5), "Shopify shows the store's 5")

            order = shopify.create_order([(variant, 1)], pickup_at=store)
            delivery = shopify.order_delivery("orders/create", order["id"])

            async def delivered() -> bool:  # 503 until the hub's pusher has loaded the channel's mapping
                status, answer = await shopify.deliver(f"{url}/v1/channels/web/webhooks", delivery)
                assert status in (200, 503), (status, answer)
                return status == 200

            await wait_until(delivered, "the hub takes the orders/create webhook")
            count = await asyncio.to_thread(_hub_count, url, reader.token)
            assert (count["on_hand"], count["reserved"], count["available"]) == (5, 1, 4)
            assert shopify.available(variant.item_id, warehouse) == 0  # the warehouse reserved nothing
            await wait_until(lambda: _level(shopify, variant.item_id, store, 4), "Shopify shows the store's 4")

            outbox = agent_dir / "outbox.sqlite3"
            await wait_until(
                lambda: asyncio.to_thread(lambda: _agent_count(outbox) == (5, 1)),
                "the store agent's count cache holds the pickup reservation",
            )  # the store recorded nothing since its delivery: the change feed carried it

            await asyncio.to_thread(_record, config, "sale", -1)  # a walk-in customer buys one at the till
            await wait_until(lambda: _level(shopify, variant.item_id, store, 3), "Shopify shows the store's sale")
            count = await asyncio.to_thread(_hub_count, url, reader.token)
            assert (count["on_hand"], count["reserved"], count["available"]) == (4, 1, 3)
        finally:
            if agent is not None:
                agent.stop()
            hub.close()
    text = hub.log
    assert f"applied Shopify order {order['id']} (orders/create)" in text
    assert shopify.webhook_secret not in text and shopify.token not in text
    assert "Traceback" not in text


async def _at(count: Any, field: str, expected: int) -> bool:
    return int((await count)[field]) == expected


async def _level(shopify: ShopifyOrdersEmulator, item: str, location: str, expected: int) -> bool:
    return shopify.available(item, location) == expected


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
