"""A filed export written on: read from where its last import ended, watched while its last line is cut, across
a restart of the agent; and the POS store gives back the space an import's occurrence counts took."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import OutboxError
from agent.pos import ImportReport, PosFolderWatcher, PosImportConfig, PosStore
from agent.pos import importer as importer_module
from agent.pos import occurrences as occurrences_module
from agent.pos import store as store_module
from agent.pos import watcher as watcher_module
from agent.pos.errors import PosImportError
from agent.pos.source import Position
from agent.pos.store import FiledWatch
from protocol import wall_ms_now
from tests.agent.pos.pos_helpers import Env, open_env
from tests.harness.small_disk import Mounts, fill

HEADER = "date,time,sku,qty,kind,ref\n"
WAIT_S = 30.0  # bound on every wait for the watcher; never reached when things work


def _rows(n: int, prefix: str = "SKU") -> list[str]:
    return [f"2024-03-05,10:{i // 60 % 60:02d}:{i % 60:02d},{prefix}-{i},1,sale,r{i}\n" for i in range(n)]


class Reports:
    """Collects the watcher's reports; ``next()`` awaits the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[ImportReport, Path]] = asyncio.Queue()

    def __call__(self, report: ImportReport, dest: Path) -> None:
        self.queue.put_nowait((report, dest))

    async def next(self) -> tuple[ImportReport, Path]:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path, config: PosImportConfig
) -> AsyncIterator[tuple[Env, PosFolderWatcher, Path, Reports]]:
    """The store's env and a watcher of ``tmp_path``/drop (made if missing) that files an export settled for 0.1 s:
    (env, watcher, the folder, its reports)."""
    folder = tmp_path / "drop"
    folder.mkdir(exist_ok=True)
    reports = Reports()
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports) as watcher,
    ):
        yield env, watcher, folder, reports


class Parsed:
    """What the imports read: the rows parsed, and the line each import went on from (None: the file's start)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        self.resumed_at: list[int] = []
        parse = importer_module._FileParse
        next_batch, resume = parse.next_batch, parse.resume

        def counting(inner: importer_module._FileParse, size: int) -> importer_module._Batch | None:
            batch = next_batch(inner, size)
            self.rows += batch.rows if batch is not None else 0
            return batch

        def noting(inner: importer_module._FileParse, position: Position, *args: object) -> None:
            self.resumed_at.append(position.line)
            resume(inner, position, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(parse, "next_batch", counting)
        monkeypatch.setattr(parse, "resume", noting)


async def wait_until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not done():
            await asyncio.sleep(0.05)


async def test_rows_appended_to_a_filed_copy_are_read_from_where_its_import_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A POS that keeps its export open writes on into the copy filed in processed/. That copy was read again from
    its first line each time it settled (every row before a duplicate). The finished import keeps its checkpoint
    (offset, line, the digest of the bytes so far, the occurrence counts): the appended rows alone are read."""
    folder = tmp_path / "drop"
    folder.mkdir()
    reports = Reports()
    parsed = Parsed(monkeypatch)
    rows = _rows(1_010)
    rows[1_009] = rows[5]  # the same sale rung up again: a second sale (its occurrence count comes from the checkpoint)
    staged = tmp_path / "staged.csv"
    staged.write_text(HEADER + "".join(rows[:1_000]), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        os.replace(staged, folder / "day.csv")
        first, dest = await reports.next()
        assert (first.rows_read, first.imported, parsed.rows, parsed.resumed_at) == (1_000, 1_000, 1_000, [])
        parsed.rows = 0
        with dest.open("a", encoding="utf-8") as till:  # the till's handle still open on the file it wrote
            till.write("".join(rows[1_000:]))
        second, again = await reports.next()
        events = await env.events()
    assert (parsed.rows, parsed.resumed_at) == (10, [1_001])  # the 10 new rows, from line 1,001 on
    assert again == dest == folder / "processed" / "day.csv"
    # the report covers the file as it is now: every row of it booked by its two imports
    assert (second.rows_read, second.imported, second.duplicates) == (1_010, 1_010, 0)
    assert len(events) == 1_010 and [e.sku for e in events].count("SKU-5") == 2
    assert (
        "day.csv changed after it was imported and filed in processed/; it was imported again and 10 more rows were "
        "recorded." in caplog.messages
    )


async def test_a_filed_copy_changed_before_where_its_import_ended_is_read_again_from_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint is gone on from only when the bytes before it are the same; otherwise (rewritten in place)
    the whole file is read, and what was booked before comes back as duplicates."""
    parsed = Parsed(monkeypatch)
    rows = _rows(300)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows[:200]), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=100)) as env:
        first = await env.importer.import_file(path, keep_checkpoint=True)
        rows[0] = rows[0].replace(",1,sale,", ",2,sale,")  # the POS wrote the file again, its first row changed
        path.write_text(HEADER + "".join(rows), encoding="utf-8")
        parsed.rows = 0
        again = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        events = await env.events()
    assert (parsed.rows, parsed.resumed_at) == (300, [])
    assert (again.rows_read, again.imported, again.duplicates) == (300, 101, 199)
    assert len(events) == 301


CUT = "2024-03-05,10:00:09,LAST-9,1,sale,r9"


async def test_a_row_the_till_finishes_after_the_filed_watch_and_a_restart_of_the_agent_is_still_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A filed copy whose last line had no line break was watched 10 minutes like any other: a till that finished
    the row later, or while the agent restarted, was never noticed (nothing booked, nothing quarantined, nobody
    told). Such a copy is watched until its line ends (a day at most), and the watch outlives a restart."""
    monkeypatch.setattr(watcher_module, "FILED_WATCH_S", 0.3)  # the 10 minutes of a complete copy, short here
    folder = tmp_path / "drop"
    folder.mkdir()
    processed = folder / "processed"
    reports = Reports()
    parsed = Parsed(monkeypatch)
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", unfinished_line_s=0.5)
    done = _rows(5)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports) as watcher,
    ):
        (folder / "day.csv").write_text(HEADER + "".join(done) + CUT, encoding="utf-8")
        report, dest = await reports.next()
        assert (report.file_name, report.rows_read, dest) == ("day.csv", 6, processed / "day.csv")
        # a complete export filed after it: once its watch ended, day.csv's would have ended too
        (folder / "complete.csv").write_text(HEADER + "".join(_rows(3, "OTHER")), encoding="utf-8")
        report, dest = await reports.next()
        assert (report.file_name, report.rows_read, dest) == ("complete.csv", 3, processed / "complete.csv")
        await wait_until(lambda: processed / "complete.csv" not in watcher._filed)  # its watch ended
        assert processed / "day.csv" in watcher._filed  # its last line has no line break: still watched
        # the checkpoint complete.csv's import kept for its filed copy goes with its watch
        await wait_until(lambda: _checkpoints(env.store.path) == ["day.csv"])
    # The agent is stopped. Meanwhile the till finishes the row (its ref is r90, not r9) and writes another.
    parsed.rows, parsed.resumed_at = 0, []
    with (processed / "day.csv").open("a", encoding="utf-8") as till:
        till.write("0\n2024-03-05,10:00:10,LATE-1,1,sale,r10\n")
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        report, dest = await reports.next()
        events = await env.events()
        kept = await env.store.quarantined()
    assert (report.file_name, dest) == ("day.csv", processed / "day.csv")
    # read from the checkpoint kept before the cut line (header and 5 rows): the line finished, and the new row
    assert (parsed.rows, parsed.resumed_at) == (2, [6])
    assert (report.rows_read, report.quarantined) == (7, 1)
    assert sorted(e.sku for e in events) == sorted(["OTHER-0", "OTHER-1", "OTHER-2", *(f"SKU-{i}" for i in range(5)),
                                                    "LAST-9", "LATE-1"])  # fmt: skip
    assert [(q.file_name, q.line) for q in kept] == [("day.csv", 7)]
    assert kept[0].reason.startswith("line 7 was imported as it stood, without a line break")
    assert "the POS finished it later and it differs (a different ref)" in kept[0].reason
    assert (
        "Watching 1 filed export again whose last line had no line break yet, for a till that finishes it: "
        "processed/day.csv." in caplog.messages
    )


