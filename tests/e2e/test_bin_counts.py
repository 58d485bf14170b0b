"""End to end: a SKU kept in two bins, counted bin by bin on a handheld, is what the two bins hold at the hub.

Real processes on 127.0.0.1: the hub (``python -m hub serve``) with a catalog an admin put, and the store's agent
(``python -m agent run``) serving the handheld's local API; the test is the handheld. Found: 5 phones counted in a
session of bin X, then 3 in a session of bin Y, left the hub believing 3, the second count replacing the first
bin's units. Now the second count books the two bins' 8, and the hub's count of the SKU is 8.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.test_session_serials import call, put_catalog
from tests.harness.agent_process import AgentProcess, local_api_section, write_agent_config
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

WAIT_S = 30.0
PHONE = "4006381333931"  # the barcode put_catalog maps to SKU (phones kept in two bins)
SKU = "SKU-PHONE"


async def test_a_sku_counted_bin_by_bin_on_a_handheld_is_the_sum_of_its_bins_at_the_hub(tmp_path: Path) -> None:
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
        url = f"http://127.0.0.1:{port}"
        async with (
            asyncio.timeout(WAIT_S * 2),
            aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
            ) as http,
        ):
            await call(http, url + "/api/v1/login", {"staff": "ana", "pin": "4711"}, 200)
            await _session(http, url, {"type": "receive", "ref": "DN-1"}, 8)
            await _session(http, url, {"type": "count", "bin": "X"}, 5)
            after_x = await asyncio.to_thread(_hub_when, hub.url, reader.token, 2)
            await _session(http, url, {"type": "count", "bin": "Y"}, 3)
            after_y = await asyncio.to_thread(_hub_when, hub.url, reader.token, 3)
        assert await asyncio.to_thread(agent.stop) == 0
    finally:
        if agent is not None:
            agent.kill()
        hub.close()
    assert after_x[0] == 5  # bin X alone: the SKU's count so far
    on_hand, ledger = after_y
    assert on_hand == 8
    rows = [(e["kind"], e["qty"], e["attrs"].get("bin"), e["attrs"].get("carried")) for e in reversed(ledger)]
    assert rows == [("receive", 8, None, None), ("count", 5, "X", None), ("count", 8, "Y", 5)]


async def _session(http: aiohttp.ClientSession, url: str, spec: dict[str, Any], qty: int) -> None:
    opened = await call(http, url + "/api/v1/sessions", spec, 201)
    session = f"{url}/api/v1/sessions/{opened['session']['id']}"
    await call(http, session + "/scans", {"code": PHONE, "qty": qty}, 201)
    await call(http, session + "/close", {}, 200)


def _hub_when(hub_url: str, token: str, events: int) -> tuple[int | None, list[dict[str, Any]]]:
    """The SKU's on_hand at S001 and its ledger (newest first) once the ledger holds ``events`` events (bounded)."""
    end = time.monotonic() + WAIT_S
    while True:
        ledger: list[dict[str, Any]] = get_json(f"{hub_url}/v1/ledger?sku={SKU}", token)["events"]
        if len(ledger) >= events or time.monotonic() > end:
            counts = get_json(f"{hub_url}/v1/skus/{SKU}/counts", token)["counts"]
            return (counts[0]["on_hand"] if counts else None), ledger
        time.sleep(0.1)
