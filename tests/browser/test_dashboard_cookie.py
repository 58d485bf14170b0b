"""The dashboard's session cookie in real Chromium against real hub processes on 127.0.0.1: over HTTPS (TLS on the
hub, or an https public_url) it is ``__Host-shelfsync_session`` — Secure, Path=/, no Domain — so a sibling
subdomain cannot plant one of that name; over plain HTTP it is ``shelfsync_session`` as before. Sign-in, reads and
sign-out work both ways, and over HTTPS a cookie of the plain name (planted) opens nothing."""

from __future__ import annotations

import http.cookies
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.ops.test_hub_tls import Pki, pki, tls_env

__all__ = ["pki"]  # the module-scoped fixture of the TLS tests: a test CA and a certificate for 127.0.0.1

PLAIN = "shelfsync_session"
HOST_ONLY = "__Host-shelfsync_session"


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Chromium that takes the test CA's certificate (its own, not a system one) for 127.0.0.1."""
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, locale="en-US", timezone_id="UTC", ignore_https_errors=True,  # type: ignore[arg-type]
        )  # fmt: skip
        ctx.set_default_timeout(ACTION_TIMEOUT_MS)
        try:
            yield ctx
        finally:
            await ctx.close()


def reader_credential(env: dict[str, str]) -> str:
    added = run_hub("agent", "add", "--role", "reader", env=env)
    assert added.returncode == 0, added.stderr
    return next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("credential: "))


async def sign_in_out(context: BrowserContext, base: str, reader: str, name: str, secure: bool) -> None:
    page: Page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(f"{base}/dashboard/sign-in")
    await page.fill("#token", reader)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/dashboard/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")  # it reads the API with the cookie
    [cookie] = await context.cookies(base)
    assert (cookie["name"], cookie["secure"], cookie["path"], cookie["domain"]) == (name, secure, "/", "127.0.0.1")
    await page.click('form[action="/dashboard/sign-out"] button')
    await expect(page).to_have_url(f"{base}/dashboard/sign-in")
    assert await context.cookies(base) == []
    await page.goto(f"{base}/dashboard/")
    await expect(page).to_have_url(f"{base}/dashboard/sign-in")


async def test_over_plain_http_the_cookie_keeps_its_name(tmp_path: Path, context: BrowserContext) -> None:
    env = hub_env(SHELFSYNC_HUB_DB=str(tmp_path / "hub.db"), SHELFSYNC_HUB_PORT="0")
    new_hub_db(tmp_path / "hub.db", env=env)
    reader = reader_credential(env)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        await sign_in_out(context, served.url, reader, PLAIN, secure=False)


async def test_over_tls_the_cookie_is_host_only_and_a_planted_plain_one_opens_nothing(
    tmp_path: Path, pki: Pki, context: BrowserContext
) -> None:
    env = tls_env(pki, tmp_path / "hub.db")
    new_hub_db(tmp_path / "hub.db", env=env)
    reader = reader_credential(env)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        assert served.url.startswith("https://")
        await sign_in_out(context, served.url, reader, HOST_ONLY, secure=True)
        # a session of the attacker's own, planted under the plain name (as a sibling subdomain's Domain= cookie is
        # sent): the hub reads only the __Host- name over HTTPS, so the browser is not signed in to it
        planted = _session_of(served.url, reader)
        await context.add_cookies([{"name": PLAIN, "value": planted, "url": served.url}])
        page = context.pages[0]
        await page.goto(f"{served.url}/dashboard/")
        await expect(page).to_have_url(f"{served.url}/dashboard/sign-in")


async def test_with_an_https_public_url_the_cookie_is_host_only_reached_on_loopback_too(
    tmp_path: Path, context: BrowserContext
) -> None:
    env = hub_env(SHELFSYNC_HUB_DB=str(tmp_path / "hub.db"), SHELFSYNC_HUB_PORT="0",
                  SHELFSYNC_HUB_PUBLIC_URL="https://hub.example.test")  # fmt: skip
    new_hub_db(tmp_path / "hub.db", env=env)
    reader = reader_credential(env)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        # an operator on the hub's own machine: Chromium keeps a Secure cookie of http://127.0.0.1 (loopback)
        await sign_in_out(context, served.url, reader, HOST_ONLY, secure=True)


def _session_of(base: str, reader: str) -> str:
    """Sign in over HTTP without a browser; the session id the hub set."""
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=insecure), Keep())
    body = urllib.parse.urlencode({"token": reader}).encode()
    request = urllib.request.Request(f"{base}/dashboard/sign-in", data=body, method="POST")
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as answer:  # the 303 the redirect handler did not follow
        jar = http.cookies.SimpleCookie(answer.headers["Set-Cookie"])
        return next(iter(jar.values())).value
    raise AssertionError("the sign-in did not answer 303")
