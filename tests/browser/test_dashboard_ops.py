"""The dashboard as an operations team uses it, in real headless Chromium against a hub on 127.0.0.1:
CSV downloads parsed as files, a SKU's ledger paged with the API's cursors, product names from the catalog,
an unknown barcode mapped in two clicks, times labelled with the browser's time zone, a 63-bit epoch shown
exactly, and every page usable on a 390 × 844 phone (nothing wider than the screen; screenshots saved).
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, async_playwright, expect

from hub import HubStore
from hub.storage.base import CatalogItem
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from protocol.catalog import unknown_sku
from tests.harness.inprocess import hub_in_process

SKU = "TEE-BLK-M"
HUGE_EPOCH = (1 << 62) + 1  # a JavaScript number holds it as 4611686018427387904
LEDGER_EVENTS = 121  # three pages of 50 (the SKU page's page size): 50, 50, 21
UNKNOWN = ("04006381333931", "05901234123457", "08712345678906")  # three barcodes the catalog does not know
PHONE = {"width": 390, "height": 844}
SHELL_TIMEOUT_S = 20
CHROMIUM = Path("/usr/bin/chromium")  # as tests/browser/conftest.py: Debian's, never a downloaded build
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
Screenshot = Callable[..., Awaitable[Path]]  # the conftest fixture's type


@dataclass
class Ops:
    base: str
    store: HubStore
    client: TestClient[Any, Any]
    reader: str
    admin: str
    agent_id: str


async def _sync(client: TestClient[Any, Any], token: str, agent_id: str, epoch: int, events: list[StockEvent]) -> None:
    resp = await client.post(
        "/v1/sync",
        data=encode_sync_request(SyncRequest(agent_id, epoch, tuple(events))),
        headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
    )
    assert resp.status == 200, await resp.text()
    answer = decode_sync_response(await resp.read())
    assert not answer.rejected, answer.rejected


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Ops]:
    """A hub whose S001 agent is on a 63-bit epoch, with 121 movements of one SKU, a count that found
    shrinkage, scans of three unknown barcodes at S002 and a catalog naming the T-shirt."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, client = served.store, served.client
        _, reader = await store.add_agent([], role="reader")
        _, admin = await store.add_agent([], role="admin")
        s001, s001_token = await store.add_agent(["S001"])
        s002, s002_token = await store.add_agent(["S002"])
        now = wall_ms_now() - 60_000
        seq = itertools.count(1)

        def move(agent: str, location: str, sku: str, kind: Kind, qty: int, i: int, **extra: Any) -> StockEvent:
            return StockEvent(new_event_id(), agent, 1, next(seq), location, sku, kind, qty, pack_hlc(now + i, 0),
                              now + i, "scanner:till-1", extra.get("ref"), None, extra.get("attrs", {}))  # fmt: skip

        moves = [move(s001, "S001", SKU, Kind.RECEIVE, 200, 0)]
        moves += [move(s001, "S001", SKU, Kind.SALE, -1, i) for i in range(1, LEDGER_EVENTS - 1)]
        moves += [move(s001, "S001", SKU, Kind.COUNT, 75, LEDGER_EVENTS, ref="cycle-count-1")]  # expected 81
        await _sync(client, s001_token, s001, HUGE_EPOCH, moves)
        seq = itertools.count(1)
        scans = [move(s002, "S002", unknown_sku(code), Kind.RECEIVE, 2 + i, 200 + i,
                      attrs={"barcode": code, "unknown": True}) for i, code in enumerate(UNKNOWN)]  # fmt: skip
        await _sync(client, s002_token, s002, 1, scans)
        await store.put_catalog([CatalogItem("5012345678900", SKU, 1, "T-shirt, black, M"),
                                 CatalogItem("7612345678900", "MUG-WHITE", 1, "Mug, white")])  # fmt: skip
        yield Ops(served.url, store, client, reader, admin, s001)


async def sign_in(page: Page, ops: Ops) -> None:
    await page.goto(f"{ops.base}/dashboard/sign-in")
    await page.fill("#token", ops.reader)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{ops.base}/dashboard/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


