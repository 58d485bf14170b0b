"""The dashboard's Channels tab in real headless Chromium, against a hub on 127.0.0.1 whose channels push to the
Shopify (GraphQL Admin 2026-01) and Square (2024-11-20) emulators.

Stock moves at the store and both channels confirm it: the page shows each connected, its last push with the
time zone, lag, queue and throttle, and the one SKU no channel item carries. Levels drift at Shopify and an admin
asks for a reconciliation: the divergences are listed a page at a time, the one Shopify refuses to correct stays
open and the tab carries a badge. Square's API goes down (HTTP 503): its card says disconnected with the error
sentence, without a reload, and recovers; a 429 shows its Retry-After. Every part fits a 390 × 844 phone. A hub
with no channel says how to add one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Locator, Page, ViewportSize, expect

from hub.channels import parse_channels
from hub.storage import HubStore, open_store
from hub.storage.base import CatalogItem
from tests.channels.emulators.shopify import ShopifyEmulator, Variant
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import wait_until
from tests.harness.inprocess import hub_in_process, serve_hub

SWEATER = "SWEATER-GRY-M"  # Shopify refuses to adjust it once it drifted: its divergence stays open
MUGS = [f"MUG-{i:02d}" for i in range(1, 22)]  # 21 more items that drift and are corrected: two pages of 20
LONELY = "GIFT-WRAP"  # stock at the store, no channel item carries it
NAMES = {SWEATER: "Sweater, wool, grey, M", LONELY: "Gift wrap, recycled paper"}
DIVERGENCE_PAGE = 20  # dashboard.js: divergences per page
RETRY_AFTER_S = 60
PHONE: ViewportSize = {"width": 390, "height": 844}
Screenshot = Callable[..., Awaitable[Path]]  # the conftest fixture's type


@dataclass
class Shop:
    base: str
    store: HubStore
    shopify: ShopifyEmulator
    square: SquareEmulator
    tokens: dict[str, str]  # role -> credential
    online: str  # the Shopify location the store S1 feeds
    variants: dict[str, Variant]

    async def call(self, method: str, path: str, role: str = "reader", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.request(
                method, self.base + path, headers=headers, timeout=aiohttp.ClientTimeout(total=20), **kw
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def move(self, *moves: tuple[str, int, str]) -> None:
        """Movements (kind, qty, sku) at S1, sent as one connector request."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events = [{"id": uuid.uuid4().hex, "location": "S1", "sku": sku, "kind": kind, "qty": qty, "occurred_at": now}
                  for kind, qty, sku in moves]  # fmt: skip
        status, answer = await self.call("POST", "/v1/events", "agent", json={"events": events})
        assert status == 200 and answer["applied"] == len(events), answer

    async def channels(self) -> dict[str, dict[str, Any]]:
        status, answer = await self.call("GET", "/v1/channels")
        assert status == 200, answer
        return {c["name"]: c for c in answer["channels"]}


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    async with ShopifyEmulator() as shopify, SquareEmulator() as square:
        online = shopify.add_location()
        variants = {sku: shopify.add_variant(sku, stocked_at=[online]) for sku in (SWEATER, *MUGS)}
        sq_loc = square.add_location()
        for sku in (SWEATER, *MUGS):
            square.add_variation(sku)
        specs = parse_channels(
            [
                {"name": "web", "kind": "shopify", "url": shopify.url, "secret_env": "SHOP", "pool": {"S1": online}},
                {"name": "pickup", "kind": "square", "url": square.url, "secret_env": "SQ", "pool": {"S1": sq_loc},
                 "retry_max_s": 0.3},
            ],
            environ={"SHOP": shopify.token, "SQ": square.token},
        )  # fmt: skip
        db = tmp_path / "hub.db"
        async with open_store(db) as store:
            tokens = {role: (await store.add_agent(["S1"] if role == "agent" else [], role=role))[1]
                      for role in ("agent", "reader", "admin")}  # fmt: skip
            await store.put_catalog([CatalogItem("5012345678900", SWEATER, 1, NAMES[SWEATER]),
                                     CatalogItem("5012345678917", LONELY, 1, NAMES[LONELY])])  # fmt: skip
            async with serve_hub(store, db=str(db), channels=tuple(specs)) as served:  # its pushers start with it
                s = Shop(served.url, store, shopify, square, tokens, online, variants)
                await s.move(("receive", 10, SWEATER), *(("receive", 5, m) for m in MUGS), ("receive", 4, LONELY))

                async def caught_up() -> bool:
                    return all(c["queue"] == 0 and c["lag"]["samples"] >= 1 and c["connected"]
                               for c in (await s.channels()).values())  # fmt: skip

                await wait_until(caught_up, "both channels confirmed the store's stock")
                assert shopify.available(variants[SWEATER].item_id, online) == 10
                yield s


