"""End to end: serialised items scanned on a handheld into sessions reach the hub's ledger by their serial numbers.

Real processes on 127.0.0.1: the hub (``python -m hub serve``) with a catalog an admin put, and the store's agent
(``python -m agent run``) serving the handheld's local API; the test is the handheld. Phones carrying a GS1 serial
number (21) are received, one scanned twice, one with a quantity of 2, then counted: the hub's ledger holds one
receive per phone with its serial, and the count lists the serials it counted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.agent_process import AgentProcess, local_api_section, write_agent_config
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

WAIT_S = 30.0
PHONE = "4006381333931"  # an EAN-13 with a valid check digit
SKU = "SKU-PHONE"


def put_catalog(url: str, token: str) -> None:
    body = json.dumps({"items": [{"barcode": PHONE, "sku": SKU, "pack_size": 1}]}).encode()
    request = urllib.request.Request(
        f"{url}/v1/catalog", data=body, method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


async def call(http: aiohttp.ClientSession, url: str, body: Any, status: int) -> Any:
    async with http.post(url, json=body) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return data


async def test_serialised_phones_scanned_on_a_handheld_reach_the_hubs_ledger_by_serial(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    cred = add_credential(db, "S001")
    reader = add_credential(db, role="reader")
    admin = add_credential(db, role="admin")
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0)
    agent: AgentProcess | None = None
    try:
        await asyncio.to_thread(hub.start)
        await asyncio.to_thread(put_catalog, hub.url, admin.token)
        port = free_port()
        config = write_agent_config(
            tmp_path / "store" / "agent.toml", cred=cred, location="S001", hub_url=hub.url,
            extra=local_api_section(port),
        )  # fmt: skip
        agent = AgentProcess(config, tmp_path / "agent.log")
        await asyncio.to_thread(agent.wait_for_log, r"The hub's catalog version \S+ is in use: 1 items", WAIT_S)
        await asyncio.to_thread(agent.wait_for_log, r"Local API and handheld page at", WAIT_S)
        await _receive_and_count(f"http://127.0.0.1:{port}")
        ledger = await asyncio.to_thread(_ledger_when_synced, hub.url, reader.token)
        assert await asyncio.to_thread(agent.stop) == 0
    finally:
        if agent is not None:
            agent.kill()
        hub.close()
    rows = [(e["kind"], e["qty"], e["attrs"].get("serial"), e["attrs"].get("serials1")) for e in reversed(ledger)]
    assert rows == [
        ("receive", 1, "SN-0001", None),
        ("receive", 1, "SN-0002", None),
        ("count", 2, None, "SN-0001 SN-0002"),
    ]


async def _receive_and_count(url: str) -> None:
    async with (
        asyncio.timeout(WAIT_S * 2),
        aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
        ) as http,
    ):
        await call(http, url + "/api/v1/login", {"staff": "ana", "pin": "4711"}, 200)
        opened = await call(http, url + "/api/v1/sessions", {"type": "receive", "ref": "DN-PHONES"}, 201)
        scans = f"{url}/api/v1/sessions/{opened['session']['id']}/scans"
        await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0001"}, 201)
        await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0002"}, 201)
        twice = await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0001"}, 400)
        assert "serial number SN-0001 of SKU-PHONE is already line 1 of this session" in twice["error"]["message"]
        many = await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0003", "qty": 2}, 400)
        assert "so its quantity is 1, not 2" in many["error"]["message"]
        closed = await call(http, f"{url}/api/v1/sessions/{opened['session']['id']}/close", {}, 200)
        assert (closed["session"]["report"]["events"], closed["session"]["report"]["units"]) == (2, 2)

        counted = await call(http, url + "/api/v1/sessions", {"type": "count", "bin": "A-01"}, 201)
        scans = f"{url}/api/v1/sessions/{counted['session']['id']}/scans"
        await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0001"}, 201)
        await call(http, scans, {"code": f"(01)0{PHONE}(21)SN-0002"}, 201)
        await call(http, f"{url}/api/v1/sessions/{counted['session']['id']}/close", {}, 200)


def _ledger_when_synced(hub_url: str, token: str) -> list[dict[str, Any]]:
    """The SKU's ledger at the hub (newest first) once it holds the three events the sessions booked (bounded)."""
    end = time.monotonic() + WAIT_S
    while True:
        events: list[dict[str, Any]] = get_json(f"{hub_url}/v1/ledger?sku={SKU}", token)["events"]
        if len(events) >= 3 or time.monotonic() > end:
            return events
        time.sleep(0.1)