async def test_a_filed_copy_whose_last_line_is_cut_forgotten_because_too_many_are_watched_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With FILED_WATCH_MAX copies watched, the oldest is forgotten for the next, a complete one first; when every
    one watched had a cut last line, the oldest of those was forgotten without a word, and a row its till finished
    later was never noticed, nobody told (its watch ending after a day is said)."""
    monkeypatch.setattr(watcher_module, "FILED_WATCH_MAX", 2)
    folder = tmp_path / "drop"
    folder.mkdir()
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", unfinished_line_s=0.2)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports) as watcher,
    ):
        for day in ("mon", "tue", "wed"):
            cut = CUT.replace("LAST-9", f"LAST-{day}")
            (folder / f"{day}.csv").write_text(HEADER + "".join(_rows(2, day)) + cut, encoding="utf-8")
            await reports.next()
        watched = sorted(p.name for p in watcher._filed)
        kept = [w.dest for w in await env.store.filed_watches()]
    assert watched == ["tue.csv", "wed.csv"]
    assert sorted(Path(d).name for d in kept) == ["tue.csv", "wed.csv"]
    said = [m for m in caplog.messages if "mon.csv" in m and "stops watching" in m]
    assert len(said) == 1, caplog.messages
    assert "200" not in said[0] and "2 filed exports" in said[0]


async def test_a_row_the_till_finishes_in_an_export_that_could_not_be_filed_is_not_booked_a_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    """A till that keeps its export open while it pauses in a row: after unfinished_line_s the cut row is booked as
    it stands, and the file cannot be moved to processed/ (Windows refuses to move a file another program holds
    open; here processed/ is read-only). When the till then finished the row, the file, changed since, was imported
    again as a new export, from its first line, its cut row forgotten: the finished row was booked a second time
    (a sale of LAST-9 with ref r9, and another with ref r90). It goes on from where the import ended now, with the
    cut row it booked, as for a filed copy: the finished row is quarantined with the reason, and the row after it
    booked."""
    monkeypatch.setattr(watcher_module, "RESCAN_S", 0.2)  # the exports that could not be filed are tried this often
    folder = tmp_path / "drop"
    (folder / "processed").mkdir(parents=True)
    mounts.read_only_view(folder / "processed")
    reports = Reports()
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", unfinished_line_s=0.5)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        (folder / "day.csv").write_text(HEADER + "".join(_rows(5)) + CUT, encoding="utf-8")
        report, where = await reports.next()
        assert (report.rows_read, report.imported, where) == (6, 6, folder / "day.csv")  # booked, not filed
        with (folder / "day.csv").open("a", encoding="utf-8") as till:  # the till finishes the row (r90), and more
            till.write("0\n2024-03-05,10:00:10,LATE-1,1,sale,r10\n")
        report, where = await reports.next()
        events = await env.events()
        kept = await env.store.quarantined()
    assert where == folder / "day.csv"
    assert sorted(e.sku for e in events) == sorted([*(f"SKU-{i}" for i in range(5)), "LAST-9", "LATE-1"])
    assert (report.rows_read, report.quarantined) == (7, 1)
    assert [q.line for q in kept] == [7]
    assert "the POS finished it later and it differs (a different ref)" in kept[0].reason


async def test_an_export_that_could_not_be_filed_keeps_its_cut_row_across_a_restart_of_the_agent(
    tmp_path: Path, mounts: Mounts
) -> None:
    """The same, with the agent restarted before the till finishes the row (an update, say): what the next import
    of the export goes on from was kept in memory only, so the next start imported it from its first line and
    booked the finished row a second time. It is kept in the POS store (filed_watch, under its drop-folder name)."""
    folder = tmp_path / "drop"
    (folder / "processed").mkdir(parents=True)
    mounts.read_only_view(folder / "processed")
    reports = Reports()
    config = PosImportConfig(profile="generic", unfinished_line_s=0.5)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        (folder / "day.csv").write_text(HEADER + "".join(_rows(5)) + CUT, encoding="utf-8")
        report, where = await reports.next()
        assert (report.rows_read, report.imported, where) == (6, 6, folder / "day.csv")  # booked, not filed
    with (folder / "day.csv").open("a", encoding="utf-8") as till:  # finished while the agent was stopped
        till.write("0\n2024-03-05,10:00:10,LATE-1,1,sale,r10\n")
    mounts.umount(folder / "processed")  # and processed/ can be written now
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        report, where = await reports.next()
        events = await env.events()
        kept = await env.store.quarantined()
        watched = [Path(w.dest) for w in await env.store.filed_watches()]
    assert where == folder / "processed" / "day.csv"
    assert sorted(e.sku for e in events) == sorted([*(f"SKU-{i}" for i in range(5)), "LAST-9", "LATE-1"])
    assert (report.rows_read, report.quarantined) == (7, 1)
    assert [q.line for q in kept] == [7]
    assert watched == [folder / "processed" / "day.csv"]


@pytest.mark.parametrize("point", ["_file_away", "_report_beside"])
async def test_an_agent_killed_between_booking_a_cut_row_and_watching_its_filed_copy_does_not_book_it_twice(
    tmp_path: Path, point: str
) -> None:
    """A real agent process killed (SIGKILL) after the import that booked a cut row ended, before the watch of its
    filed copy was kept: before it was moved to processed/, or after. The next start dropped the checkpoint that
    import kept (no watch named it) and with it the cut row: the export, still in the drop folder, was imported as
    a new one and the row the till finished meanwhile booked a second time; or the filed copy was not watched and
    the finished row never noticed. Where its import goes on from is kept before the export is moved now."""
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "day.csv").write_text(HEADER + "".join(_rows(5)) + CUT, encoding="utf-8")
    try:  # the process runs as this one does: in the Windows-like run, without fcntl (tests/ops)
        import fcntl  # noqa: F401

        python = [sys.executable, "-m"]
    except ImportError:
        python = [sys.executable, "-m", "tests.ops.packaging_blockers", "--windows", "-m"]
    agent = await asyncio.to_thread(
        subprocess.run, [*python, "tests.agent.pos.pos_killed_watcher", str(tmp_path), point],
        cwd=Path(__file__).parents[3], timeout=60, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert agent.returncode == -signal.SIGKILL, agent.stderr
    filed = folder / "processed" / "day.csv"
    at = filed if point == "_report_beside" else folder / "day.csv"
    with at.open("a", encoding="utf-8") as till:  # the till finishes the row (r90), and writes another
        till.write("0\n2024-03-05,10:00:10,LATE-1,1,sale,r10\n")
    reports = Reports()
    config = PosImportConfig(profile="generic", unfinished_line_s=0.5)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        report, where = await reports.next()
        events = await env.events()
        kept = await env.store.quarantined()
    assert where == filed and filed.with_name("day.csv.report.json").exists()
    assert sorted(e.sku for e in events) == sorted([*(f"SKU-{i}" for i in range(5)), "LAST-9", "LATE-1"])
    assert (report.rows_read, report.quarantined) == (7, 1)
    assert [q.line for q in kept] == [7]


async def test_a_watch_kept_by_an_agent_whose_clock_was_ahead_ends_in_its_time_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the watch of a filed copy ends is kept on the wall clock: kept by an agent whose clock was a year ahead
    (a wrong date, put right since), the next start watched the copy for a year instead of at most a day."""
    monkeypatch.setattr(watcher_module, "FILED_WATCH_S", 0.3)
    monkeypatch.setattr(watcher_module, "FILED_UNFINISHED_WATCH_S", 0.3)
    folder = tmp_path / "drop"
    (folder / "processed").mkdir(parents=True)
    copy = folder / "processed" / "day.csv"
    copy.write_text(HEADER + "".join(_rows(2)), encoding="utf-8")
    st = copy.stat()
    year_ms = 365 * 86_400_000
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        await env.store.watch_filed(
            FiledWatch(str(copy), "day.csv", None, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                       wall_ms_now() + year_ms, (), ())
        )  # fmt: skip
        async with PosFolderWatcher(env.importer, folder, settle_s=0.1) as watcher:
            assert copy in watcher._filed
            await wait_until(lambda: copy not in watcher._filed)  # failed before: watched for a year
        assert await env.store.filed_watches() == []


