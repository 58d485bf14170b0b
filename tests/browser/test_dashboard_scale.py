"""The dashboard at retail scale, in real headless Chromium against a hub on 127.0.0.1 seeded through its
store: pages read what they show, a page at a time, and say so when a list is longer than what they read.
Seeded sizes are just past the page's own limits, so each test stays small and bounded in time.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, Request, Route, expect

from hub import HubStore
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.harness.inprocess import hub_in_process

STOCK_ROWS_LOADED = 10_000  # dashboard.js: the counts the Stock page reads at once
EXCEPTIONS_READ = 10_000  # dashboard.js: the exceptions read with the status
SKUS_PER_STORE = 5_100  # two stores: 10,200 counts, just past one read


@dataclass
class Seeded:
    base: str
    store: HubStore
    reader: str


async def seed_counts(store: HubStore, location: str, skus: int, kind: Kind = Kind.COUNT, qty: int = 5) -> None:
    """One count (or ``kind`` of ``qty``) of each of ``skus`` SKUs at ``location``, by a new agent of that store."""
    agent_id, _ = await store.add_agent([location])
    now = wall_ms_now() - 60_000
    seq = itertools.count(1)
    events = [
        StockEvent(new_event_id(), agent_id, 1, n, location, f"SKU-{k:05d}", kind, qty, pack_hlc(now, n), now,
                   "pos:test")
        for k, n in zip(range(skus), seq, strict=False)
    ]  # fmt: skip
    await store.ingest(AgentIdentity(agent_id, frozenset({location})), 1, events)


@pytest.fixture
async def big(tmp_path: Path) -> AsyncIterator[Seeded]:
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        for location in ("S001", "S002"):
            await seed_counts(served.store, location, SKUS_PER_STORE)
        yield Seeded(served.url, served.store, reader)


async def sign_in(page: Page, hub: Seeded) -> None:
    await page.goto(f"{hub.base}/dashboard/sign-in")
    await page.fill("#token", hub.reader)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{hub.base}/dashboard/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


async def test_the_stock_page_reads_one_page_of_counts_and_says_there_are_more(
    big: Seeded, page: Page, console_errors: list[str]
) -> None:
    """With more counts than one read, the Stock page reads one page (not every count of every store, which
    froze the tab at a million) and says the list is partial and how to narrow it; a location reads all of its."""
    counts_reads: list[str] = []

    def seen(request: Request) -> None:
        if "/v1/counts" in request.url and "format=csv" not in request.url:
            counts_reads.append(request.url)

    await sign_in(page, big)
    await expect(page.locator("#view h1")).to_have_text("Stores")  # the first page drawn: nothing else reads
    page.on("request", seen)
    await page.evaluate("location.hash = '#/stock'")
    await expect(page.locator("#stock-body tr")).to_have_count(500)
    partial = page.locator("#stock-partial")
    await expect(partial).to_be_visible()
    await expect(partial).to_contain_text("more counts than the 10,000 read here")
    assert len(counts_reads) == 1, counts_reads
    assert f"limit={STOCK_ROWS_LOADED}" in counts_reads[0] and "cursor=" not in counts_reads[0]

    await page.select_option("#stock-location", "S002")
    await expect(page.locator("#stock-note")).to_have_text(f"showing 500 of {SKUS_PER_STORE:,}; narrow the filter")
    await expect(partial).to_have_count(0)  # one store's counts fit one read: nothing is left out
    await page.fill("#stock-filter", "SKU-05099")
    await expect(page.locator("#stock-body tr")).to_have_count(1)
    assert len(counts_reads) == 2, counts_reads
    assert console_errors == []


@pytest.fixture
async def many_exceptions(tmp_path: Path) -> AsyncIterator[Seeded]:
    """A store that sold one of each of 10,010 SKUs it never received: 10,010 negative counts."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        await seed_counts(served.store, "S001", EXCEPTIONS_READ + 10, Kind.SALE, -1)
        yield Seeded(served.url, served.store, reader)


