"""An import that stops before its end goes on from its checkpoint when the same file is imported again."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from agent.errors import OutboxError
from agent.outbox import Movement, RecordResult
from agent.pos import PosImportConfig, run_import
from agent.pos import importer as importer_module
from agent.pos.errors import PosImportError
from agent.pos.source import scan_file
from tests.agent.pos.pos_helpers import Env, open_env

HEADER = "date,time,sku,qty,kind,ref\n"
BATCH = 100


@pytest.fixture(autouse=True)
def checkpoint_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint after every batch here (the agent writes one at most once a second)."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)


def _rows(n: int, prefix: str = "SKU") -> list[str]:
    return [f"2024-03-05,10:{i // 60 % 60:02d}:{i % 60:02d},{prefix}-{i},1,sale,r{i}\n" for i in range(n)]


def _fail_after(env: Env, batches: int) -> None:
    """The outbox refuses every batch after the first ``batches``: the import stops in the middle of the file."""
    real = env.outbox.record
    calls: list[int] = []

    async def record(movements: Sequence[Movement], **kw: Any) -> RecordResult:
        calls.append(1)
        if len(calls) > batches:
            raise OutboxError("the disk is full (a test)")
        return await real(movements, **kw)

    env.importer.outbox.record = record  # type: ignore[method-assign]


def _imports(env: Env) -> list[tuple[str, str | None]]:
    with sqlite3.connect(env.store.path) as db:
        return db.execute("SELECT status, error FROM imports ORDER BY id").fetchall()


async def _interrupted(env: Env, path: Path, batches: int) -> None:
    _fail_after(env, batches)
    with pytest.raises(PosImportError):
        await env.importer.import_file(path)
    del env.importer.outbox.record  # type: ignore[method-assign]  # the instance's stand-in: the real one again


async def test_an_interrupted_import_goes_on_from_its_checkpoint_with_the_whole_file_in_its_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Imported again, the file was read and parsed from its first line: every row recorded a duplicate."""
    rows = _rows(2_000)
    rows[1_500] = rows[10]  # the same row twice, far apart: two sales, also when the second is read after a resume
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=7)
        stopped = "the import stopped because the outbox could not be written: the disk is full (a test)"
        assert _imports(env) == [("interrupted", stopped)]
        report = await env.importer.import_file(path)
        events = await env.events()
    assert report.status == "imported" and report.rows_read == 2_000
    # the first 7 batches (700 rows) were not read again: read again, each would be a duplicate
    assert report.imported == 2_000 and report.duplicates == 0
    assert len(events) == 2_000 and len({e.event_id for e in events}) == 2_000
    assert [e.sku for e in events].count("SKU-10") == 2
    assert [status for status, _ in _imports(env)] == ["resumed", "imported"]
    assert _imports(env)[0][1] == "interrupted after line 701; import #2 went on from there"
    said = [r.getMessage() for r in caplog.records]
    assert "day.csv was interrupted at line 701; the import goes on from there (700 rows were read before)." in said


async def test_an_import_interrupted_twice_goes_on_each_time_and_keeps_its_quarantined_rows(tmp_path: Path) -> None:
    rows = _rows(1_000)
    rows[50] = "2024-03-05,10:00:00,SKU-X,two,sale,bad\n"
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=3)
        await _interrupted(env, path, batches=2)
        report = await env.importer.import_file(path)
        events = await env.events()
    assert len(events) == 999
    assert (report.rows_read, report.imported, report.duplicates, report.quarantined) == (1_000, 999, 0, 1)
    assert [q.line for q in report.quarantine] == [52]
    assert [status for status, _ in _imports(env)] == ["resumed", "resumed", "imported"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "cp1252"])
async def test_an_export_in_another_encoding_goes_on_from_its_checkpoint(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "day.csv"
    path.write_bytes((HEADER + "".join(_rows(600, "CAFÉ"))).encode(encoding))
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=2)
        report = await env.importer.import_file(path)
        events = await env.events()
    assert (report.rows_read, report.imported, report.duplicates) == (600, 600, 0)
    assert sorted(e.sku for e in events) == sorted(f"CAFÉ-{i}" for i in range(600))