async def download(page: Page, selector: str) -> tuple[str, list[dict[str, str]]]:
    """Click a download button; the file Chromium saved, parsed as CSV, and its suggested name."""
    async with page.expect_download() as info:
        await page.click(selector)
    saved = await info.value
    path = await saved.path()
    assert path is not None, await saved.failure()
    text = Path(path).read_bytes().decode("utf-8")
    return saved.suggested_filename, list(csv.DictReader(io.StringIO(text, newline="")))


async def test_csv_downloads_ledger_pages_and_product_names(
    page: Page, ops: Ops, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await sign_in(page, ops)
    epoch = page.locator(f'#view tr[data-agent="{ops.agent_id}"] [data-field="epoch"]')
    await expect(epoch).to_have_text(f"epoch {HUGE_EPOCH}")  # exactly: never through a JavaScript number
    name, rows = await download(page, '#view a[data-csv][href^="/v1/agents"]')
    assert name.startswith("agents-") and name.endswith(".csv")
    [s001] = [r for r in rows if r["agent_id"] == ops.agent_id]
    assert (s001["role"], s001["locations"], s001["epoch"], s001["hwm"]) == (
        "agent", "S001", str(HUGE_EPOCH), str(LEDGER_EVENTS)
    )  # fmt: skip
    assert sorted(r["role"] for r in rows) == ["admin", "agent", "agent", "reader"]  # every credential

    await page.click("nav a[data-view=stock]")
    tee = page.locator(f'#stock-body tr[data-key="S001|{SKU}"]')
    await expect(tee.locator('[data-field="name"]')).to_have_text("T-shirt, black, M")
    await page.fill("#stock-filter", "t-shirt")  # the filter finds a SKU by its name too
    await expect(page.locator("#stock-body tr")).to_have_count(1)
    name, rows = await download(page, "#stock-csv")
    assert name.startswith("counts-") and name.endswith(".csv")
    assert len(rows) == 1 + len(UNKNOWN)  # every count, not only the rows the filter shows
    [tee_row] = [r for r in rows if r["sku"] == SKU]
    assert (tee_row["location"], tee_row["on_hand"], tee_row["name"]) == ("S001", "75", "T-shirt, black, M")

    await page.goto(f"{ops.base}/dashboard/#/sku/{SKU}")
    await expect(page.locator("#sku-name")).to_have_text("T-shirt, black, M")
    ledger_rows = page.locator("#sku-ledger tbody tr")
    await expect(ledger_rows).to_have_count(50)
    await expect(page.locator("#ledger-page")).to_have_text("Page 1 · events 1–50")
    await expect(page.locator("#ledger-newer")).to_be_disabled()
    await expect(ledger_rows.first).to_contain_text("= 75")
    await expect(ledger_rows.first.locator("td").nth(6)).to_have_text("\u22126")  # the count's variance: 75 − 81
    last_of_page_1 = await ledger_rows.last.inner_text()
    await page.click("#ledger-older")
    await expect(page.locator("#ledger-page")).to_have_text("Page 2 · events 51–100")
    await expect(ledger_rows).to_have_count(50)
    first_of_page_2 = await ledger_rows.first.inner_text()
    assert first_of_page_2 != last_of_page_1
    await page.click("#ledger-older")
    await expect(page.locator("#ledger-page")).to_have_text("Page 3 · events 101–121")
    await expect(ledger_rows).to_have_count(21)
    await expect(page.locator("#ledger-older")).to_be_disabled()
    await expect(ledger_rows.last).to_contain_text("+200")  # the oldest: the receipt
    await expect(ledger_rows.last.locator("td").nth(5)).to_have_text("200")  # on hand after it, carried over pages
    await page.click("#ledger-newer")
    await expect(page.locator("#ledger-page")).to_have_text("Page 2 · events 51–100")
    assert await ledger_rows.first.inner_text() == first_of_page_2
    await screenshot("dashboard-ledger-page-2")
    name, rows = await download(page, '#view a[data-csv][href*="/v1/ledger"]')
    assert name.startswith(f"ledger-{SKU}-")
    assert len(rows) == LEDGER_EVENTS  # the whole ledger, every page
    assert rows[0]["kind"] == "count" and rows[0]["variance"] == "-6" and rows[0]["epoch"] == str(HUGE_EPOCH)

    await page.click("nav a[data-view=exceptions]")
    await expect(page.locator("#view tbody tr[data-barcode]")).to_have_count(len(UNKNOWN))
    name, rows = await download(page, '#view a[data-csv][href^="/v1/exceptions"]')
    assert sorted(r["sku"] for r in rows if r["kind"] == "unknown_barcode") == sorted(unknown_sku(c) for c in UNKNOWN)

    await page.click("nav a[data-view=variance]")
    shrink = page.locator(f'#view tr[data-key="S001|{SKU}"]')
    await expect(shrink.locator('[data-field="shrinkage"]')).to_have_text("\u22126")
    await expect(shrink).to_contain_text("T-shirt, black, M")
    await screenshot("dashboard-shrinkage")
    name, rows = await download(page, '#view a[data-csv][href*="by=sku"]')
    assert [(r["location"], r["sku"], r["shrinkage"], r["net_variance"]) for r in rows] == [("S001", SKU, "6", "-6")]
    assert console_errors == []


async def run_shown(command: str, admin_token: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env={**os.environ, "SHELFSYNC_ADMIN_TOKEN": admin_token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), SHELL_TIMEOUT_S)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


async def on_hand(ops: Ops, location: str, sku: str) -> int | None:
    resp = await ops.client.get(f"/v1/locations/{location}/counts", headers={"Authorization": f"Bearer {ops.reader}"})
    return next((r["on_hand"] for r in (await resp.json())["counts"] if r["sku"] == sku), None)


async def test_an_unknown_barcode_is_mapped_in_two_clicks(
    page: Page, ops: Ops, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await sign_in(page, ops)
    await page.click("nav a[data-view=exceptions]")
    rows = page.locator("#view tbody tr[data-barcode]")
    await expect(rows).to_have_count(3)

    await page.locator(f'#view tr[data-barcode="{UNKNOWN[0]}"] button.map-button').click()  # click 1
    dialog = page.locator("#map-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#map-confirm")).to_be_disabled()  # no SKU, no admin credential yet
    await page.fill("#map-sku", "MUG-WHITE")
    await expect(page.locator("#map-command")).to_contain_text(f'"barcode":"{UNKNOWN[0]}","sku":"MUG-WHITE"')
    await page.fill("#map-credential", "not-a-credential")
    await page.click("#map-confirm")
    await expect(page.locator("#map-error")).to_contain_text("the credential is unknown or has been revoked")
    console_errors.clear()  # Chromium logs the refused PUT, and it is meant
    await page.fill("#map-credential", ops.admin)
    await screenshot("dashboard-map-dialog")
    await page.click("#map-confirm")  # click 2
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#banner")).to_contain_text(
        f"Mapped barcode {UNKNOWN[0]} to MUG-WHITE: 1 scan(s) re-booked"
    )
    await expect(rows).to_have_count(2)
    assert await on_hand(ops, "S002", "MUG-WHITE") == 2
    assert await on_hand(ops, "S002", unknown_sku(UNKNOWN[0])) == 0

    # The credential stays in this tab: the next one is Map…, the SKU, Map.
    await page.locator(f'#view tr[data-barcode="{UNKNOWN[1]}"] button.map-button').click()
    await expect(page.locator("#map-credential-kept")).to_be_visible()
    await page.fill("#map-sku", SKU)
    await page.fill("#map-pack", "12")  # a case barcode
    await page.click("#map-confirm")
    await expect(rows).to_have_count(1)
    assert await on_hand(ops, "S002", SKU) == 3 * 12

    # Without the dashboard's help: the command it shows, run as shown by an admin, maps the last one.
    await page.locator(f'#view tr[data-barcode="{UNKNOWN[2]}"] button.map-button').click()
    await page.fill("#map-sku", "SOCK-WOOL-L")
    await page.locator("#map-dialog summary").click()
    output = await run_shown(await page.locator("#map-command").inner_text(), ops.admin)
    assert '"rebooked":1' in output.replace(" ", ""), output
    await page.click("#map-dialog button:text('Cancel')")
    await page.reload()
    await page.click("nav a[data-view=exceptions]")
    await expect(page.locator("#view h1")).to_have_text("Exceptions")
    await expect(rows).to_have_count(0)
    assert await on_hand(ops, "S002", "SOCK-WOOL-L") == 4
    assert console_errors == []