async def test_exception_counts_past_one_read_are_shown_as_at_least_never_as_the_total(
    many_exceptions: Seeded, page: Page, console_errors: list[str]
) -> None:
    """10,010 stocks are below zero and the dashboard reads the newest 10,000 exceptions: the status strip says
    10,000+ (it said exactly 10,000 exceptions and 10,000 below zero, disagreeing with the hub's CSV)."""
    await sign_in(page, many_exceptions)
    await expect(page.locator("#stat-exceptions .stat-value")).to_have_text("10,000+")
    await expect(page.locator("#stat-negative .stat-value")).to_have_text("10,000+")
    await expect(page.locator("#stat-exceptions .stat-note")).to_have_text("the newest 10,000 read")
    assert console_errors == []


async def test_the_exceptions_page_draws_the_newest_500_and_says_how_many_more(
    many_exceptions: Seeded, page: Page, console_errors: list[str]
) -> None:
    """With 10,000 exceptions read, the Exceptions page draws the newest 500 rows (drawing all 10,000 held the
    tab for about 24 s, again at each live redraw) and says how many it leaves out and how to see them."""
    await sign_in(page, many_exceptions)
    await expect(page.locator("#view h1")).to_have_text("Stores")
    await page.evaluate("location.hash = '#/exceptions'")
    await expect(page.locator("#view h1")).to_have_text("Exceptions")
    await expect(page.locator("#view tbody tr")).to_have_count(500)
    await expect(page.locator("#exceptions-shown")).to_have_text(
        "Showing the newest 500 of 10,000+: choose a kind or a location to see others, or download the CSV for every one."
    )
    await expect(page.locator("#exceptions-partial")).to_contain_text("more exceptions than the newest 10,000 read here")
    await expect(page.locator(".chips .chip").first).to_have_text("All10,000+")
    assert console_errors == []


