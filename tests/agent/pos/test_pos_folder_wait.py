"""A drop folder that cannot be used — read-only, not there yet, a share not mounted, or one that turns read-only or
drops away while watched — is waited for, said once, tried again every ``folder_retry_s``, and taken once it can be.

The read-only disks and shares are real tmpfs mounts (``tests.harness.small_disk.Mounts``: root on Linux).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock, SoftFileLock

from agent.pos import ImportReport, PosConfigError, PosFolderState, PosFolderWatcher, PosImportConfig
from tests.agent.pos.pos_helpers import SQUARE_UTF8, open_env
from tests.agent.pos.test_pos_watcher import Reports, wait_until
from tests.harness.small_disk import Mounts

RETRY_S = 0.05
# A claim let go on a read-only folder leaves a plain-file lock (no fcntl or msvcrt: tests/ops' Windows-like run)
# behind, which the same process then reads as another agent's; the operating systems' own locks go with the handle.
OS_LOCK = pytest.mark.skipif(FileLock is SoftFileLock, reason="without fcntl or msvcrt the lock is a plain file")
READ_ONLY = "Read-only file system"


def _waiting(folder: Path, problem: str = READ_ONLY, every: str = f"{RETRY_S:g}") -> str:
    return (
        f"The POS drop folder {folder} cannot be used ({problem}); the agent runs on without POS imports and tries "
        f"again every {every} s."
    )


def _usable(folder: Path) -> str:
    return f"The POS drop folder {folder} can be used now; watching it."


def test_the_folder_is_tried_again_every_30_s_unless_set() -> None:
    assert PosImportConfig.from_mapping({}).folder_retry_s == 30.0
    assert PosImportConfig.from_mapping({"folder_retry_s": 5}).folder_retry_s == 5.0
    with pytest.raises(PosConfigError, match=r"\[pos\] folder_retry_s must be a number from 0.1 to 3600, got 0"):
        PosImportConfig.from_mapping({"folder_retry_s": 0})


async def test_a_path_that_is_a_file_is_refused_at_start_in_one_sentence(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "drop.csv"
    not_a_folder.write_text("date,sku\n", encoding="utf-8")
    async with open_env(tmp_path) as env:
        watcher = PosFolderWatcher(env.importer, not_a_folder)
        with pytest.raises(PosConfigError) as refused:
            await watcher.start()
        await watcher.stop()  # safe after a refused start
    assert str(refused.value) == (
        f"[pos] watch_dir {not_a_folder} is a file, not a folder; name the folder the POS drops its exports into"
    )


async def test_a_read_only_folder_is_waited_for_said_once_and_its_exports_imported_once_writable(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    folder = mounts.tmpfs(tmp_path / "drop")
    (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
    mounts.read_only(folder)
    caplog.set_level(logging.INFO, logger="agent.pos")
    reports = Reports()
    async with open_env(tmp_path) as env:
        watcher = PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports, folder_retry_s=RETRY_S)
        tries = 0
        take = watcher._take_folder

        def counting() -> None:
            nonlocal tries
            tries += 1
            take()

        watcher._take_folder = counting  # type: ignore[method-assign]
        async with watcher:
            assert watcher.state() == PosFolderState(folder, "waiting_for_folder", READ_ONLY)
            await wait_until(lambda: tries >= 10)  # tried again and again, said once
            assert caplog.messages.count(_waiting(folder)) == 1
            assert await env.events() == () and reports.seen == []
            mounts.writable(folder)
            report, dest = await reports.next()
            assert watcher.state() == PosFolderState(folder, "watching", None)
        assert (report.imported, dest) == (9, folder / "processed" / "sales.csv")
        assert len(await env.events()) == 9
    assert caplog.messages.count(_usable(folder)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [_waiting(folder)]


async def test_a_folder_not_there_and_not_to_be_made_is_made_once_it_can_be(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    disk = mounts.tmpfs(tmp_path / "disk")
    mounts.read_only(disk)
    folder = disk / "pos" / "drop"
    caplog.set_level(logging.INFO, logger="agent.pos")
    reports = Reports()
    async with (
        open_env(tmp_path) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports, folder_retry_s=RETRY_S) as watcher,
    ):
        assert watcher.state().state == "waiting_for_folder"
        mounts.writable(disk)
        await wait_until(lambda: watcher.state().state == "watching")
        (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        report, _ = await reports.next()
        assert report.imported == 9
    assert caplog.messages.count(_waiting(folder)) == 1


async def test_the_default_retry_is_said_in_the_sentence(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    folder = mounts.tmpfs(tmp_path / "drop")
    mounts.read_only(folder)
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder) as watcher:
        assert watcher.state().problem == READ_ONLY
    assert caplog.messages.count(_waiting(folder, every="30")) == 1


@OS_LOCK
async def test_an_export_imported_as_its_folder_turns_read_only_is_filed_with_its_report_once_writable(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    # read-only while the agent runs: it imported, could not move the export out, and left it there until the
    # next start imported it again; now it waits for the folder and files it with the report of its import
    folder = mounts.tmpfs(tmp_path / "drop")
    caplog.set_level(logging.INFO, logger="agent.pos")
    reports = Reports()
    async with open_env(tmp_path) as env:
        real_import = env.importer.import_file

        async def import_then_read_only(path: Path, **kw: Any) -> ImportReport:
            report: ImportReport = await real_import(path, **kw)
            mounts.read_only_view(folder)
            return report

        env.importer.import_file = import_then_read_only  # type: ignore[method-assign]
        async with PosFolderWatcher(
            env.importer, folder, settle_s=0.05, on_report=reports, folder_retry_s=RETRY_S
        ) as watcher:
            (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
            first, where = await reports.next()
            assert (first.imported, where) == (9, folder / "sales.csv")  # imported, not movable
            await wait_until(lambda: watcher.state().state == "waiting_for_folder")
            env.importer.import_file = real_import  # type: ignore[method-assign]
            mounts.umount(folder)  # writable again
            report_path = folder / "processed" / "sales.csv.report.json"
            await wait_until(report_path.exists)
        saved = json.loads(report_path.read_text(encoding="utf-8"))
        assert (saved["imported"], saved["duplicates"]) == (9, 0)  # the report of its import, not of another
        assert not (folder / "sales.csv").exists()
        assert len(await env.events()) == 9
        assert len(reports.seen) == 1  # imported once
    assert caplog.messages.count(_waiting(folder)) == 1
    assert "sales.csv, imported before, is filed in processed/ now." in caplog.messages


@OS_LOCK
async def test_a_share_that_drops_away_is_waited_for_not_given_up(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    # the share's mount point on a read-only disk: the folder "replaced" by it could not be claimed, and the
    # watcher stopped for good ("… was replaced and this agent stops watching it")
    root = mounts.tmpfs(tmp_path / "root")
    (root / "share").mkdir()
    mounts.read_only(root)
    folder = root / "share"
    share = mounts.tmpfs(tmp_path / "server")
    mounts.bind(share, folder)
    caplog.set_level(logging.INFO, logger="agent.pos")
    reports = Reports()
    async with (
        open_env(tmp_path) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports, folder_retry_s=RETRY_S) as watcher,
    ):
        mounts.umount(folder)
        await wait_until(lambda: watcher.state().state == "waiting_for_folder")
        (share / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        mounts.bind(share, folder)
        report, dest = await reports.next()
        assert (report.imported, dest) == (9, folder / "processed" / "sales.csv")
    assert not any("stops watching" in m for m in caplog.messages)
    assert caplog.messages.count(_waiting(folder)) == 1


async def test_a_share_mounted_on_a_writable_mount_point_is_taken_as_a_new_folder(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    # a mount point the agent can write to looks like an empty folder until the share is mounted on it
    folder = tmp_path / "share"
    folder.mkdir()
    share = mounts.tmpfs(tmp_path / "server")
    (share / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
    caplog.set_level(logging.INFO, logger="agent.pos")
    reports = Reports()
    async with (
        open_env(tmp_path) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports, folder_retry_s=RETRY_S) as watcher,
    ):
        assert watcher.state().state == "watching"
        mounts.bind(share, folder)
        report, dest = await reports.next()
        assert (report.imported, dest) == (9, folder / "processed" / "sales.csv")
        assert json.loads((folder / ".shelfsync-watch.owner").read_text(encoding="utf-8"))["agent_id"] == "store-1"
    assert f"The POS drop folder {folder} was replaced by a new folder; watching the new one now." in caplog.messages
