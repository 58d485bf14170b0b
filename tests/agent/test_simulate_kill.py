"""SIGKILL the agent while it records: every movement it reported as recorded is in the outbox."""

from __future__ import annotations

import signal
from pathlib import Path

from agent import Outbox
from agent.simulate import TALLY
from protocol import parse_event_id
from tests.harness.agent_process import AgentProcess

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


def start(config: Path) -> AgentProcess:
    return AgentProcess(config, config.parent / "agent.log", None, "--log-level", "warning")


def parse(lines: list[str]) -> dict[bytes, tuple[str, str, str, int]]:
    recorded = {}
    for line in lines:
        word, event_id, location, sku, kind, qty = line.split()
        assert word == "recorded"
        recorded[parse_event_id(event_id)] = (location, sku, kind, int(qty))
    return recorded


async def test_sigkill_loses_no_movement_reported_as_recorded_and_the_simulation_resumes(tmp_path: Path) -> None:
    run = start(config_file(tmp_path, count=1_000_000))
    run.wait_for_printed(f"{KILL_AFTER_LINES} lines", lambda lines: len(lines) >= KILL_AFTER_LINES, WAIT_S)
    assert run.kill() == -signal.SIGKILL
    reported = parse(run.printed)  # whole lines only: a line cut by the kill was never reported
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
    run = start(config_file(tmp_path, count=total))
    run.wait_for_printed("the simulation completes", lambda lines: f"simulation complete {total}" in lines, WAIT_S)
    assert run.stop() == 0
    resumed = run.printed[: run.printed.index(f"simulation complete {total}") + 1]
    assert len(parse(resumed[:-1])) == 25
    async with Outbox.open(outbox_path, agent_id="store-1", location="S001") as outbox:
        pending = await outbox.pending(10_000_000)
        assert [ev.seq for ev in pending] == list(range(1, total + 1))
        assert await outbox.tally(TALLY) == total