async def test_the_stores_page_lists_the_offline_stores_longest_offline_first(
    tmp_path: Path, page: Page, console_errors: list[str]
) -> None:
    """Among many stores, the few offline are one click away, the longest offline first with since when (its
    last sync's age and time); before, they were only found by reading every row of the list."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        for location in ("S001", "S002", "S003", "S005"):
            await seed_counts(served.store, location, 1)
        await served.store.add_agent(["S004"])  # never synced
        three_days_ago = wall_ms_now() - 3 * 86_400_000 - 60_000
        with sqlite3.connect(tmp_path / "hub.db") as db:  # two stores went quiet: S003 three days ago, S005 today
            db.execute("UPDATE agents SET last_sync_ms = ? WHERE locations LIKE '%S003%'", (three_days_ago,))
            db.execute("UPDATE agents SET last_sync_ms = ? WHERE locations LIKE '%S005%'", (wall_ms_now() - 7_200_000,))
        hub = Seeded(served.url, served.store, reader)
        await sign_in(page, hub)
        await expect(page.locator("#view h1")).to_have_text("Stores")
        await expect(page.locator("#stores-offline")).to_have_text("Offline or never synced3")
        await page.click("#stores-offline")
        rows = page.locator("#view table tbody tr[data-agent]")
        await expect(rows).to_have_count(3)
        await expect(rows.locator("td.key")).to_have_text(["S003", "S005", "S004"])
        await expect(rows.nth(0)).to_contain_text("3 days ago")
        await expect(rows.nth(0).locator(".sub.time")).to_contain_text("UTC")  # the browser's zone (UTC here), named
        await expect(rows.nth(2)).to_contain_text("Never synced")
        assert console_errors == []


async def test_status_reads_never_pile_up_on_a_slow_hub(
    many_exceptions: Seeded, page: Page, console_errors: list[str]
) -> None:
    """While the hub is still answering one status read (its exceptions list is slow), pages opened meanwhile
    start no read of their own: they wait for it and one read after it. Before, each started another, so a
    hub slower than the 15 s refresh got more and more of the same read from every tab."""
    await sign_in(page, many_exceptions)
    await expect(page.locator("#view h1")).to_have_text("Stores")
    held: list[Route] = []
    released = False

    async def hold(route: Route) -> None:
        held.append(route)  # answered when the test lets it go: a hub still working on it
        if released:
            await route.continue_()

    await page.route("**/v1/exceptions?*", hold)
    for view in ("exceptions", "quarantine", "exceptions", "quarantine", "exceptions"):
        await page.evaluate(f"location.hash = '#/{view}'")
    for _ in range(100):  # the first page's read reaches the hub
        if held:
            break
        await page.wait_for_timeout(100)
    await page.wait_for_timeout(1_000)  # a read the pages would start has started by now
    assert len(held) == 1, f"{len(held)} exceptions reads at once"
    released = True
    await held[0].continue_()
    await expect(page.locator("#view h1")).to_have_text("Exceptions")
    await expect(page.locator("#exceptions-shown")).to_be_visible()
    assert console_errors == []


VARIANCE_ROWS_SHOWN = 500  # dashboard.js: the rows the Shrinkage page draws


async def test_the_shrinkage_page_draws_the_rows_of_most_shrinkage_and_says_how_many_more(
    tmp_path: Path, page: Page, console_errors: list[str]
) -> None:
    """A stocktake counts every SKU of every store, and the report has a row per location and SKU counted: the page
    drew every one (50,000 rows held the tab for 61 s, measured). It draws the 500 of the most shrinkage, most
    first, and says how many the report holds."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        skus = VARIANCE_ROWS_SHOWN + 100
        await seed_counts(served.store, "S001", skus, Kind.RECEIVE, 5)
        await seed_counts(served.store, "S001", skus, Kind.COUNT, 4)  # each SKU: 1 missing
        agent_id, _ = await served.store.add_agent(["S002"])
        now = wall_ms_now() - 30_000
        worst = [("SKU-WORST", 40), ("SKU-SECOND", 25)]  # received 50, counted 10 and 25
        events = [
            StockEvent(new_event_id(), agent_id, 1, n, "S002", sku, kind, qty, pack_hlc(now + n, 0), now + n, "pos:test")
            for n, (sku, kind, qty) in enumerate(
                [(sku, k, q) for sku, missing in worst for k, q in ((Kind.RECEIVE, 50), (Kind.COUNT, 50 - missing))], 1
            )
        ]  # fmt: skip
        await served.store.ingest(AgentIdentity(agent_id, frozenset({"S002"})), 1, events)
        await sign_in(page, Seeded(served.url, served.store, reader))
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/v1/reports/variance" in r.url else None)
        await page.click("nav a[data-view=variance]")
        rows = page.locator("#view tbody tr[data-key]")
        await expect(rows).to_have_count(VARIANCE_ROWS_SHOWN)
        await expect(page.locator("#variance-shown")).to_have_text(
            f"Showing the 500 rows of the most shrinkage of {skus + len(worst)}, most first: choose a location to see "
            "others, or download the CSV of every row."
        )
        # one page of the report is read, not every row (602 rows here; 50,000 of a stocktake were 9.8 MB)
        assert [u for u in asked if "by=sku" in u and "limit=500" in u] == asked, asked
        link = page.locator("#variance-shown a[data-csv]")
        href = await link.get_attribute("href")
        assert href is not None and "by=sku" in href and "format=csv" in href and "limit" not in href, href
        async with page.expect_download() as download_info:
            await link.click()
        download = await download_info.value
        every = (Path(await download.path()).read_text(encoding="utf-8-sig")).splitlines()
        assert len(every) == 1 + skus + len(worst)  # the complete CSV: a header and every row
        await expect(rows.nth(0)).to_have_attribute("data-key", "S002|SKU-WORST")
        await expect(rows.nth(1)).to_have_attribute("data-key", "S002|SKU-SECOND")
        await expect(page.locator(".totals")).to_contain_text(f"{skus + 65:,}")  # the totals are of every row
        await page.select_option("#variance-location", "S002")  # one store's report is whole again
        await expect(rows).to_have_count(len(worst))
        await expect(page.locator("#variance-shown")).to_have_count(0)
        assert console_errors == []


