"""The dashboard's webhook status in real headless Chromium against a hub on 127.0.0.1.

A hub whose webhook another hub, started after it with another url, took over (it stored its settings between
this hub's first read and its claim, as hubs sharing a database do) stands aside: GET /v1/webhooks says
``aside``, and the dashboard shows it as a warning in the status strip and on the webhook's row, where a
plain "Another hub delivers" would hide that nobody runs the newer config.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from hub import open_store
from hub.webhooks import WebhookSpec
from tests.browser.test_dashboard_quarantine import sign_in
from tests.harness.inprocess import serve_hub


async def test_a_webhook_this_hub_leaves_to_a_newer_config_shows_aside_in_the_strip_and_its_row(
    page: Page, tmp_path: Path, console_errors: list[str]
) -> None:
    db = str(tmp_path / "hub.db")
    ours = WebhookSpec("web-shop", "http://127.0.0.1:9/stock", "a-shared-secret-of-the-shop")
    newer = WebhookSpec("web-shop", "http://127.0.0.1:9/moved", "a-shared-secret-of-the-shop")
    async with open_store(db) as store:
        first_read = store.webhook_settings

        async def read_then_another_hub_claims(name: str) -> str | None:
            seen = await first_read(name)
            # a hub started just after this one, with the webhook moved, stores its settings first
            claim = await store.claim_webhook_settings(name, newer.settings_text(), seen)
            assert claim.outcome == "stored", claim
            store.webhook_settings = first_read  # type: ignore[method-assign]
            return seen

        store.webhook_settings = read_then_another_hub_claims  # type: ignore[method-assign]
        async with serve_hub(store, db=db, webhooks=(ours,)) as served:
            _, reader = await store.add_agent([], role="reader")

            async def aside() -> dict[str, Any]:
                while True:  # the dispatcher claims as the hub starts: a moment after it serves
                    resp = await served.client.get("/v1/webhooks", headers={"Authorization": f"Bearer {reader}"})
                    [hook] = (await resp.json())["webhooks"]
                    if hook["aside"] and hook["deliverer"] == "another hub":  # the lock given back
                        return hook
                    await asyncio.sleep(0.05)

            hook = await asyncio.wait_for(aside(), 10)
            assert "started after this one" in hook["last_error"], hook

            await sign_in(page, served.url, reader)
            await expect(page.locator("#stat-channels .stat-value")).to_have_text("1 aside")
            await expect(page.locator("#stat-channels")).to_have_attribute("data-tone", "warn")
            await expect(page.locator("#stat-channels .stat-note")).to_have_text("1 configured")
            row = page.locator("#hooks-section tbody tr").filter(has_text="web-shop")
            await expect(row).to_contain_text("Aside: newer config elsewhere")
            await expect(row.locator(".pill")).to_have_class(re.compile(r"\bwarn\b"))
            await expect(row).to_contain_text("another hub sharing the database, started after this one")
            assert console_errors == []
