"""The POS store gives back the space an import's occurrence counts took."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent.pos import PosImportConfig, PosStore
from agent.pos import importer as importer_module
from tests.agent.pos.pos_helpers import open_env

HEADER = "date,time,sku,qty,kind,ref\n"


def _rows(n: int, prefix: str = "SKU") -> list[str]:
    return [f"2024-03-05,10:{i // 60 % 60:02d}:{i % 60:02d},{prefix}-{i},1,sale,r{i}\n" for i in range(n)]


async def _store_bytes(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


async def test_the_pos_store_gives_back_the_space_of_an_imports_occurrence_counts_once_they_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts a checkpoint keeps take ~20 bytes a row in the store while the import runs; dropped at its end,
    their pages stayed in the file as free pages, which never shrank. The store gives them back now."""
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
