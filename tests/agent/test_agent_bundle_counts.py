"""A count of a bundle SKU, which the hub refuses: refused at the handheld when the agent knows the hub's bundles,
and the hub's refusal shown to the staff when it did not. The real hub on 127.0.0.1, the agent's catalog, session
store, outbox and local API on real SQLite files and real HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

import hardware
from agent import catalog as agent_catalog
from agent.catalog import AgentCatalog
from agent.config import ScannerSection
from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory, hash_pin
from agent.outbox import Outbox
from agent.replicator import Replicator
from agent.scanning import ModeRouter, ScanResult
from agent.sessions import SessionManager, SessionStore
from protocol import Kind
from tests.agent.agent_scan_helpers import AdminHub as Hub
from tests.agent.agent_scan_helpers import gtin
from tests.harness.inprocess import hub_in_process

KIT = gtin("590123412345")  # the gift set's own barcode
MUG = gtin("400638133393")
WAIT_S = 15.0
REFUSAL = (
    "GIFT-SET is a bundle (a kit or set made of other SKUs), which the hub does not take a count of: count each of"
    " its parts instead"
)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub whose catalog knows the gift set and the mug, and where the gift set is a bundle of two mugs."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        agent_id, token = await served.store.add_agent(["S001"])
        _, admin = await served.store.add_agent([], role="admin")
        running = Hub(served.url, agent_id, token, admin)
        items = [{"barcode": KIT, "sku": "GIFT-SET", "pack_size": 1}, {"barcode": MUG, "sku": "MUG", "pack_size": 1}]
        await running.call("PUT", "/v1/catalog", json={"items": items})
        await running.call("PUT", "/v1/bundles/GIFT-SET", json={"components": {"MUG": 2}})
        await running.call("PUT", "/v1/bundles/TWIN-MUG", json={"components": {"MUG": 2}})
        yield running


@dataclass
class Handheld:
    http: aiohttp.ClientSession
    url: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def handheld(tmp_path: Path, hub: Hub, catalog: AgentCatalog) -> AsyncIterator[tuple[Handheld, Outbox]]:
    """The agent's local API over its sessions, outbox and ``catalog``; signed in as ana."""
    async with (
        Outbox.open(tmp_path / "outbox.sqlite3", agent_id=hub.agent_id, location="S001") as outbox,
        SessionStore.open(tmp_path / "sessions.sqlite3") as store,
    ):
        context = LocalApiContext(
            sessions=SessionManager(store, outbox, catalog=catalog), outbox=outbox,
            staff=StaffDirectory({"ana": hash_pin("4711")}), hub_url=lambda: None,
        )  # fmt: skip
        async with (
            LocalApiServer(context, "127.0.0.1", 0) as server,
            aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=20)
            ) as http,
        ):
            device = Handheld(http, server.url)
            assert (await device.call("POST", "/api/v1/login", {"staff": "ana", "pin": "4711"}))[0] == 200
            yield device, outbox