async def test_a_filed_copy_is_watched_its_whole_day_after_a_restart_however_the_wall_clock_jumped_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a filed copy whose last line has no line break is watched a day for the till to finish it, timed on
    the monotonic clock while the agent runs but kept with its end on the wall clock: the clock jumping 20 hours
    ahead (NTP putting right a clock that was off), then a restart, left 4 hours of the day, and a row the till
    finished later was not read. A jump has the end kept again from the monotonic time left."""
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", unfinished_line_s=0.2)
    jump_ms = 20 * 3_600_000
    async with watching(tmp_path, config) as (env, watcher, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(_rows(3)) + CUT, encoding="utf-8")
        _, dest = await reports.next()
        assert watcher._filed[dest].mid_line
        monkeypatch.setattr(watcher_module, "wall_ms_now", lambda: wall_ms_now() + jump_ms)  # the clock jumps
        with contextlib.suppress(TimeoutError):  # (before: the end kept never moved)
            async with asyncio.timeout(3.0):
                while (await env.store.filed_watches())[0].until_ms < wall_ms_now() + jump_ms + 23 * 3_600_000:
                    await asyncio.sleep(0.05)
    async with watching(tmp_path, config) as (env, watcher, folder, reports):  # restarted, the clock still ahead
        left_s = watcher._filed[dest].until - asyncio.get_running_loop().time()
    assert left_s > 23 * 3600, f"watched {left_s / 3600:.1f} h more after the restart"
    assert any("The wall clock jumped +20.0 h; the 1 watched filed export(s)" in m for m in caplog.messages)


def _checkpoints(store_path: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        return [name for (name,) in db.execute("SELECT file_name FROM checkpoints ORDER BY file_name")]


async def _store_bytes(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


async def test_the_pos_store_gives_back_the_space_of_an_imports_occurrence_counts_once_they_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts a checkpoint keeps take ~20 bytes a row in the store while the import runs; dropped at its end,
    their pages stayed in the file as free pages, which never shrank. The store gives them back now: at the end of
    an import, and for a checkpoint kept for a filed copy, when it is dropped."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint with its counts every batch
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(20_000)), encoding="utf-8")
    config = PosImportConfig(profile="generic", batch_rows=500)
    store_path = str(config.store_path_for(tmp_path / "outbox.sqlite3"))
    async with open_env(tmp_path, config):
        pass
    empty = await _store_bytes(store_path)
    async with open_env(tmp_path, config) as env:
        await env.importer.import_file(path)  # its checkpoints' counts are dropped at its end
    with sqlite3.connect(store_path) as db:
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert await _store_bytes(store_path) < empty + 64 * 1024  # the import's row, no counts
    path.write_text(HEADER + "".join(_rows(20_000, "NEW")), encoding="utf-8")
    async with open_env(tmp_path, config) as env:
        kept = await env.importer.import_file(path, keep_checkpoint=True)
    assert await _store_bytes(store_path) > empty + 20_000 * 4  # the counts' summary the checkpoint kept for it
    async with open_env(tmp_path, config) as env:
        assert kept.import_id is not None
        await env.store.forget_checkpoint(kept.import_id)
    assert await _store_bytes(store_path) < empty + 64 * 1024


async def test_a_pos_store_made_by_an_older_agent_gives_back_free_space_from_its_next_start(tmp_path: Path) -> None:
    """auto_vacuum is set when a file is made: a store from before is rewritten once (VACUUM) when opened."""
    path = tmp_path / "pos-import.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        db.execute("INSERT INTO meta VALUES ('schema_version', 1)")
        db.execute("CREATE TABLE filler (b BLOB)")
        db.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,) for _ in range(100)])
        db.execute("DELETE FROM filler")  # 100 free pages in the file
    assert os.path.getsize(path) > 400_000
    async with PosStore.open(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert os.path.getsize(path) < 100_000


def _free(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


async def test_a_pos_store_from_before_on_a_disk_without_room_for_its_rewrite_leaves_the_disk_as_it_was(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one-time rewrite (VACUUM) goes through the WAL beside the store: begun on a disk without room for it, it
    failed, and left the WAL grown to the disk's last byte while the agent ran (the outbox beside it could not write)."""
    path = small_disk / "pos-import.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        db.execute("INSERT INTO meta VALUES ('schema_version', 1)")
        db.execute("CREATE TABLE filler (b BLOB)")
        db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(3000),) for _ in range(100)])  # 300 KB kept
    ballast = fill(small_disk)
    os.truncate(ballast, os.path.getsize(ballast) - 200_000)  # 200 KB free: less than the store holds
    before = _free(small_disk)
    with caplog.at_level(logging.WARNING, logger="agent.pos.store"):
        async with PosStore.open(path):
            assert _free(small_disk) > before // 2  # failed before: 0 bytes free, the WAL at the disk's last byte
            (small_disk / "outbox-probe").write_bytes(b"x" * 50_000)  # the outbox beside it can still write
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # works as before; rewritten at a start with room
    said = [r.getMessage() for r in caplog.records if "rewritten" in r.getMessage()]
    assert len(said) == 1 and "free" in said[0], said


