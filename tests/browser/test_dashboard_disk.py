"""A store PC's full disk on the dashboard, in Chromium: the Stores view's Disk column and the exceptions list.

Found: an agent whose disk was full (its disk reserve spent, scans refused) showed it on its own PC only; the
dashboard's Stores view and exceptions said nothing. Now a store agent's disk report (GET /v1/agents' ``disk``)
is a column of the Stores view, and a full disk is an exception, gone once the agent reports room again.
"""

from __future__ import annotations

from playwright.async_api import Page, expect

from protocol import DiskReport, wall_ms_now
from tests.browser.conftest import Screenshot
from tests.browser.test_dashboard import SKU, Shop, shop, sign_in  # noqa: F401  (shop: the fixture)

MIB = 1 << 20


async def test_a_store_pcs_full_disk_is_shown_and_listed_until_it_has_room(
    page: Page, shop: Shop, screenshot: Screenshot, console_errors: list[str]
) -> None:
    refused = wall_ms_now()
    await shop.s001.push(("sale", -1, SKU), disk=DiskReport(8 * MIB, 0, 4096, refused_ms=refused))
    await shop.s002.push(("sale", -1, SKU), disk=DiskReport(8 * MIB, 8 * MIB, 40 << 30))

    await sign_in(page, shop)
    full = page.locator(f'#view tr[data-agent="{shop.s001.agent_id}"] td[data-field="disk"]')
    await expect(full).to_have_attribute("data-state", "full")
    await expect(full).to_contain_text("Disk full")
    await expect(full).to_contain_text("scans refused since")
    await expect(full).to_contain_text("reserve 0 bytes of 8 MiB left")
    await expect(full).to_contain_text("4 KiB free")
    room = page.locator(f'#view tr[data-agent="{shop.s002.agent_id}"] td[data-field="disk"]')
    await expect(room).to_contain_text("OK")
    await expect(room).to_contain_text("40 GiB free")
    await screenshot("dashboard-stores-disk-full")

    await page.click("nav a[data-view=exceptions]")
    listed = page.locator("#view table tbody tr", has_text="Store PC disk full")
    await expect(listed).to_have_count(1)
    await expect(listed).to_contain_text(f"S001's agent {shop.s001.agent_id}: disk full, disk reserve spent")
    await expect(listed).to_contain_text("scans are being refused")
    await screenshot("dashboard-exceptions-disk-full")

    await shop.s001.push(("sale", -1, SKU), disk=DiskReport(8 * MIB, 8 * MIB, 900 * MIB))  # space freed
    await page.click("nav a[data-view=overview]")
    await expect(full).to_have_attribute("data-state", "ok")
    await page.click("nav a[data-view=exceptions]")
    await expect(page.locator("#view h1")).to_have_text("Exceptions")
    await expect(page.locator("#view table tbody")).to_contain_text("Negative stock")  # the list is shown again
    await expect(page.locator("#view table tbody tr", has_text="Store PC disk full")).to_have_count(0)
    assert console_errors == []