async def test_a_file_changed_before_its_checkpoint_is_read_again_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows(1_000)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="agent.pos")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=4)
        rows[5] = rows[5].replace(",1,sale,", ",2,sale,")  # the POS exported the day again: one line differs
        path.write_text(HEADER + "".join(rows), encoding="utf-8")
        report = await env.importer.import_file(path)
        events = await env.events()
    # every row read again: the 400 recorded before are duplicates but the one changed (a new sale of 2)
    assert (report.rows_read, report.imported, report.duplicates) == (1_000, 601, 399)
    assert len(events) == 1_001
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "day.csv was interrupted at line 401, but the file changed since (its first bytes are not the same); it is "
        "read again from the start (the rows recorded before are duplicates)." in said
    )
    changed = (
        "interrupted after line 401; the file changed since (its first bytes are not the same), so import #2 read "
        "it again from the start"
    )
    assert _imports(env) == [("interrupted", changed), ("imported", None)]


async def test_a_file_grown_since_goes_on_from_its_checkpoint(tmp_path: Path) -> None:
    """Rows appended after the interruption change nothing before the checkpoint: the import goes on."""
    rows = _rows(1_200)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows[:1_000]), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=5)
        with path.open("a", encoding="utf-8") as till:
            till.write("".join(rows[1_000:]))
        report = await env.importer.import_file(path)
        events = await env.events()
    assert (report.rows_read, report.imported, report.duplicates) == (1_200, 1_200, 0)
    assert len(events) == 1_200
    assert [status for status, _ in _imports(env)] == ["resumed", "imported"]


async def test_only_an_import_whose_process_is_gone_is_marked_interrupted(tmp_path: Path) -> None:
    """A ``running`` row stayed ``running`` for ever when its agent was killed; one of a live process must not move."""
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(3)), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        live = FileLock(str(env.store.owner_lock("live")), thread_local=False)
        live.acquire(timeout=0)  # another process importing now (a lock held through another descriptor)
        scan = scan_file(path)
        await env.store.begin_import(scan, "other.csv", "generic", owner="live")
        await env.store.begin_import(scan, "killed.csv", "generic", owner="gone")
        assert await env.store.mark_interrupted() == 1
        assert [status for status, _ in _imports(env)] == ["running", "interrupted"]
        live.release()
        assert await env.store.mark_interrupted() == 1
        assert [status for status, _ in _imports(env)] == ["interrupted", "interrupted"]
        assert _imports(env)[1][1] == (
            "interrupted before its first batch was recorded: the agent stopped, or its computer, before the import ended"
        )


def test_the_report_lists_an_import_whose_agent_was_killed_as_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.pos.store import PosStore
    from tests.agent.pos.test_pos_cli import agent_config, parse

    config = agent_config(tmp_path)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(3)), encoding="utf-8")

    async def killed_import() -> None:
        async with PosStore.open(tmp_path / "data" / "pos-import.sqlite") as store:
            await store.begin_import(scan_file(path), "day.csv", "generic", owner="gone")

    asyncio.run(killed_import())
    assert run_import(parse("-c", str(config), "--report")) == 0
    listed = capsys.readouterr().out
    assert (
        "day.csv (generic, utf-8): interrupted — interrupted before its first batch was recorded: the agent stopped, "
        "or its computer, before the import ended" in listed
    ), listed


