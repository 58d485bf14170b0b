"""End to end: a bundle sold online moves its parts at the location that fulfils it.

Real hub process on 127.0.0.1 (``python -m hub serve --config hub.toml``) with a Shopify channel selling from
a warehouse and a store; the Shopify emulator (GraphQL Admin API 2026-01 and its signed webhooks) in the test.
An admin sets the recipe KIT = 2 × MUG + 1 × TEA over HTTP; the parts arrive at both locations; a customer
orders 3 kits online, shipped from the warehouse; Shopify posts ``orders/create`` then ``orders/fulfilled``.
The hub reserves, then sells, 6 mugs and 3 teas at the warehouse — not at the store — each part's ledger row
names the kit's event, the kit's own available follows its parts, and Shopify's kit level for the warehouse
drops with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.helpers import wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

WAREHOUSE, STORE = "WH1", "S1"


def _send(url: str, token: str, method: str, path: str, body: Any) -> Any:
    req = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _counts(url: str, token: str, location: str) -> dict[str, tuple[int, int, int]]:
    rows = get_json(f"{url}/v1/locations/{location}/counts", token)["counts"]
    return {r["sku"]: (r["on_hand"], r["reserved"], r["available"]) for r in rows}


async def test_a_bundle_sold_online_moves_its_parts_at_the_fulfilling_location(tmp_path: Path) -> None:
    async with ShopifyOrdersEmulator() as shopify:
        warehouse, store = shopify.add_location(), shopify.add_location()
        kit = shopify.add_variant("KIT", stocked_at=[warehouse, store])
        for sku in ("MUG", "TEA"):
            shopify.add_variant(sku, stocked_at=[warehouse, store])
        db = tmp_path / "hub.db"
        admin = add_credential(db, role="admin")
        reader = add_credential(db, role="reader")
        supplier = add_credential(db, WAREHOUSE, STORE)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        (tmp_path / "hub.toml").write_text(
            f'[hub]\ndb = "hub.db"\nhost = "127.0.0.1"\nport = {port}\n\n'
            f'[[channel]]\nname = "web"\nkind = "shopify"\nurl = "{shopify.url}"\nsecret_env = "SHOP_TOKEN"\n'
            f'webhook_secret_env = "SHOP_WEBHOOK_SECRET"\norder_location = "{WAREHOUSE}"\ncoalesce_s = 0.05\n'
            f'pool = {{ {WAREHOUSE} = "{warehouse}", {STORE} = "{store}" }}\n',
            encoding="utf-8",
        )
        env = {**os.environ, "SHOP_TOKEN": shopify.token, "SHOP_WEBHOOK_SECRET": shopify.webhook_secret}
        env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy")}
        hub = HubProcess(tmp_path / "hub.log", "--config", str(tmp_path / "hub.toml"), env=env)
        try:
            await asyncio.to_thread(hub.start)  # in a thread: the emulator answers the hub from this loop
            assert hub.url == url
            recipe = {"components": {"MUG": 2, "TEA": 1}}
            await asyncio.to_thread(_send, url, admin.token, "PUT", "/v1/bundles/KIT", recipe)
            deliveries = [
                {"id": f"in-{loc}-{sku}", "location": loc, "sku": sku, "kind": "receive", "qty": qty,
                 "occurred_at": "2026-01-01T00:00:00Z"}
                for loc in (WAREHOUSE, STORE) for sku, qty in (("MUG", 10), ("TEA", 4))
            ]  # fmt: skip
            answer = await asyncio.to_thread(_send, url, supplier.token, "POST", "/v1/events", {"events": deliveries})
            assert answer["applied"] == 4, answer
            assert (await asyncio.to_thread(_counts, url, reader.token, WAREHOUSE))["KIT"][2] == 4  # min(10//2, 4)

            async def kit_level(expected: int) -> bool:
                return shopify.available(kit.item_id, warehouse) == expected

            await wait_until(lambda: kit_level(4), "Shopify shows 4 kits at the warehouse")

            async def delivered(topic: str, order_id: int) -> None:
                delivery = shopify.order_delivery(topic, order_id)

                async def taken() -> bool:  # 503 until the hub's pusher has loaded the channel's mapping
                    status, body = await shopify.deliver(f"{url}/v1/channels/web/webhooks", delivery)
                    assert status in (200, 503), (status, body)
                    return status == 200

                await wait_until(taken, f"the hub takes the {topic} webhook")

            order = shopify.create_order([(kit, 3)], ship_from=warehouse)
            await delivered("orders/create", order["id"])
            at_wh = await asyncio.to_thread(_counts, url, reader.token, WAREHOUSE)
            assert at_wh["MUG"] == (10, 6, 4) and at_wh["TEA"] == (4, 3, 1)  # reserved, still on the shelf
            assert at_wh["KIT"][2] == 1  # what the parts left free makes one more kit
            await wait_until(lambda: kit_level(1), "Shopify shows the 1 kit the parts still make")

            shopify.fulfil(order["id"], warehouse)
            await delivered("orders/fulfilled", order["id"])
            await delivered("orders/fulfilled", order["id"])  # Shopify retries: nothing moves twice
            at_wh = await asyncio.to_thread(_counts, url, reader.token, WAREHOUSE)
            assert at_wh["MUG"] == (4, 0, 4) and at_wh["TEA"] == (1, 0, 1)
            at_store = await asyncio.to_thread(_counts, url, reader.token, STORE)
            assert at_store["MUG"] == (10, 0, 10) and at_store["TEA"] == (4, 0, 4)  # the store sold nothing

            ledger = get_json(f"{url}/v1/ledger?location={WAREHOUSE}&sku=MUG", reader.token)["events"]
            sale = next(e for e in ledger if e["kind"] == "sale")
            assert sale["qty"] == -6 and sale["attrs"]["bundle"] == "KIT" and sale["attrs"]["bundle_event"]
        finally:
            hub.close()
        log = hub.log
        assert "Traceback" not in log and shopify.token not in log