@pytest.fixture
async def page_in_india() -> AsyncIterator[Page]:
    """A Chromium whose time zone is Asia/Kolkata (UTC+5:30), not the other browser tests' UTC."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="en-US", timezone_id="Asia/Kolkata")
            context.set_default_timeout(10_000)
            yield await context.new_page()
        finally:
            await browser.close()


async def test_times_carry_the_browsers_time_zone_with_utc_on_hover(page_in_india: Page, ops: Ops) -> None:
    page = page_in_india
    await sign_in(page, ops)
    await expect(page.locator("#time-zone")).to_contain_text(re.compile(r"Asia/(Kolkata|Calcutta) \(GMT\+5:30\)"))
    await expect(page.locator("#stat-hub .stat-note")).to_contain_text("GMT+5:30")
    await page.goto(f"{ops.base}/dashboard/#/sku/{SKU}")
    occurred = page.locator("#sku-ledger tbody tr").first.locator("td").first
    await expect(occurred).to_contain_text("GMT+5:30")
    shown = await occurred.inner_text()
    utc = await occurred.get_attribute("title")
    assert utc is not None and utc.endswith(" UTC")
    hh, mm = (int(x) for x in utc.split(" ")[1].split(":")[:2])
    local = (hh * 60 + mm + 330) % 1440  # Kolkata is UTC+5:30
    assert shown.startswith(f"{local // 60:02d}:{local % 60:02d}") or f", {local // 60:02d}:{local % 60:02d}" in shown


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const clips = (el) => getComputedStyle(el).overflowX !== "visible";
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    let inside = false;  // inside a box that scrolls or clips horizontally: it does not widen the page
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) if (clips(p)) { inside = true; break; }
    if (inside) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > width + 0.5 || r.left < -0.5) out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ` +
      `${Math.round(r.left)}..${Math.round(r.right)}`);
  }
  return { width, scrollWidth: document.documentElement.scrollWidth, out };
}"""


