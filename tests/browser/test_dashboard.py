"""The operations dashboard in real headless Chromium against a hub on 127.0.0.1.

Signs in with a reader credential, walks every page (saving a screenshot of
each to tests/artifacts/screenshots/), finds a SKU and watches its count
change live when a store agent pushes a sale through POST /v1/sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Route, expect

from hub import HubStore
from hub.app import STORE_KEY
from hub.feed import STREAMS_KEY
from hub.storage import AgentIdentity
from hub.webhooks import WebhookSpec
from protocol import (
    MSGPACK_CONTENT_TYPE,
    DiskReport,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.inprocess import hub_in_process

SKU = "TEE-BLK-M"
Screenshot = Callable[..., Awaitable[Path]]  # the conftest fixture's type


@dataclass
class StoreAgent:
    agent_id: str
    token: str
    location: str
    client: TestClient[Any, Any]
    seq: itertools.count[int]

    async def push(self, *moves: tuple[str, int, str], **extra: Any) -> None:
        """POST /v1/sync one batch of (kind, qty, sku) moves, encoded with the protocol codec."""
        now = wall_ms_now()
        events = []
        for i, (kind, qty, sku) in enumerate(moves):
            seq = next(self.seq)
            events.append(
                StockEvent(
                    new_event_id(),
                    self.agent_id,
                    1,
                    seq,
                    extra.get("location", self.location),
                    sku,
                    Kind(kind),
                    qty,
                    pack_hlc(now, i),
                    now,
                    "scanner:front-till",
                    extra.get("ref"),
                    extra.get("reason"),
                    extra.get("attrs", {}),
                )
            )
        # the agent's outbox and clock, if given
        report = {k: extra[k] for k in ("backlog", "oldest_pending_ms", "disk", "sent_ms") if k in extra}
        body = encode_sync_request(SyncRequest(self.agent_id, 1, tuple(events), **report))
        resp = await self.client.post(
            "/v1/sync",
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": MSGPACK_CONTENT_TYPE},
        )
        assert resp.status == 200, await resp.text()
        decode_sync_response(await resp.read())


@dataclass
class Shop:
    base: str
    reader: str
    s001: StoreAgent
    s002: StoreAgent
    app: web.Application


async def _agent(store: HubStore, client: TestClient[Any, Any], location: str) -> StoreAgent:
    agent_id, token = await store.add_agent([location])
    return StoreAgent(agent_id, token, location, client, itertools.count(1))


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    """A hub with two stores, a web-shop connector, a webhook receiver and some history."""
    receiver = web.Application()
    receiver.router.add_post("/stock", _accept)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook = WebhookSpec("web-shop", f"http://{host}:{port}/stock", "a-shared-secret-of-the-shop", retry_max_s=0.2)
    try:
        async with hub_in_process(tmp_path / "hub.db", webhooks=(hook,)) as served:
            store, client = served.store, served.client
            _, reader = await store.add_agent([], role="reader")
            s001, s002 = await _agent(store, client, "S001"), await _agent(store, client, "S002")
            await store.add_agent(["S003"])  # a store whose agent never synced
            await s001.push(("receive", 24, SKU), ("receive", 12, "MUG-ENAMEL-12"), ("receive", 40, "SOCK-WOOL-L"))
            await s001.push(("sale", -3, SKU), ("sale", -2, "CAP-NAVY"))
            await s001.push(
                ("count", 10, "MUG-ENAMEL-12"),
                ref="count-session-7",
                backlog=1234,
                oldest_pending_ms=wall_ms_now() - 300_000,
            )
            await s002.push(("receive", 8, SKU), ("receive", 15, "BOTTLE-750"), ("sale", -1, "BOTTLE-750"))
            await s002.push(("receive", 3, SKU), location="S001")  # refused: S002's agent may not write S001
            await s002.push(
                ("receive", 1, "unknown:04006381333931"), attrs={"barcode": "04006381333931", "unknown": True}
            )
            _, web_token = await store.add_agent(["WEB"])
            resp = await client.post(
                "/v1/events",
                json={
                    "events": [
                        {
                            "id": "stock-web-1",
                            "location": "WEB",
                            "sku": SKU,
                            "kind": "receive",
                            "qty": 6,
                            "occurred_at": wall_ms_now(),
                        },
                        {
                            "id": "order-5531:reserve",
                            "location": "WEB",
                            "sku": SKU,
                            "kind": "reserve",
                            "qty": 2,
                            "occurred_at": wall_ms_now(),
                            "ref": "order-5531",
                        },
                    ]
                },
                headers={"Authorization": f"Bearer {web_token}"},
            )
            assert resp.status == 200, await resp.text()
            yield Shop(served.url, reader, s001, s002, served.app)
    finally:
        await runner.cleanup()


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


async def sign_in(page: Page, shop: Shop) -> None:
    await page.goto(f"{shop.base}/dashboard/")
    await expect(page).to_have_url(f"{shop.base}/dashboard/sign-in")
    await page.fill("#token", shop.reader)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{shop.base}/dashboard/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")


def count_cell(page: Page, table: str, location: str, field: str) -> Any:
    return page.locator(f'{table} tr[data-key="{location}|{SKU}"] td[data-field="{field}"]')


async def test_sign_in_find_a_sku_and_watch_it_change_live(
    page: Page, shop: Shop, screenshot: Screenshot, console_errors: list[str]
) -> None:
    await page.goto(f"{shop.base}/dashboard/sign-in")
    await screenshot("dashboard-sign-in")
    await page.fill("#token", "not-a-real-credential")
    await page.click("button[type=submit]")
    await expect(page.locator(".form-error")).to_contain_text("unknown or has been revoked")
    await screenshot("dashboard-sign-in-error")
    console_errors.clear()  # the refused sign-in's 403 page load is logged by Chromium, and meant

    await sign_in(page, shop)
    agents = page.locator("#view tbody tr[data-agent]")
    await expect(agents).to_have_count(4)  # S001, S002, S003 (never synced) and the WEB connector
    await expect(page.locator("#view")).to_contain_text("Never synced")
    await expect(page.locator("#stat-stores .stat-value")).to_have_text("3 / 4")
    await expect(page.locator("#view")).to_contain_text("web-shop")
    backlog = page.locator(f'#view tr[data-agent="{shop.s001.agent_id}"] td[data-field="backlog"]')
    await expect(backlog).to_contain_text("1,234")  # what S001's agent reported waiting in its outbox
    await expect(backlog).to_contain_text("oldest")
    await expect(backlog).to_contain_text("as of")
    unreported = page.locator(f'#view tr[data-agent="{shop.s002.agent_id}"] td[data-field="backlog"]')
    await expect(unreported).to_have_text("–")
    await screenshot("dashboard-stores")

    await page.click("nav a[data-view=stock]")
    await expect(count_cell(page, "#stock-body", "S001", "on_hand")).to_have_text("21")
    negative = page.locator('#stock-body tr[data-key="S001|CAP-NAVY"] td[data-field="on_hand"]')
    await expect(negative).to_have_text("\u22122")
    await expect(negative).to_have_class("num neg")
    await screenshot("dashboard-stock")
    await page.fill("#stock-filter", "tee")
    await expect(page.locator("#stock-body tr")).to_have_count(3)  # S001, S002, WEB
    await expect(count_cell(page, "#stock-body", "WEB", "available")).to_have_text("4")

    await shop.s001.push(("sale", -1, SKU))  # the stock page follows the feed
    await expect(count_cell(page, "#stock-body", "S001", "on_hand")).to_have_text("20")

    await page.click("nav a[data-view=exceptions]")
    for kind in ("Negative stock", "Rejected event", "Unknown barcode"):
        await expect(page.locator("#view table")).to_contain_text(kind)
    await screenshot("dashboard-exceptions")

    await page.fill("#find-sku-input", SKU)
    await page.press("#find-sku-input", "Enter")
    await expect(page.locator("h1.sku-title")).to_have_text(SKU)
    on_hand = count_cell(page, "#sku-counts", "S001", "on_hand")
    await expect(on_hand).to_have_text("20")
    # 3 events at S001 (one live), S002's receive and its refused attempt at S001, WEB's receive and reserve
    await expect(page.locator("#sku-ledger tbody tr")).to_have_count(7)
    await screenshot("dashboard-sku")

    await shop.s001.push(("sale", -2, SKU))  # an agent pushes a sale: the count changes without a reload
    await expect(on_hand).to_have_text("18")
    await expect(count_cell(page, "#sku-counts", "S001", "available")).to_have_text("18")
    await expect(page.locator("#sku-ledger tbody tr")).to_have_count(8)
    newest = page.locator("#sku-ledger tbody tr").first
    await expect(newest).to_contain_text("\u22122")
    await expect(newest.locator("td").nth(5)).to_have_text("18")  # on hand after: the ledger explains the count
    await screenshot("dashboard-sku-live")
    assert console_errors == []


async def test_a_person_past_the_refused_sign_ins_budget_sees_the_sign_in_page_saying_how_long_to_wait(
    page: Page, tmp_path: Path, screenshot: Screenshot
) -> None:
    """Found: past its address's budget of refused sign-ins (hub.ratelimit.RefusedAttempts) the form post showed
    the API's JSON problem. The page is the sign-in page again, 429, saying how long to wait; then it signs in."""
    async with hub_in_process(tmp_path / "hub.db", refused_attempts_per_s=0.5, refused_attempts_burst=2) as served:
        _, reader = await served.store.add_agent([], role="reader")
        await page.goto(f"{served.url}/dashboard/sign-in")
        for _ in range(2):
            await page.fill("#token", "not-a-real-credential")
            await page.click("button[type=submit]")
            await expect(page.locator(".form-error")).to_contain_text("unknown or has been revoked")
        await page.fill("#token", "not-a-real-credential")
        async with page.expect_response(f"{served.url}/dashboard/sign-in") as answered:
            await page.click("button[type=submit]")
        response = await answered.value
        wait = response.headers["retry-after"]
        assert response.status == 429 and 1 <= int(wait) <= 2, (response.status, wait)
        error = page.locator(".form-error")
        await expect(error).to_have_text(f"Too many refused sign-ins from this address; try again in {wait} s.")
        await expect(page.locator("#token")).to_be_visible()
        await screenshot("dashboard-sign-in-limited")

        deadline = asyncio.get_running_loop().time() + 20.0
        while True:  # once the address holds an attempt again (a good sign-in spends none), the reader signs in
            await page.fill("#token", reader)
            async with page.expect_response(f"{served.url}/dashboard/sign-in") as answered:
                await page.click("button[type=submit]")
            if (await answered.value).status != 429:
                break
            assert asyncio.get_running_loop().time() < deadline, "the address's budget did not refill in 20 s"
            await asyncio.sleep(0.5)
        await expect(page).to_have_url(f"{served.url}/dashboard/")


