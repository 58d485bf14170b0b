"""The dashboard's pages and sessions over real HTTP: sign in, read with the cookie, never write with it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from hub.dashboard import HTTPS_SESSION_COOKIE, SESSION_COOKIE, DashboardSessions
from hub.dashboard import sessions as sessions_module
from hub.dashboard.pages import ASSETS, PAGES
from tests.hub.feed_helpers import Hub, running_hub

PUBLIC_WRITES = {"/dashboard/sign-in", "/dashboard/sign-out"}  # take no credential and change no stock
# Authenticated by the channel's signature of the body, never by a credential or a cookie: an unsigned
# request is refused 401 (tests/channels/test_order_webhooks.py), an unknown channel 404.
SIGNED_WRITES = {"/v1/channels/{name}/webhooks"}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


async def sign_in(hub: Hub, token: str) -> str:
    """Sign in through the form; return the session cookie's value."""
    resp = await hub.client.post("/dashboard/sign-in", data={"token": token}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/dashboard/"
    morsel = resp.cookies[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    return morsel.value


def cookie(value: str, name: str = SESSION_COOKIE) -> dict[str, str]:
    return {"Cookie": f"{name}={value}"}


async def test_without_a_session_the_dashboard_sends_you_to_sign_in(hub: Hub) -> None:
    resp = await hub.client.get("/", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/")
    resp = await hub.client.get("/dashboard/", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/sign-in")
    page = await hub.client.get("/dashboard/sign-in")
    assert page.status == 200 and page.content_type == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert 'action="/dashboard/sign-in"' in html and 'name="token"' in html and "<!--error-->" not in html


async def test_a_reader_signs_in_and_reads_with_the_cookie(hub: Hub) -> None:
    agent = await hub.agent()
    await agent.sync()
    session = await sign_in(hub, hub.reader)
    page = await hub.client.get("/dashboard/", headers=cookie(session), allow_redirects=False)
    assert page.status == 200 and "dashboard.js" in await page.text()
    status = await hub.client.get("/v1/status", headers=cookie(session))
    assert status.status == 200
    body = await status.json()
    assert body["you"] and body["db"] == {"ok": True}
    (summary,) = [a for a in body["agents"] if a["agent_id"] == agent.agent_id]
    assert summary["online"] is True and summary["last_sync_age_s"] >= 0
    for path in ("/v1/counts", "/v1/exceptions", "/v1/agents", "/v1/ledger?sku=A", "/v1/changes"):
        assert (await hub.client.get(path, headers=cookie(session))).status == 200, path


async def test_no_write_route_accepts_a_cookie_session(hub: Hub) -> None:
    _, admin = await hub.store.add_agent(["S1"], role="admin")
    session = await sign_in(hub, admin)  # even an admin's session only reads
    writes = sorted(
        {
            (r.method, r.resource.canonical)
            for r in hub.client.server.app.router.routes()
            if r.method not in ("GET", "HEAD")
        }
    )
    assert ("POST", "/v1/sync") in writes and ("POST", "/v1/events") in writes and len(writes) >= 5
    for method, canonical in writes:
        if canonical in PUBLIC_WRITES | SIGNED_WRITES:
            continue
        path = re.sub(r"\{[^}]+\}", "S1", canonical)
        resp = await hub.client.request(method, path, headers=cookie(session), data=b"{}")
        assert resp.status == 401, (method, path, resp.status)
        assert "needs a credential" in (await resp.json())["detail"]
    assert (await hub.client.get("/v1/status", headers=cookie(session))).status == 200  # the session still reads


async def test_an_agent_credential_or_a_wrong_token_cannot_sign_in(hub: Hub) -> None:
    _, agent_token = await hub.store.add_agent(["S1"])
    resp = await hub.client.post("/dashboard/sign-in", data={"token": agent_token}, allow_redirects=False)
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies
    assert "sign in with a reader credential" in await resp.text()
    resp = await hub.client.post("/dashboard/sign-in", data={"token": "nope"}, allow_redirects=False)
    assert resp.status == 403
    assert "unknown or has been revoked" in await resp.text()
    resp = await hub.client.post("/dashboard/sign-in", data={"token": "<script>"}, allow_redirects=False)
    assert "<script>" not in await resp.text()


async def test_a_sign_in_from_another_site_is_refused(hub: Hub) -> None:
    resp = await hub.client.post(
        "/dashboard/sign-in",
        data={"token": hub.reader},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies


async def test_signing_out_ends_the_session_at_once(hub: Hub) -> None:
    session = await sign_in(hub, hub.reader)
    resp = await hub.client.post("/dashboard/sign-out", headers=cookie(session), allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/sign-in")
    assert resp.cookies[SESSION_COOKIE].value == ""
    assert (await hub.client.get("/v1/status", headers=cookie(session))).status == 401


async def test_a_revoked_credential_ends_its_sessions(hub: Hub) -> None:
    reader_id, token = await hub.store.add_agent([], role="reader")
    sessions = DashboardSessions(hub.store, recheck_s=0.0)
    session_id, who = await sessions.sign_in(token)
    request = make_mocked_request("GET", "/v1/status", headers=cookie(session_id))
    identity = await sessions.identify(request)
    assert identity is not None and (identity.agent_id, identity.role) == (reader_id, "reader") == (who, "reader")
    await hub.store.revoke_agent(reader_id)
    assert await sessions.identify(request) is None
    assert len(sessions) == 0


async def test_assets_are_served_and_nothing_comes_from_another_origin(hub: Hub) -> None:
    for name, content_type in ASSETS.items():
        resp = await hub.client.get(f"/dashboard/assets/{name}")
        assert resp.status == 200 and resp.content_type == content_type
    assert (await hub.client.get("/dashboard/assets/secrets.txt")).status == 404
    files = {name: resources.files("hub.dashboard").joinpath(name).read_text() for name in (*PAGES, *ASSETS)}
    for name in PAGES:
        links = re.findall(r"""\b(?:src|href|action)\s*=\s*["']([^"']*)""", files[name])
        assert links and all(link.startswith(("/", "#", "data:")) for link in links), (name, links)
    assert not re.search(r"url\(|@import", files["dashboard.css"])
    assert "://" not in files["dashboard.js"]


async def test_one_credential_signing_in_again_and_again_ends_nobody_elses_session(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leaked reader credential signed in more times than the hub keeps sessions (here 50): every other person's
    session used to be pushed out, oldest first. Now the credential's own oldest go, past 20 of its own."""
    monkeypatch.setattr(sessions_module, "SESSIONS_MAX", 50)
    _, leaked = await hub.store.add_agent([], role="reader")
    person = await sign_in(hub, hub.reader)
    flood = [await sign_in(hub, leaked) for _ in range(60)]
    hub.client.session.cookie_jar.clear()  # each request below carries only the session it names
    assert (await hub.client.get("/v1/status", headers=cookie(person))).status == 200
    kept = [(await hub.client.get("/v1/status", headers=cookie(s))).status for s in flood]
    assert kept == [401] * 40 + [200] * 20


# Behind a reverse proxy that ends TLS (the hub on 127.0.0.1, docs/operations.md "Hub: TLS"): the browser is at
# https://hub.example.test, and the proxy forwards its form over plain HTTP with the Host it connects to — nginx's
# default (proxy_set_header Host $proxy_host) — so neither the Host nor the scheme the hub sees is the browser's.
PUBLIC = "https://hub.example.test"


async def test_behind_a_tls_proxy_the_public_urls_origin_signs_in_and_gets_a_secure_cookie(tmp_path: Path) -> None:
    async with running_hub(tmp_path, public_url=f"{PUBLIC}:443") as hub:
        forwarded = {"Origin": PUBLIC, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "hub.example.test"}
        resp = await hub.client.post("/dashboard/sign-in", data={"token": hub.reader}, headers=forwarded,
                                     allow_redirects=False)  # fmt: skip
        assert resp.status == 303, await resp.text()
        morsel = resp.cookies[HTTPS_SESSION_COOKIE]  # __Host-: no other host of the domain can set one
        assert morsel["secure"] is True and morsel["httponly"] is True  # never sent over plain http
        assert (morsel["path"], morsel["domain"]) == ("/", "")
        assert SESSION_COOKIE not in resp.cookies
        assert (await hub.client.get("/v1/status", headers=cookie(morsel.value, HTTPS_SESSION_COOKIE))).status == 200
        # the same session under the plain name (a cookie a sibling subdomain planted) is not read over HTTPS
        assert (await hub.client.get("/v1/status", headers=cookie(morsel.value))).status == 401
        resp = await hub.client.post("/dashboard/sign-out",
                                     headers={**forwarded, **cookie(morsel.value, HTTPS_SESSION_COOKIE)},
                                     allow_redirects=False)  # fmt: skip
        assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/sign-in")
        cleared = resp.cookies[HTTPS_SESSION_COOKIE]
        assert (cleared.value, cleared["secure"], cleared["path"]) == ("", True, "/")  # a browser takes it only so
        assert (await hub.client.get("/v1/status", headers=cookie(morsel.value, HTTPS_SESSION_COOKIE))).status == 401
        # another site is still another site, whatever the proxy says
        for origin in ("https://evil.example", "http://hub.example.test", "https://hub.example.test.evil.example"):
            resp = await hub.client.post("/dashboard/sign-in", data={"token": hub.reader},
                                         headers={**forwarded, "Origin": origin}, allow_redirects=False)  # fmt: skip
            assert resp.status == 403 and HTTPS_SESSION_COOKIE not in resp.cookies, origin
        # reached directly (an operator on the hub's own machine, http://127.0.0.1:…): the same Secure cookie, which
        # a browser keeps for loopback too (tests/browser/test_dashboard_cookie.py)
        resp = await hub.client.post("/dashboard/sign-in", data={"token": hub.reader}, allow_redirects=False)
        assert resp.status == 303 and resp.cookies[HTTPS_SESSION_COOKIE]["secure"] is True
