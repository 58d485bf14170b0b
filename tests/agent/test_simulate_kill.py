"""SIGKILL the agent while it records: every movement it reported as recorded is in the outbox."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from agent import Outbox
from agent.simulate import TALLY
from protocol import parse_event_id

WAIT_S = 60.0
KILL_AFTER_LINES = 300


def config_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\n'
        f'\n[simulate]\ncount = {count}\nrate_per_s = 0\nbatch = 3\nskus = ["A", "B", "C"]\nseed = 11\n',
        encoding="utf-8",
    )
    return path


async def start(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(config),
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def read_lines(proc: asyncio.subprocess.Process, stop: int | str) -> list[str]:
    """Read stdout lines until ``stop`` lines were read, or a line equal to ``stop``."""
    assert proc.stdout is not None
    lines: list[str] = []

    async def read() -> None:
        while True:
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            assert line.endswith(b"\n"), f"stdout ended after {len(lines)} lines"
            lines.append(line.decode().rstrip("\n"))
            if lines[-1] == stop or len(lines) == stop:
                return

    await asyncio.wait_for(read(), WAIT_S)
    return lines


def parse(lines: list[str]) -> dict[bytes, tuple[str, str, str, int]]:
    recorded = {}
    for line in lines:
        word, event_id, location, sku, kind, qty = line.split()
        assert word == "recorded"
        recorded[parse_event_id(event_id)] = (location, sku, kind, int(qty))
    return recorded


async def test_sigkill_loses_no_movement_reported_as_recorded_and_the_simulation_resumes(tmp_path: Path) -> None:
    proc = await start(config_file(tmp_path, count=1_000_000))
    lines = await read_lines(proc, KILL_AFTER_LINES)
    proc.send_signal(signal.SIGKILL)
    rest, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == -signal.SIGKILL
    complete, _, _partial = rest.decode().rpartition("\n")  # a line cut by the kill was never reported
    lines += complete.splitlines()
    reported = parse(lines)
    assert len(reported) >= KILL_AFTER_LINES

    outbox_path = tmp_path / "data" / "outbox.sqlite3"
    async with Outbox.open(outbox_path, agent_id="store-1", location="S001") as outbox:
        stored = {ev.event_id: (ev.location, ev.sku, ev.kind.value, ev.qty) for ev in await outbox.pending(10_000_000)}
        tally = await outbox.tally(TALLY)
    for event_id, movement in reported.items():
        assert stored.get(event_id) == movement
    assert tally == len(stored)  # the resume point counts exactly what is on disk

    # restart with a total a little above what is on disk: it records only the difference
    total = tally + 25
    proc = await start(config_file(tmp_path, count=total))
    resumed = await read_lines(proc, f"simulation complete {total}")
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0
    assert len(parse(resumed[:-1])) == 25
    async with Outbox.open(outbox_path, agent_id="store-1", location="S001") as outbox:
        pending = await outbox.pending(10_000_000)
        assert [ev.seq for ev in pending] == list(range(1, total + 1))
        assert await outbox.tally(TALLY) == total