async def test_a_dropped_stream_resumes_where_it_was_and_a_refused_one_reopens_reading_what_changed(
    page: Page, shop: Shop, console_errors: list[str]
) -> None:
    """A sale while the page has no stream is shown either way: when the browser resumes the stream (from the
    ready event's cursor, no change having come before), and when the hub refuses the resume with 410 (its database
    was restored: another history), so the page opens a new stream from the newest change and reads the rest."""
    await sign_in(page, shop)
    await page.click("nav a[data-view=stock]")
    on_hand = count_cell(page, "#stock-body", "S001", "on_hand")
    await expect(on_hand).to_have_text("21")
    streams = shop.app[STREAMS_KEY]

    def drop_streams() -> None:
        assert streams, "the page holds no stream open"
        for transport in list(streams):
            transport.abort()

    drop_streams()  # no change has come on this stream: only its ready event's id says where it was
    await shop.s001.push(("sale", -4, SKU))  # the browser waits 3 s (retry) before it resumes
    await expect(on_hand).to_have_text("17", timeout=30_000)

    store = shop.app[STORE_KEY]
    store.feed_history = "0" * 12  # as a restore from a backup renews it: the page's cursor is of the old one
    drop_streams()
    await shop.s001.push(("sale", -2, SKU))
    await expect(on_hand).to_have_text("15", timeout=30_000)
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await expect(page.locator("#stat-change .stat-note")).to_have_text(re.compile(r"^feed cursor \d+$"))
    await shop.s001.push(("sale", -1, SKU))  # the new stream follows the feed
    await expect(on_hand).to_have_text("14")
    console_errors[:] = [e for e in console_errors if "410" not in e and "CHUNKED" not in e]  # the cut and refusal
    assert console_errors == []


