"""One agent per drop folder (agent.pos.claim): another agent's watcher, a real process, holds the folder."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from filelock import FileLock, SoftFileLock

from agent.pos import DropFolderTaken, PosFolderWatcher
from tests.agent.pos.pos_helpers import SQUARE_UTF8, open_env
from tests.agent.pos.test_pos_watcher import WAIT_S, Reports, drop_folder, wait_until

OTHER_AGENT_WATCHING = """
import asyncio, sys
from pathlib import Path
from agent.outbox import Outbox
from agent.pos import PosFolderWatcher, PosImportConfig, PosImporter, PosStore

async def main(tmp: Path, folder: Path) -> None:
    async with (
        Outbox.open(tmp / "other.sqlite3", agent_id="store-2", location="S001") as outbox,
        PosStore.open(tmp / "other-pos.sqlite") as store,
        PosFolderWatcher(PosImporter(outbox, store, PosImportConfig()), folder, settle_s=0.05),
    ):
        print("watching", flush=True)
        await asyncio.sleep(120)

asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
"""


@pytest.fixture
async def other_agent(tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another agent's watcher on tmp_path/drop, in its own process with its own outbox."""
    folder = drop_folder(tmp_path)
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OTHER_AGENT_WATCHING, str(tmp_path), str(folder), stdout=asyncio.subprocess.PIPE
    )
    assert other.stdout is not None
    try:
        assert await asyncio.wait_for(other.stdout.readline(), WAIT_S) == b"watching\n"
        yield other
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()


async def test_a_second_agent_refuses_a_drop_folder_another_agent_watches(
    tmp_path: Path, other_agent: asyncio.subprocess.Process
) -> None:
    folder = tmp_path / "drop"
    async with open_env(tmp_path) as env:
        watcher = PosFolderWatcher(env.importer, folder, settle_s=0.05)
        with pytest.raises(DropFolderTaken) as refused:
            await watcher.start()
        assert str(refused.value) == (
            f"another shelfsync agent (agent 'store-2' on {socket.gethostname()} (process {other_agent.pid}))"
            f" already watches the POS drop folder {folder} (it holds {folder / '.shelfsync-watch.lock'}),"
            " and two agents watching one folder would count every row twice; give each agent its own drop"
            " folder, or set watch_dir on one of them only"
        )
        await watcher.stop()  # safe after a refused start
        (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        await wait_until(lambda: (folder / "processed" / "sales.csv").exists())  # the other agent took it
        assert await env.events() == ()  # and this one recorded nothing
        assert other_agent.returncode is None


@pytest.mark.skipif(
    FileLock is SoftFileLock, reason="without fcntl or msvcrt the lock is a plain file, which a killed process leaves"
)
async def test_a_claim_goes_with_a_killed_agent_and_the_next_one_takes_the_folder(
    tmp_path: Path, other_agent: asyncio.subprocess.Process
) -> None:
    folder = tmp_path / "drop"
    other_agent.kill()  # SIGKILL: no clean-up ran, its owner record stays behind
    await other_agent.wait()
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
        (folder / "more.csv").write_bytes(SQUARE_UTF8.read_bytes())
        report, _ = await reports.next()
        assert report.imported == 9
        assert json.loads((folder / ".shelfsync-watch.owner").read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert not (folder / ".shelfsync-watch.owner").exists()  # a clean stop removes its record