async def assert_fits(page: Page, what: str) -> None:
    fit = await page.evaluate(OVERFLOW_JS)
    assert fit["width"] == PHONE["width"], fit
    assert fit["scrollWidth"] <= fit["width"], f"{what} scrolls sideways: {fit}"
    assert fit["out"] == [], f"{what}: elements wider than the screen: {fit['out']}"


async def test_every_page_fits_a_390_pixel_phone(
    page: Page, ops: Ops, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await page.set_viewport_size(PHONE)
    await page.goto(f"{ops.base}/dashboard/sign-in")
    await expect(page.locator("#token")).to_be_visible()
    await assert_fits(page, "the sign-in page")
    await sign_in(page, ops)
    tabs = page.locator("nav.tabs a")
    for i in range(await tabs.count()):  # every tab is on screen: the navigation wraps, nothing is cut off
        box = await tabs.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], await tabs.nth(
            i
        ).inner_text()
    for view, ready in (
        ("overview", "#view tbody tr[data-agent]"),
        ("stock", "#stock-body tr"),
        ("exceptions", "#view tbody tr[data-barcode]"),
        ("quarantine", "#view .empty"),
        ("variance", "#view tbody tr"),
        ("catalog", "#catalog-import"),
    ):
        await page.click(f"nav a[data-view={view}]")
        await expect(page.locator(ready).first).to_be_visible()
        await assert_fits(page, view)
        await screenshot(f"dashboard-phone-{view}")
    await page.goto(f"{ops.base}/dashboard/#/sku/{SKU}")
    await expect(page.locator("#sku-ledger tbody tr")).to_have_count(50)
    await assert_fits(page, "the SKU page")
    await screenshot("dashboard-phone-sku")
    await page.click("nav a[data-view=exceptions]")
    await page.locator("#view button.map-button").first.click()
    await expect(page.locator("#map-dialog")).to_be_visible()
    await assert_fits(page, "the map dialog")
    await screenshot("dashboard-phone-map")
    assert console_errors == []