async def test_the_stores_page_says_when_the_stores_agree_the_hubs_own_clock_is_off(
    page: Page, shop: Shop, screenshot: Screenshot, console_errors: list[str]
) -> None:
    """GET /v1/status answered hub_clock (hub.clock_window) and the dashboard showed nothing of it: an operator
    looking at the stores saw each store three hours off, and not that the hub's own clock was the wrong one."""
    await sign_in(page, shop)
    await expect(page.locator("#view tbody tr[data-agent]")).to_have_count(4)
    await expect(page.locator("#hub-clock")).to_have_count(0)  # the stores' clocks agree with the hub's

    ahead_ms = wall_ms_now() + 3 * 3_600_000  # both stores' clocks three hours ahead: the hub's three hours behind
    await shop.s001.push(("sale", -1, SKU), sent_ms=ahead_ms)
    await shop.s002.push(("sale", -1, SKU), sent_ms=ahead_ms)
    alert = page.locator("#hub-clock")
    await expect(alert).to_contain_text(
        "The hub's clock looks wrong: 2 of the 3 agents that synced in the last 10 minutes put it 3.0 hours behind"
    )  # the page follows the change feed: shown without a reload
    await expect(alert).to_have_attribute("role", "alert")
    await screenshot("dashboard-hub-clock")
    assert console_errors == []


