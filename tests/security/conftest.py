"""A real hub (SQLite file in tmp_path, HTTP on 127.0.0.1) with one credential of every kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub import HubSettings, HubStore, create_app, open_store
from hub.auth import PUBLIC_ROUTES_KEY

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PLACEHOLDERS = {"location": "S001", "sku": "SKU-1", "name": "hook", "id": "x", "quarantine_id": "1"}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    name: str
    public: bool

    @property
    def path(self) -> str:
        """The template with every ``{param}`` filled with a plausible value."""
        out = self.template
        for key, value in PLACEHOLDERS.items():
            out = out.replace("{" + key + "}", value)
        assert "{" not in out, f"no sample value for a parameter of {self.template}; add it to PLACEHOLDERS"
        return out


def app_routes(app: web.Application, public: frozenset[str] = frozenset()) -> list[Route]:
    """Every (method, path) the app's router serves, HEAD twins of GET left out."""
    out: list[Route] = []
    for resource in app.router.resources():
        info = resource.get_info()
        template = info.get("path") or info.get("formatter") or info.get("prefix")
        assert template is not None, info
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue
            name = resource.name or ""
            out.append(Route(route.method, template, name, name in public))
    return out


@dataclass(slots=True)
class Hub:
    url: str
    app: web.Application
    store: HubStore
    agent: tuple[str, str]  # (agent_id, token), bound to S001
    other_agent: tuple[str, str]  # bound to S002
    reader: tuple[str, str]
    admin: tuple[str, str]  # bound to S001
    revoked: tuple[str, str]
    session: aiohttp.ClientSession

    @property
    def routes(self) -> list[Route]:
        return app_routes(self.app, self.app[PUBLIC_ROUTES_KEY])

    async def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.url + path, headers=headers, allow_redirects=False, **kwargs) as r:
            return r.status, dict(r.headers), await r.read()


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """``await make_hub(**settings)``: a served hub; everything is closed at the end."""
    cleanup: list[Callable[[], Awaitable[None]]] = []

    async def make(**settings: Any) -> Hub:
        store = await open_store(str(tmp_path / f"hub-{len(cleanup)}.db"))
        cleanup.append(store.close)
        agent = await store.add_agent(["S001"])
        other = await store.add_agent(["S002"])
        reader = await store.add_agent([], role="reader")
        admin = await store.add_agent(["S001"], role="admin")
        revoked = await store.add_agent(["S001"])
        assert await store.revoke_agent(revoked[0])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db"), **settings))
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        cleanup.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        cleanup.append(session.close)
        return Hub(f"http://{host}:{port}", app, store, agent, other, reader, admin, revoked, session)

    try:
        yield make
    finally:
        for close in reversed(cleanup):
            await close()


@pytest.fixture
async def hub(make_hub: HubFactory) -> Hub:
    return await make_hub()


async def raw_exchange(url: str, request: bytes, *, read_timeout_s: float = 10.0) -> bytes:
    """Send ``request`` byte for byte (no client normalisation) and read the answer until the hub closes or goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        chunks: list[bytes] = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout_s)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(answer: bytes) -> int:
    first = answer.split(b"\r\n", 1)[0].split(b" ")
    assert len(first) >= 2 and first[1].isdigit(), f"not an HTTP answer: {answer[:200]!r}"
    return int(first[1])
