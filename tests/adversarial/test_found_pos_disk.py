"""A real agent whose POS drop folder sits on a full disk: it still starts, imports and files the exports.

The disk is a real 1 MiB tmpfs filled to its last block (mounting one needs
root on Linux; the test is skipped elsewhere), the agent a real
``python -m agent run`` process syncing to a real hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adversarial.pos_drop import HEADER, SETTLE_S, WAIT_S, export_row, skus_of
from tests.faults.helpers import Store, wait_until
from tests.harness.hub_process import HubProcess


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs) at tmp_path/disk; needs root to mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def _fill(disk: Path) -> None:
    with (disk / "ballast").open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full


def test_an_agent_whose_drop_folder_disk_is_full_still_starts_and_imports(
    hub: HubProcess, make_store: Callable[..., Store], small_disk: Path
) -> None:
    """The agent refused to start ("… .shelfsync-watch.owner cannot be written (No space left on device)"),
    scanners and sync included, for a record that only names the folder's holder; and left a .tmp behind."""
    hub.start()
    store = make_store(hub, hub.url)
    drop = small_disk / "drop"
    for sub in ("processed", "failed"):
        (drop / sub).mkdir(parents=True)  # a folder in use for a while
    (drop / "sales.csv").write_text(HEADER + "".join(export_row(i) for i in range(5)), encoding="utf-8")
    _fill(small_disk)
    with store.config.open("a") as config:
        config.write(f'\n[pos]\nwatch_dir = "{drop}"\nsettle_s = {SETTLE_S}\nprofile = "generic"\n')
    agent = store.start()

    def filed() -> bool:
        assert agent.alive(), f"the agent stopped: {agent.log[-2000:]}"
        return (drop / "processed" / "sales.csv").exists()

    wait_until("the export is imported and filed", filed, WAIT_S)
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in range(5)}
    assert agent.alive()
    assert ".shelfsync-watch.owner cannot be written there (No space left on device)" in agent.log
    assert [p.name for p in drop.iterdir() if p.name.endswith(".tmp")] == []
