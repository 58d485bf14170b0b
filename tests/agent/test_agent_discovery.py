"""Zeroconf on 127.0.0.1: the hub announces itself, the agent finds it by id and follows it when it moves."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.discovery import AgentAdvertiser, HubFinder, HubLocation
from agent.outbox import Movement, Outbox
from agent.replicator import Replicator
from hub import open_store
from hub.discovery import HubAdvertiser
from protocol import Kind
from protocol.discovery import AGENT_SERVICE_TYPE
from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until

LOOPBACK = ["127.0.0.1"]
WAIT_S = 20.0


async def test_the_finder_follows_its_hub_by_id_and_ignores_others() -> None:
    wanted, other = f"hub-{uuid.uuid4().hex[:12]}", f"hub-{uuid.uuid4().hex[:12]}"
    seen: list[HubLocation] = []
    async with asyncio.timeout(WAIT_S), HubFinder(seen.append, hub_id=wanted, interfaces=LOOPBACK) as finder:
        async with (
            HubAdvertiser(other, 18001, addresses=LOOPBACK, interfaces=LOOPBACK),
            HubAdvertiser(wanted, 18002, addresses=LOOPBACK, interfaces=LOOPBACK),
        ):
            found = await finder.wait_for(lambda loc: loc is not None)
            assert found == HubLocation(wanted, "127.0.0.1", 18002)
            assert found.url == "http://127.0.0.1:18002"
        async with HubAdvertiser(wanted, 18003, addresses=LOOPBACK, interfaces=LOOPBACK):  # the hub moved
            moved = await finder.wait_for(lambda loc: loc is not None and loc.port == 18003)
            assert moved == HubLocation(wanted, "127.0.0.1", 18003)
    assert [loc.port for loc in seen] == [18002, 18003]  # never the other hub
    assert all(loc.hub_id == wanted for loc in seen)


def started(hub: HubProcess) -> None:
    """Start it and wait until it announces itself by zeroconf (what the agent under test looks for)."""
    hub.start()
    wait_until("the hub announces itself by zeroconf", lambda: "Announcing hub" in hub.run_log, WAIT_S)


async def test_an_agent_without_a_hub_url_finds_the_hub_and_follows_it_to_a_new_port(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S001"])
        hub_id = str((await store.health())["hub_id"])
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nadvertise = true\nshutdown_timeout_s = 1.0\n")
    hub = HubProcess(tmp_path / "hub.log", "--config", str(config), db=db, port=0)  # port 0: a new one each start

    async with (
        asyncio.timeout(WAIT_S * 2),
        Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S001") as outbox,
    ):
        replicator: Replicator | None = None

        def on_hub(location: HubLocation) -> None:
            nonlocal replicator
            if replicator is None:
                replicator = Replicator(outbox, location.url, token, tick_s=0.05, retry_base_s=0.05, retry_max_s=0.3)
            else:
                replicator.update_credentials(token, location.url)

        async with HubFinder(on_hub, hub_id=hub_id, interfaces=LOOPBACK) as finder:
            try:
                await asyncio.to_thread(started, hub)
                first = await finder.wait_for(lambda loc: loc is not None)
                assert first is not None and replicator is not None
                await replicator.start()
                await outbox.record([Movement("S001", "SKU-1", Kind.RECEIVE, 5, "api:test")])
                await replicator.wait_synced()
                assert await asyncio.to_thread(hub.stop) == 0

                await asyncio.to_thread(started, hub)  # the hub comes back on another port
                second = await finder.wait_for(lambda loc: loc is not None and loc.port != first.port)
                assert second is not None and second.hub_id == hub_id
                await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -2, "api:test")])
                await replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0 and s.sent_events == 2)
                await replicator.stop()
                assert await asyncio.to_thread(hub.stop) == 0
            finally:
                hub.close()

    async with open_store(db) as store:
        [row] = await store.counts(location="S001", sku="SKU-1")
        assert row.on_hand == 3


async def test_the_agent_announces_its_local_api() -> None:
    agent_id = f"store-{uuid.uuid4().hex[:8]}"
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    async with (
        asyncio.timeout(WAIT_S),
        AgentAdvertiser(agent_id, "S042", 18471, addresses=LOOPBACK, interfaces=LOOPBACK),
    ):
        handheld = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        browser = AsyncServiceBrowser(handheld.zeroconf, [AGENT_SERVICE_TYPE], handlers=[on_change])
        try:
            while True:
                name = await found.get()
                info = AsyncServiceInfo(AGENT_SERVICE_TYPE, name)
                assert await info.async_request(handheld.zeroconf, 3000)
                if info.properties.get(b"id") == agent_id.encode():
                    break
            assert info.properties[b"location"] == b"S042"
            assert info.properties[b"path"] == b"/"
            assert (info.parsed_addresses(IPVersion.V4Only), info.port) == (LOOPBACK, 18471)
        finally:
            await browser.async_cancel()
            await handheld.async_close()
