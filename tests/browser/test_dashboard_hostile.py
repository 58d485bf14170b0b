"""Hostile text on the dashboard, in real headless Chromium: SKUs, refs, reasons, attrs and catalog names
holding HTML and script (``<img onerror>``, ``</script>``, ``javascript:`` links) are shown as the text they are,
on every page that shows them, and nothing in them runs."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.inprocess import hub_in_process

RAN = "window.__hostile_ran"
DAY_MS = 86_400_000
SKU_HTML = '<img src=x onerror="window.__hostile_ran=1">'
SKU_SCRIPT = "</script><script>window.__hostile_ran=2</script>"
SKU_LINK = "javascript:window.__hostile_ran=3"
REF = '"><svg onload="window.__hostile_ran=4">'
REASON = "<b onmouseover=window.__hostile_ran=5>bold</b>"


@dataclass
class HostileShop:
    base: str
    reader: str


@pytest.fixture
async def hostile_shop(tmp_path: Path) -> AsyncIterator[HostileShop]:
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, client = served.store, served.client
        _, reader = await store.add_agent([], role="reader")
        agent_id, token = await store.add_agent(["S001"])
        seq = itertools.count(1)
        now = wall_ms_now()
        moves = [
            (SKU_HTML, Kind.RECEIVE, 5, None, None),
            (SKU_SCRIPT, Kind.SALE, -2, REF, REASON),  # negative stock: an exception row too
            (SKU_LINK, Kind.COUNT, 3, REF, REASON),
        ]
        events = tuple(
            StockEvent(
                new_event_id(), agent_id, 1, next(seq), "S001", sku, kind, qty, pack_hlc(now, i), now,
                "scanner:till", ref, reason, {"note": SKU_HTML},
            )
            for i, (sku, kind, qty, ref, reason) in enumerate(moves)
        )  # fmt: skip
        ahead = pack_hlc(now + 3 * DAY_MS, 0)  # held in quarantine: its time is days ahead of the hub's clock
        held = StockEvent(
            new_event_id(), agent_id, 1, next(seq), "S001", SKU_HTML, Kind.RECEIVE, 1, ahead, now, "scanner:till",
            REF, REASON, {"note": SKU_SCRIPT},
        )  # fmt: skip
        events = (*events, held)
        resp = await client.post(
            "/v1/sync",
            data=encode_sync_request(SyncRequest(agent_id, 1, events)),
            headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
        )
        assert resp.status == 200, await resp.text()
        yield HostileShop(served.url, reader)


async def _sign_in(page: Page, shop: HostileShop) -> None:
    await page.goto(f"{shop.base}/dashboard/")
    await page.fill("#token", shop.reader)
    await page.click("button[type=submit]")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


async def test_html_and_script_in_names_are_shown_as_text_and_never_run(
    page: Page, hostile_shop: HostileShop, console_errors: list[str]
) -> None:
    await _sign_in(page, hostile_shop)
    await page.click("nav a[data-view=stock]")
    for sku in (SKU_HTML, SKU_SCRIPT, SKU_LINK):
        await expect(page.locator("#view")).to_contain_text(sku)
    await page.click("nav a[data-view=exceptions]")
    await expect(page.locator("#view")).to_contain_text(SKU_SCRIPT)
    for sku in (SKU_HTML, SKU_SCRIPT, SKU_LINK):
        await page.fill("#find-sku-input", sku)
        await page.press("#find-sku-input", "Enter")
        await expect(page.locator("h1.sku-title")).to_have_text(sku)
        await expect(page.locator("#sku-ledger tbody tr")).to_have_count(1)
        if sku != SKU_HTML:
            await expect(page.locator("#sku-ledger")).to_contain_text(REF)
    await page.click("nav a[data-view=quarantine]")
    await expect(page.locator("#view")).to_contain_text(SKU_HTML)  # the held event, its SKU as text
    await page.click("nav a[data-view=variance]")
    await expect(page.locator("#view")).to_contain_text(SKU_LINK)  # the count's variance
    await page.locator("#view").hover()
    assert await page.evaluate(RAN) is None
    # nothing of the names became markup: no element the page did not make itself
    assert await page.locator("#view img, #view svg[onload], #view script, #view b").count() == 0
    assert await page.locator('a[href^="javascript:"]').count() == 0
    assert console_errors == []