async def test_the_pos_store_wal_stays_bounded_during_a_large_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store copied its WAL back only after 1,000 changed rows, and a checkpoint changes two rows however many
    counts it packs: the WAL held every count of an import (21 MB at 1,000,000 rows). It is copied back whenever it
    passes ``WAL_LIMIT_BYTES`` now, and cut back to that size: the bound holds while it runs, and when the counts
    are replaced by their summary, or dropped, at its end (SQLite built with secure deletion wrote zeros over every
    page they freed; the summary of 1,000,000 rows' counts is 5 MB, written in parts), and when their space is given
    back to the disk (the pages moved went through the WAL in one transaction)."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint with its counts every batch
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 128 * 1024)
    monkeypatch.setattr(store_module, "GIVE_BACK_MIN_BYTES", 1)  # the packs' space given back once replaced
    monkeypatch.setattr(store_module, "SUMMARY_PART_BYTES", 32 * 1024)  # the summary kept (282 KB) in 9 parts
    monkeypatch.setattr(store_module, "VACUUM_STEP_PAGES", 16)  # the counts' space given back 64 KB a transaction
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(40_000)), encoding="utf-8")
    config = PosImportConfig(profile="generic", batch_rows=500)
    wal = Path(f"{config.store_path_for(tmp_path / 'outbox.sqlite3')}-wal")
    sizes: list[int] = []
    stepped: list[int] = []  # the WAL after each step giving space back
    vacuum_step = store_module.PosStore._vacuum_step

    going_on = [False]  # the step before left pages to give back: this one goes on from it

    def vacuum_sampled(conn: sqlite3.Connection) -> bool:  # before the first step (as a delete left it), after each
        if not going_on[0]:
            sizes.append(wal.stat().st_size)
        going_on[0] = left = vacuum_step(conn)
        stepped.append(wal.stat().st_size)
        return left

    monkeypatch.setattr(store_module.PosStore, "_vacuum_step", staticmethod(vacuum_sampled))
    async with open_env(tmp_path, config) as env:
        write = env.store._write

        async def sampled(*args: Any, **kwargs: Any) -> Any:  # after each write transaction of the store
            written = await write(*args, **kwargs)
            sizes.append(wal.stat().st_size)
            return written

        monkeypatch.setattr(env.store, "_write", sampled)
        report = await env.importer.import_file(path, keep_checkpoint=True)
        assert report.import_id is not None
        await env.store.forget_checkpoint(report.import_id)  # its summary dropped
        sizes.append(wal.stat().st_size)
        other = await env.importer.import_file(path)  # again, every row a duplicate: its counts dropped at its end
        sizes.append(wal.stat().st_size)
    assert report.imported == 40_000 and other.duplicates == 40_000 and len(sizes) >= 140 and len(stepped) >= 20
    # one batch's counts (500 rows, 20 bytes each) and its pages beyond the bound at most; 40,000 rows' counts
    # alone are 800 KB
    assert max(sizes) < 128 * 1024 + 64 * 1024, sizes
    # a step giving 16 pages back moves each into a freed one: the page, its parent's and its pointer map's page
    # written, at most (which pages depends on where the tables' pages lie)
    assert max(stepped) < 128 * 1024 + 3 * 16 * 4096, stepped


