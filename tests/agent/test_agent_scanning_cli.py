"""``python -m agent`` as a real subprocess: scanners and the POS drop folder inside ``run``, ``import``, ``status``."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from protocol import Kind
from tests.agent.agent_scan_helpers import ContractHub, PtyDevice, eventually, gtin, wrong_check_digit
from tests.harness.agent_process import AgentProcess

WAIT_S = 30.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pos"
EAN13 = gtin("590123412345")
CASE = gtin("1" + EAN13[:-1])


def write_config(tmp_path: Path, extra: str, hub: ContractHub | None = None) -> Path:
    lines = ["[agent]", 'id = "store-1"', 'location = "S001"', 'data_dir = "data"']
    if hub is not None:
        lines += [f'hub_url = "{hub.url}"', f'token = "{hub.token}"', "", "[replicator]", "tick_s = 0.2",
                  "retry_base_s = 0.05", "retry_max_s = 0.2"]  # fmt: skip
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


async def start(config: Path) -> AgentProcess:
    """``shelfsync-agent run`` as a real process (its log in agent.log beside its config)."""
    return AgentProcess(config, config.parent / "agent.log", None, "--log-level", "debug")


async def wait_log(running: AgentProcess, needle: str) -> None:
    """Until the agent logs ``needle`` (in a thread: the fake hub answers from this loop meanwhile)."""
    await asyncio.to_thread(running.wait_for_log, re.escape(needle), WAIT_S)


@pytest.fixture
async def hub() -> AsyncIterator[ContractHub]:
    async with ContractHub() as running:
        yield running


async def outbox_events(tmp_path: Path) -> list[tuple[str, Kind, int, str]]:
    async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id=None, location=None, create=False) as outbox:
        return [(e.sku, e.kind, e.qty, e.source) for e in await outbox.pending(10_000)]


async def test_import_files_through_the_agent_cli(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[pos]\ntime_zone = "UTC"\n')
    code, out, err = await agent("import", "-c", str(config), str(FIXTURES / "generic.csv"), "--no-progress")
    assert code == 3, err  # imported, one row quarantined
    assert "generic.csv (generic, utf-8): 6 rows read, 5 imported, 0 already imported, 1 quarantined" in out
    events = await outbox_events(tmp_path)
    assert [(sku, kind, qty) for sku, kind, qty, _ in events] == [
        ("MUG-01", Kind.RECEIVE, 24), ("MUG-01", Kind.SALE, -1), ("MUG-01", Kind.SALE, -1),
        ("MUG-01", Kind.COUNT, 20), ("MUG-01", Kind.ADJUST, -2),
    ]  # fmt: skip

    code, out, _ = await agent("import", "-c", str(config), str(FIXTURES / "generic.csv"), "--json", "--no-progress")
    assert (code, json.loads(out)["duplicates"]) == (3, 5)  # a second import records nothing twice
    code, out, _ = await agent("import", "-c", str(config), "--report")
    assert code == 0 and "generic.csv line 7:" in out and "teleport" in out

    bad_mapping = tmp_path / "mapping.toml"
    bad_mapping.write_text('[pos]\nprofile = "nope"\n', encoding="utf-8")
    code, _, err = await agent(
        "import", "-c", str(config), "--mapping", str(bad_mapping), str(FIXTURES / "generic.csv")
    )
    assert code == 2 and "profile 'nope'" in err


async def test_run_watches_the_drop_folder_and_reports_observations_and_quarantine(
    tmp_path: Path, hub: ContractHub
) -> None:
    drop = tmp_path / "drop"
    config = write_config(tmp_path, f'[pos]\nwatch_dir = "{drop}"\nsettle_s = 0.1\n', hub)
    running = await start(config)
    try:
        await wait_log(running, "Watching")
        shutil.copyfile(FIXTURES / "shopify_inventory.csv", drop / "inventory.part")
        (drop / "inventory.part").rename(drop / "inventory.csv")
        shutil.copyfile(FIXTURES / "generic.csv", drop / "sales.csv")
        await hub.wait_for(lambda: len(hub.observations) >= 2 and len(hub.issues) >= 4, WAIT_S)
        await hub.wait_for(lambda: len(hub.synced) >= 5, WAIT_S)
        # A file moves to processed/ after its import, and its events may reach the hub before that.
        done = ["inventory.csv", "inventory.csv.report.json", "sales.csv", "sales.csv.report.json"]
        processed = drop / "processed"
        await eventually(lambda: processed.is_dir() and sorted(p.name for p in processed.iterdir()) == done)
    finally:
        code = await asyncio.to_thread(running.stop)
    assert code == 0, running.log
    assert sorted((o.location, o.sku, o.on_hand) for o in hub.observations.values()) == [
        ("S001", "MUG-01", 7),
        ("S001", "TEE-M-BLK", -2),
    ]
    assert sorted((x.file, x.line) for x in hub.issues.values()) == [
        ("inventory.csv", 3), ("inventory.csv", 6), ("inventory.csv", 7), ("sales.csv", 7),
    ]  # fmt: skip
    assert {e.sku for e in hub.synced} == {"MUG-01"}


async def test_run_books_scans_from_a_serial_reader_and_status_shows_the_reader(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "usb-Zebra_DS2208-if00")
    (tmp_path / "catalog.csv").write_text(
        f"barcode,sku,pack_size\n{EAN13},MUG-01,1\n{CASE},MUG-01,6\n", encoding="utf-8"
    )
    config = write_config(
        tmp_path,
        f'[catalog]\nfile = "catalog.csv"\n\n[[scanner]]\nid = "backdoor"\ntype = "serial"\nport = "{device.link}"\n'
        'mode = "receive"\nidle_gap_s = 0.2\nreconnect_initial_s = 0.05\nreconnect_max_s = 0.2\n',
    )
    running = await start(config)
    try:
        await wait_log(running, f"Scanner 'backdoor' opened {device.link}")
        device.write(f"]E0{EAN13}\r\n]I1{CASE}\r\n".encode())
        await wait_log(running, "Booked receive +6 of MUG-01 (a pack of 6) at S001.")
        device.write(f"{wrong_check_digit(EAN13)}\r\n".encode())
        await wait_log(running, "wrong check digit")
        code, out, err = await agent("status", "-c", str(config), "--json")
        assert code == 0, err
        [scanner] = json.loads(out)["scanners"]
        assert (scanner["reader_id"], scanner["available"], scanner["scans"], scanner["problems"]) == (
            "backdoor",
            True,
            3,
            1,
        )
        assert "wrong check digit" in scanner["last_problem"]
        code, text, _ = await agent("status", "-c", str(config))
        assert "scanner      backdoor available" in text and "1 not booked" in text

        device.unplug()
        await wait_log(running, "went away")
        code, out, _ = await agent("status", "-c", str(config), "--json")
        [scanner] = json.loads(out)["scanners"]
        assert scanner["available"] is False and scanner["error"]
        code, text, _ = await agent("status", "-c", str(config))
        [line] = [ln for ln in text.splitlines() if ln.startswith("scanner      backdoor")]
        assert "UNAVAILABLE" in line and "scans made until it is back are not read" in line, line
    finally:
        code = await asyncio.to_thread(running.stop)
        device.unplug()
    assert code == 0, running.log
    assert await outbox_events(tmp_path) == [
        ("MUG-01", Kind.RECEIVE, 1, "scanner:backdoor"),
        ("MUG-01", Kind.RECEIVE, 6, "scanner:backdoor"),
    ]


async def test_idle_gap_0_in_agent_toml_keeps_a_scan_paused_mid_line_one_scan(tmp_path: Path) -> None:
    """TOML has no null: `idle_gap_s = 0` turns the idle gap off, so a frame ends only at CR/LF and a scan that
    pauses mid-line (a slow device server) is one scan, not two unknown items."""
    device = PtyDevice(tmp_path / "usb-Zebra_DS2208-if00")
    (tmp_path / "catalog.csv").write_text(f"barcode,sku\n{EAN13},MUG-01\n", encoding="utf-8")
    config = write_config(
        tmp_path,
        f'[catalog]\nfile = "catalog.csv"\n\n[[scanner]]\nid = "backdoor"\ntype = "serial"\nport = "{device.link}"\n'
        'mode = "receive"\nidle_gap_s = 0\nreconnect_initial_s = 0.05\nreconnect_max_s = 0.2\n',
    )
    running = await start(config)
    try:
        await wait_log(running, f"Scanner 'backdoor' opened {device.link}")
        device.write(EAN13[:6].encode())
        await device.wait_read()
        await asyncio.sleep(0.3)  # six times the default idle gap, which would end the frame here
        device.write(f"{EAN13[6:]}\r\n".encode())
        await wait_log(running, "Booked receive +1 of MUG-01 at S001.")
    finally:
        code = await asyncio.to_thread(running.stop)
        device.unplug()
    assert code == 0, running.log
    assert await outbox_events(tmp_path) == [("MUG-01", Kind.RECEIVE, 1, "scanner:backdoor")]


async def test_run_refuses_to_start_with_a_catalog_file_that_cannot_be_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[catalog]\nfile = "missing.csv"\n')
    code, _, err = await agent("run", "-c", str(config))
    assert code == 1
    assert f"the catalog file {tmp_path / 'missing.csv'} does not exist" in err


async def test_a_second_agent_on_the_same_drop_folder_refuses_to_start_and_the_first_imports_alone(
    tmp_path: Path,
) -> None:
    drop = tmp_path / "share" / "drop"  # one folder, e.g. a network share, named by two agents' configurations
    agents = []
    for name, agent_id in (("a", "store-1"), ("b", "store-2")):
        (tmp_path / name).mkdir()
        config = tmp_path / name / "agent.toml"
        config.write_text(
            f'[agent]\nid = "{agent_id}"\nlocation = "S001"\ndata_dir = "data"\n\n'
            f'[pos]\nwatch_dir = "{drop}"\nsettle_s = 0.1\ntime_zone = "UTC"\n',
            encoding="utf-8",
        )
        agents.append(config)
    first = await start(agents[0])
    try:
        await wait_log(first, "Watching")
        second = await start(agents[1])
        code = await asyncio.to_thread(second.wait, WAIT_S)
        assert code == 3, second.log  # as for a second agent on one outbox
        assert (
            f"shelfsync-agent: another shelfsync agent (agent 'store-1' on {socket.gethostname()} (process"
            f" {first.pid})) already watches the POS drop folder {drop}"
        ) in second.log
        assert "Watching" not in second.log
        shutil.copyfile(FIXTURES / "generic.csv", drop / "sales.csv")
        await wait_log(first, "Imported the POS export sales.csv")
    finally:
        code = await asyncio.to_thread(first.stop)
    assert code == 0, first.log
    assert len(await outbox_events(tmp_path / "a")) == 5
    assert await outbox_events(tmp_path / "b") == []
