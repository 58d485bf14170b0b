"""Dismissing a refused Square order from the Exceptions page, in real headless Chromium against a hub on 127.0.0.1.

The page listed a ``channel_order_refused`` entry (*Channel sale not booked*) with no way to take it off once staff
booked the sale by hand: an admin had to find the route and call it. Now its row has Dismiss…: a confirmation that
says what it does, sent with an admin credential (the dashboard's session cookie only reads), and one sentence
saying what was done; a wrong or reader credential is refused with the hub's sentence and changes nothing.

Real parts: a hub app serving over 127.0.0.1 on a SQLite file, its Square channel's pusher loading the mapping from
the Square emulator, which signs and posts the order webhook as Square does; Debian's Chromium.
"""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from protocol import wall_ms_now
from tests.browser.conftest import Screenshot
from tests.browser.test_dashboard_channels import sign_in
from tests.channels.helpers import square_pos_hub


async def test_a_refused_square_order_is_dismissed_from_its_row_after_a_confirmation(
    page: Page, tmp_path: Path, console_errors: list[str], screenshot: Screenshot
) -> None:
    async with square_pos_hub(str(tmp_path / "hub.db")) as pos_hub:
        square, s1, a, url, hook, served, state = pos_hub

        async def not_dismissed() -> bool:
            stored = await state.refused_order("pos", order["id"])
            return stored is not None and stored.dismissed_at_ms is None

        _, reader = await served.store.add_agent([], role="reader")
        admin_id, admin = await served.store.add_agent([], role="admin")
        unmapped = square.add_variation("SKU-NEW")
        order = square.sell_at_register(s1, [(a, 1), (unmapped, 1)])
        status, answer = await square.deliver(hook, square.notification("order.updated", order["id"]))
        assert status == 422, answer

        await sign_in(page, url, reader)
        await page.goto(f"{url}/dashboard/#/exceptions/channel_order_refused")
        row = page.locator(f'#view tr[data-order="{order["id"]}"]')
        await expect(row).to_contain_text("Channel sale not booked")
        await row.locator("button.dismiss-button").click()
        dialog = page.locator("#dismiss-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog.locator("h2")).to_contain_text(order["id"])
        await expect(page.locator("#dismiss-warning")).to_contain_text("only once its sale is booked by hand")
        await expect(page.locator("#dismiss-confirm")).to_be_disabled()  # no admin credential yet
        await expect(page.locator("#dismiss-command")).to_have_text(
            f'curl -sS -X POST -H "Authorization: Bearer $SHELFSYNC_ADMIN_TOKEN" '
            f"{url}/v1/channels/pos/orders/{order['id']}/dismiss",
            use_inner_text=False,
        )

        # Cancel changes nothing
        await page.click("#dismiss-dialog button:text('Cancel')")
        await expect(dialog).to_be_hidden()
        assert await not_dismissed()

        # a wrong credential, then the reader's own: refused with the hub's sentence, nothing dismissed
        await row.locator("button.dismiss-button").click()
        await page.fill("#dismiss-credential", "not-a-credential")
        await page.click("#dismiss-confirm")
        await expect(page.locator("#dismiss-error")).to_contain_text("Not dismissed:")
        await page.fill("#dismiss-credential", reader)
        await page.click("#dismiss-confirm")
        await expect(page.locator("#dismiss-error")).to_contain_text("dismiss a refused order")
        assert await not_dismissed()

        await page.fill("#dismiss-credential", admin)
        await expect(page.locator("#dismiss-error")).to_be_hidden()
        await screenshot("dashboard-dismiss-dialog")
        await page.click("#dismiss-confirm")
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#exceptions-dismissed")).to_have_text(
            f"Dismissed Square order {order['id']} of channel pos: it left the list, and the hub will not book "
            f"it (dismissed by {admin_id})."
        )
        await expect(row).to_have_count(0)
        await screenshot("dashboard-dismissed")
        await expect(page.locator("#exceptions-count")).to_contain_text("0 exceptions")
        stored = await state.refused_order("pos", order["id"])
        assert stored is not None and stored.dismissed_by == admin_id, stored
    assert console_errors == [  # the browser's own lines for the two refusals asked for above; nothing else
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)",
        "Failed to load resource: the server responded with a status of 403 (Forbidden)",
    ], console_errors


async def test_a_register_sale_no_order_matches_is_dismissed_as_a_sale_not_as_an_order(
    page: Page, tmp_path: Path, console_errors: list[str]
) -> None:
    """A register sale whose order never reached the hub is listed as ``channel_order_refused`` under the id
    ``sale:<adjustment id>`` (docs/channels.md, "Square"). Its Dismiss… dialog spoke of a refused order the hub
    "will not book afterwards"; it names the sale now, and says what dismissing it does: the counts pushed to Square
    no longer take it off."""
    async with square_pos_hub(str(tmp_path / "hub.db")) as pos_hub:
        _square, s1, a, url, _hook, served, state = pos_hub
        _, reader = await served.store.add_agent([], role="reader")
        admin_id, admin = await served.store.add_agent([], role="admin")
        reason = (
            f"Square sold 1 of SKU-A (item variation {a}) at {s1} (S1) on channel pos in sale ADJ42 at 2026-12-07 "
            "09:00:00 UTC; it carries no transaction id (a sale without a payment), so no order names it"
        )
        await state.refuse_order("pos", "sale:ADJ42", reason, wall_ms_now(), location="S1", channel_location=s1)

        await sign_in(page, url, reader)
        await page.goto(f"{url}/dashboard/#/exceptions/channel_order_refused")
        row = page.locator('#view tr[data-order="sale:ADJ42"]')
        await expect(row).to_contain_text("Check that Square's order webhooks reach the hub")
        await row.locator("button.dismiss-button").click()
        dialog = page.locator("#dismiss-dialog")
        await expect(dialog.locator("h2")).to_have_text("Dismiss Square sale ADJ42")
        await expect(page.locator("#dismiss-warning")).to_contain_text("no longer take the sale off")
        await page.fill("#dismiss-credential", admin)
        await page.click("#dismiss-confirm")
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#exceptions-dismissed")).to_have_text(
            "Dismissed Square sale ADJ42 of channel pos: it left the list, and the counts pushed to Square no longer "
            f"take it off (dismissed by {admin_id})."
        )
        stored = await state.refused_order("pos", "sale:ADJ42")
        assert stored is not None and stored.dismissed_by == admin_id, stored
    assert console_errors == [], console_errors
