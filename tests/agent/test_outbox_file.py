"""The outbox file taken away under an open outbox: written back, or saved beside the file put in its place."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent import Movement, Outbox, OutboxError
from agent.lock import hold_agent_lock
from agent.outbox import REPLACED_SUFFIX
from protocol import Kind
from tests.harness.small_disk import Mounts
from tests.harness.sqlite_copy import backup

AGENT = "store-1"
LOC = "S001"


def sale(sku: str = "SKU-1") -> Movement:
    return Movement(LOC, sku, Kind.SALE, -1, "pos:acme")


def delete_outbox(path: Path) -> None:
    """What `rm outbox.sqlite3*` does: the file and its WAL and shared memory, gone from the folder."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def skus_in(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT sku FROM events ORDER BY seq")]
    finally:
        conn.close()


async def test_a_deleted_outbox_is_written_back_before_the_next_movement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("A"), sale("B")])
        delete_outbox(path)
        with caplog.at_level(logging.ERROR, logger="agent.outbox"):
            await outbox.record([sale("C")])
        assert skus_in(path) == ["A", "B", "C"], "the movement acknowledged after the deletion is in the file on disk"
        await outbox.record([sale("D")])
        assert (await outbox.stats()).backlog == 4
    assert skus_in(path) == ["A", "B", "C", "D"]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and "was deleted while the agent ran" in said[0] and str(path) in said[0], said


async def test_a_deleted_outbox_is_written_back_when_it_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("A")])
        delete_outbox(path)
    assert skus_in(path) == ["A"], "closing its last connection would have lost it"


async def test_looking_finds_a_deleted_outbox_without_a_write(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("A")])
        delete_outbox(path)
        assert await outbox.check_file() == "missing"
        assert skus_in(path) == ["A"]
        assert await outbox.check_file() == "same"


async def test_an_outbox_replaced_by_another_file_is_saved_beside_it_and_refuses_movements(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("A"), sale("B")])
        os.replace(path, tmp_path / "moved-away.sqlite3")  # the WAL stays: as if a backup was copied over the file
        async with Outbox.open(path, agent_id=AGENT, location=LOC) as other:
            await other.record([sale("OTHER")])
        with caplog.at_level(logging.ERROR, logger="agent.outbox"), pytest.raises(OutboxError, match="replaced"):
            await outbox.record([sale("C")])
        assert outbox.replaced.is_set()
        saved = outbox.saved_copy
        assert saved is not None and saved.name.startswith(path.name + REPLACED_SUFFIX)
        with pytest.raises(OutboxError, match="replaced"):
            await outbox.record([sale("C")])
        assert (await outbox.stats()).backlog == 2
    assert skus_in(path) == ["OTHER"], "the file put at the path is left alone"
    assert skus_in(saved) == ["A", "B"], "the agent's own is saved, nothing of the refused movement in it"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and str(saved) in said[0] and "2 movements the hub has not acknowledged" in said[0], said