def _checkpoint_ids(store_path: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        return [i for (i,) in db.execute("SELECT import_id FROM checkpoints ORDER BY import_id")]


async def test_a_filed_copy_deleted_and_refiled_under_its_name_before_the_watcher_looks_drops_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """processed/day.csv archived (deleted) and the next day.csv filed under the same name within the second before
    the watcher looked at its filed copies again: the new watch took the old one's place, and the checkpoint the
    old import kept (its counts: 20 MB a 1,000,000 rows) stayed in the store, watched by nobody, until a restart."""
    folder = tmp_path / "drop"
    folder.mkdir()
    reports = Reports()
    looking = asyncio.Event()
    looking.set()
    changed_filed = PosFolderWatcher._changed_filed

    async def gated(watcher: PosFolderWatcher, now: float) -> Path | None:  # the watcher's tick, held off at will
        return await changed_filed(watcher, now) if looking.is_set() else None

    monkeypatch.setattr(PosFolderWatcher, "_changed_filed", gated)
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with (
        open_env(tmp_path, config) as env,
        PosFolderWatcher(env.importer, folder, settle_s=0.1, on_report=reports),
    ):
        (folder / "day.csv").write_text(HEADER + "".join(_rows(300)), encoding="utf-8")
        first, dest = await reports.next()
        assert _checkpoint_ids(env.store.path) == [first.import_id]
        looking.clear()  # within the second the watcher does not look at its filed copies
        dest.unlink()
        dest.with_name(dest.name + watcher_module.REPORT_SUFFIX).unlink()
        (folder / "day.csv").write_text(HEADER + "".join(_rows(200, "NEW")), encoding="utf-8")
        second, again = await reports.next()
        assert again == dest and second.import_id != first.import_id
        looking.set()
        assert _checkpoint_ids(env.store.path) == [second.import_id]
        assert [w.import_id for w in await env.store.filed_watches()] == [second.import_id]
        # the new copy's watch goes on from its own checkpoint: rows the till appends are booked once
        with dest.open("a", encoding="utf-8") as till:
            till.write("".join(_rows(3, "LATE")))
        third, _ = await reports.next()
        events = await env.events()
    assert (third.rows_read, third.imported, third.duplicates) == (203, 203, 0)
    assert len(events) == 503


async def test_a_different_file_at_a_filed_copys_path_with_its_inode_size_and_time_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filed copy deleted and another file written at its path at once can get the freed inode, and on a file
    system that keeps times to the second (or two) the same modification time; of the same size, it looked like the
    copy unchanged, and its rows were never booked. The watch compares the digest of the copy's first bytes too."""
    parsed = Parsed(monkeypatch)
    rows = _rows(300)
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with watching(tmp_path, config) as (env, _, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
        _, dest = await reports.next()
        st = dest.stat()
        rows[0] = rows[0].replace("SKU-0,", "NEW-0,")  # another export: its first row differs, its size is the same
        parsed.rows = 0
        with dest.open("r+b") as other:  # the inode the deleted copy freed, as a file system may give it again
            other.write((HEADER + "".join(rows)).encode("utf-8"))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # written within the same second: the same time
        assert (dest.stat().st_ino, dest.stat().st_size, dest.stat().st_mtime_ns) == (
            st.st_ino, st.st_size, st.st_mtime_ns,
        )  # fmt: skip
        second, again = await reports.next()
        events = await env.events()
    assert again == dest and (parsed.rows, parsed.resumed_at) == (300, [])  # read from its first line
    assert (second.rows_read, second.imported, second.duplicates) == (300, 1, 299)
    assert sorted(e.sku for e in events if e.sku.endswith("-0")) == ["NEW-0", "SKU-0"]


def _rewrite_in_place(dest: Path, rows: list[str], line: int, qty: int) -> None:
    """The till writes the file again in place, one quantity in the middle changed: the same inode, the same size,
    and (a tool that keeps the time, or a file system that keeps it to the second) the same modification time."""
    st = dest.stat()
    rows[line] = rows[line].replace(",1,sale,", f",{qty},sale,")
    text = (HEADER + "".join(rows)).encode("utf-8")
    assert len(text) == st.st_size and text.index(rows[line].encode()) > watcher_module.HEAD_BYTES
    with dest.open("r+b") as till:
        till.write(text)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = dest.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def _sales_of(events: Any, sku: str) -> list[int]:
    return sorted(e.qty for e in events if e.sku == sku)


@pytest.mark.parametrize("change_time", ["told", "not told"])
async def test_a_filed_copy_rewritten_in_place_after_its_first_bytes_with_its_size_and_time_is_imported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, change_time: str
) -> None:
    """A filed copy written again in place, one quantity past its first 4 KiB changed, its size, time and inode
    kept, looked unchanged to the watch (inode, size, time, the digest of the first 4 KiB): the new quantity was
    never booked. The inode's change time tells such a write; where it is not told (Windows keeps the creation
    time there), a copy of at most 16 MiB is read whole again every few seconds and compared with its import's
    digest."""
    if change_time == "not told":
        monkeypatch.setattr(watcher_module, "_change_time", lambda st: None, raising=False)
        monkeypatch.setattr(watcher_module, "CONTENT_CHECK_S", 0.2, raising=False)
    parsed = Parsed(monkeypatch)
    rows = _rows(300)
    caplog.set_level(logging.INFO, logger="agent.pos")
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with watching(tmp_path, config) as (env, _, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
        _, dest = await reports.next()
        parsed.rows = 0
        _rewrite_in_place(dest, rows, 200, 5)
        second, again = await reports.next()
        events = await env.events()
    assert again == dest and (parsed.rows, parsed.resumed_at) == (300, [])  # read from its first line
    assert (second.rows_read, second.imported, second.duplicates) == (300, 1, 299)
    assert _sales_of(events, "SKU-200") == [-5, -1]  # the row as it is now is booked; what was booked stays
    assert (
        "day.csv changed after it was imported and filed in processed/; it was imported again and 1 more rows were "
        "recorded." in caplog.messages
    )


@pytest.mark.skipif(os.name == "nt", reason="Windows keeps no inode change time")
async def test_a_filed_copy_whose_permissions_changed_but_not_its_bytes_is_not_imported_again(tmp_path: Path) -> None:
    """A change of permissions moves the inode's change time as a write does: the copy is compared with its
    import's digest, found the same, and only the new time is noted."""
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with watching(tmp_path, config) as (env, watcher, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(_rows(300)), encoding="utf-8")
        _, dest = await reports.next()
        before = watcher._filed[dest].ctime_ns
        await asyncio.sleep(0.05)  # the change time is kept to a few milliseconds
        dest.chmod(0o600)
        assert dest.stat().st_ctime_ns != before
        await wait_until(lambda: watcher._filed[dest].ctime_ns == dest.stat().st_ctime_ns)  # compared, the same
        assert watcher._filed[dest].changed is None and reports.queue.empty()
        assert len(await env.events()) == 300


async def test_watched_copies_beyond_what_is_compared_at_once_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies are read whole to be compared up to a bound of bytes each time (64 MiB): the rest wait their turn,
    the one compared longest ago first, so every copy is compared; here the bound holds one copy, and the one
    written again is the one filed last."""
    monkeypatch.setattr(watcher_module, "_change_time", lambda st: None)  # as on Windows: the comparison alone
    monkeypatch.setattr(watcher_module, "CONTENT_CHECK_S", 0.2)
    config = PosImportConfig(profile="generic", batch_rows=100)
    days = {"mon.csv": _rows(300, "MON"), "tue.csv": _rows(300, "TUE")}
    async with watching(tmp_path, config) as (env, _, folder, reports):
        dests = {}
        for name, rows in days.items():
            (folder / name).write_text(HEADER + "".join(rows), encoding="utf-8")
            _, dests[name] = await reports.next()
        monkeypatch.setattr(watcher_module, "CONTENT_CHECK_BUDGET_BYTES", dests["mon.csv"].stat().st_size)
        _rewrite_in_place(dests["tue.csv"], days["tue.csv"], 200, 6)  # the copy filed last: compared after mon.csv
        _, again = await reports.next()
        events = await env.events()
    assert again == dests["tue.csv"]
    assert (_sales_of(events, "TUE-200"), _sales_of(events, "MON-200")) == ([-6, -1], [-1])


async def test_a_filed_copy_rewritten_in_place_while_the_agent_was_stopped_is_imported_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rewrite while the agent was stopped: its next start compares the watched copy with what it was."""
    rows = _rows(300)
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with watching(tmp_path, config) as (env, _, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
        _, dest = await reports.next()
    _rewrite_in_place(dest, rows, 250, 7)
    async with watching(tmp_path, config) as (env, _, folder, reports):
        second, again = await reports.next()
        events = await env.events()
    assert again == dest and (second.rows_read, second.imported, second.duplicates) == (300, 1, 299)
    assert _sales_of(events, "SKU-250") == [-7, -1]


async def test_an_export_that_could_not_be_filed_rewritten_in_place_with_its_size_and_time_is_imported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: Mounts
) -> None:
    """An export imported but not moved out of the drop folder (processed/ read-only here; on Windows, a POS that
    holds it open) was taken for imported while its size and time stayed: written again in place, one quantity past
    its first 4 KiB changed, it was filed later with the report of what it held before, the new quantity unbooked."""
    monkeypatch.setattr(watcher_module, "RESCAN_S", 0.2)  # the exports that could not be filed are tried this often
    (tmp_path / "drop" / "processed").mkdir(parents=True)
    mounts.read_only_view(tmp_path / "drop" / "processed")
    rows = _rows(300)
    config = PosImportConfig(profile="generic", batch_rows=100)
    async with watching(tmp_path, config) as (env, _, folder, reports):
        (folder / "day.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
        _, where = await reports.next()
        assert where == folder / "day.csv"  # booked, not filed
        _rewrite_in_place(where, rows, 150, 4)
        second, where = await reports.next()
        events = await env.events()
    assert where == folder / "day.csv" and (second.rows_read, second.imported, second.duplicates) == (300, 1, 299)
    assert _sales_of(events, "SKU-150") == [-4, -1]


def _kept_counts(store_path: str, import_id: int | None) -> int:
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        query = "SELECT coalesce(sum(length(packed)), 0) FROM checkpoint_counts WHERE import_id = ?"
        return int(db.execute(query, (import_id,)).fetchone()[0])


async def test_the_checkpoint_kept_for_a_filed_copy_holds_a_summary_of_its_counts_not_every_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint an import kept for its filed copy held every identity's count, 20 bytes a row (20 MB at
    1,000,000 rows, for as long as the copy is watched, loaded whole at each resume). It keeps a summary now: the
    exact counts of the rows read last and a 7-byte fingerprint of every other identity; rows appended, and one
    repeating a row read last, go on from it."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)  # packs of counts every batch meanwhile
    parsed = Parsed(monkeypatch)
    rows = _rows(30_000)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=1_000)) as env:
        first = await env.importer.import_file(path, keep_checkpoint=True)
        kept = _kept_counts(env.store.path, first.import_id)
        assert kept < 30_000 * 6 + 257 * 4 + 4_096 * 20 + 100, kept  # every count: 600,000 bytes
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(_rows(5, "LATE")) + rows[29_990])  # the same sale again, a row read last
        parsed.rows = 0
        again = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        events = await env.events()
    assert (parsed.rows, parsed.resumed_at) == (6, [30_001])
    assert (again.rows_read, again.imported, again.duplicates) == (30_006, 30_006, 0)
    assert len(events) == 30_006 and [e.sku for e in events].count("SKU-29990") == 2


