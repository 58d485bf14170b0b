"""Helpers for the agent's scanner, catalog and reports tests.

- ``PtyDevice``: a serial scanner on a real pseudo-terminal, reached through a
  by-id style symlink;
- ``ContractHub``: a small hub on 127.0.0.1 implementing the agent-facing contract
  for GET /v1/catalog (ETag / If-None-Match), POST /v1/observations and
  POST /v1/import-issues (protocol.reports), and a minimal POST /v1/sync;
- ``gtin()``: a GTIN with its check digit, so test barcodes are valid by construction;
- ``AdminHub``: a real hub served in process, with an agent's and an admin's credential, and ``call`` for the
  admin's JSON requests.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import struct
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp import web

from protocol import (
    MSGPACK_CONTENT_TYPE,
    SyncResponse,
    decode_sync_request,
    encode_sync_response,
    wall_ms_now,
)
from protocol.reports import (
    ReportAnswer,
    ReportRejection,
    decode_import_issues,
    decode_observations,
    encode_report_answer,
)

WAIT_S = 10.0


def check_digit(body: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gtin(body: str) -> str:
    """``body`` plus its GS1 check digit."""
    return body + check_digit(body)


def wrong_check_digit(code: str) -> str:
    return code[:-1] + str((int(code[-1]) + 1) % 10)


class PtyDevice:
    """A scanner on a pseudo-terminal; ``unplug()`` closes it as a pulled USB cable would."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.link)

    def write(self, data: bytes) -> None:
        assert self.master is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    async def wait_read(self) -> None:
        """Wait until the reader has taken every byte written (no event exists for this: poll, bounded)."""
        assert self.slave is not None
        async with asyncio.timeout(WAIT_S):
            while struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0"))[0]:
                await asyncio.sleep(0.005)

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None


async def eventually(predicate: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "condition") -> Any:
    """Poll an outside condition (a file, another process's database) with a bound; the last value is returned."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)


@dataclass
class ContractHub:
    """The hub side of the contracts, on 127.0.0.1 with an ephemeral port."""

    token: str = "token-1"
    catalog: dict[str, Any] = field(default_factory=lambda: {"version": 1, "items": []})
    catalog_requests: list[str | None] = field(default_factory=list)  # If-None-Match of each GET
    observations: dict[str, Any] = field(default_factory=dict)  # id -> report (dedupe like the hub)
    issues: dict[str, Any] = field(default_factory=dict)
    reject_locations: set[str] = field(default_factory=set)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer the next report POSTs with
    report_posts: list[tuple[str, int]] = field(default_factory=list)  # (path, status)
    synced: list[Any] = field(default_factory=list)
    url: str = ""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/v1/catalog", self._catalog)
        app.router.add_post("/v1/observations", self._observations)
        app.router.add_post("/v1/import-issues", self._issues)
        app.router.add_post("/v1/sync", self._sync)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "db": {"ok": True}})  # the hub's fields (hub.app.healthz)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _catalog(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "unauthorized", "message": "unknown token"}}, status=401)
        etag = f'"{self.catalog["version"]}"'
        self.catalog_requests.append(request.headers.get("If-None-Match"))
        await self._notify()
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(text=json.dumps(self.catalog), content_type="application/json", headers={"ETag": etag})

    async def _report(
        self, request: web.Request, decode: Callable[[bytes], Any], items: str, kept: dict[str, Any]
    ) -> web.Response:
        if self.fail_next:
            status = self.fail_next.pop(0)
            self.report_posts.append((request.path, status))
            await self._notify()
            return web.json_response({"error": {"code": "scripted", "message": f"scripted {status}"}}, status=status)
        if not self._authorized(request):
            self.report_posts.append((request.path, 401))
            return web.json_response({"error": {"code": "unauthorized", "message": "unknown token"}}, status=401)
        req = decode(await request.read())
        accepted, rejected = [], []
        for item in getattr(req, items):
            if item.location in self.reject_locations:
                rejected.append(ReportRejection(item.id, f"location {item.location} is not this agent's"))
            else:
                kept.setdefault(item.id, item)
                accepted.append(item.id)
        self.report_posts.append((request.path, 200))
        await self._notify()
        body = encode_report_answer(ReportAnswer(tuple(accepted), tuple(rejected)))
        return web.Response(body=body, content_type=MSGPACK_CONTENT_TYPE)

    async def _observations(self, request: web.Request) -> web.Response:
        return await self._report(request, decode_observations, "observations", self.observations)

    async def _issues(self, request: web.Request) -> web.Response:
        return await self._report(request, decode_import_issues, "issues", self.issues)

    async def _sync(self, request: web.Request) -> web.Response:
        sync = decode_sync_request(await request.read())
        self.synced.extend(sync.events)
        hwm = max([ev.seq for ev in sync.events] + [sync.acked_seq])
        answer = SyncResponse(sync.agent_id, sync.epoch, hwm, server_time_ms=wall_ms_now())
        await self._notify()
        return web.Response(body=encode_sync_response(answer), content_type=MSGPACK_CONTENT_TYPE)


@dataclass
class AdminHub:
    url: str
    agent_id: str
    token: str
    admin: str

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, headers=headers, **kw) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()
