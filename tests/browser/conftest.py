"""Real headless Chromium for browser tests (Debian's /usr/bin/chromium, never a downloaded build).

Fixtures, generic for any page the project serves:

* ``browser_context`` — a fresh Chromium with its own user-data dir under tmp_path;
* ``page`` — its first page (1440×900; call ``page.set_viewport_size`` for a handheld);
* ``console_errors`` — every console error and uncaught page error of ``page``, to assert empty;
* ``screenshot`` — ``await screenshot("name")`` saves ``tests/artifacts/screenshots/name.png``
  (full page) and returns its path.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
ACTION_TIMEOUT_MS = 10_000
# An assertion waits as long as an action may: a page that polls (the channels every 5 s) shows a change up to one
# period after it happened, and Playwright's own 5 s left no room on a slow machine (a channel back up, shown 5+ s on).
expect.set_options(timeout=ACTION_TIMEOUT_MS)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

Screenshot = Callable[..., Awaitable[Path]]


@pytest.fixture
async def browser_context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser_context: BrowserContext) -> Page:
    return browser_context.pages[0] if browser_context.pages else await browser_context.new_page()


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


@pytest.fixture
def screenshot(page: Page) -> Screenshot:
    async def take(name: str, target: Page | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await (target or page).screenshot(path=str(path), full_page=True)
        return path

    return take