async def test_a_row_repeating_one_whose_count_the_summary_did_not_keep_reads_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A summary knows of an early row only its fingerprint: a row appended that repeats it (or whose fingerprint
    is alike) cannot be given its occurrence from the summary, so the file is read again from its first line —
    exact, the rows recorded before duplicates, the repeated sale booked as a second one, never dropped."""
    monkeypatch.setattr(occurrences_module, "RECENT_KEYS", 10)
    parsed = Parsed(monkeypatch)
    rows = _rows(300)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=100)) as env:
        first = await env.importer.import_file(path, keep_checkpoint=True)
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(_rows(3, "LATE")) + rows[5])  # the same sale as line 7, rung up again
        parsed.rows = 0
        again = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        events = await env.events()
        assert _checkpoint_ids(env.store.path) == [again.import_id]
    # from the checkpoint (its batch stopped at the repeat, never recorded), then from the first line
    assert (parsed.resumed_at, parsed.rows) == ([301], 304)
    assert (again.rows_read, again.imported, again.duplicates, again.recorded_now) == (304, 4, 300, 4)
    assert len(events) == 304 and [e.sku for e in events].count("SKU-5") == 2
    assert (
        "Line 305 of day.csv may repeat a row read before where its import went on from, whose count the checkpoint "
        "did not keep; the file is read again from its first line (the rows recorded before are duplicates)."
        in caplog.messages
    )


async def test_a_summary_whose_parts_a_start_of_another_agent_dropped_is_kept_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts of a summary are written ahead, each in its own transaction; an agent starting meanwhile on the
    same store drops parts no checkpoint keeps (a crash's). The checkpoint's transaction finds them gone and keeps
    the summary whole: a checkpoint without its counts would have had a sale rung up again taken for the first."""
    monkeypatch.setattr(store_module, "SUMMARY_PART_BYTES", 4 * 1024)
    rows = _rows(3_000)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=500)) as env:
        write = env.store._write

        async def racing(fn: Callable[[sqlite3.Connection], Any], **kwargs: Any) -> Any:
            done = await write(fn, **kwargs)
            if fn.__name__ == "write_part":  # another agent's start, between two parts
                with contextlib.closing(sqlite3.connect(env.store.path)) as other:
                    other.execute(
                        "DELETE FROM checkpoint_counts WHERE import_id NOT IN"
                        " (SELECT coalesce(counts_of, import_id) FROM checkpoints)"
                    )
                    other.commit()
            return done

        monkeypatch.setattr(env.store, "_write", racing)
        first = await env.importer.import_file(path, keep_checkpoint=True)
        with path.open("a", encoding="utf-8") as till:
            till.write(rows[2_999])  # the last sale rung up again
        again = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        events = await env.events()
    assert (again.rows_read, again.imported, again.duplicates) == (3_001, 3_001, 0)
    assert [e.sku for e in events].count("SKU-2999") == 2


