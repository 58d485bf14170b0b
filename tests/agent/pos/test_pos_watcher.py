"""The drop folder: files are taken once settled, imported once, and filed with a report."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Outbox
from agent.pos import ImportReport, PosFolderWatcher, PosImportConfig
from agent.pos import watcher as watcher_module
from protocol import wall_ms_now
from tests.agent.pos.pos_helpers import LOCATION, SHOPIFY, SQUARE_UTF8, open_env
from tests.harness.small_disk import fill

WAIT_S = 30.0  # bound on every wait for the watcher; never reached when things work


class Reports:
    """Collects the watcher's reports; ``next()`` awaits the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[ImportReport, Path]] = asyncio.Queue()
        self.seen: list[tuple[ImportReport, Path]] = []

    def __call__(self, report: ImportReport, dest: Path) -> None:
        self.seen.append((report, dest))
        self.queue.put_nowait((report, dest))

    async def next(self) -> tuple[ImportReport, Path]:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)


def drop_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


async def test_a_file_written_slowly_is_taken_only_once_it_settles(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    data = SQUARE_UTF8.read_bytes()
    async with open_env(tmp_path) as env:
        calls: list[int] = []
        real_import = env.importer.import_file

        async def counting_import(path: Path, **kw: Any) -> ImportReport:
            calls.append(path.stat().st_size)
            report: ImportReport = await real_import(path, **kw)
            return report

        env.importer.import_file = counting_import
        async with PosFolderWatcher(env.importer, folder, settle_s=1.0, on_report=reports):
            target = folder / "square-export.csv"
            chunk = len(data) // 8 + 1
            with target.open("wb") as f:
                for start in range(0, len(data), chunk):  # a POS writing its export over ~0.4 s
                    f.write(data[start : start + chunk])
                    f.flush()
                    await asyncio.sleep(0.05)
            report, dest = await reports.next()
        assert calls == [len(data)]  # read once, complete
        assert (report.rows_read, report.imported, report.quarantined) == (15, 9, 5)
        assert dest == folder / "processed" / "square-export.csv" and dest.read_bytes() == data
        saved = json.loads((folder / "processed" / "square-export.csv.report.json").read_text(encoding="utf-8"))
        assert (saved["rows_read"], saved["imported"], saved["duplicates"], saved["quarantined"]) == (15, 9, 0, 5)
        assert [(q["line"], q["reason"][:14]) for q in saved["quarantine"]][:2] == [(7, "Qty '0.5' kg i"), (9, "Qty 'two' is n")]
        assert not target.exists()
        assert len(await env.events()) == 9


async def test_a_temporary_name_is_ignored_until_renamed(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.2, on_report=reports):
        partial = folder / "export.csv.part"
        partial.write_bytes(SQUARE_UTF8.read_bytes()[:500])
        (folder / "notes.xlsx").write_bytes(b"not an export")
        await asyncio.sleep(0.5)  # the writer is slow; nothing may be taken meanwhile
        assert reports.seen == []
        partial.write_bytes(SQUARE_UTF8.read_bytes())
        os.replace(partial, folder / "export.csv")
        report, dest = await reports.next()
        assert dest.name == "export.csv" and report.imported == 9
        assert (folder / "notes.xlsx").exists() and len(reports.seen) == 1


async def test_the_same_file_dropped_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        first, first_dest = await reports.next()
        events = await env.events()
        (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        second, second_dest = await reports.next()
        assert (first.imported, first.duplicates) == (9, 0)
        assert (second.imported, second.duplicates, second.quarantined) == (0, 9, 5)
        assert await env.events() == events
        assert await env.store.quarantine_count() == 5
        assert (first_dest.name, second_dest.name) == ("sales.csv", "sales.1.csv")
        assert sorted(p.name for p in (folder / "processed").iterdir()) == [
            "sales.1.csv", "sales.1.csv.report.json", "sales.csv", "sales.csv.report.json",
        ]


async def test_a_stock_count_export_dropped_again_as_a_fresh_copy_keeps_its_first_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Shopify inventory export carries no time: its counts are dated by the file's. The same export copied in
    again a week later (from an email, a USB stick) has a new file time; its old counts must not come back dated
    then, overriding counts taken since (latest count wins on the hub). A newer export with other counts does."""
    folder = drop_folder(tmp_path)
    reports = Reports()
    config = PosImportConfig.from_mapping({"locations": {"Main Street": "S001", "Warehouse": "W001"}})
    week_ago_s = wall_ms_now() // 1000 - 7 * 86400
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        staged = tmp_path / "inventory.csv"
        shutil.copyfile(SHOPIFY, staged)
        os.utime(staged, (week_ago_s, week_ago_s))
        os.replace(staged, folder / "inventory.csv")
        first, _ = await reports.next()
        assert (first.observations, first.observation_duplicates) == (3, 0)
        taken_ms = {o.observed_at_ms for _, o in await env.store.pending_observations()}
        assert taken_ms == {week_ago_s * 1000}
        # a week later: the same export, saved from the email under another name, with today's file time
        caplog.set_level(logging.INFO, logger="agent.pos")
        (folder / "inventory (1).csv").write_bytes(SHOPIFY.read_bytes())
        again, again_dest = await reports.next()
        assert (again.status, again.observations, again.observation_duplicates) == ("imported", 0, 3)
        assert again_dest.parent.name == "processed"
        assert {o.observed_at_ms for _, o in await env.store.pending_observations()} == taken_ms
        said = [r.getMessage() for r in caplog.records if "same content" in r.getMessage()]
        assert len(said) == 1 and "export inventory (1).csv has the same content as inventory.csv," in said[0], said
        # a newer export with other counts is dated by its own file time
        newer = SHOPIFY.read_bytes().replace(b"Main Street,0,0,1,6,7", b"Main Street,0,0,1,6,5")
        (folder / "inventory-new.csv").write_bytes(newer)
        fresh, _ = await reports.next()
        assert (fresh.observations, fresh.observation_duplicates) == (3, 0)
        latest = [o for _, o in await env.store.pending_observations() if o.observed_at_ms > week_ago_s * 1000]
        assert sorted((o.sku, o.location, o.on_hand) for o in latest)[:2] == [("MUG-01", "S001", 5), ("MUG-01", "W001", 40)]


async def test_files_already_there_at_start_are_imported(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    (folder / "waiting.csv").write_bytes(SQUARE_UTF8.read_bytes())
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        report, _ = await reports.next()
        assert report.imported == 9


async def test_unreadable_files_go_to_failed_with_the_reason(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        (folder / "mystery.csv").write_text("Colour,Size\nred,XL\n", encoding="utf-8")
        report, dest = await reports.next()
    assert report.status == "failed"
    assert dest == folder / "failed" / "mystery.csv"
    saved = json.loads((folder / "failed" / "mystery.csv.report.json").read_text(encoding="utf-8"))
    assert saved["status"] == "failed" and "matches no import profile" in saved["error"]


async def test_outbox_failures_back_off_warn_once_and_recover(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path) as env:
        broken = await Outbox.open(tmp_path / "other.sqlite3", agent_id="store-1", location=LOCATION)
        await broken.close()
        healthy = env.importer.outbox
        env.importer.outbox = broken  # every import now fails: the outbox is closed
        attempts: list[int] = []
        real_import = env.importer.import_file

        async def failing_then_fixed(path: Path, **kw: Any) -> ImportReport:
            attempts.append(1)
            if len(attempts) == 3:
                env.importer.outbox = healthy
            report: ImportReport = await real_import(path, **kw)
            return report

        env.importer.import_file = failing_then_fixed
        async with PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports, retry_base_s=0.05, retry_max_s=0.2):
            (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
            report, dest = await reports.next()
        assert len(attempts) == 3 and report.imported == 9 and dest.parent.name == "processed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "Importing sales.csv failed, retrying with backoff" in w]) == 1
    assert len([r for r in caplog.records if "POS imports work again after 2 failed attempts" in r.getMessage()]) == 1


async def test_stop_is_safe_twice_and_cancels_cleanly(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    async with open_env(tmp_path) as env:
        watcher = PosFolderWatcher(env.importer, folder, settle_s=0.1)
        await watcher.start()
        assert (folder / "processed").is_dir() and (folder / "failed").is_dir()
        await watcher.stop()
        await watcher.stop()


def test_patterns_come_from_the_configuration(tmp_path: Path) -> None:
    class Importer:
        config = PosImportConfig.from_mapping({"patterns": ["*.CSV"], "settle_s": 5})

    watcher = PosFolderWatcher(Importer(), tmp_path)  # type: ignore[arg-type]
    assert watcher.settle_s == 5
    assert watcher._wanted(tmp_path / "a.csv") and not watcher._wanted(tmp_path / "a.txt")
    assert not watcher._wanted(tmp_path / ".a.csv") and not watcher._wanted(tmp_path / "sub" / "a.csv")


async def test_an_unexpected_error_files_the_export_as_failed_and_watching_goes_on(tmp_path: Path) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env:
        real_import = env.importer.import_file

        async def surprising(path: Path, **kw: Any) -> ImportReport:
            if path.name == "first.csv":
                raise RuntimeError("a bug")
            report: ImportReport = await real_import(path, **kw)
            return report

        env.importer.import_file = surprising
        async with PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
            (folder / "first.csv").write_bytes(SQUARE_UTF8.read_bytes())
            report, dest = await reports.next()
            assert (report.status, report.error, dest.parent.name) == ("failed", "unexpected error: RuntimeError('a bug')", "failed")
            (folder / "second.csv").write_bytes(SQUARE_UTF8.read_bytes())
            report, dest = await reports.next()
            assert (report.imported, dest.parent.name) == (9, "processed")


async def test_a_file_moved_away_during_its_import_is_warned_about_and_the_next_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = drop_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path) as env:
        real_import = env.importer.import_file
        watcher = PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports)

        async def moved_away_meanwhile(path: Path, **kw: Any) -> ImportReport:
            report: ImportReport = await real_import(path, **kw)
            if path.name == "moved.csv":  # someone takes the file while the import is under way
                os.replace(path, elsewhere / path.name)
                async with asyncio.timeout(WAIT_S):
                    while path in watcher._pending:  # the folder notification has been seen
                        await asyncio.sleep(0.02)
            return report

        env.importer.import_file = moved_away_meanwhile
        async with watcher:
            (folder / "moved.csv").write_bytes(SQUARE_UTF8.read_bytes())
            report, dest = await reports.next()
            assert (report.file_name, report.imported, dest) == ("moved.csv", 9, folder / "moved.csv")
            (folder / "after.csv").write_bytes(SQUARE_UTF8.read_bytes())
            report, dest = await reports.next()
            assert (report.imported, report.duplicates, dest.parent.name) == (0, 9, "processed")
        assert len(await env.events()) == 9
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
    messages = [r.getMessage() for r in caplog.records]
    assert f"moved.csv disappeared from {folder} while it was being imported; its rows are recorded." in messages
    assert (elsewhere / "moved.csv").exists() and not (folder / "processed" / "moved.csv").exists()


PAUSING_WRITER = """
import datetime as dt, sys
now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
day, hhmm = now.strftime("%Y-%m-%d"), now.strftime("%H:%M")
with open(sys.argv[1], "w", encoding="utf-8") as f:  # one handle, open from the first row to the last
    f.write("date,time,sku,qty,kind,ref\\n")
    for i in range(10):
        f.write(f"{day},{hhmm},MUG-01,1,receive,r-{i}\\n")
    if sys.argv[2:] == ["bad"]:
        f.write(f"{day},{hhmm},MUG-01,many,receive,bad-1\\n")
    f.flush()
    print("paused", flush=True)
    sys.stdin.readline()  # the POS pauses longer than settle_s, then goes on writing
    for i in range(10, 20):
        f.write(f"{day},{hhmm},MUG-01,1,receive,r-{i}\\n")
    if sys.argv[2:] == ["bad"]:
        f.write(f"{day},{hhmm},MUG-01,lots,receive,bad-2\\n")
print("done", flush=True)
"""


async def test_a_file_written_to_after_it_was_filed_is_imported_again_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = drop_folder(tmp_path)
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.2, on_report=reports):
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PAUSING_WRITER, str(folder / "paused.csv"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert writer.stdin is not None and writer.stdout is not None
        try:
            assert await asyncio.wait_for(writer.stdout.readline(), WAIT_S) == b"paused\n"
            first, dest = await reports.next()  # the pause looked like the end: taken with 10 rows
            assert (first.rows_read, first.imported, dest) == (10, 10, folder / "processed" / "paused.csv")
            writer.stdin.write(b"go on\n")
            await writer.stdin.drain()
            assert await asyncio.wait_for(writer.stdout.readline(), WAIT_S) == b"done\n"
            second, again = await reports.next()
        finally:
            if writer.returncode is None:
                writer.kill()
            await writer.wait()
        # its rows 11 to 20 alone were read, from where the first import ended; the report counts the whole file
        assert (second.file_name, second.rows_read, second.imported, second.duplicates) == ("paused.csv", 20, 20, 0)
        assert again == dest and len(dest.read_text(encoding="utf-8").splitlines()) == 21
        saved = json.loads((folder / "processed" / "paused.csv.report.json").read_text(encoding="utf-8"))
        assert (saved["rows_read"], saved["imported"], saved["duplicates"]) == (20, 20, 0)
        assert len(await env.events()) == 20  # every row once
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "paused.csv changed after it was imported and filed in processed/; it was imported again"
            " and 10 more rows were recorded."
        )
    ]


async def test_a_bad_row_of_a_file_imported_again_is_quarantined_and_reported_once(tmp_path: Path) -> None:
    """The file grew after it was filed: its bad row from the first import is the same row, not a new one."""
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.2, on_report=reports):
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PAUSING_WRITER, str(folder / "paused.csv"), "bad",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert writer.stdin is not None and writer.stdout is not None
        try:
            assert await asyncio.wait_for(writer.stdout.readline(), WAIT_S) == b"paused\n"
            first, _ = await reports.next()
            assert (first.rows_read, first.imported, first.quarantined) == (11, 10, 1)
            writer.stdin.write(b"go on\n")
            await writer.stdin.drain()
            assert await asyncio.wait_for(writer.stdout.readline(), WAIT_S) == b"done\n"
            second, _ = await reports.next()
        finally:
            if writer.returncode is None:
                writer.kill()
            await writer.wait()
        # The file's report counts every bad row it holds; the store keeps, and the hub hears of, each once.
        assert (second.rows_read, second.imported, second.duplicates, second.quarantined) == (22, 20, 0, 2)
        assert [q.line for q in second.quarantine] == [12, 23]
        kept = await env.store.quarantined()
        assert sorted((q.line, q.raw.rsplit(",", 1)[-1]) for q in kept) == [(12, "bad-1"), (23, "bad-2")]
        assert len(await env.store.pending_quarantine()) == 2


async def wait_until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not done():
            await asyncio.sleep(0.05)


async def test_a_drop_folder_replaced_by_a_new_one_is_watched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "RESCAN_S", 3600.0)  # no listing after the first: only notifications
    folder = drop_folder(tmp_path)
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    replaced = f"The POS drop folder {folder} was replaced by a new folder; watching the new one now."
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
        (folder / "before.csv").write_bytes(SQUARE_UTF8.read_bytes())
        await reports.next()
        os.replace(folder, tmp_path / "drop.old")  # mv drop drop.old; mkdir drop
        folder.mkdir()
        await wait_until(lambda: replaced in [r.getMessage() for r in caplog.records])
        (folder / "after.csv").write_bytes(SQUARE_UTF8.read_bytes())
        report, dest = await reports.next()
        assert (report.duplicates, dest) == (9, folder / "processed" / "after.csv")
        owner = json.loads((folder / ".shelfsync-watch.owner").read_text(encoding="utf-8"))
        assert owner["pid"] == os.getpid()  # the new folder is claimed too
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [replaced]
    assert (tmp_path / "drop.old" / "processed" / "before.csv").exists()


async def test_a_drop_folder_deleted_and_made_again_is_watched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rm -rf drop; mkdir drop: the notifications armed on the old folder were still running when the watcher
    # re-armed, and cancelling them set the stop event watchfiles had been given, the watcher's own: it stopped
    # importing for good without a word
    monkeypatch.setattr(watcher_module, "RESCAN_S", 0.2)
    folder = drop_folder(tmp_path)
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    replaced = f"The POS drop folder {folder} was replaced by a new folder; watching the new one now."
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
        (folder / "before.csv").write_bytes(SQUARE_UTF8.read_bytes())
        await reports.next()
        shutil.rmtree(folder)
        await wait_until(lambda: any("cannot be listed" in r.getMessage() for r in caplog.records))
        folder.mkdir()
        await wait_until(lambda: replaced in [r.getMessage() for r in caplog.records])
        (folder / "after.csv").write_bytes(SQUARE_UTF8.read_bytes())
        report, dest = await reports.next()
        assert (report.duplicates, dest) == (9, folder / "processed" / "after.csv")


async def test_a_drop_folder_gone_for_a_while_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "RESCAN_S", 0.01)
    folder = drop_folder(tmp_path)
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path) as env:
        watcher = PosFolderWatcher(env.importer, folder, settle_s=0.05)
        listings = 0
        rescan = watcher._rescan

        def counting(now: float) -> None:
            nonlocal listings
            listings += 1
            rescan(now)

        monkeypatch.setattr(watcher, "_rescan", counting)
        async with watcher:
            await wait_until(lambda: listings > 0)
            shutil.rmtree(folder)
            gone_at = listings
            await wait_until(lambda: listings > gone_at + 20)  # twenty listings while it is gone
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"The POS drop folder {folder} cannot be listed: No such file or directory"]


async def test_a_drop_folder_replaced_by_a_link_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rm -rf drop; ln -s /somewhere drop: followed, the agent imported the exports of any folder on the computer
    # and moved them into a processed/ it made there
    monkeypatch.setattr(watcher_module, "RESCAN_S", 0.05)
    folder = drop_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.csv").write_bytes(SQUARE_UTF8.read_bytes())
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    refused = (
        f"The POS drop folder {folder} was replaced by a symbolic link (to '{elsewhere}'); the agent does not "
        "follow it and imports nothing until a real folder is there again."
    )
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
        shutil.rmtree(folder)
        folder.symlink_to(elsewhere)
        await wait_until(lambda: refused in caplog.messages)
        folder.unlink()
        folder.mkdir()
        (folder / "after.csv").write_bytes(SQUARE_UTF8.read_bytes())
        report, dest = await reports.next()
        booked = await env.events()
    assert (report.file_name, dest) == ("after.csv", folder / "processed" / "after.csv")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.csv"], "nothing made, moved or read there"
    assert caplog.messages.count(refused) == 1
    assert len(booked) == report.imported  # after.csv's rows only


async def test_a_report_a_full_disk_refuses_is_written_once_there_is_room(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = small_disk / "drop"
    folder.mkdir()
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        staged = small_disk / "staged.csv"
        staged.write_bytes(SQUARE_UTF8.read_bytes())
        ballast = fill(small_disk)
        os.replace(staged, folder / "export.csv")  # a rename needs no room; the report after the import does
        report, dest = await reports.next()
        assert report.imported == 9 and dest == folder / "processed" / "export.csv" and dest.exists()
        assert not (folder / "processed" / "export.csv.report.json").exists()
        assert list((folder / "processed").glob("*.tmp")) == [], "no report left half-written"
        refused = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        said = (
            "export.csv is filed in processed/ but its report cannot be written there (No space left on device); "
            "it is written as soon as it can be."
        )
        assert refused == [said]
        ballast.unlink()
        written = folder / "processed" / "export.csv.report.json"
        await wait_until(written.exists)
        assert len(await env.events()) == 9
    assert json.loads(written.read_text(encoding="utf-8"))["imported"] == 9


async def test_a_report_a_full_disk_refuses_is_written_after_a_restart_once_there_is_room(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found restarting an agent whose drop folder's disk was full: the report it owed was kept in memory only,
    so the export sat in processed/ without a report for ever. Now it is kept in the POS store, and the next
    start writes it once the disk has room; the start after that owes nothing."""
    folder = small_disk / "drop"
    folder.mkdir()
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    written = folder / "processed" / "export.csv.report.json"
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        staged = small_disk / "staged.csv"
        staged.write_bytes(SQUARE_UTF8.read_bytes())
        ballast = fill(small_disk)
        os.replace(staged, folder / "export.csv")
        report, dest = await reports.next()
        assert report.imported == 9 and dest == folder / "processed" / "export.csv"
    assert not written.exists()  # the agent stopped with the disk still full
    ballast.unlink()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        await wait_until(written.exists)
        assert await env.store.reports_owed() == []
        assert len(await env.events()) == 9, "nothing imported again"
    assert json.loads(written.read_text(encoding="utf-8"))["imported"] == 9
    assert "The report of export.csv is written in processed/ now." in caplog.messages
    assert reports.seen == [(report, dest)]


async def test_a_pipe_a_socket_and_a_device_named_like_exports_go_to_failed_with_one_sentence(tmp_path: Path) -> None:
    # ignored before: a pipe the POS made by mistake sat in the drop folder for ever, and nobody was told why
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(tmp_path) as env, PosFolderWatcher(env.importer, folder, settle_s=0.05, on_report=reports):
        os.mkfifo(folder / "pipe.csv")  # nobody ever writes to it: opening it to read would wait for ever
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(folder / "socket.csv"))
        made = {"pipe.csv": "a pipe (FIFO)", "socket.csv": "a socket"}
        if os.geteuid() == 0:  # only root makes device nodes: /dev/null's numbers
            os.mknod(folder / "device.csv", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
            made["device.csv"] = "a device"
        (folder / "sales.csv").write_bytes(SQUARE_UTF8.read_bytes())
        got = {}
        for _ in range(len(made) + 1):
            report, dest = await reports.next()
            got[report.file_name] = (report.status, report.error, dest)
        listening.close()
    assert got.pop("sales.csv")[0] == "imported"
    for name, kind in made.items():
        assert got[name] == (
            "failed",
            f"{name} is {kind}, not a regular file; only files placed in the drop folder are imported",
            folder / "failed" / name,
        )
        assert (folder / "failed" / f"{name}.report.json").exists()


async def test_a_long_import_says_in_the_log_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1,000,000-line export takes minutes; the log said nothing from the change detected to the summary."""
    monkeypatch.setattr(watcher_module, "PROGRESS_LOG_MIN_BYTES", 1_000)
    monkeypatch.setattr(watcher_module, "PROGRESS_LOG_S", 0.0)  # every batch, here
    folder = drop_folder(tmp_path)
    rows = "".join(f"2024-03-05,10:{i // 60 % 60:02d}:{i % 60:02d},SKU-{i},1,sale,r{i}\n" for i in range(3_000))
    staged = tmp_path / "staged.csv"
    staged.write_text("date,time,sku,qty,kind,ref\n" + rows, encoding="utf-8")
    reports = Reports()
    config = PosImportConfig(profile="generic", batch_rows=500)
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, config) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        os.replace(staged, folder / "big.csv")
        report, _ = await reports.next()
    assert report.imported == 3_000
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("agent.pos")]
    assert any(line.startswith("Importing big.csv (0.1 MiB); how far it got is logged every 0 s") for line in lines), lines
    progress = [line for line in lines if line.startswith("Importing big.csv: ")]
    assert len(progress) >= 5, lines
    assert "% read (" in progress[0] and "rows so far" in progress[0] and "left" in progress[0]
    assert any(line.startswith("Imported the POS export big.csv") and ", in " in line for line in lines), lines


async def test_a_file_that_never_stops_changing_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A POS appending to one export all day never lets it settle: nothing of it was imported until it stopped,
    and the log never said why the hub saw no sales."""
    monkeypatch.setattr(watcher_module, "BUSY_WARN_S", 0.5)
    folder = drop_folder(tmp_path)
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        async with PosFolderWatcher(env.importer, folder, settle_s=2.0, on_report=reports):
            with (folder / "today.csv").open("w", encoding="utf-8") as till:
                till.write("date,time,sku,qty,kind,ref\n")
                for i in range(40):  # a line every 50 ms for 2 s: never 2 s unchanged
                    till.write(f"2024-03-05,10:00:{i:02d},SKU-{i},1,sale,r{i}\n")
                    till.flush()
                    await asyncio.sleep(0.05)
            report, _ = await reports.next()
        assert report.imported == 40
    busy = [r.getMessage() for r in caplog.records if "has been changing for" in r.getMessage()]
    assert len(busy) == 1, busy
    assert busy[0].startswith("today.csv has been changing for ") and "without staying unchanged for 2 s" in busy[0]


async def test_the_complete_rows_of_a_file_ending_without_a_line_break_are_imported_once_it_settles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An export that simply ends without a line break (what many Windows tools write) had all its rows wait
    ``unfinished_line_s`` (five minutes). Its complete rows are imported once it settles; only its last line is
    held, the file stays in the drop folder, and once that line ends the rest is imported, going on from the
    checkpoint: no row read twice, one report for the whole file."""
    folder = drop_folder(tmp_path)
    reports = Reports()
    header = "date,time,sku,qty,kind,ref\n"
    rows = "".join(f"2024-03-05,10:00:0{i},DONE-{i},1,sale,r{i}\n" for i in range(5))
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", unfinished_line_s=300)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.2, on_report=reports),
    ):
        target = folder / "day.csv"
        target.write_text(header + rows + "2024-03-05,10:00:09,LAST-9,1,sale,r9", encoding="utf-8")
        async with asyncio.timeout(WAIT_S):  # its rows are booked, and then its last line is held
            while len(await env.events()) < 5 or not any("is held" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
        assert sorted(e.sku for e in await env.events()) == [f"DONE-{i}" for i in range(5)]
        assert target.exists() and reports.seen == []  # held: not filed, no report yet
        with target.open("a", encoding="utf-8") as till:
            till.write("0\n")  # the till ends the line (ref r90)
        report, dest = await reports.next()
        events = await env.events()
    assert dest == folder / "processed" / "day.csv" and not target.exists()
    assert (report.status, report.rows_read, report.imported, report.duplicates) == ("imported", 6, 6, 0)
    assert sorted(e.sku for e in events) == [*(f"DONE-{i}" for i in range(5)), "LAST-9"]
    assert [e.ref for e in events if e.sku == "LAST-9"] == ["r90"]
    assert len(reports.seen) == 1
    held = [r.getMessage() for r in caplog.records if "is held" in r.getMessage()]
    assert held == [
        (
            "day.csv ends in the middle of a line, as if the POS were still writing it: its 5 complete rows are "
            "imported, and its last line is held until it ends or the file has not changed for 300 s."
        )
    ], held


async def test_the_agents_status_lists_the_files_held_with_their_rows_so_far_and_when_the_hold_ends(
    tmp_path: Path,
) -> None:
    """A held file was only in the log: the status (``state()``, the local API's ``pos_import``) said the folder
    was watched and nothing of the file sitting there, its last line waiting for up to five minutes. It lists each
    file held: its name, the rows read so far, since when it is held and when its last line is taken as it stands
    if the file stays unchanged. Once the line ends, the file is listed no more."""
    folder = drop_folder(tmp_path)
    reports = Reports()
    header = "date,time,sku,qty,kind,ref\n"
    rows = "".join(f"2024-03-05,10:00:0{i},DONE-{i},1,sale,r{i}\n" for i in range(5))
    config = PosImportConfig(profile="generic", unfinished_line_s=300)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.2, on_report=reports) as watcher,
    ):
        assert watcher.state().to_json()["held"] == []
        written_ms = wall_ms_now()
        target = folder / "day.csv"
        target.write_text(header + rows + "2024-03-05,10:00:09,LAST-9,1,sale,r9", encoding="utf-8")
        async with asyncio.timeout(WAIT_S):
            while not watcher.state().held:
                await asyncio.sleep(0.05)
        looked_ms = wall_ms_now()
        listed = watcher.state().to_json()
        assert listed["state"] == "watching"
        [held] = listed["held"]
        assert (held["file_name"], held["rows_read"]) == ("day.csv", 5)
        assert written_ms <= held["held_since_ms"] <= looked_ms
        # taken as it stands 300 s after the file last changed (it was written between written_ms and held_since_ms)
        assert written_ms + 300_000 - 1000 <= held["hold_ends_ms"] <= held["held_since_ms"] + 300_000 + 1000
        with target.open("a", encoding="utf-8") as till:
            till.write("0\n")  # the till ends the line
        report, _ = await reports.next()
        assert report.status == "imported"
        assert watcher.state().held == () and watcher.state().to_json()["held"] == []


async def test_an_export_the_full_data_disk_refuses_is_said_so_kept_in_the_folder_and_imported_once_there_is_room(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by filling the agent's data disk (its outbox and POS store) while a till dropped an export: the import
    failed with SQLite's own words ("… could not be written: database or disk is full"), unlike every other write the
    disk refuses, which says what to do. It says so now; the export waits in the folder and is imported once."""
    data = small_disk / "data"
    data.mkdir()
    folder = drop_folder(tmp_path)
    reports = Reports()
    async with open_env(data) as env, PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports):
        ballast = fill(small_disk)
        staged = tmp_path / "staged.csv"
        staged.write_bytes(SQUARE_UTF8.read_bytes())
        os.replace(staged, folder / "export.csv")

        def failed() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Importing export.csv failed")]

        await wait_until(lambda: bool(failed()))
        said = failed()[0]
        assert "the disk is full or refuses writes" in said and "free disk space" in said, said
        assert (folder / "export.csv").exists() and not await env.events()
        ballast.unlink()
        report, dest = await reports.next()
        assert report.imported == 9 and dest == folder / "processed" / "export.csv"
        assert len(await env.events()) == 9