async def sign_in(page: Page, base: str, token: str) -> None:
    await page.goto(f"{base}/dashboard/sign-in")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/dashboard/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


def card(page: Page, name: str) -> Locator:
    return page.locator(f'#view section.channel[data-channel="{name}"]')


def fact(c: Locator, field: str) -> Locator:
    return c.locator(f'.fact[data-field="{field}"] dd')


async def test_the_channels_tab_shows_pushes_throttle_unmapped_skus_and_paged_divergences(
    page: Page, shop: Shop, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await sign_in(page, shop.base, shop.tokens["reader"])
    await page.click("nav a[data-view=channels]")
    web_, pickup = card(page, "web"), card(page, "pickup")
    await expect(page.locator("#view section.channel")).to_have_count(2)
    for c, kind in ((web_, "Shopify"), (pickup, "Square")):
        await expect(c).to_have_attribute("data-state", "up")
        await expect(c.locator(".channel-head")).to_contain_text(kind)
        await expect(c.locator(".channel-head")).to_contain_text("Connected")
        await expect(fact(c, "last_push")).to_contain_text("UTC")  # the browser's zone, named
        await expect(fact(c, "last_push")).to_contain_text(re.compile(r"^(just now|\d+ s ago)"))
        await expect(fact(c, "lag")).to_contain_text("p50")
        await expect(fact(c, "lag")).to_contain_text("p99")
        await expect(fact(c, "lag")).to_contain_text("measured")
        await expect(fact(c, "queue")).to_contain_text("none waiting")
        await expect(fact(c, "divergences_open")).to_contain_text("0")
        await expect(fact(c, "mapped")).to_contain_text(str(1 + len(MUGS)))
        await expect(c.locator(".channel-error")).to_have_count(0)
    await expect(fact(web_, "throttle")).to_contain_text("/ 1,000 points available")
    await expect(fact(web_, "throttle")).to_contain_text("restores 100 points/s")
    await expect(fact(pickup, "throttle")).to_contain_text("none in force")
    await expect(fact(web_, "reconciliation")).to_contain_text("not yet")
    await expect(fact(web_, "reconciliation")).to_contain_text("every 15 min")
    await expect(page.locator("#channels-badge")).to_be_hidden()

    unmapped = web_.locator('details[data-part="unmapped"]')
    await expect(unmapped.locator("summary")).to_contain_text("1 unmapped SKU")
    await unmapped.locator("summary").click()
    await expect(unmapped.locator(f'li[data-sku="{LONELY}"]')).to_contain_text(NAMES[LONELY])  # the product name
    await expect(unmapped).to_contain_text("POST /v1/channels/web/mapping/refresh")
    await expect(unmapped.locator(".collapsible-body")).not_to_contain_text("null")

    # Levels drift at Shopify behind the hub's back; Shopify will not let the sweater be corrected.
    for m in MUGS:
        shop.shopify.drift(shop.variants[m].item_id, shop.online, 0)
    shop.shopify.drift(shop.variants[SWEATER].item_id, shop.online, 3)
    shop.shopify.non_mutable.add(shop.variants[SWEATER].item_id)
    status, answer = await shop.call("POST", "/v1/channels/web/reconcile", "admin")
    assert status == 200 and len(answer["divergences"]) == 1 + len(MUGS), answer

    async def settled() -> bool:
        web = (await shop.channels())["web"]
        return bool(web["divergences_open"] == 1 and web["refused"] == 1)

    await wait_until(settled, "the mugs corrected, the sweater refused and left open")
    # The page follows by itself: no reload.
    await expect(fact(web_, "divergences_open")).to_contain_text("1")
    await expect(page.locator("#channels-badge")).to_have_text("1")
    await expect(fact(web_, "refused")).to_contain_text("1")
    await expect(fact(web_, "refused").locator("a")).to_have_attribute("href", "#/exceptions/channel_refused")
    await expect(fact(web_, "reconciliation")).to_contain_text(
        f"{1 + len(MUGS)} levels checked, {1 + len(MUGS)} diverged"
    )
    await expect(unmapped).to_have_attribute("open", "")  # what was opened stays open across the redraws

    await fact(web_, "divergences_open").locator("a").click()
    divergences = web_.locator('details[data-part="divergences"]')
    rows = divergences.locator("tbody tr")
    await expect(rows).to_have_count(DIVERGENCE_PAGE)
    await expect(divergences.locator(".divergences-page")).to_have_text("Page 1 · divergences 1–20")
    await expect(divergences.locator(".divergences-newer")).to_be_disabled()
    mug = rows.first
    await expect(mug).to_have_attribute("data-open", "false")
    await expect(mug.locator('[data-field="corrected_at"]')).to_contain_text("UTC")
    await expect(mug.locator('[data-field="hub_level"]')).to_have_text("5")
    await expect(mug.locator('[data-field="channel_level"]')).to_contain_text("0")
    await divergences.locator(".divergences-older").click()
    await expect(divergences.locator(".divergences-page")).to_have_text(f"Page 2 · divergences 21–{1 + len(MUGS)}")
    await expect(rows).to_have_count(1 + len(MUGS) - DIVERGENCE_PAGE)
    await expect(divergences.locator(".divergences-older")).to_be_disabled()
    sweater = divergences.locator('tbody tr[data-open="true"]')
    await expect(sweater).to_have_count(1)  # the oldest: the sweater's, still open
    item = shop.variants[SWEATER].item_id
    await expect(sweater.locator("td").nth(0)).to_contain_text(SWEATER)
    await expect(sweater.locator("td").nth(0)).to_contain_text(NAMES[SWEATER])
    await expect(sweater.locator("td").nth(0)).to_contain_text(item)
    await expect(sweater.locator("td").nth(1)).to_contain_text(shop.online)
    await expect(sweater.locator("td").nth(1)).to_contain_text("fed by S1")
    await expect(sweater.locator('[data-field="hub_level"]')).to_have_text("10")
    await expect(sweater.locator('[data-field="last_pushed"]')).to_have_text("10")
    await expect(sweater.locator('[data-field="channel_level"]')).to_contain_text("3")
    await expect(sweater.locator('[data-field="channel_level"]')).to_contain_text("\u22127 vs the hub")
    await expect(sweater.locator('[data-field="found_at"]')).to_contain_text("UTC")
    await expect(sweater.locator('[data-field="corrected_at"]')).to_have_text("Open")
    await page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar at the top of the full-page shot
    await screenshot("dashboard-channels")
    await divergences.locator(".divergences-newer").click()
    await expect(divergences.locator(".divergences-page")).to_have_text("Page 1 · divergences 1–20")

    # The same, on a phone: nothing wider than the screen, with both lists open.
    await page.set_viewport_size(PHONE)
    await page.goto(f"{shop.base}/dashboard/#/channels/web")  # an address that opens web's divergences
    await expect(card(page, "web").locator('details[data-part="divergences"] tbody tr')).to_have_count(DIVERGENCE_PAGE)
    await expect(card(page, "web").locator('details[data-part="unmapped"] li')).to_have_count(1)
    await card(page, "pickup").locator('details[data-part="divergences"] summary').click()
    await expect(card(page, "pickup").locator(".empty")).to_contain_text("no divergence")
    await assert_fits(page, "the Channels page")
    box = await page.locator("nav a[data-view=channels]").bounding_box()
    assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= PHONE["width"]
    await screenshot("dashboard-phone-channels")
    assert console_errors == []


async def test_a_channel_whose_api_is_down_shows_disconnected_with_its_error_and_the_badge(
    page: Page, shop: Shop, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await sign_in(page, shop.base, shop.tokens["reader"])
    await expect(page.locator("#channels-badge")).to_be_hidden()  # read with the status, whatever the page
    await page.goto(f"{shop.base}/dashboard/#/channels/pickup")  # the address opens pickup's divergences
    pickup = card(page, "pickup")
    await expect(pickup).to_have_attribute("data-state", "up")
    await expect(pickup.locator('details[data-part="divergences"]')).to_have_attribute("open", "")
    await expect(pickup.locator('details[data-part="divergences"] .empty')).to_have_text(
        "Reconciliation has found no divergence at this channel."
    )
    await expect(card(page, "web").locator('details[data-part="divergences"]')).not_to_have_attribute("open", "")

    shop.square.faults.queue(*["http_503"] * 10_000)  # Square's API is down
    await shop.move(("sale", -1, MUGS[0]))
    await expect(pickup).to_have_attribute("data-state", "down")
    await expect(pickup.locator(".channel-head")).to_contain_text("Disconnected")
    error = pickup.locator('[data-field="last_error"]')
    await expect(error).to_contain_text("Square failed setting levels for channel pickup (HTTP 503")
    await expect(error).to_contain_text("failed attempts in a row")
    await expect(fact(pickup, "queue")).to_contain_text("1 change waiting")
    await expect(page.locator("#channels-badge")).to_have_text("1")
    await expect(card(page, "web")).to_have_attribute("data-state", "up")  # the other channel is untouched
    await expect(card(page, "web").locator(".channel-error")).to_have_count(0)
    await page.evaluate("window.scrollTo(0, 0)")
    await screenshot("dashboard-channels-down")
    await page.set_viewport_size(PHONE)
    await assert_fits(page, "a disconnected channel")
    await screenshot("dashboard-phone-channels-down")

    await page.click("nav a[data-view=stock]")  # the badge is on the tab from any page
    await expect(page.locator("#channels-badge")).to_have_text("1")
    await page.click("nav a[data-view=channels]")
    while shop.square.faults.pending:  # Square answers again
        shop.square.faults.next()
    await expect(pickup).to_have_attribute("data-state", "up")
    await expect(pickup.locator(".channel-error")).to_have_count(0)
    await expect(fact(pickup, "queue")).to_contain_text("none waiting")
    await expect(page.locator("#channels-badge")).to_be_hidden()

    shop.square.faults.retry_after_s = RETRY_AFTER_S  # Square rate-limits the next call
    shop.square.faults.queue("429")
    await shop.move(("sale", -1, MUGS[1]))
    await expect(fact(pickup, "throttle")).to_contain_text(f"Retry-After {RETRY_AFTER_S} s in force")
    await expect(fact(pickup, "throttle")).to_contain_text("until")
    await expect(fact(pickup, "throttle")).to_contain_text("UTC")
    assert console_errors == []


async def test_a_hub_without_channels_says_how_to_add_one(
    page: Page, tmp_path: Path, screenshot: Screenshot, console_errors: list[str]
) -> None:
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        base = served.url
        await sign_in(page, base, reader)
        await page.goto(f"{base}/dashboard/#/channels")
        await expect(page.locator("#channels-empty")).to_have_text(
            "No channel is configured: add a [[channel]] table to the hub's config — see docs/channels.md"
        )
        await expect(page.locator("#channels-badge")).to_be_hidden()
        await page.set_viewport_size(PHONE)
        await assert_fits(page, "the empty Channels page")
        await screenshot("dashboard-phone-channels-empty")
    assert console_errors == []


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
}"""  # as tests/browser/test_dashboard_ops.py checks every other page


async def assert_fits(page: Page, what: str) -> None:
    fit = await page.evaluate(OVERFLOW_JS)
    assert fit["width"] == PHONE["width"], fit
    assert fit["scrollWidth"] <= fit["width"], f"{what} scrolls sideways: {fit}"
    assert fit["out"] == [], f"{what}: elements wider than the screen: {fit['out']}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
