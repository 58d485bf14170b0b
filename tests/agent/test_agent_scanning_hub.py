"""The agent's catalog, scans and reports against the real hub on 127.0.0.1 (not a stand-in)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import hardware
from agent.catalog import AgentCatalog
from agent.config import ScannerSection
from agent.outbox import Outbox
from agent.pos import Observation, PosStore, Quarantined
from agent.pos.source import scan_file
from agent.replicator import Replicator
from agent.reports import ReportSender
from agent.scanning import ModeRouter, ScanResult
from tests.agent.agent_scan_helpers import AdminHub as Hub
from tests.agent.agent_scan_helpers import gtin
from tests.harness.inprocess import hub_in_process

EAN13 = gtin("590123412345")
CASE = gtin("1" + EAN13[:-1])
UNKNOWN = gtin("400638133393")
WAIT_S = 15.0


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with hub_in_process(tmp_path / "hub.db") as served:
        agent_id, token = await served.store.add_agent(["S001"])
        _, admin = await served.store.add_agent([], role="admin")
        yield Hub(served.url, agent_id, token, admin)


async def test_catalog_refresh_reports_and_an_unknown_scan_rebooked_by_the_hub(tmp_path: Path, hub: Hub) -> None:
    items = [
        {"barcode": EAN13, "sku": "MUG-01", "pack_size": 1, "description": "Mug"},
        {"barcode": CASE, "sku": "MUG-01", "pack_size": 12, "description": "Case of 12"},
    ]
    await hub.call("PUT", "/v1/catalog", json={"items": items})
    catalog = AgentCatalog(hub_url=hub.url, token=hub.token, cache=tmp_path / "catalog-cache.json")
    assert (await catalog.refresh()).status == "updated"
    assert (await catalog.refresh()).status == "not_modified"
    assert catalog.catalog.get(CASE) is not None and catalog.catalog.get(CASE).pack_size == 12  # type: ignore[union-attr]
    await catalog.stop()

    async with PosStore.open(tmp_path / "pos-import.sqlite") as store:
        await store.add_observations([Observation("S001", "MUG-01", "shopify", 7, 1_709_650_000_000, "inventory.csv")])
        export = tmp_path / "sales.csv"
        export.write_text("date,sku,qty,kind\nyesterday,MUG-01,1,sale\n", encoding="utf-8")
        scan = scan_file(export)
        import_id = await store.begin_import(scan, export.name, "generic")
        await store.add_quarantine(
            import_id, export.name, scan.sha256, [Quarantined(2, "date 'yesterday' is not a date")]
        )
        async with ReportSender(store, hub.url, hub.token, agent_id=hub.agent_id, location="S001") as sender:
            state = await asyncio.wait_for(sender.wait_for(lambda s: s.pending is False), WAIT_S)
    assert (state.observations_sent, state.issues_sent, state.rejected) == (1, 1, 0)

    section = ScannerSection(
        id="backdoor", type="serial", mode="receive",
        device=hardware.SerialScannerConfig(reader_id="backdoor", port="/dev/serial/by-id/unused"),
    )  # fmt: skip
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=hub.agent_id, location="S001") as outbox:
        router = ModeRouter(outbox, catalog, [section], location="S001")
        scan_raw = hardware.Scan("backdoor", f"]I1{CASE}".encode(), 0)
        booked = await router.route("backdoor", scan_raw, hardware.decode(scan_raw.text), None)
        unknown_raw = hardware.Scan("backdoor", UNKNOWN.encode(), 0)
        unknown = await router.route("backdoor", unknown_raw, hardware.decode(unknown_raw.text), None)
        assert (booked.result, booked.qty, unknown.result) == (ScanResult.BOOKED, 12, ScanResult.UNKNOWN)
        async with Replicator(outbox, hub.url, hub.token, tick_s=0.2) as replicator:
            await asyncio.wait_for(replicator.wait_synced(), WAIT_S)

    exceptions = (await hub.call("GET", "/v1/exceptions"))["exceptions"]
    kinds = {(e["kind"], e["sku"]) for e in exceptions}
    assert ("unknown_barcode", "unknown:0" + UNKNOWN) in kinds
    assert any(e["kind"] == "import_quarantine" and e["data"]["line"] == 2 for e in exceptions)
    answer = await hub.call(
        "PUT", "/v1/catalog", json={"items": [{"barcode": UNKNOWN, "sku": "SOAP-1", "pack_size": 6}]}
    )
    assert answer["rebooked"] == 1  # the hub moved the unknown scan onto the SKU it learned