async def test_a_backup_moved_over_the_running_outbox_is_not_mixed_with_the_agents_wal(tmp_path: Path) -> None:
    # Found by moving an older copy of a running agent's outbox into place (cp backup x.new && mv x.new outbox):
    # SQLite keeps "<path>-wal" when the file it belongs to was moved away, so the restarted agent replayed the
    # agent's own WAL into the restored file ("database disk image is malformed").
    path = tmp_path / "outbox.sqlite3"
    older = tmp_path / "older.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("OLD")])
        source, copy = sqlite3.connect(path), sqlite3.connect(older)
        source.backup(copy)
        source.close()
        copy.close()
        for sku in ("A", "B", "C", "D"):
            await outbox.record([sale(sku)])  # in the WAL: the outbox checkpoints only every 1,000 rows
        os.replace(older, path)
        with pytest.raises(OutboxError, match="replaced"):
            await outbox.record([sale("E")])
        saved = outbox.saved_copy
    assert saved is not None and skus_in(saved) == ["OLD", "A", "B", "C", "D"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert skus_in(path) == ["OLD"], "the restored file holds what it held, nothing of the agent's WAL"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as restored:
        assert (await restored.stats()).last_seq == 1


async def test_on_a_disk_filled_by_its_own_wal_recording_resumes_once_space_is_freed(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    # Found on a 2 MiB data folder: every scan grew the WAL, which was copied back only every 1,000 changed rows
    # and never cut back, so the agent filled the disk itself; once the operator deleted another file to make room,
    # the WAL grew into that room too and recording stopped again after a few more scans.
    caplog.set_level(logging.INFO, logger="agent.db")
    disk = mounts.tmpfs(tmp_path / "disk", size="2m")
    path = disk / "outbox.sqlite3"
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (400 << 10))
    outbox = await Outbox.open(path, agent_id=AGENT, location=LOC)
    try:
        recorded = 0
        with pytest.raises(OutboxError, match="the disk is full"):
            while recorded < 2_000:
                await outbox.record([sale(f"SKU-{recorded}")])
                recorded += 1
        assert recorded > 10
        filler.unlink()
        # Many more scans than the filler's room would hold as WAL: the WAL's own space comes back.
        for n in range(60):
            await outbox.record([sale(f"AGAIN-{n}")])
        assert os.stat(f"{path}-wal").st_size < (1 << 20)
    finally:
        await outbox.close()
    assert skus_in(path) == [f"SKU-{n}" for n in range(recorded)] + [f"AGAIN-{n}" for n in range(60)]
    assert "truncated" in caplog.text


async def test_a_backup_copied_over_the_running_outbox_is_never_mixed_with_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by a careless store putting a backup back with `cp backup.sqlite3 outbox.sqlite3` while the agent ran:
    # the copy is written into the file the agent has open (the same inode), so nothing about the path changes,
    # and the agent's next checkpoint copied its WAL's pages into the backup ("database disk image is malformed").
    monkeypatch.setattr("agent.db.CHECKPOINT_ROWS", 4)  # a checkpoint every few movements
    path = tmp_path / "outbox.sqlite3"
    older = tmp_path / "backup.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC, owner=True) as outbox:
        for n in range(10):
            await outbox.record([sale(f"OLD-{n}")])  # its own checkpoints are no other writer's
        backup(path, older)
        kept = older.read_bytes()
        for n in range(10):
            await outbox.record([sale(f"NEW-{n}")])  # checkpointed into the file: only it holds them
        await outbox.stats()  # after the checkpoint the last one queued (a copy during one is not told apart)
        shutil.copy2(older, path)  # keeps the backup's modification time, not the one the last checkpoint left
        with caplog.at_level(logging.ERROR, logger="agent.outbox"), pytest.raises(OutboxError, match="overwritten"):
            for n in range(10):
                await outbox.record([sale(f"AFTER-{n}")])
        assert outbox.replaced.is_set()
        saved = outbox.saved_copy
        assert saved is not None and saved.name.startswith(path.name + REPLACED_SUFFIX)
    assert path.read_bytes() == kept, "the backup put there is left exactly as it was copied"
    assert not path.with_name(path.name + "-wal").exists(), "the agent's WAL is not replayed into the backup"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as restored:
        assert (await restored.stats()).last_seq == 10
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1 and "overwritten" in said[0] and str(saved) in said[0], said


async def test_a_chmod_a_hard_link_or_a_copy_read_from_the_running_outbox_is_no_other_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backup tool's hard link (rsync --link-dest), a chmod or a copy read from the file move its change time, or
    # nothing, without writing a byte: taken for another writer, the agent would stop and set its WAL aside.
    monkeypatch.setattr("agent.db.CHECKPOINT_ROWS", 4)
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC, owner=True) as outbox:
        for n in range(6):
            await outbox.record([sale(f"A-{n}")])
        os.link(path, tmp_path / "snapshot.sqlite3")
        path.chmod(0o640)
        shutil.copyfile(path, tmp_path / "read.sqlite3")
        assert await outbox.check_file() == "same"
        for n in range(6):
            await outbox.record([sale(f"B-{n}")])  # and its checkpoints go on
        assert not outbox.replaced.is_set() and outbox.saved_copy is None
        assert (await outbox.stats()).last_seq == 12


async def test_looking_finds_a_backup_copied_over_the_outbox_and_saves_all_its_movements(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    older = tmp_path / "backup.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC, owner=True) as outbox:
        await outbox.record([sale("A")])
        backup(path, older)
        kept = older.read_bytes()
        await outbox.record([sale("B")])
        await outbox.record([sale("C")])
        shutil.copyfile(older, path)
        assert await outbox.check_file() == "overwritten"
        saved = outbox.saved_copy
        assert saved is not None
        with pytest.raises(OutboxError, match="overwritten"):
            await outbox.record([sale("D")])
    assert path.read_bytes() == kept
    assert skus_in(saved) == ["A", "B", "C"], "every movement the agent recorded, nothing refused"
    conn = sqlite3.connect(saved)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_another_process_beside_the_running_agent_leaves_the_checkpoints_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `record` and `import` write the outbox beside the running agent; a checkpoint of theirs would be a write to
    # the file that is not the agent's own, so they leave them to the agent, which copies a large WAL back itself.
    monkeypatch.setattr("agent.db.CHECKPOINT_ROWS", 4)
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC, owner=True) as agent:
        await agent.record([sale("AGENT")])
        with hold_agent_lock(path):
            async with Outbox.open(path, agent_id=AGENT, location=LOC) as beside:
                for n in range(20):
                    await beside.record([sale(f"BESIDE-{n}")])
            assert await agent.check_file() == "same"
            await agent.record([sale("AGENT-2")])
    assert skus_in(path) == ["AGENT", *(f"BESIDE-{n}" for n in range(20)), "AGENT-2"]
