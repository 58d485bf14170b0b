"""``python -m agent`` as a real subprocess: record, status, run with the simulator, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import Outbox
from protocol import parse_event_id
from tests.agent.agent_fakehub import FakeHub
from tests.harness.agent_process import AgentProcess

WAIT_S = 30.0


def config_file(tmp_path: Path, extra: str = "", *, hub: FakeHub | None = None, token: str = "token-1") -> Path:
    lines = ["[agent]", 'id = "store-1"', 'location = "S001"', 'data_dir = "data"']
    if hub is not None:
        lines += [
            f'hub_url = "{hub.url}"',
            f'token = "{token}"',
            "",
            "[replicator]",
            "tick_s = 0.2",
            "retry_base_s = 0.05",
            "retry_max_s = 0.2",
        ]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


async def agent(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as running:
        yield running


async def test_record_prints_the_event_id_and_status_prints_the_backlog(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    ids = []
    for qty in ("-1", "-2"):
        code, out, err = await agent(
            "record", "--config", str(config), "--sku", "SKU-9", "--kind", "sale", "--qty", qty
        )
        assert code == 0, err
        ids.append(parse_event_id(out.strip()))

    code, out, err = await agent("status", "--config", str(config))
    assert code == 3, err  # no agent runs on this outbox (docs/agent.md: status exit codes)
    assert "running      NO" in out
    assert "backlog      2 events waiting" in out
    assert "hub          not configured" in out
    assert "last sync    never" in out

    code, out, _ = await agent("status", "--config", str(config), "--json")
    report = json.loads(out)
    assert (report["backlog"], report["set_aside"], report["acked_seq"], report["agent_id"]) == (2, 0, 0, "store-1")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    assert [key for key in report if f"`{key}`" not in docs] == [], "status --json keys missing from docs/agent.md"

    async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id=None, location=None, create=False) as outbox:
        assert [(ev.event_id, ev.qty, ev.source) for ev in await outbox.pending(10)] == [
            (ids[0], -1, "api:cli"),
            (ids[1], -2, "api:cli"),
        ]


async def test_usage_and_configuration_errors_exit_2_runtime_failures_exit_1(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    code, _, err = await agent("status", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml does not exist" in err

    (tmp_path / "bad.toml").write_text('[agent]\nid = "a"\nlocation = "S"\nbogus = 1\n')
    code, _, err = await agent("run", "--config", str(tmp_path / "bad.toml"))
    assert code == 2 and "unknown key 'bogus' in [agent]" in err

    code, _, err = await agent("record", "--config", str(config), "--sku", "A", "--kind", "sold", "--qty", "-1")
    assert code == 2 and "invalid choice: 'sold'" in err

    code, _, err = await agent("status", "--config", str(config))  # nothing recorded yet: no outbox
    assert code == 1 and "there is no outbox at" in err

    code, _, err = await agent("record", "--config", str(config), "--sku", "A", "--kind", "sale", "--qty", "3")
    assert code == 2 and "a sale takes units away" in err

    # a book-out of goods received by mistake names the transfer it books out (the handheld page asks the same)
    mistake = ("--kind", "adjust", "--qty", "-2", "--reason", "received by mistake, sent on")
    code, _, err = await agent("record", "--config", str(config), "--sku", "A", *mistake)
    assert code == 2 and "needs that transfer's reference as its ref" in err and "--ref" in err, err
    spelled = ("--kind", "adjust", "--qty", "-2", "--reason", "Received by mistake,  sent on")  # a POS's capitals
    code, _, err = await agent("record", "--config", str(config), "--sku", "A", *spelled)
    assert code == 2 and "needs that transfer's reference as its ref" in err, err


async def test_a_data_dir_that_is_a_file_is_a_configuration_error_not_a_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "hostname"
    a_file.write_text("till-3\n", encoding="utf-8")
    config = tmp_path / "agent.toml"
    for key, value, sentence in (
        ("data_dir", a_file, f"data_dir must be a directory; {a_file} is a file"),
        ("data_dir", a_file / "data", f"data_dir {a_file / 'data'} cannot be made; {a_file} is a file"),
        ("outbox", a_file / "out.sqlite3", f"outbox {a_file / 'out.sqlite3'} cannot be made; {a_file} is a file"),
    ):
        config.write_text(f'[agent]\nid = "store-1"\nlocation = "S001"\n{key} = "{value}"\n', encoding="utf-8")
        code, _, err = await agent("run", "--config", str(config))
        assert (code, err.strip()) == (2, f"shelfsync-agent: {config}: [agent] {sentence}")


async def test_run_sends_the_simulation_to_the_hub_and_stops_cleanly_on_sigterm(tmp_path: Path, hub: FakeHub) -> None:
    config = config_file(tmp_path, '\n[simulate]\ncount = 40\nrate_per_s = 0\nbatch = 4\nskus = ["A", "B"]\n', hub=hub)
    run = AgentProcess(config, tmp_path / "agent.log", None, "--log-level", "debug")
    try:  # waited for in a thread: the fake hub answers from this loop meanwhile
        await asyncio.to_thread(run.wait_for_log, re.escape("The hub acknowledged up to seq 40 "), WAIT_S)
    finally:
        code = await asyncio.to_thread(run.stop)
    err = run.log.encode()
    assert code == 0, err.decode()
    lines = run.printed
    assert lines[-1] == "simulation complete 40"
    recorded = [line.split() for line in lines[:-1]]
    assert len(recorded) == 40 and all(r[0] == "recorded" and r[2] == "S001" for r in recorded)
    assert {parse_event_id(r[1]) for r in recorded} == set(hub.events)
    for sku in ("A", "B"):
        assert hub.on_hand("S001", sku) == sum(int(r[5]) for r in recorded if r[3] == sku)
    assert (
        f"Agent store-1 for location S001 started with outbox {tmp_path / 'data' / 'outbox.sqlite3'} and hub {hub.url}"
        in err.decode()
    )

    code, out_status, _ = await agent("status", "--config", str(config), "--json")
    report = json.loads(out_status)
    assert (code, report["backlog"], report["acked_seq"], report["sync_state"], report["hub_reachable_now"]) == (
        3,  # the agent was stopped above
        0,
        40,
        "ok",
        True,
    )


async def test_sighup_reloads_a_fixed_token(tmp_path: Path, hub: FakeHub) -> None:
    simulate = "\n[simulate]\ncount = 5\nrate_per_s = 0\n"
    config = config_file(tmp_path, simulate, hub=hub, token="wrong")
    run = AgentProcess(config, tmp_path / "agent.log")
    try:
        await hub.wait_for(lambda: any(seen.status == 401 for seen in hub.requests), WAIT_S)
        config_file(tmp_path, simulate, hub=hub, token="token-1")
        run.proc.send_signal(signal.SIGHUP)
        await hub.wait_for(lambda: len(hub.events) == 5, WAIT_S)
    finally:
        code = await asyncio.to_thread(run.stop)
    assert code == 0
    assert run.log.count("refused this agent's credentials") == 1
    assert "Configuration reloaded" in run.log


@pytest.mark.parametrize("argv", [("--confg", "agent.toml", "run"), ("--bogus",), ("-c", "status")])
async def test_an_option_before_the_command_is_named_not_taken_for_the_command(argv: tuple[str, ...]) -> None:
    """`--confg agent.toml run` said "invalid choice: 'agent.toml'", and `--bogus` said a command is required:
    neither named the option given, which belongs after the command."""
    code, _, err = await agent(*argv)
    assert code == 2 and f"{argv[0]} before the command" in err, err
