"""Long names on the dashboard, in real headless Chromium: a catalog name of 256 characters without a space
and a SKU of 64 wrap inside the page on a desktop and on a 390-pixel phone, instead of widening the whole page
(the header, status strip and every table shrank to a third of a screen scrolled sideways)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from hub.storage.base import AgentIdentity, CatalogItem
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.browser.test_dashboard_scale import Seeded, sign_in
from tests.harness.inprocess import hub_in_process

LONG_SKU = "X" * 64  # protocol.values.SKU's limit
LONG_NAME = "W" * 256  # a catalog description's limit, as a feed without spaces sends it


@pytest.mark.parametrize("width", [1440, 390])
async def test_a_long_sku_and_name_wrap_inside_the_page(tmp_path: Path, page: Page, width: int) -> None:
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        agent_id, _ = await served.store.add_agent(["S001"])
        now = wall_ms_now() - 1_000
        sale = StockEvent(new_event_id(), agent_id, 1, 1, "S001", LONG_SKU, Kind.SALE, -3, pack_hlc(now, 0), now, "pos:t")
        await served.store.ingest(AgentIdentity(agent_id, frozenset({"S001"})), 1, [sale])
        await served.store.put_catalog([CatalogItem("5012345678900", LONG_SKU, 1, LONG_NAME)])
        await page.set_viewport_size({"width": width, "height": 844})
        await sign_in(page, Seeded(served.url, served.store, reader))
        for view, shown in ((f"sku/{LONG_SKU}", "#sku-name"), ("stock", "#stock-body"), ("exceptions", "#view tbody")):
            await page.evaluate(f"location.hash = '#/{view}'")
            await expect(page.locator(shown)).to_contain_text(LONG_NAME)
            widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert widths[0] <= widths[1], f"#/{view[:12]}… is {widths[0]} px wide on a {widths[1]} px screen"