async def test_an_import_going_on_from_a_summary_and_interrupted_goes_on_again_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs of counts follow the summary when an import that went on from it is interrupted: the next one loads
    both, and a sale rung up again after all that is still a second sale."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint with its counts every batch
    rows = _rows(600)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows[:300]), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=100)) as env:
        first = await env.importer.import_file(path, keep_checkpoint=True)
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(rows[300:]) + rows[299] + rows[450])  # two sales rung up again, after 300 more rows
        record = env.outbox.record
        calls: list[int] = []

        async def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) > 2:
                raise OutboxError("the disk is full (a test)")
            return await record(*args, **kwargs)

        monkeypatch.setattr(env.outbox, "record", failing)
        with pytest.raises(PosImportError):
            await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        monkeypatch.setattr(env.outbox, "record", record)
        last = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        events = await env.events()
    assert (last.rows_read, last.imported, last.duplicates) == (602, 602, 0)
    skus = [e.sku for e in events]
    assert len(events) == 602 and skus.count("SKU-299") == 2 and skus.count("SKU-450") == 2


def _as_kept_by_an_older_agent(store_path: str, import_id: int | None) -> None:
    """The summary ``import_id``'s checkpoint kept, written as an agent before 7-byte fingerprints wrote it: the
    first 5 bytes of each, all of them in full (``occurrences-1``)."""
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        (key,) = db.execute(
            "SELECT coalesce(counts_of, import_id) FROM checkpoints WHERE import_id = ?", (import_id,)
        ).fetchone()
        packed = b"".join(
            p for (p,) in db.execute("SELECT packed FROM checkpoint_counts WHERE import_id = ? ORDER BY rowid", (key,))
        )
        head = b"occurrences-2\n"
        assert packed.startswith(head)
        at = len(head)
        recent, known = int.from_bytes(packed[at : at + 4], "big"), int.from_bytes(packed[at + 4 : at + 8], "big")
        start = at + 9 + packed[at + 8]  # past the padding
        counts = packed[start : start + recent * 20]
        fingerprints = occurrences_module._Fingerprints.unpack(packed[start + recent * 20 :], known)[0]
        five = sorted({f[:5] for f in fingerprints})
        older = b"occurrences-1\n" + packed[at : at + 4] + len(five).to_bytes(4, "big") + counts + b"".join(five)
        db.execute("DELETE FROM checkpoint_counts WHERE import_id = ?", (key,))
        db.execute("INSERT INTO checkpoint_counts (import_id, packed) VALUES (?, ?)", (key, older))
        db.commit()


