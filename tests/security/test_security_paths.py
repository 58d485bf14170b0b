"""Path traversal on every route that serves files, in the hub and in the agent's local API.

The routes are found in each app's router — public GET routes with a path
parameter, and any static resource — so a file route added later is checked
without touching this test. Requests are sent byte for byte (no client
normalises ``..`` or decodes ``%2e``), and no answer may carry a byte of a
file outside the served set, nor reach a route that needs a credential.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

import agent.localapi.app as localapi_app
import hub.app as hub_app
from agent.localapi import LocalApiContext, StaffDirectory
from agent.localapi import create_app as create_localapi_app
from hub.auth import PUBLIC_ROUTES_KEY
from tests.security.helpers import Hub, Route, app_routes, raw_exchange, status_of

pytestmark = pytest.mark.timeout(120)
PARAM_RE = re.compile(r"\{[^}]+\}")
TRAVERSALS = [
    "..", "%2e%2e", "..%2fapp.py", "..%2F..%2Fapp.py", "%2e%2e%2fapp.py", "%2e%2e%2f%2e%2e%2fapp.py",
    "..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd", "%252e%252e%252fapp.py",
    "..%5capp.py", "....%2f%2fapp.py", "..%00.css", "app.py%00.js", "__init__.py", "__init__.py%3f.css",
    ".%2e/app.py", "%2e./app.py", "../app.py", "../../app.py", "..;/app.py",
]  # fmt: skip


def file_routes(app: web.Application, public: frozenset[str]) -> list[Route]:
    """GET routes that may serve a file: public ones with a path parameter, and static resources."""
    static = [
        Route("GET", r.get_info()["prefix"] + "/{filename}", r.name or "", True)
        for r in app.router.resources()
        if isinstance(r, web.StaticResource)
    ]
    dynamic = [r for r in app_routes(app, public) if r.method == "GET" and r.public and PARAM_RE.search(r.template)]
    return static + dynamic


def secrets() -> list[bytes]:
    """Telltale bytes of files next to, above and far from the served ones."""
    files = [Path(hub_app.__file__), Path(localapi_app.__file__), Path(localapi_app.STATIC_DIR) / "__init__.py"]
    found = [p.read_bytes()[:48] for p in files if p.exists() and p.stat().st_size >= 48]
    return found + [b"root:x:0:0"]


async def probe(url: str, routes: list[Route], secret_bytes: list[bytes]) -> int:
    """Request every traversal on every route; return how many requests were sent."""
    sent = 0
    for route in routes:
        for payload in TRAVERSALS:
            path = PARAM_RE.sub(payload, route.template, count=1)
            path = PARAM_RE.sub("x", path)
            answer = await raw_exchange(url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            status = status_of(answer)
            assert status in (400, 403, 404), f"GET {path} answered {status}: {answer[:300]!r}"
            for secret in secret_bytes:
                assert secret not in answer, f"GET {path} leaked a file: {answer[:300]!r}"
            sent += 1
    return sent


async def test_the_hubs_file_routes_serve_nothing_outside_their_files(hub: Hub) -> None:
    routes = file_routes(hub.app, hub.app[PUBLIC_ROUTES_KEY])
    assert "dashboard_asset" in {r.name for r in routes}, "the dashboard's asset route is found from the router"
    assert await probe(hub.url, routes, secrets()) == len(routes) * len(TRAVERSALS)


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/../v1/agents", "/dashboard/%2e%2e/v1/agents", "/dashboard/assets/..%2f..%2fv1%2fagents",
        "/dashboard/assets/../../v1/agents", "/healthz/../v1/agents", "/dashboard/./../v1/ledger",
    ],
)  # fmt: skip
async def test_dot_segments_never_reach_a_protected_route_without_a_credential(hub: Hub, path: str) -> None:
    answer = await raw_exchange(hub.url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) in (400, 401, 404), answer[:300]
    assert b'"agents"' not in answer and b'"events"' not in answer


@pytest.fixture
async def localapi_url() -> AsyncIterator[tuple[str, web.Application]]:
    """The agent's local API app; its file routes need neither sessions nor an outbox."""
    app = create_localapi_app(LocalApiContext(sessions=None, outbox=None, staff=StaffDirectory({})))  # type: ignore[arg-type]
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


async def test_the_agents_file_routes_serve_nothing_outside_their_files(localapi_url: tuple[str, web.Application]) -> None:
    url, app = localapi_url
    public = frozenset(r.name for r in app_routes(app) if r.method == "GET" and r.template.startswith("/static/"))
    routes = file_routes(app, public)
    assert "static" in {r.name for r in routes}, "the handheld's static route is found from the router"
    good = await raw_exchange(url, b"GET /static/handheld.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(good) == 200, "the probe would prove nothing if the route served nothing"
    assert await probe(url, routes, secrets()) == len(routes) * len(TRAVERSALS)


async def test_the_probe_catches_a_naive_file_route() -> None:
    """The probe's own check: a handler that joins the name onto a directory is caught leaking."""
    base = Path(localapi_app.STATIC_DIR)

    async def naive(request: web.Request) -> web.StreamResponse:
        path = base / request.match_info["name"]
        return web.FileResponse(path) if path.is_file() else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/files/{name:.+}", naive, name="naive")
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        with pytest.raises(AssertionError, match="answered 200|leaked"):
            await probe(f"http://{host}:{port}", file_routes(app, frozenset({"naive"})), secrets())
    finally:
        await runner.cleanup()
