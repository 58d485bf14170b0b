"""``shelfsync-agent run`` as a real process: it finds the hub by zeroconf, serves handhelds, keeps sessions over a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.localapi import hash_pin
from hub import open_store
from tests.harness.agent_process import AgentProcess
from tests.harness.hub_process import HubProcess

WAIT_S = 30.0
LOCAL_API_RE = r"Local API and handheld page at (http://127\.0\.0\.1:\d+)/"


async def start_agent(config: Path, log: Path) -> tuple[AgentProcess, str]:
    """Start the agent and wait until it has found the hub and serves the local API (both logged, in any order)."""
    agent = AgentProcess(config, log)
    try:
        served = await asyncio.to_thread(agent.wait_for_log, LOCAL_API_RE, WAIT_S)
        await asyncio.to_thread(agent.wait_for_log, r"by zeroconf at http://127\.0\.0\.1:", WAIT_S)
    except BaseException:
        agent.kill()  # after a failure: leave no agent behind
        raise
    return agent, served[1]


async def post(http: aiohttp.ClientSession, url: str, body: Any, status: int = 200) -> Any:
    async with http.post(url, json=body) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return data


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[str, str, str, str]]:
    """(hub id, agent id, agent token, reader token) of a hub process serving with advertise = true."""
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S001"])
        _, reader = await store.add_agent([], role="reader")
        hub_id = str((await store.health())["hub_id"])
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nadvertise = true\nshutdown_timeout_s = 1.0\n")
    served = HubProcess(tmp_path / "hub.log", "--config", str(config), db=db, port=0)
    await asyncio.to_thread(served.start)
    try:
        yield hub_id, agent_id, token, reader
    finally:
        served.close()


async def test_a_session_on_a_handheld_reaches_the_hub_found_by_zeroconf(
    tmp_path: Path, hub: tuple[str, str, str, str]
) -> None:
    hub_id, agent_id, token, reader = hub
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "S001"\ntoken = "{token}"\n'
        "[replicator]\ntick_s = 0.2\nretry_base_s = 0.05\nretry_max_s = 0.5\n"
        "[localapi]\nenabled = true\nport = 0\n"
        f'[localapi.staff]\nana = "{hash_pin("4711")}"\n'
        f'[discovery]\nenabled = true\nhub_id = "{hub_id}"\ninterfaces = ["127.0.0.1"]\nwait_s = 20\n'
    )
    runs: list[AgentProcess] = []
    try:
        await _session_survives_restart_and_reaches_the_hub(config, tmp_path / "agent.log", runs, reader)
    finally:
        for run in runs:
            run.kill()


async def _session_survives_restart_and_reaches_the_hub(
    config: Path, log: Path, runs: list[AgentProcess], reader: str
) -> None:
    async with (
        asyncio.timeout(WAIT_S * 2),
        aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
        ) as http,
    ):
        agent, url = await start_agent(config, log)
        runs.append(agent)
        await post(http, url + "/api/v1/login", {"staff": "ana", "pin": "4711"})
        opened = await post(http, url + "/api/v1/sessions", {"type": "receive", "ref": "DN-7"}, status=201)
        sid = opened["session"]["id"]
        await post(http, f"{url}/api/v1/sessions/{sid}/scans", {"sku": "SKU-1", "qty": 3}, status=201)
        assert await asyncio.to_thread(agent.stop) == 0

        agent, url = await start_agent(config, log)  # a restart signs everyone out but keeps the open session
        runs.append(agent)
        async with http.get(f"{url}/api/v1/sessions/{sid}") as resp:
            assert resp.status == 401
        await post(http, url + "/api/v1/login", {"staff": "ana", "pin": "4711"})
        async with http.get(f"{url}/api/v1/sessions/{sid}") as resp:
            view = await resp.json()
        assert (view["session"]["status"], view["units"]) == ("open", 3)
        closed = await post(http, f"{url}/api/v1/sessions/{sid}/close", {})
        assert closed["session"]["report"]["events"] == 1

        while True:  # the hub's count is what tells; nothing else in this process can be awaited
            async with http.get(f"{url}/api/v1/status") as resp:
                status = await resp.json()
            if status["sync_state"] == "ok" and status["backlog"] == 0:
                break
            await asyncio.sleep(0.1)
        assert status["hub_url"].startswith("http://127.0.0.1:")
        async with http.get(
            status["hub_url"] + "/v1/locations/S001/counts", headers={"Authorization": f"Bearer {reader}"}
        ) as resp:
            counts = (await resp.json())["counts"]
        assert [(c["sku"], c["on_hand"]) for c in counts] == [("SKU-1", 3)]
        async with http.get(
            status["hub_url"] + "/v1/ledger?sku=SKU-1", headers={"Authorization": f"Bearer {reader}"}
        ) as resp:
            [event] = (await resp.json())["events"]
        assert (event["kind"], event["ref"], event["attrs"]["by"]) == ("receive", "DN-7", "ana")
        assert await asyncio.to_thread(agent.stop) == 0