async def test_a_summary_kept_by_an_older_agent_has_its_file_read_again_once_and_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint an agent before 7-byte fingerprints kept holds 5-byte ones: rows appended after it are not
    read from it, but the file is read again from its first line, once, and the summary kept then is a new one."""
    monkeypatch.setattr(occurrences_module, "RECENT_KEYS", 10)
    parsed = Parsed(monkeypatch)
    rows = _rows(300)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=100)) as env:
        first = await env.importer.import_file(path, keep_checkpoint=True)
        _as_kept_by_an_older_agent(env.store.path, first.import_id)
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(_rows(3, "LATE")) + rows[5])  # the same sale as line 7, rung up again
        parsed.rows = 0
        again = await env.importer.import_file(path, go_on_from=first.import_id, keep_checkpoint=True)
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(_rows(2, "LATER")))
        parsed.rows, parsed.resumed_at = 0, []
        third = await env.importer.import_file(path, go_on_from=again.import_id, keep_checkpoint=True)
        events = await env.events()
    assert (parsed.rows, parsed.resumed_at) == (2, [305])  # the new summary is gone on from
    assert (again.rows_read, again.imported, again.duplicates, again.recorded_now) == (304, 4, 300, 4)
    assert (third.rows_read, third.imported, third.duplicates, third.recorded_now) == (306, 6, 300, 2)
    assert len(events) == 306 and [e.sku for e in events].count("SKU-5") == 2
    assert (
        "The checkpoint day.csv was imported up to was kept by an older agent, whose summary of the rows read is not "
        "gone on from; the file is read again from its first line, once (the rows recorded before are duplicates)."
        in caplog.messages
    )