async def test_a_row_finished_after_it_was_booked_from_a_line_without_a_line_break_is_the_same_event(
    tmp_path: Path,
) -> None:
    """``cut_rows``: the finished row is booked as the event its cut line became, never as a second one."""
    path = tmp_path / "day.csv"
    head = "date,time,sku,qty,kind,ref,note\n" + "2024-03-05,10:00:00,A-1,1,sale,r1,x\n"
    path.write_text(head + "2024-03-05,10:00:01,A-2,1,sale,r2,he", encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", unfinished_line_s=300)) as env:
        first = await env.importer.import_file(path)
        assert first.cut_row is not None and first.cut_row.line == 3
        assert first.cut_row.raw == "2024-03-05,10:00:01,A-2,1,sale,r2,he" and "cut_row" not in first.to_json()
        # the till finishes the line; only a column the import does not read was cut: the same movement
        path.write_text(head + "2024-03-05,10:00:01,A-2,1,sale,r2,hello\n", encoding="utf-8")
        same = await env.importer.import_file(path, cut_rows=(first.cut_row,))
        assert (same.imported, same.duplicates, same.quarantined, same.cut_row) == (0, 2, 0, None)
        # another file's till cut a row in its ref: the finished row differs, and is no second sale
        other = tmp_path / "other.csv"
        other.write_text(head.replace("A-1", "B-1") + "2024-03-05,10:00:02,B-2,1,sale,r1", encoding="utf-8")
        cut = (await env.importer.import_file(other)).cut_row
        assert cut is not None
        other.write_text(head.replace("A-1", "B-1") + "2024-03-05,10:00:02,B-2,1,sale,r12,x\n", encoding="utf-8")
        finished = await env.importer.import_file(other, cut_rows=(cut,))
        events = await env.events()
    assert (finished.imported, finished.duplicates, finished.quarantined) == (0, 1, 1)
    assert finished.quarantine[0].line == 3 and finished.quarantine[0].reason == (
        "line 3 was imported as it stood, without a line break, after 300 s without a change; the POS finished it "
        "later and it differs (a different ref): it is not booked a second time — check it against the till"
    )
    assert sorted(e.sku for e in events) == ["A-1", "A-2", "B-1", "B-2"]


async def test_an_import_interrupted_after_its_last_row_was_read_from_a_cut_line_still_says_so(tmp_path: Path) -> None:
    """No checkpoint lies past a line without a line break (the till may finish it, and the finished line must be
    read whole): resumed, the import reads that batch again and still hands the row to the watcher, so that a till
    finishing it later makes no second sale."""
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(199)) + "2024-03-05,11:00:00,CUT-1,1,sale,r1", encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        real = env.store.finish_import

        async def killed_before_the_end(*args: Any, **kw: Any) -> None:
            raise PosImportError("the agent was killed (a test)")

        env.store.finish_import = killed_before_the_end  # type: ignore[method-assign]
        with pytest.raises(PosImportError):
            await env.importer.import_file(path)
        env.store.finish_import = real  # type: ignore[method-assign]
        report = await env.importer.import_file(path)
    # the checkpoint of the first batch: the second, which ends in the cut line, is read again
    assert (report.rows_read, report.imported, report.duplicates) == (200, 100, 100)
    assert _imports(env)[0][1] == "interrupted after line 101; import #2 went on from there"
    assert report.cut_row is not None and report.cut_row.line == 201
    assert report.cut_row.raw == "2024-03-05,11:00:00,CUT-1,1,sale,r1"


