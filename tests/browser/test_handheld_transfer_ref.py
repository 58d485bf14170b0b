"""The handheld page's way through the transfer procedures of docs/faults.md, in real headless Chromium against a
real agent local API whose outbox syncs to a real hub in this process: the wrong store books a receipt out with a
write-off carrying the transfer's reference, and a shipper receives its own shipment back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Page, expect

from agent.catalog import Catalog, make_item
from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory, hash_pin
from agent.outbox import Outbox
from agent.sessions import SessionManager, SessionSpec, SessionStore, SessionType
from hub import HubStore
from protocol import Kind
from tests.agent.sessions.sessions_hub import running_hub, sync
from tests.browser.conftest import Screenshot
from tests.browser.test_handheld import APPLE, PHONE, Agent, script_errors, wedge

MISTAKE = "received by mistake, sent on"  # the reason docs/faults.md names for booking a wrong-store receipt out


@asynccontextmanager
async def store_agent(data_dir: Path, agent_id: str, location: str) -> AsyncIterator[Agent]:
    """An agent of the hub (its outbox under the hub's agent id) with its sessions and local API."""
    catalog = Catalog([make_item(APPLE, "SKU-APPLE")])
    data_dir.mkdir()
    async with (
        Outbox.open(data_dir / "outbox.sqlite3", agent_id=agent_id, location=location) as outbox,
        SessionStore.open(data_dir / "sessions.sqlite3") as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog)
        context = LocalApiContext(sessions=sessions, outbox=outbox, staff=StaffDirectory({"ana": hash_pin("4711")}))
        async with LocalApiServer(context, "127.0.0.1", 0) as server:
            yield Agent(server.url, outbox, sessions)


async def booked(agent: Agent, spec: SessionSpec, qty: int) -> None:
    """A session of ``qty`` apples opened, scanned and closed on the agent (another handheld's work)."""
    session = await agent.sessions.open(spec, by="bo")
    await agent.sessions.scan(session.id, APPLE, by="bo", qty=qty)
    await agent.sessions.close(session.id, by="bo")


async def sign_in(page: Page, agent: Agent) -> None:
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.goto(agent.url + "/")
    await page.fill("#signin-staff", "ana")
    await page.fill("#signin-pin", "4711")
    await page.press("#signin-pin", "Enter")
    await expect(page.locator("#screen-home")).to_be_visible()


async def scan_and_close(page: Page, qty: int) -> None:
    await page.fill("#scan-qty", str(qty))
    await page.focus("#scan-code")
    await wedge(page, APPLE)
    await expect(page.locator("#scan-msg")).to_have_text(f"Added {qty} × SKU-APPLE.")
    await page.click("#close")
    await page.click("#confirm-yes")
    await expect(page.locator("#screen-report")).to_be_visible()


async def transfer_exceptions(hub: HubStore) -> list[tuple[str, str]]:
    return [(e.kind, e.location) for e in await hub.exceptions() if e.kind.startswith("transfer")]


async def at(hub: HubStore, location: str) -> tuple[int, int]:
    rows = await hub.counts(location=location, sku="SKU-APPLE")
    return (rows[0].on_hand, rows[0].in_transit) if rows else (0, 0)


async def test_the_wrong_store_books_a_receipt_out_from_the_handheld_and_the_hub_lists_nothing(
    page: Page, tmp_path: Path, console_errors: list[str], screenshot: Screenshot
) -> None:
    """Found: the procedure for a shipment received at the wrong store (book it out with a write-off carrying the
    transfer's reference, reason "received by mistake, sent on") could not be followed on the handheld: its
    write-off form's reference said only "optional" and its reasons had no such one. The form now says what the
    reference is for, offers the reason and wants the reference with it; the adjust carries the reference and
    the hub's transfer_unmatched at the wrong store is gone."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        await hub.add_agent(["S002"])
        c_id, c_token = await hub.add_agent(["S003"])
        async with (
            store_agent(tmp_path / "a", a_id, "S001") as shipper,
            store_agent(tmp_path / "c", c_id, "S003") as wrong,
        ):
            await booked(shipper, SessionSpec(SessionType.TRANSFER_OUT, ref="TR-4", to_location="S002"), 5)
            await sync(shipper.outbox, url, a_token)
            await booked(wrong, SessionSpec(SessionType.TRANSFER_IN, ref="TR-4", from_location="S001"), 5)
            await sync(wrong.outbox, url, c_token)
            assert await transfer_exceptions(hub) == [("transfer_unmatched", "S003")]
            already = len(await wrong.outbox.pending(10))

            await sign_in(page, wrong)
            await page.click("text=Damage / write-off")
            # The reason first, focused: most write-offs leave the reference empty.
            await expect(page.locator("#open-form select[name=reason]")).to_be_focused()
            fields = page.locator("#open-form label[data-for]:visible")
            assert await fields.evaluate_all("ls => ls.map((l) => l.dataset.for)") == ["reason", "ref"]
            await expect(page.locator("#ref-hint")).to_have_text(
                "transfer reference, only when booking out goods received at the wrong store"
            )
            await page.select_option("#open-form select[name=reason]", MISTAKE)
            await page.click("#open-form button[type=submit]")  # no reference yet: the page says it is needed
            await expect(page.locator("#open-error")).to_have_text(
                "Type the transfer's reference (as on its papers) to book out goods received at the wrong store."
            )
            assert await wrong.sessions.list() == []
            await page.fill("#open-form input[name=ref]", "TR-4")
            await screenshot("handheld-book-out-open")
            await page.click("#open-form button[type=submit]")
            await expect(page.locator("#session-title")).to_have_text("Damage / write-off · TR-4")
            await expect(page.locator("#session-sub")).to_contain_text(f"reason: {MISTAKE}")
            await scan_and_close(page, 5)

            events = (await wrong.outbox.pending(10))[already:]
            assert [(e.sku, e.kind, e.qty, e.ref, e.reason, e.attrs["by"]) for e in events] == [
                ("SKU-APPLE", Kind.ADJUST, -5, "TR-4", MISTAKE, "ana")
            ]
            await sync(wrong.outbox, url, c_token)
            assert await transfer_exceptions(hub) == []
            assert await at(hub, "S003") == (0, 0)
            assert await at(hub, "S002") == (0, 5)  # still on its way to the store it was shipped to
        assert script_errors(console_errors) == []


async def test_a_shipment_received_back_at_the_shipper_from_the_handheld(
    page: Page, tmp_path: Path, console_errors: list[str], screenshot: Screenshot
) -> None:
    """A shipment cancelled before it left, received back on the shipper's handheld in a transfer-in session under
    its reference (the form says so), leaves nothing in transit at the destination and nothing listed."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        await hub.add_agent(["S002"])
        async with store_agent(tmp_path / "a", a_id, "S001") as shipper:
            await booked(shipper, SessionSpec(SessionType.TRANSFER_OUT, ref="TR-5", to_location="S002"), 6)
            await sync(shipper.outbox, url, a_token)
            assert await at(hub, "S002") == (0, 6)
            already = len(await shipper.outbox.pending(10))

            await sign_in(page, shipper)
            await screenshot("handheld-receipt-back-home")
            await expect(page.locator("#new-tiles [data-type=transfer_in]")).to_contain_text("or your own back")
            await page.click("#new-tiles [data-type=transfer_in]")
            await expect(page.locator("#ref-hint")).to_have_text(
                "transfer reference (required); your own shipment's to receive it back"
            )
            await expect(page.locator("label[data-for=from_location] .hint")).to_have_text(
                "if known; empty when receiving back your own shipment"
            )
            await page.fill("#open-form input[name=ref]", "TR-5")
            await page.click("#open-form button[type=submit]")
            await expect(page.locator("#session-title")).to_have_text("Transfer in · TR-5")
            await scan_and_close(page, 6)

            events = (await shipper.outbox.pending(10))[already:]
            assert [(e.kind, e.qty, e.ref) for e in events] == [(Kind.TRANSFER_IN, 6, "TR-5")]
            await sync(shipper.outbox, url, a_token)
            assert (await at(hub, "S001"), await at(hub, "S002")) == ((0, 0), (0, 0))
            assert await transfer_exceptions(hub) == []
        assert script_errors(console_errors) == []