STORES_SHOWN = 500  # dashboard.js: the store agents the Stores page draws at first
CHAIN_AGENTS = 3_000


async def test_a_chain_of_3000_stores_draws_500_with_a_filter_and_a_live_change_redraws_only_its_row(
    tmp_path: Path, page: Page, console_errors: list[str]
) -> None:
    """3,000 store agents: the Stores page draws the first 500 by location, says how many more there are and finds
    any store with its filter; a store's change on the feed draws that store's row again and no other. Before, the
    page drew all 3,000 rows, and again on each change (seconds of a frozen page)."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        ids = {}
        for i in range(CHAIN_AGENTS):
            ids[f"S{i:04d}"], _ = await served.store.add_agent([f"S{i:04d}"])
        with sqlite3.connect(tmp_path / "hub.db") as db:  # every store synced a minute ago but S0007, never synced
            db.execute("UPDATE agents SET last_sync_ms = ? WHERE role = 'agent' AND locations NOT LIKE '%S0007%'",
                       (wall_ms_now() - 60_000,))  # fmt: skip
        hub = Seeded(served.url, served.store, reader)
        await sign_in(page, hub)
        await expect(page.locator("#view h1")).to_have_text("Stores")
        rows = page.locator("#stores-body tr[data-agent]")
        await expect(rows).to_have_count(STORES_SHOWN)
        await expect(rows.nth(0).locator("td.key")).to_have_text("S0000")
        await expect(rows.nth(STORES_SHOWN - 1).locator("td.key")).to_have_text("S0499")
        await expect(page.locator("#stores-chips .chip").nth(0)).to_have_text("All3,000")
        await expect(page.locator("#stores-offline")).to_have_text("Offline or never synced1")
        await expect(page.locator("#stores-note")).to_have_text("showing 500 of 3,000")
        await expect(page.locator("#stores-more")).to_contain_text("2,500 more store agents not drawn")

        await page.fill("#stores-filter", "S2999")  # any store of the chain, by its location
        await expect(rows).to_have_count(1)
        await expect(rows.locator("td.key")).to_have_text("S2999")
        await expect(page.locator("#stores-more")).to_be_hidden()
        await page.fill("#stores-filter", "")
        await expect(rows).to_have_count(STORES_SHOWN)

        # a live change of one store: its row is drawn again, every other row stays the node it was
        await page.evaluate("for (const tr of document.querySelectorAll('#stores-body tr')) tr.dataset.kept = '1'")
        changed = page.locator(f'#stores-body tr[data-agent="{ids["S0007"]}"]')
        await expect(changed).to_contain_text("Never synced")
        now = wall_ms_now()
        event = StockEvent(new_event_id(), ids["S0007"], 1, 1, "S0007", "SKU-1", Kind.COUNT, 5, pack_hlc(now, 0), now,
                           "pos:test")  # fmt: skip
        await served.store.ingest(AgentIdentity(ids["S0007"], frozenset({"S0007"})), 1, [event])
        await expect(changed.locator('[data-field="epoch"]')).to_have_text("epoch 1")
        assert await changed.get_attribute("data-kept") is None
        kept = await page.evaluate("document.querySelectorAll('#stores-body tr[data-kept]').length")
        assert kept == STORES_SHOWN - 1
        await expect(rows).to_have_count(STORES_SHOWN)

        await page.click("#stores-more button")
        await expect(rows).to_have_count(2 * STORES_SHOWN)
        await expect(page.locator("#stores-note")).to_have_text("showing 1,000 of 3,000")
        assert console_errors == []
