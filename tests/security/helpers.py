"""Helpers of the security tests: the hub they attack (``Hub``, one credential of every kind), its routes, raw HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from hub import HubStore
from hub.auth import PUBLIC_ROUTES_KEY
from protocol import Kind, StockEvent, SyncRequest, encode_sync_request, new_event_id, pack_hlc, wall_ms_now

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PLACEHOLDERS = {
    "location": "S001", "sku": "SKU-1", "name": "hook", "id": "x", "quarantine_id": "1", "order_id": "ORDER-1",
    "agent_id": "agent-1",
}  # fmt: skip


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


def event(agent_id: str, seq: int, location: str = "S001", qty: int = 5) -> StockEvent:
    now = wall_ms_now()
    return StockEvent(
        new_event_id(), agent_id, 1, seq, location, "SKU-1", Kind.RECEIVE, qty, pack_hlc(now, seq), now, "api:test"
    )


def sync_body(agent_id: str, events: list[StockEvent]) -> bytes:
    return encode_sync_request(SyncRequest(agent_id, 1, tuple(events)))


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
