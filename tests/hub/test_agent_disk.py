"""A store agent's full disk, seen at the hub (both backends), over real HTTP on 127.0.0.1.

Found: an agent whose disk is full gives back its disk reserve (agent.reserve) and, once it is spent, refuses
scans; its own status, local API and handheld page said so, the hub nothing: head office learned it when the
store's staff complained. Now each sync request carries the agent's disk report (protocol.DiskReport); the hub
keeps the newest per agent (schema version 21), shows it in ``GET /v1/agents``, and lists an ``agent_disk_full``
exception while the disk is full or the reserve in use, which is gone once the agent reports room again. An agent
from before the report syncs as before and shows no disk.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hub.cli import format_agents
from hub.storage.base import AgentDisk, AgentStatus
from protocol import (
    MSGPACK_CONTENT_TYPE,
    DiskReport,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.inprocess import hub_in_process
from tests.harness.pg import fresh_schema

MIB = 1 << 20
RESERVE = 8 * MIB


@dataclass
class Hub:
    client: TestClient[Any, Any]
    agent_id: str
    agent: str
    reader: str
    seq: itertools.count[int]
    sent: int = 0
    other: tuple[str, str] = ("", "")  # the store agent of S008: its id and token

    async def sync(self, disk: DiskReport | None, *, events: int = 1, agent: str | None = None) -> None:
        """POST /v1/sync as the store agent of S007: ``events`` receipts and the disk report ``disk``."""
        now = wall_ms_now()
        batch = tuple(
            StockEvent(new_event_id(), self.agent_id, 1, next(self.seq), "S007", "SKU-1", Kind.RECEIVE, 1,
                       pack_hlc(now, 0), now, "scanner:dock")
            for _ in range(events)
        )  # fmt: skip
        # acknowledged: what was sent before (an agent's heartbeat below the hub's mark is a replay, not news)
        acked = batch[0].seq - 1 if batch else self.sent
        self.sent = batch[-1].seq if batch else self.sent
        request = SyncRequest(self.agent_id, 1, batch, acked_seq=acked, sent_ms=now, disk=disk)
        body = encode_sync_request(request)
        headers = {"Authorization": f"Bearer {agent or self.agent}", "Content-Type": MSGPACK_CONTENT_TYPE}
        async with self.client.post("/v1/sync", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            decode_sync_response(await resp.read())

    async def get(self, path: str) -> Any:
        async with self.client.get(path, headers={"Authorization": f"Bearer {self.reader}"}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def disk(self) -> dict[str, Any] | None:
        [agent] = [a for a in (await self.get("/v1/agents"))["agents"] if a["agent_id"] == self.agent_id]
        disk: dict[str, Any] | None = agent["disk"]
        return disk

    async def listed(self, query: str = "") -> list[dict[str, Any]]:
        page = await self.get(f"/v1/exceptions?limit=1000{query}")
        return [e for e in page["exceptions"] if e["kind"] == "agent_disk_full"]


@pytest.fixture
async def hub(backend: str, tmp_path: Path) -> AsyncIterator[Hub]:
    async def served(db: str) -> AsyncIterator[Hub]:
        async with hub_in_process(db) as running:
            agent_id, agent = await running.store.add_agent(["S007"])
            other = await running.store.add_agent(["S008"])
            _, reader = await running.store.add_agent([], role="reader")
            yield Hub(running.client, agent_id, agent, reader, itertools.count(1), other=other)

    if backend == "postgres":
        async with fresh_schema("disk") as url:
            async for h in served(url):
                yield h
    else:
        async for h in served(str(tmp_path / "hub.db")):
            yield h


async def test_a_full_disk_is_listed_for_head_office_and_clears_itself_when_the_agent_has_room(hub: Hub) -> None:
    await hub.sync(DiskReport(RESERVE, RESERVE, 40_000 * MIB))
    disk = await hub.disk()
    assert disk is not None and disk["state"] == "ok" and disk["reserve_held_bytes"] == RESERVE, disk
    assert await hub.listed() == []

    await hub.sync(DiskReport(RESERVE, 3 * MIB, 0))  # the disk filled up: scans go into the reserve
    disk = await hub.disk()
    assert disk is not None and disk["state"] == "reserve_in_use" and disk["free_bytes"] == 0, disk
    [in_use] = await hub.listed()
    assert in_use["location"] == "S007" and in_use["data"]["state"] == "reserve_in_use", in_use
    assert "disk full" in in_use["detail"] and "3 MiB of 8 MiB left" in in_use["detail"], in_use["detail"]

    refused = wall_ms_now()
    await hub.sync(DiskReport(RESERVE, 0, 4096, refused_ms=refused), events=0)  # spent: scans are refused
    disk = await hub.disk()
    assert disk is not None and disk["state"] == "full" and disk["refused_ms"] == refused, disk
    since = disk["since_ms"]
    [full] = await hub.listed()
    assert full["at_ms"] == since and full["data"]["agent_id"] == hub.agent_id, full
    detail = full["detail"]
    assert detail.startswith(f"S007's agent {hub.agent_id}: disk full, disk reserve spent"), detail
    assert "scans are being refused" in detail and "Free disk space on that PC" in detail, detail
    assert "4 KiB free" in detail, detail

    await hub.sync(DiskReport(RESERVE, 0, 4096, refused_ms=refused), events=0)  # a heartbeat: still full
    disk = await hub.disk()
    assert disk is not None and disk["since_ms"] == since, "the state's start stays while it holds"
    assert await hub.listed("&location=S007&kind=agent_disk_full") == [full]
    assert await hub.listed("&location=S008") == []

    await hub.sync(DiskReport(RESERVE, RESERVE, 900 * MIB), events=2)  # space freed, the reserve made whole
    disk = await hub.disk()
    assert disk is not None and disk["state"] == "ok" and disk["refused_ms"] is None, disk
    assert await hub.listed() == [], "gone once the agent reports room again"


async def test_an_agent_from_before_the_disk_report_syncs_as_before_and_shows_no_disk(hub: Hub) -> None:
    await hub.sync(None, events=3)
    assert await hub.disk() is None
    await hub.sync(DiskReport(0, 0, None, refused_ms=wall_ms_now()))  # no reserve configured, a write refused
    [full] = await hub.listed()
    assert "no disk reserve configured" in full["detail"] and "scans are being refused" in full["detail"], full
    await hub.sync(None)  # a request without the report (an older agent put back) leaves the last one in place
    disk = await hub.disk()
    assert disk is not None and disk["state"] == "full", disk
    counts = await hub.get("/v1/locations/S007/counts")
    assert [c["on_hand"] for c in counts["counts"] if c["sku"] == "SKU-1"] == [5]


def test_the_agent_list_of_the_cli_says_which_store_pcs_disk_is_full() -> None:
    full = AgentDisk("full", 1_796_000_000_000, 1_796_000_060_000, RESERVE, 0, 4096, 1_796_000_050_000)
    listed = format_agents([
        AgentStatus("agent-s007", ("S007",), 1_796_000_060_000, {1: 40}, 12, disk=full),
        AgentStatus("agent-s008", ("S008",), 1_796_000_060_000, {1: 9}, 12),
    ])  # fmt: skip
    head, s007, s008 = listed.splitlines()
    assert head.endswith("DISK") and s007.endswith("FULL, scans refused since 2026-11-30T00:53:20.000Z"), listed
    assert s008.endswith("-"), "an agent from before the disk report"


async def scrape(hub: Hub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics with the reader's token, as Prometheus scrapes it: every sample by name and labels."""
    async with hub.client.get("/metrics", headers={"Authorization": f"Bearer {hub.reader}"}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_state(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "shelfsync_agents_disk"}


async def test_metrics_count_the_store_pcs_by_disk_state_and_the_least_free_space(hub: Hub) -> None:
    """Found: /metrics had nothing of the disk reports, so no alert could fire on a store PC's full disk. The
    agents are counted per state (a handful of series however many stores), not one series per agent and state;
    which store it is, the exceptions list names (agent_disk_full)."""
    assert by_state(await scrape(hub)) == {"ok": 0, "reserve_in_use": 0, "full": 0, "unreported": 2}
    assert ("shelfsync_agents_disk_free_bytes_min", ()) not in await scrape(hub), "no report: no least free space"

    await hub.sync(DiskReport(RESERVE, RESERVE, 40_000 * MIB))
    other = Hub(hub.client, hub.other[0], hub.other[1], hub.reader, itertools.count(1))
    await other.sync(DiskReport(RESERVE, 0, 4096, refused_ms=wall_ms_now()), events=0)
    samples = await scrape(hub)
    assert by_state(samples) == {"ok": 1, "reserve_in_use": 0, "full": 1, "unreported": 0}, samples
    assert samples[("shelfsync_agents_disk_free_bytes_min", ())] == 4096

    await other.sync(DiskReport(RESERVE, RESERVE, 900 * MIB), events=0)  # space freed at S008
    await hub.sync(DiskReport(RESERVE, 3 * MIB, 0))  # S007's disk filled up: scans go into the reserve
    samples = await scrape(hub)
    assert by_state(samples) == {"ok": 1, "reserve_in_use": 1, "full": 0, "unreported": 0}, samples
    assert samples[("shelfsync_agents_disk_free_bytes_min", ())] == 0
