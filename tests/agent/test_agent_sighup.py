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


def agent_config(path: Path, hub: FakeHub, *, agent_id: str = "store-1", location: str = "S001", token: str) -> Path:
    path.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "{location}"\ndata_dir = "data"\nhub_url = "{hub.url}"\n'
        f'token = "{token}"\n\n[replicator]\ntick_s = 0.2\nretry_base_s = 0.05\nretry_max_s = 0.2\n'
        "heartbeat_s = 0.2\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="this system has no SIGHUP")
async def test_a_reload_refuses_another_agents_credential_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    """A contractor copies another store's configuration over this one (another agent id, its token) and runs
    ``systemctl reload``. Before, the agent logged "Configuration reloaded" and sent this outbox's movements with
    the other agent's token, refused by the hub from then on (at the next restart the agent refuses the
    outbox of another agent id, exit 2); and a location changed and reloaded was said to be reloaded while the
    agent went on recording at the old one. Now the other agent's configuration is not taken, the running
    token stays and the agent goes on syncing, and what only a restart applies is named."""
    async with FakeHub() as hub:
        config = agent_config(tmp_path / "agent.toml", hub, token="token-1")
        outbox = tmp_path / "data" / "outbox.sqlite3"
        run = AgentProcess(config, tmp_path / "agent.log", None)
        try:
            await hub.wait_for(lambda: any(seen.status == 200 for seen in hub.requests), WAIT_S)
            agent_config(config, hub, agent_id="store-2", location="S002", token="token-2")
            run.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(run.wait_for_log, "Configuration not reloaded", WAIT_S)
            assert (
                f"Configuration not reloaded, the running one stays: {config} names agent 'store-2' with the outbox"
                f" {outbox}, and this agent runs as 'store-1' on its outbox {outbox}"
            ) in run.log
            seen = len(hub.requests)
            await hub.wait_for(lambda: any(s.status == 200 for s in hub.requests[seen:]), WAIT_S)
            assert all(s.token == "token-1" for s in hub.requests[seen:])

            agent_config(config, hub, location="S002", token="token-1")
            run.proc.send_signal(signal.SIGHUP)
            said = await asyncio.to_thread(run.wait_for_log, "only a restart applies: .*", WAIT_S)
            assert "[agent] location ('S001' → 'S002')" in said.group(0)
            assert "until then the agent runs with the settings it started with" in run.log
        finally:
            code = await asyncio.to_thread(run.stop)
        assert code == 0, run.log
