"""``shelfsync-agent run`` as a real process: it finds the hub by zeroconf, serves handhelds, keeps sessions over a restart."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.localapi import hash_pin
from hub import HubSettings, open_store, serve

WAIT_S = 30.0


class AgentProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.log: list[str] = []

    async def start(self) -> None:
        """Start it and wait until it has found the hub and serves the local API (both logged, in any order)."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--config", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        found = False
        self.url = ""
        while not (found and self.url):
            raw = await self.proc.stderr.readline()
            if not raw:
                raise AssertionError("the agent exited early:\n" + "".join(self.log))
            line = raw.decode()
            self.log.append(line)
            if match := re.search(r"Local API and handheld page at (http://127\.0\.0\.1:\d+)/", line):
                self.url = match.group(1)
            found = found or "by zeroconf at http://127.0.0.1:" in line

    async def kill(self) -> None:
        """After a failure: leave no agent behind."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        await self.proc.stderr.read()
        return await self.proc.wait()


async def post(http: aiohttp.ClientSession, url: str, body: Any, status: int = 200) -> Any:
    async with http.post(url, json=body) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return data


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[str, str, str, str]]:
    """(hub id, agent id, agent token, reader token) of a hub serving with advertise = true."""
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S001"])
        _, reader = await store.add_agent([], role="reader")
        hub_id = str((await store.health())["hub_id"])
    stop = asyncio.Event()
    settings = HubSettings(db=str(db), host="127.0.0.1", port=0, advertise=True, shutdown_timeout_s=1.0)
    serving = asyncio.create_task(serve(settings, stop))
    try:
        yield hub_id, agent_id, token, reader
    finally:
        stop.set()
        await serving


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
    agent = AgentProcess(config)
    try:
        await _session_survives_restart_and_reaches_the_hub(agent, reader)
    finally:
        await agent.kill()


async def _session_survives_restart_and_reaches_the_hub(agent: AgentProcess, reader: str) -> None:
    async with (
        asyncio.timeout(WAIT_S * 2),
        aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
        ) as http,
    ):
        await agent.start()
        await post(http, agent.url + "/api/v1/login", {"staff": "ana", "pin": "4711"})
        opened = await post(http, agent.url + "/api/v1/sessions", {"type": "receive", "ref": "DN-7"}, status=201)
        sid = opened["session"]["id"]
        await post(http, f"{agent.url}/api/v1/sessions/{sid}/scans", {"sku": "SKU-1", "qty": 3}, status=201)
        assert await agent.stop() == 0

        await agent.start()  # a restart signs everyone out but keeps the open session and its lines
        async with http.get(f"{agent.url}/api/v1/sessions/{sid}") as resp:
            assert resp.status == 401
        await post(http, agent.url + "/api/v1/login", {"staff": "ana", "pin": "4711"})
        async with http.get(f"{agent.url}/api/v1/sessions/{sid}") as resp:
            view = await resp.json()
        assert (view["session"]["status"], view["units"]) == ("open", 3)
        closed = await post(http, f"{agent.url}/api/v1/sessions/{sid}/close", {})
        assert closed["session"]["report"]["events"] == 1

        while True:  # the hub's count is what tells; nothing else in this process can be awaited
            async with http.get(f"{agent.url}/api/v1/status") as resp:
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
        assert await agent.stop() == 0
