"""A real agent whose POS drop folder sits on a full disk: it still starts, imports and files the exports.

The disk is a real 1 MiB tmpfs filled to its last block (mounting one needs
root on Linux; the test is skipped elsewhere), the agent a real
``python -m agent run`` process syncing to a real hub.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.adversarial.pos_drop import HEADER, SETTLE_S, WAIT_S, export_row, skus_of
from tests.faults.helpers import Store, wait_until
from tests.harness.hub_process import HubProcess
from tests.harness.small_disk import fill


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
    fill(small_disk)
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