async def test_signing_out_returns_to_the_sign_in_page(page: Page, shop: Shop, console_errors: list[str]) -> None:
    await sign_in(page, shop)
    await page.click("text=Sign out")
    await expect(page).to_have_url(f"{shop.base}/dashboard/sign-in")
    await page.goto(f"{shop.base}/dashboard/")
    await expect(page).to_have_url(f"{shop.base}/dashboard/sign-in")
    assert console_errors == []


async def test_a_request_under_way_when_the_session_ends_is_dropped_not_answered_401(
    page: Page, shop: Shop, console_errors: list[str]
) -> None:
    """A request the page sent before signing out, answered after the hub ended the session (a slow answer, a
    loaded machine: seen once in a test run under load), came back 401 while the browser was still on the
    dashboard: an error in the console. The page now cancels its requests when it signs out. Here a read of the
    stock and the sign-out's answer are held back to open that window."""
    await sign_in(page, shop)
    reading, ended, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_read(route: Route) -> None:
        reading.set()
        await ended.wait()
        with contextlib.suppress(PlaywrightError):  # the page cancelled it meanwhile
            await route.continue_()  # reaches the hub after the session ended: 401

    async def held_sign_out(route: Route) -> None:
        answer = await route.fetch(max_redirects=0)  # the hub ends the session now
        ended.set()
        await release.wait()
        await route.fulfill(response=answer)

    await page.route(lambda url: "/v1/counts" in url, held_read)
    await page.route("**/dashboard/sign-out", held_sign_out)
    await page.evaluate("location.hash = '#/stock'")  # the stock page reads the counts
    await asyncio.wait_for(reading.wait(), 10)
    await page.click("text=Sign out", no_wait_after=True)
    await asyncio.wait_for(ended.wait(), 10)
    await asyncio.sleep(0.5)  # the read's answer, if the page still waited for it, arrives in here
    release.set()
    await expect(page).to_have_url(f"{shop.base}/dashboard/sign-in")
    assert console_errors == []


async def test_a_sku_stored_as_a_dot_segment_shows_its_own_counts(
    page: Page, tmp_path: Path, console_errors: list[str]
) -> None:
    """'.' and '..' are no SKUs now, but an older hub took them: their pages read them by ?sku=, which Chromium
    cannot dot-normalise (/v1/skus/%2E%2E/counts reached /v1/counts, every SKU's counts under the SKU '..')."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        store, client = served.store, served.client
        _, reader = await store.add_agent([], role="reader")
        s001 = await _agent(store, client, "S001")
        await s001.push(("receive", 24, SKU), ("receive", 12, "MUG-ENAMEL-12"))
        now = wall_ms_now()
        template = StockEvent(new_event_id(), s001.agent_id, 1, 1, "S001", "x", Kind.RECEIVE, 1, pack_hlc(now, 9),
                              now, "scanner:front-till")  # fmt: skip
        legacy = [  # as the older hub stored them: StockEvent refuses these SKUs now
            template._replace(event_id=new_event_id(), seq=next(s001.seq), sku=sku, qty=qty)
            for sku, qty in ((".", 5), ("..", 7))
        ]
        await store.ingest(AgentIdentity(s001.agent_id, frozenset({"S001"})), 1, legacy)
        shop = Shop(served.url, reader, s001, s001, served.app)
        await sign_in(page, shop)
        for sku, encoded, on_hand in ((".", "%2E", "5"), ("..", "%2E%2E", "7")):
            await page.goto(f"{shop.base}/dashboard/#/sku/{encoded}")
            await expect(page.locator("h1.sku-title")).to_have_text(sku)
            await expect(page.locator("#sku-counts tbody tr")).to_have_count(1)
            await expect(page.locator(f'#sku-counts tr[data-key="S001|{sku}"] td[data-field="on_hand"]')).to_have_text(
                on_hand
            )
            await expect(page.locator("#sku-ledger tbody tr")).to_have_count(1)
    assert console_errors == []


# A store PC's full disk (agent.reserve): an agent whose disk was full (its disk reserve spent, scans refused) showed
# it on its own PC only. Now its disk report (GET /v1/agents' ``disk``) is the Stores view's Disk column, and a full
# disk an exception, gone once the agent reports room again.
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
