"""The Exceptions page narrowed to one store, one kind and the last hour, in real headless Chromium against a hub on
127.0.0.1: what an operations person asks at retail scale ("what went wrong at S042 in the last hour?") while the
chain's list is longer than the page reads. The filters live in the address, so a link shows the same view.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, expect

from hub import HubStore
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.browser.test_dashboard_scale import EXCEPTIONS_READ, Seeded, seed_counts, sign_in
from tests.harness.inprocess import hub_in_process

HOUR_MS = 3_600_000


async def seed_store(store: HubStore, location: str) -> None:
    """At ``location``: three SKUs sold below zero and two barcodes the catalog does not know, scanned in."""
    agent_id, _ = await store.add_agent([location])
    now = wall_ms_now() - 60_000
    moves = [(f"SKU-{i}", Kind.SALE, -1) for i in range(3)] + [
        (f"unknown:400000000{i:04d}", Kind.RECEIVE, 2) for i in range(2)
    ]
    events = [
        StockEvent(new_event_id(), agent_id, 1, n, location, sku, kind, qty, pack_hlc(now, n), now, "pos:test")
        for n, (sku, kind, qty) in enumerate(moves, start=1)
    ]
    result = await store.ingest(AgentIdentity(agent_id, frozenset({location})), 1, events)
    assert not result.rejected


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Seeded]:
    """S042's five exceptions, one of them three hours old; then S001's 10,010 newer ones, more than the page
    reads with the status: without a filter the dashboard never shows S042's."""
    db = tmp_path / "hub.db"
    async with hub_in_process(db) as served:
        _, reader = await served.store.add_agent([], role="reader")
        await seed_store(served.store, "S042")
        with sqlite3.connect(db) as conn:  # one of them arose three hours ago
            conn.execute(
                "UPDATE stock SET updated_at_ms = updated_at_ms - ? WHERE location = 'S042' AND sku = 'SKU-0'",
                (3 * HOUR_MS,),
            )
        conn.close()
        await seed_counts(served.store, "S001", EXCEPTIONS_READ + 10, Kind.SALE, -1)
        yield Seeded(served.url, served.store, reader)


async def rows_at(page: Page) -> list[str]:
    return await page.locator("#view tbody tr td.key").all_inner_texts()


async def test_picking_a_store_shows_only_its_exceptions_and_the_address_keeps_the_filter(
    chain: Seeded, page: Page, browser_context: BrowserContext, console_errors: list[str]
) -> None:
    await sign_in(page, chain)
    await page.evaluate("location.hash = '#/exceptions'")
    await expect(page.locator("#view h1")).to_have_text("Exceptions")
    await expect(page.locator("#view tbody tr")).to_have_count(500)
    assert set(await rows_at(page)) == {"S001"}  # the chain's newest: S042's are not among them

    await page.fill("#exceptions-location", "S042")
    await page.press("#exceptions-location", "Enter")
    await expect(page).to_have_url(re.compile(r"#/exceptions\?location=S042$"))
    await expect(page.locator("#view tbody tr")).to_have_count(5)
    assert set(await rows_at(page)) == {"S042"}
    await expect(page.locator("#exceptions-count")).to_have_text("5 exceptions at S042")
    await expect(page.locator(".chips .chip")).to_have_text(["All5", "Negative stock3", "Unknown barcode2"])
    await expect(page.locator("#exceptions-partial")).to_have_count(0)  # one store's list is read whole
    csv = page.locator('#view a[data-csv][href^="/v1/exceptions"]')
    await expect(csv).to_have_attribute("href", "/v1/exceptions?location=S042&format=csv")

    await page.select_option("#exceptions-since", "hour")
    await expect(page).to_have_url(re.compile(r"#/exceptions\?location=S042&since=hour$"))
    await expect(page.locator("#view tbody tr")).to_have_count(4)  # not the one three hours old
    await expect(page.locator("#exceptions-count")).to_have_text("4 exceptions at S042 in the last hour")

    await page.select_option("#exceptions-kind", "unknown_barcode")
    shared = re.compile(r"#/exceptions/unknown_barcode\?location=S042&since=hour$")
    await expect(page).to_have_url(shared)
    await expect(page.locator("#view tbody tr")).to_have_count(2)
    await expect(page.locator("#exceptions-count")).to_have_text(
        "2 exceptions of kind Unknown barcode at S042 in the last hour"
    )

    link = page.url  # a link sent to a colleague shows the same view
    other = await browser_context.new_page()
    await other.goto(link)
    await expect(other.locator("#view tbody tr")).to_have_count(2)
    assert set(await rows_at(other)) == {"S042"}
    await expect(other.locator("#exceptions-location")).to_have_value("S042")
    await expect(other.locator("#exceptions-kind")).to_have_value("unknown_barcode")
    await expect(other.locator("#exceptions-since")).to_have_value("hour")
    await other.close()

    await page.fill("#exceptions-location", "S 042")  # not a location code: the hub's sentence, no rows
    await page.press("#exceptions-location", "Enter")
    await expect(page.locator("#exceptions-error")).to_contain_text("location 'S 042' is not a location code")
    await expect(page.locator("#view tbody tr")).to_have_count(0)
    await expect(page.locator("#exceptions-location")).to_have_value("S 042")
    assert [e for e in console_errors if "status of 400" not in e] == []