async def test_a_checkpoint_is_written_at_most_once_a_second_unless_its_batch_writes_the_store_anyway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit of the POS store per batch (an fsync) made an import with small batches much slower; now the
    first batch writes one, the next only once CHECKPOINT_EVERY_S passed, or with a quarantined row."""
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 3_600.0)
    rows = _rows(1_000)
    rows[350] = "2024-03-05,10:00:00,SKU-X,two,sale,bad\n"  # in the 4th batch: its store commit takes a checkpoint
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        await _interrupted(env, path, batches=6)
        report = await env.importer.import_file(path)
    # read again: the 5th and 6th batches, recorded after the checkpoint of the 4th (duplicates now)
    assert (report.rows_read, report.imported, report.duplicates, report.quarantined) == (1_000, 799, 200, 1)
    assert _imports(env)[0][1] == "interrupted after line 401; import #2 went on from there"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-32"])
async def test_a_held_last_line_is_imported_later_from_the_checkpoint_of_the_complete_rows(
    tmp_path: Path, encoding: str
) -> None:
    """``hold_last_line``: the rows before a last line without a line break are imported at once and the import
    keeps its checkpoint; imported again (the line ended, or unfinished_line_s passed), it goes on from there."""
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(_rows(250)) + "2024-03-05,11:00:00,CUT-1,1,sale,r1", encoding=encoding)
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        held = await env.importer.import_file(path, hold_last_line=True)
        assert (held.status, held.rows_read, held.imported) == ("held", 250, 250)
        assert sorted(e.sku for e in await env.events()) == sorted(f"SKU-{i}" for i in range(250))
        rest = await env.importer.import_file(path)  # unchanged for unfinished_line_s: the line as it stands
        events = await env.events()
    assert (rest.status, rest.rows_read, rest.imported, rest.duplicates) == ("imported", 251, 251, 0)
    assert rest.cut_row is not None and rest.cut_row.line == 252
    assert len(events) == 251 and [e.ref for e in events if e.sku == "CUT-1"] == ["r1"]
    assert _imports(env) == [("resumed", "its last line held after line 251; import #2 went on from there"),
                             ("imported", None)]  # fmt: skip


async def test_a_file_held_twice_as_its_till_writes_on_reads_each_row_once(tmp_path: Path) -> None:
    """The till writes more rows and pauses in the middle of a line again: the second held import goes on from
    the first one's checkpoint, and the last from the second's."""
    rows = _rows(30)
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "".join(rows[:10]) + rows[10][:20], encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic", batch_rows=BATCH)) as env:
        first = await env.importer.import_file(path, hold_last_line=True)
        path.write_text(HEADER + "".join(rows[:20]) + rows[20][:20], encoding="utf-8")
        second = await env.importer.import_file(path, hold_last_line=True)
        path.write_text(HEADER + "".join(rows), encoding="utf-8")
        last = await env.importer.import_file(path)
        events = await env.events()
    assert [(r.status, r.rows_read, r.imported, r.duplicates) for r in (first, second, last)] == [
        ("held", 10, 10, 0), ("held", 20, 20, 0), ("imported", 30, 30, 0)
    ]
    assert sorted(e.sku for e in events) == sorted(f"SKU-{i}" for i in range(30))
    assert [status for status, _ in _imports(env)] == ["resumed", "resumed", "imported"]


async def test_a_quoted_field_going_on_into_the_held_line_waits_for_it_and_is_never_quarantined(tmp_path: Path) -> None:
    """A note with a line break in it, its row cut in its last line: the complete lines end inside its quotes.
    That row waits for the line (read alone, it looked like a quote never closed, and was quarantined)."""
    head = "date,time,sku,qty,kind,ref,note\n" + "2024-03-05,10:00:00,A-1,1,sale,r1,x\n"
    path = tmp_path / "day.csv"
    path.write_text(head + '2024-03-05,10:00:01,A-2,1,sale,r2,"two\nlines', encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        held = await env.importer.import_file(path, hold_last_line=True)
        path.write_text(head + '2024-03-05,10:00:01,A-2,1,sale,r2,"two\nlines"\n', encoding="utf-8")
        rest = await env.importer.import_file(path)
        events = await env.events()
    assert (held.status, held.imported, held.quarantined) == ("held", 1, 0)
    # that batch kept no checkpoint: its row is read again, a duplicate
    assert (rest.status, rest.rows_read, rest.imported, rest.duplicates, rest.quarantined) == ("imported", 2, 1, 1, 0)
    assert sorted(e.sku for e in events) == ["A-1", "A-2"]


async def test_a_file_without_any_line_break_is_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    path.write_text("date,time,sku,qty,kind,re", encoding="utf-8")
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        held = await env.importer.import_file(path, hold_last_line=True)
        path.write_text(HEADER + _rows(1)[0], encoding="utf-8")
        whole = await env.importer.import_file(path, hold_last_line=True)  # it ends with a line break now
        events = await env.events()
    assert (held.status, held.rows_read) == ("held", 0)
    assert (whole.status, whole.imported) == ("imported", 1) and len(events) == 1
