"""A channel down for hours of changes catches up with the latest level per item, in a bounded number of calls.

A real hub process on SQLite pushes Shopify and Square stand-ins on 127.0.0.1. Both channels stop answering
(every request a 503) while the stores send 5,000 movements of 40 SKUs (five syncs of 1,000, as an agent's
catch-up after an outage); then they answer again. Each channel ends at the hub's available for every SKU, and
the catch-up sends each item's level once — the latest — in as few calls as the batch size allows, not one
call per change nor per page of the change feed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

SKUS = tuple(f"SKU-{i:02d}" for i in range(40))
CHANGES = 5_000
SYNC = 1_000


def _post_events(url: str, token: str, events: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{url}/v1/events", data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert answer["applied"] == len(events), answer


def _available(url: str, token: str) -> dict[str, int]:
    rows = get_json(f"{url}/v1/counts?location=S1&limit=1000", token)["counts"]
    return {r["sku"]: int(r["available"]) for r in rows}


async def test_a_channel_back_from_a_long_outage_gets_each_items_latest_level_once(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with ShopifyEmulator() as shopify, SquareEmulator() as square:
        location = shopify.add_location()
        items = {sku: shopify.add_variant(sku, stocked_at=[location]).item_id for sku in SKUS}
        sq_location = square.add_location()
        variations = {sku: square.add_variation(sku) for sku in SKUS}
        db = tmp_path / "hub.db"
        agent = await asyncio.to_thread(add_credential, db, "S1")
        reader = await asyncio.to_thread(add_credential, db, role="reader")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        common = "retry_max_s = 1\ncoalesce_s = 0.05\nreconcile_s = 0\n"
        (tmp_path / "hub.toml").write_text(
            f'[[channel]]\nname = "web"\nkind = "shopify"\nurl = "{shopify.url}"\nsecret_env = "SHOP_TOKEN"\n'
            f'{common}pool = {{ S1 = "{location}" }}\n\n'
            f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
            f'{common}pool = {{ S1 = "{sq_location}" }}\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        env |= {"SHOP_TOKEN": shopify.token, "SQUARE_TOKEN": square.token}
        hub = HubProcess(tmp_path / "hub.log", "--config", str(tmp_path / "hub.toml"), db=str(db), port=port, env=env)
        try:
            await asyncio.to_thread(hub.start)  # in a thread: the stand-ins answer the hub from this loop

            async def first_push_done() -> bool:  # every mapped level goes out once after the mapping is loaded
                channels = (await asyncio.to_thread(get_json, f"{url}/v1/channels", reader.token))["channels"]
                return all(c["last_push_ms"] is not None for c in channels)

            await wait_until(first_push_done, "both channels took the levels of the mapping")
            for emulator in (shopify, square):
                emulator.faults.queue(*["http_503"] * 100_000)  # down
            events = []
            for n in range(CHANGES):
                sku = rng.choice(SKUS)
                kind, qty = ("receive", rng.randint(1, 5)) if rng.random() < 0.5 else ("sale", -rng.randint(1, 2))
                events.append({"id": f"mv-{n}", "location": "S1", "sku": sku, "kind": kind, "qty": qty,
                               "occurred_at": f"2026-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"})  # fmt: skip
            for start in range(0, CHANGES, SYNC):
                await asyncio.to_thread(_post_events, url, agent.token, events[start : start + SYNC])
            await asyncio.sleep(1.5)  # the pushers try, fail and back off (no assertion depends on it)
            shopify_before, square_before = len(shopify.stats.history), len(square.stats.batch_sizes)
            for emulator in (shopify, square):
                emulator.faults._queue.clear()  # back

            truth = await asyncio.to_thread(_available, url, reader.token)
            assert len(truth) == len(SKUS)

            async def converged() -> bool:
                return all(
                    shopify.available(items[sku], location) == truth[sku]
                    and square.quantity(variations[sku], sq_location) == truth[sku]
                    for sku in SKUS
                )

            await wait_until(converged, "both channels show the hub's available after the outage")

            async def settled() -> bool:
                channels = (await asyncio.to_thread(get_json, f"{url}/v1/channels", reader.token))["channels"]
                return all(c["queue"] == 0 for c in channels)

            await wait_until(settled, "both pushers saved their cursor at the hub's newest change")
        finally:
            hub.close()
    shopify_sets = shopify.stats.history[shopify_before:]
    square_batches = square.stats.batch_sizes[square_before:]
    # each item once, the latest level: one call of 40 levels each, not one per change or per page of 1,000
    assert [len(levels) for levels in shopify_sets] == [len(SKUS)]
    assert square_batches == [len(SKUS)]
    assert "Traceback" not in hub.log


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