async def test_a_count_of_a_bundle_is_refused_at_the_start_and_at_the_first_scan(
    tmp_path: Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by counting a gift set on a handheld: the session took every scan and closed, and only then did the
    hub refuse the count (invalid_bundle), after the staff had counted. The agent learns the hub's bundles with
    its catalog (and keeps them in its cache, for a start without the hub) and refuses the count at once."""
    monkeypatch.setattr(agent_catalog, "BUNDLES_PAGE", 1)  # every page of the hub's bundle list is read
    cache = tmp_path / "catalog-cache.json"
    learned = AgentCatalog(hub_url=hub.url, token=hub.token, cache=cache)
    assert (await learned.refresh()).status == "updated"
    await learned.stop()
    catalog = AgentCatalog(hub_url="http://127.0.0.1:9", token=hub.token, cache=cache)  # the hub is away now
    await catalog.load()
    assert [catalog.is_bundle(sku) for sku in ("GIFT-SET", "TWIN-MUG", "MUG")] == [True, True, False]
    async with handheld(tmp_path, hub, catalog) as (device, outbox):
        got, data = await device.call("POST", "/api/v1/sessions", {"type": "count", "scope_skus": ["GIFT-SET"]})
        assert (got, data["error"]["message"]) == (400, REFUSAL), data
        got, data = await device.call("POST", "/api/v1/sessions", {"type": "count", "bin": "A-1"})
        assert got == 201, data
        count = data["session"]["id"]
        got, data = await device.call("POST", f"/api/v1/sessions/{count}/scans", {"code": KIT})
        assert (got, data["error"]["message"]) == (400, REFUSAL), data
        got, data = await device.call("POST", f"/api/v1/sessions/{count}/scans", {"sku": "GIFT-SET", "qty": 4})
        assert (got, data["error"]["message"]) == (400, REFUSAL), data
        assert (await device.call("POST", f"/api/v1/sessions/{count}/scans", {"code": MUG}))[0] == 201
        got, data = await device.call("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-1"})
        receipt = data["session"]["id"]  # a gift set received is its parts received: the hub takes that
        assert (await device.call("POST", f"/api/v1/sessions/{receipt}/scans", {"code": KIT}))[0] == 201
        assert (await device.call("POST", f"/api/v1/sessions/{count}/close", {}))[0] == 200
        assert [ev.sku for ev in await outbox.pending(10)] == ["MUG"]


async def test_a_count_of_a_bundle_the_agent_did_not_know_shows_the_hubs_refusal(tmp_path: Path, hub: Hub) -> None:
    """An agent offline since its first start has never heard the hub's bundles: the count is taken as before,
    and when the hub refuses it after the close, the handheld's home screen and the session say so in the hub's
    words (before, only `shelfsync-agent status` counted one more event set aside)."""
    catalog = AgentCatalog(hub_url="http://127.0.0.1:9", token=hub.token, cache=tmp_path / "catalog-cache.json")
    await catalog.load()
    assert catalog.is_bundle("GIFT-SET") is None
    async with handheld(tmp_path, hub, catalog) as (device, outbox):
        got, data = await device.call("POST", "/api/v1/sessions", {"type": "count", "scope_skus": ["GIFT-SET"]})
        assert got == 201, data
        count = data["session"]["id"]
        assert (await device.call("POST", f"/api/v1/sessions/{count}/scans", {"sku": "GIFT-SET", "qty": 4}))[0] == 201
        assert (await device.call("POST", f"/api/v1/sessions/{count}/close", {}))[0] == 200
        replicator = Replicator(
            outbox, hub.url, hub.token, tick_s=0.1, retry_base_s=0.01, retry_max_s=0.05, rng=random.Random(1)
        )
        async with replicator:
            await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
        assert (await outbox.stats()).set_aside == 1
        got, home = await device.call("GET", "/api/v1/sessions")
        got_one, one = await device.call("GET", f"/api/v1/sessions/{count}")
    assert (got, got_one) == (200, 200)
    for refused in (home["refused"], one["refused"]):
        assert [(r["session_id"], r["sku"], r["kind"], r["qty"], r["code"]) for r in refused] == [
            (count, "GIFT-SET", "count", 4, "invalid_bundle")
        ], refused
        assert "count its parts instead" in refused[0]["reason"], refused


async def test_a_count_mode_scanner_refuses_a_bundle_at_its_scan(tmp_path: Path, hub: Hub) -> None:
    """The same count through a back-office scanner in count mode: each scan was booked as a count of the gift
    set, which the hub refused after the operator had counted the shelf. It is refused at the scan now."""
    catalog = AgentCatalog(hub_url=hub.url, token=hub.token, cache=tmp_path / "catalog-cache.json")
    await catalog.refresh()
    await catalog.stop()
    section = ScannerSection(
        id="shelf", type="serial", mode="count",
        device=hardware.SerialScannerConfig(reader_id="shelf", port="/dev/serial/by-id/unused"),
    )  # fmt: skip
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=hub.agent_id, location="S001") as outbox:
        router = ModeRouter(outbox, catalog, [section], location="S001")
        outcomes = []
        for code in (KIT, MUG):
            raw = hardware.Scan("shelf", code.encode(), 0)
            outcomes.append(await router.route("shelf", raw, hardware.decode(raw.text), None))
        kit, mug = outcomes
        assert (kit.result, mug.result, mug.qty) == (ScanResult.FAILED, ScanResult.BOOKED, 1)
        assert kit.message == (
            f"Scan {KIT!r} is GIFT-SET, a bundle (a kit or set made of other SKUs), which the hub does not take a count"
            " of; nothing was booked: count each of its parts instead."
        ), kit.message
        assert [(ev.sku, ev.kind, ev.qty) for ev in await outbox.pending(10)] == [("MUG", Kind.COUNT, 1)]


class RecordingProxy:
    """A pass-through on 127.0.0.1 in front of the hub that notes each GET /v1/bundles: its If-None-Match, the
    hub's status and the hub's ETag."""

    def __init__(self, hub_url: str) -> None:
        self.hub_url = hub_url
        self.bundle_gets: list[tuple[str | None, int, str | None]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None and self._runner is not None
        await self._http.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        keep = ("Authorization", "Accept", "If-None-Match")
        headers = {k: request.headers[k] for k in keep if k in request.headers}
        async with self._http.get(self.hub_url + request.path_qs, headers=headers) as resp:
            body = await resp.read()
            if request.path == "/v1/bundles":
                self.bundle_gets.append((request.headers.get("If-None-Match"), resp.status, resp.headers.get("ETag")))
            out = {k: resp.headers[k] for k in ("ETag", "Content-Type") if k in resp.headers}
            return web.Response(status=resp.status, body=body or None, headers=out)


async def test_the_bundle_list_is_asked_with_if_none_match_and_kept_on_a_304(
    tmp_path: Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found reading the hub's access log: every agent read the hub's whole bundle list at each catalog refresh
    (every 60 s), without If-None-Match, though the hub tags each page. Now each page is asked with its last
    ETag; a 304 keeps the page as read, and after a bundle changed the pages are read again."""
    monkeypatch.setattr(agent_catalog, "BUNDLES_PAGE", 1)  # two pages: GIFT-SET, then TWIN-MUG
    async with RecordingProxy(hub.url) as proxy:
        catalog = AgentCatalog(hub_url=proxy.url, token=hub.token, cache=tmp_path / "catalog-cache.json")
        try:
            await catalog.refresh()
            assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(None, 200), (None, 200)]
            tags = [tag for _, _, tag in proxy.bundle_gets]
            assert all(tags), "the hub tags each page of its bundle list"
            proxy.bundle_gets.clear()
            await catalog.refresh()
            assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(tags[0], 304), (tags[1], 304)]
            assert [catalog.is_bundle(sku) for sku in ("GIFT-SET", "TWIN-MUG", "MUG")] == [True, True, False]
            await hub.call("PUT", "/v1/bundles/TRIO", json={"components": {"MUG": 3}})  # now the second page
            proxy.bundle_gets.clear()
            await catalog.refresh()
            # the hub's page tags are the bundles' version (a 304 reads no bundle): any change reads every page
            assert [status for _, status, _ in proxy.bundle_gets] == [200, 200, 200]
            assert [catalog.is_bundle(sku) for sku in ("GIFT-SET", "TRIO", "TWIN-MUG", "MUG")] == [
                True, True, True, False
            ]  # fmt: skip
        finally:
            await catalog.stop()


