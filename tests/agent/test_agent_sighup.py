"""``systemctl reload`` (SIGHUP) of a real ``python -m agent run`` process at any moment of its life.

The unit's ``ExecReload`` sends SIGHUP as soon as it is asked, and ``Type=exec`` counts the agent as started the
moment it is executed: a configuration tool that writes the file, starts the service and then reloads it sends
SIGHUP while the agent is still importing and reading its configuration.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from pathlib import Path

import pytest

from tests.agent.agent_fakehub import FakeHub
from tests.harness.agent_process import AgentProcess

WAIT_S = 30.0
POLL_S = 0.02


def feed_fifo(path: Path, text: str, run: AgentProcess, timeout_s: float = WAIT_S) -> None:
    """Write ``text`` to the FIFO ``path`` once the agent opens it to read; fails if the agent ends first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
        if not run.alive():
            raise AssertionError(f"the agent exited with {run.proc.returncode} before reading {path}: {run.log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent did not open {path} within {timeout_s:.0f} s: {run.log}")
        time.sleep(POLL_S)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="this system has no SIGHUP")
async def test_a_sighup_while_the_agent_starts_is_a_reload_not_its_end(tmp_path: Path) -> None:
    """Before, SIGHUP's default action ended the agent until the event loop watched it (about a second here,
    longer on a slow store PC): killed by SIGHUP, a clean signal to systemd, so ``Restart=on-failure`` did not
    start it again, and the store stopped syncing. The token is read from a FIFO, so the agent is caught
    reading its configuration for sure when the signal comes."""
    async with FakeHub() as hub:
        fifo = tmp_path / "token.fifo"
        os.mkfifo(fifo)
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\nhub_url = "{hub.url}"\n'
            'token_file = "token.fifo"\n\n[replicator]\ntick_s = 0.2\nretry_base_s = 0.05\nretry_max_s = 0.2\n',
            encoding="utf-8",
        )
        run = AgentProcess(config, tmp_path / "agent.log", None)
        try:
            fd = await asyncio.to_thread(os.open, fifo, os.O_WRONLY)  # returns once the agent opened it to read
            run.proc.send_signal(signal.SIGHUP)
            os.write(fd, b"token-1\n")
            os.close(fd)
            await asyncio.to_thread(run.wait_for_log, "Agent store-1 for location S001 started", WAIT_S)
            await asyncio.to_thread(feed_fifo, fifo, "token-1\n", run)  # the reload reads the file again
            await asyncio.to_thread(run.wait_for_log, "A SIGHUP came while the agent started", WAIT_S)
            await asyncio.to_thread(run.wait_for_log, "Configuration reloaded from", WAIT_S)
            await hub.wait_for(lambda: any(seen.status == 200 for seen in hub.requests), WAIT_S)
            assert run.alive()
        finally:
            code = await asyncio.to_thread(run.stop)
        assert code == 0, run.log

