"""The dashboard's Stores page says when another hub on the same PostgreSQL database judges events by other
settings (``settings_differ`` in ``GET /v1/status``, hub.peer_settings).

The other hub is a real PostgreSQL session named as a hub process's (``shelfsync-hub HOST:PID requests``) and its
row in ``hub_processes``, as that hub would have written it at its start.
"""

from __future__ import annotations

import json

import asyncpg
from playwright.async_api import Page, expect

from hub.app import SETTINGS_KEY
from hub.peer_settings import judging_settings
from tests.browser.test_dashboard_channels import sign_in
from tests.harness.inprocess import hub_in_process


async def test_the_stores_page_says_which_setting_another_running_hub_has_otherwise(
    page: Page, pg_url: str, console_errors: list[str]
) -> None:
    async with hub_in_process(pg_url) as served:
        _, reader = await served.store.add_agent([], role="reader")
        theirs = {**judging_settings(served.app[SETTINGS_KEY]), "clock_window_s": "60"}
        other = await asyncpg.connect(
            pg_url, server_settings={"application_name": "shelfsync-hub pos-hub-2:4711 requests"}
        )
        try:
            await other.execute(
                "INSERT INTO hub_processes (name, started_ms, settings) VALUES ('pos-hub-2:4711', 0, $1)",
                json.dumps(theirs),
            )
            await sign_in(page, served.url, reader)
            said = (
                "The hubs sharing this database differ in clock_window_s: 86400 at this hub, 60 at hub "
                "pos-hub-2:4711; they judge the same stores differently, so give every hub the same settings."
            )
            await expect(page.locator(".settings-differ")).to_have_text([said])
        finally:
            await other.close()
    assert console_errors == []
