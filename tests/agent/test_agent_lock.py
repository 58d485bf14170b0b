"""One ``run`` per outbox (agent.lock): a real OS lock on a file beside the outbox, held by real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lock import AgentAlreadyRunning, agent_running, hold_agent_lock, lock_path
from agent.outbox import Outbox

HOLD = """
import sys, time
from pathlib import Path
from agent.lock import hold_agent_lock
with hold_agent_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(outbox: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(outbox)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_one_sentence_and_status_sees_the_first(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    assert not agent_running(outbox)
    holder = _holder(outbox)
    try:
        assert agent_running(outbox)
        with pytest.raises(AgentAlreadyRunning, match=r"^another shelfsync agent is already running on the outbox .*outbox\.sqlite3"):
            with hold_agent_lock(outbox, wait_s=0.1):
                pass
        assert holder.poll() is None  # the first is untouched
    finally:
        holder.kill()
        holder.wait(timeout=20)


def test_a_lock_left_by_sigkill_does_not_block_the_next_start(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    holder = _holder(outbox)
    holder.kill()  # SIGKILL: no clean-up ran
    holder.wait(timeout=20)
    assert lock_path(outbox).exists()
    assert not agent_running(outbox)
    started = time.monotonic()
    with hold_agent_lock(outbox):
        assert agent_running(outbox)  # held now, by this process
    assert time.monotonic() - started < 30


def test_the_lock_is_released_at_the_end_and_can_be_taken_again(tmp_path: Path) -> None:
    outbox = tmp_path / "sub" / "outbox.sqlite3"
    with hold_agent_lock(outbox) as path:
        assert path == lock_path(outbox) and path.exists()
    with hold_agent_lock(outbox, wait_s=0):
        pass


@pytest.mark.parametrize("command", [["record", "--sku", "SKU-1", "--kind", "receive", "--qty", "1"], ["import"]])
def test_record_and_import_do_not_make_a_new_outbox_where_a_running_agent_lost_its_own(
    tmp_path: Path, command: list[str]
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "{tmp_path.as_posix()}"\n')
    if command == ["import"]:
        export = tmp_path / "sales.csv"
        export.write_text("sku,qty,kind\nSKU-1,1,receive\n")
        command = ["import", "--profile", "generic", str(export)]
    holder = _holder(outbox)  # the agent runs; its outbox was deleted under it
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent", command[0], "--config", str(config), *command[1:]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait(timeout=20)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith(f"shelfsync-agent: there is no outbox at {outbox} although an agent runs on it")
    assert done.stderr.count("\n") == 1, f"one sentence, no traceback: {done.stderr}"
    assert not outbox.exists(), "no new outbox in the way of the one the agent writes back"


def test_record_beside_an_agent_still_starting_waits_for_its_outbox_and_records(tmp_path: Path) -> None:
    # run takes its lock a moment before it creates the outbox: a record in that moment is no deleted outbox
    outbox = tmp_path / "outbox.sqlite3"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "{tmp_path.as_posix()}"\n')
    holder = _holder(outbox)
    try:
        record = subprocess.Popen(
            [sys.executable, "-m", "agent", "record", "--config", str(config), "--sku", "SKU-1", "--kind", "receive",
             "--qty", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)  # the agent opens its outbox now (a record that refused at once has exited by then)
        assert record.poll() is None, "record waits for the starting agent's outbox"

        async def create() -> None:
            async with Outbox.open(outbox, agent_id="store-1", location="S001"):
                pass

        asyncio.run(create())
        _out, err = record.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait(timeout=20)
    assert record.returncode == 0 and err == "", err

    async def pending() -> list[tuple[str, int]]:
        async with Outbox.open(outbox, agent_id="store-1", location="S001") as box:
            return [(e.sku, e.qty) for e in await box.pending(10)]

    assert asyncio.run(pending()) == [("SKU-1", 2)]
