"""Real PostgreSQL hub processes sharing one database with settings that judge events differently are told so.

Each hub judges a store's events by its own settings: one with ``clock_window_s = 60`` holds in quarantine what a
hub with the default day applies, and a channel's ``buffer`` decides what its pusher shows, whichever hub pushes.
A hub started with settings that differ from another running hub's logs one WARNING per setting, naming both values
and the other hub (``HOST:PID``, as its sessions' application_name), and every hub's ``GET /v1/status`` shows the
difference for as long as both run. A hub that is no longer running (killed: its row stays behind) is no other hub.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.channels.emulators.square import SquareEmulator
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.pg import fresh_schema

BOUND_S = 30.0
POLL_S = 0.1


@pytest.fixture
async def pg_db(pg_server: str) -> AsyncIterator[str]:
    async with fresh_schema("hs") as url:
        yield url


def _config(path: Path, clock_window_s: int, square: SquareEmulator, location_id: str, buffer: int) -> Path:
    path.write_text(
        f"[hub]\nclock_window_s = {clock_window_s}\n\n"
        f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
        f'pool = {{ S1 = "{location_id}" }}\nbuffer = {buffer}\n',
        encoding="utf-8",
    )
    return path


def _hub(tmp_path: Path, name: str, config: Path, pg_db: str) -> HubProcess:
    return HubProcess(tmp_path / f"{name}.log", "--config", str(config), db=pg_db, port=free_port())


def _differ(hub: HubProcess, reader: Credential) -> list[dict[str, Any]]:
    found = get_json(f"{hub.url}/v1/status", reader.token)["settings_differ"]
    assert isinstance(found, list)
    return found


async def _until(what: str, check: Any) -> None:
    async with asyncio.timeout(BOUND_S):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(POLL_S)


def _warnings(hub: HubProcess) -> list[str]:
    return [line for line in hub.log.splitlines() if "WARNING" in line and "differ" in line]


async def test_a_hub_started_with_other_settings_than_a_running_hub_says_so_and_both_show_it(
    tmp_path: Path, pg_db: str, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUARE_TOKEN", square.token)
    location_id = square.add_location()
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    first = _hub(tmp_path, "hub-1", _config(tmp_path / "hub-1.toml", 86_400, square, location_id, 1), pg_db)
    second = _hub(tmp_path, "hub-2", _config(tmp_path / "hub-2.toml", 60, square, location_id, 2), pg_db)
    same = _hub(tmp_path, "hub-3", _config(tmp_path / "hub-3.toml", 86_400, square, location_id, 1), pg_db)
    host = socket.gethostname()
    try:
        await asyncio.to_thread(first.start)
        assert _warnings(first) == [] and await asyncio.to_thread(_differ, first, reader) == []
        await asyncio.to_thread(second.start)
        said = _warnings(second)
        assert len(said) == 2, said
        by_setting = {
            "clock_window_s": ("60", "86400"),
            "channel pickup buffer": ("units 2", "units 1"),
        }
        for setting, (here, there) in by_setting.items():
            (line,) = [s for s in said if f"differ in {setting}:" in s]
            assert f"{here} at this hub" in line and f"{there} at hub {host}:{first.pid}" in line, line
        shown = await asyncio.to_thread(_differ, second, reader)
        assert sorted((d["setting"], d["this_hub"], d["other_hub"], d["hub"]) for d in shown) == [
            ("channel pickup buffer", "units 2", "units 1", f"{host}:{first.pid}"),
            ("clock_window_s", "60", "86400", f"{host}:{first.pid}"),
        ]
        assert all(d["message"] for d in shown)
        # The hub that ran first shows it too, from where it stands; it logged nothing, being already running.
        shown = await asyncio.to_thread(_differ, first, reader)
        assert sorted((d["setting"], d["this_hub"], d["other_hub"], d["hub"]) for d in shown) == [
            ("channel pickup buffer", "units 1", "units 2", f"{host}:{second.pid}"),
            ("clock_window_s", "86400", "60", f"{host}:{second.pid}"),
        ]
        assert _warnings(first) == []

        await asyncio.to_thread(same.start)  # the first's settings: it differs only from the second
        said = _warnings(same)
        assert len(said) == 2 and all(f"at hub {host}:{second.pid}" in s for s in said), said

        await asyncio.to_thread(second.stop)
        await _until("the first hub no longer shows the stopped one", lambda: _differ(first, reader) == [])
        assert await asyncio.to_thread(_differ, same, reader) == []
    finally:
        for hub in (first, second, same):
            hub.close()
    for hub in (first, second, same):
        assert "Traceback" not in hub.log


async def test_a_hub_that_was_killed_is_not_taken_for_a_running_one(
    tmp_path: Path, pg_db: str, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub killed (SIGKILL, a power cut) leaves its row behind: its sessions are gone, so it is not running, and
    a hub started afterwards with other settings says nothing of it."""
    monkeypatch.setenv("SQUARE_TOKEN", square.token)
    location_id = square.add_location()
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    host = socket.gethostname()
    killed = _hub(tmp_path, "hub-1", _config(tmp_path / "hub-1.toml", 60, square, location_id, 1), pg_db)
    later = _hub(tmp_path, "hub-2", _config(tmp_path / "hub-2.toml", 86_400, square, location_id, 1), pg_db)
    try:
        await asyncio.to_thread(killed.start)
        pid = killed.pid
        await asyncio.to_thread(killed.kill)
        conn = await asyncpg.connect(pg_db)
        try:  # the server ends a killed client's sessions as the kernel closes their sockets: at once, here
            async with asyncio.timeout(BOUND_S):
                while await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", f"% {host}:{pid} %"
                ):
                    await asyncio.sleep(POLL_S)
            assert await conn.fetchval("SELECT name FROM hub_processes") == f"{host}:{pid}"  # left behind
            await asyncio.to_thread(later.start)
            assert _warnings(later) == []
            assert await asyncio.to_thread(_differ, later, reader) == []
            assert await conn.fetchval("SELECT name FROM hub_processes") == f"{host}:{later.pid}"  # the other gone
        finally:
            await conn.close()
    finally:
        for hub in (killed, later):
            hub.close()