async def test_a_restarted_agent_asks_for_the_bundles_with_the_etags_it_kept_and_a_restored_hub_answers_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found reading the hub's access log after agents restarted: the pages' ETags were kept in memory only, so
    every start read the whole bundle list again. Now they are kept with the SKUs in the bundle cache: a new
    catalog on the same cache asks with them (304s), and a hub restored from a backup — whose tags carry a new
    history — answers each page in full, read again."""
    monkeypatch.setattr(agent_catalog, "BUNDLES_PAGE", 1)  # two pages: GIFT-SET, then TWIN-MUG
    cache = tmp_path / "catalog-cache.json"

    async def refreshed(proxy: RecordingProxy, token: str) -> AgentCatalog:
        catalog = AgentCatalog(hub_url=proxy.url, token=token, cache=cache)  # a new agent run on the same cache
        await catalog.load()
        try:
            await catalog.refresh()
        finally:
            await catalog.stop()
        return catalog

    async with RecordingProxy("") as proxy:  # the agent's hub_url, the same before and after the restore
        async with hub_in_process(tmp_path / "hub.db") as served:
            proxy.hub_url = served.url
            _, token = await served.store.add_agent(["S001"])
            _, admin = await served.store.add_agent([], role="admin")
            hub = Hub(served.url, "", token, admin)
            await hub.call("PUT", "/v1/bundles/GIFT-SET", json={"components": {"MUG": 2}})
            await hub.call("PUT", "/v1/bundles/TWIN-MUG", json={"components": {"MUG": 2}})
            await refreshed(proxy, token)
            assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(None, 200), (None, 200)]
            tags = [tag for _, _, tag in proxy.bundle_gets]
            proxy.bundle_gets.clear()
            again = await refreshed(proxy, token)
            assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(tags[0], 304), (tags[1], 304)]
            assert [again.is_bundle(sku) for sku in ("GIFT-SET", "TWIN-MUG", "MUG")] == [True, True, False]
        with sqlite3.connect(tmp_path / "hub.db") as source, sqlite3.connect(tmp_path / "restored.db") as copy:
            source.backup(copy)  # a backup, restored as a new file: its first start begins a new history
        async with hub_in_process(tmp_path / "restored.db") as served:
            proxy.hub_url = served.url
            proxy.bundle_gets.clear()
            restored = await refreshed(proxy, token)
            assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(tags[0], 200), (tags[1], 200)]
            new_tags = [tag for _, _, tag in proxy.bundle_gets]
            assert set(new_tags).isdisjoint(tags)
            assert [restored.is_bundle(sku) for sku in ("GIFT-SET", "TWIN-MUG", "MUG")] == [True, True, False]
            proxy.bundle_gets.clear()
            await refreshed(proxy, token)
            assert [(a, status) for a, status, _ in proxy.bundle_gets] == [(new_tags[0], 304), (new_tags[1], 304)]


async def test_a_bundle_cache_whose_pages_do_not_make_its_list_is_read_again_in_full(
    tmp_path: Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept ETags are sent only for pages that make up the cached list: a page edited, lost or of another hub
    would otherwise be kept on a 304 as it is not."""
    monkeypatch.setattr(agent_catalog, "BUNDLES_PAGE", 1)
    cache = tmp_path / "catalog-cache.json"
    async with RecordingProxy(hub.url) as proxy:
        first = AgentCatalog(hub_url=proxy.url, token=hub.token, cache=cache)
        await first.load()
        await first.refresh()
        await first.stop()
        assert first.bundle_cache is not None
        kept = json.loads(first.bundle_cache.read_text(encoding="utf-8"))
        assert [page["skus"] for page in kept["pages"]] == [["GIFT-SET"], ["TWIN-MUG"]]
        kept["pages"] = kept["pages"][:1]  # the second page's entry lost
        first.bundle_cache.write_text(json.dumps(kept), encoding="utf-8")
        proxy.bundle_gets.clear()
        second = AgentCatalog(hub_url=proxy.url, token=hub.token, cache=cache)
        await second.load()
        assert second.is_bundle("TWIN-MUG") is True  # the list itself is still known
        await second.refresh()
        await second.stop()
        assert [(asked, status) for asked, status, _ in proxy.bundle_gets] == [(None, 200), (None, 200)]
