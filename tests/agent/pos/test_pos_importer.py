"""Importing whole files into a real outbox and store (SQLite files in tmp_path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from agent.pos import PosImportConfig, PosImporter, PosImportError, PosStore
from agent.pos import importer as importer_module
from protocol import Kind
from tests.agent.pos.pos_helpers import (
    GENERIC,
    LOCATION,
    OVERLAP_A,
    OVERLAP_B,
    SHOPIFY,
    SQUARE_CP1252,
    SQUARE_UTF8,
    open_env,
)

# Square UTF-8 fixture: what each line becomes (see tests/fixtures/pos/make_fixtures.py).
UTF8_MOVEMENTS = Counter({("LAT-12", Kind.SALE, -1): 2, ("CRS-01", Kind.SALE, -2): 1, ("CAF-CR", Kind.SALE, -1): 1,
                          ("CAF-CR", Kind.RETURN, 1): 1, ("ESP-900", Kind.SALE, -1): 1, ("MUG-01", Kind.RETURN, 1): 1,
                          ("MUG-01", Kind.SALE, -1): 1, ("LAT-12", Kind.SALE, -3): 1})
UTF8_QUARANTINED = {
    7: "Qty '0.5' kg is not whole; add kg = <base units per kg> under [pos.units]",
    9: "Qty 'two' is not a number",
    10: "SKU is empty (item 'Teapot')",
    11: "date '2024-02-30' is not a date (expected YYYY-MM-DD or MM/DD/YYYY)",
    16: "Qty '1.5' is not a whole number of units; items sold by weight need their unit under [pos.units]",
}


async def test_square_utf8_bom_export(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(SQUARE_UTF8)
        assert (report.profile, report.encoding, report.status) == ("square", "utf-8-sig", "imported")
        assert (report.rows_read, report.imported, report.duplicates, report.skipped, report.quarantined) == (15, 9, 0, 1, 5)
        assert {q.line: q.reason for q in report.quarantine} == UTF8_QUARANTINED
        assert report.skipped_reasons == {"Itemization Type: Custom Amount": 1}
        events = await env.events()
        assert Counter((e.sku, e.kind, e.qty) for e in events) == UTF8_MOVEMENTS
        assert {e.location for e in events} == {LOCATION} and {e.source for e in events} == {"pos:square"}
        espresso = next(e for e in events if e.sku == "ESP-900")
        assert espresso.attrs == {"gross_sales": "1234.50", "net_sales": "1234.50"}
        assert espresso.ref == "T-1008"
        stored = await env.store.quarantined()
        assert {(q.file_name, q.line, q.reason) for q in stored} == {("square_items_utf8_bom.csv", k, v) for k, v in UTF8_QUARANTINED.items()}
        teapot = next(q for q in stored if q.line == 10)
        assert "Teapot" in teapot.raw and "T-1006" in teapot.raw


async def test_cp1252_export_with_euro_amounts_and_day_first_dates(tmp_path: Path) -> None:
    config = PosImportConfig.from_mapping({"date_order": "DMY"})
    async with open_env(tmp_path, config) as env:
        report = await env.importer.import_file(SQUARE_CP1252)
        assert (report.encoding, report.profile, report.rows_read, report.imported, report.quarantined) == ("cp1252", "square", 5, 4, 1)
        assert report.quarantine[0].line == 5 and report.quarantine[0].reason == "Qty '1x' is not a number"
        assert "Café crème" in report.quarantine[0].raw and "3,80 €" in report.quarantine[0].raw
        events = {(e.sku, e.kind): e for e in await env.events()}
        assert events[("CAF-CR", Kind.SALE)].qty == -2
        assert events[("CAF-CR", Kind.SALE)].attrs["net_sales"] == "7.60"
        assert events[("BRU-01", Kind.RETURN)].qty == 1
        assert events[("BRU-01", Kind.RETURN)].attrs["net_sales"] == "-6.50"
        assert events[("ESP-900", Kind.SALE)].attrs["gross_sales"] == "1234.50"
        # 05/03/2024 08:00 in Paris (UTC+1) is 07:00 UTC on 5 March
        assert events[("CAF-CR", Kind.SALE)].occurred_at >> 16 == 1709622000000


async def test_weighed_items_import_once_kg_is_configured(tmp_path: Path) -> None:
    async with open_env(tmp_path, PosImportConfig.from_mapping({"units": {"kg": 1000}})) as env:
        report = await env.importer.import_file(SQUARE_UTF8)
        assert (report.imported, report.quarantined) == (10, 4)
        beans = [e for e in await env.events() if e.sku == "BEAN-HOUSE"]
        assert [(e.kind, e.qty, e.attrs.get("unit")) for e in beans] == [(Kind.SALE, -500, "kg")]


async def test_the_same_file_twice_counts_nothing_twice(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        first = await env.importer.import_file(SQUARE_UTF8)
        events = await env.events()
        second = await env.importer.import_file(env.copy(SQUARE_UTF8, "renamed-copy.csv"))
        assert (second.imported, second.duplicates, second.quarantined) == (0, first.imported, first.quarantined)
        assert await env.events() == events
        assert await env.store.quarantine_count() == len(UTF8_QUARANTINED)  # the same bad rows are kept once
        imports = await env.store.recent_imports()
        assert [(r.file_name, r.imported, r.duplicates) for r in imports] == [("renamed-copy.csv", 0, 9), ("square_items_utf8_bom.csv", 9, 0)]


async def test_overlapping_exports_count_shared_rows_once(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        a = await env.importer.import_file(OVERLAP_A)
        b = await env.importer.import_file(OVERLAP_B)
        assert (a.imported, a.duplicates) == (7, 0)
        assert (b.imported, b.duplicates) == (2, 3)  # the three rows of 5 March were in both
        # and the full export of the same period adds nothing: its good rows are all known
        full = await env.importer.import_file(SQUARE_UTF8)
        assert (full.imported, full.duplicates) == (0, 9)
        assert Counter((e.sku, e.kind, e.qty) for e in await env.events()) == UTF8_MOVEMENTS


async def test_a_row_that_changed_since_its_import_is_quarantined_and_the_rest_imports(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        await env.importer.import_file(OVERLAP_A)
        text = OVERLAP_A.read_text(encoding="utf-8")
        changed = tmp_path / "reexport.csv"
        changed.write_text(text.replace("$7.00,$0.00,$7.00", "$7.00,$0.00,$6.30"), encoding="utf-8")
        assert changed.read_text(encoding="utf-8") != text
        report = await env.importer.import_file(changed)
        assert (report.imported, report.duplicates, report.quarantined) == (0, 6, 1)
        (conflict,) = report.quarantine
        assert conflict.line == 3
        assert "the row changed since it was first imported" in conflict.reason and "attrs" in conflict.reason


async def test_shopify_on_hand_becomes_observations_not_movements(tmp_path: Path) -> None:
    config = PosImportConfig.from_mapping({"locations": {"Main Street": "S001", "Warehouse": "W001"}})
    async with open_env(tmp_path, config) as env:
        report = await env.importer.import_file(SHOPIFY)
        assert (report.profile, report.produces, report.observations, report.skipped, report.quarantined) == ("shopify", "observations", 3, 1, 2)
        assert {q.line: q.reason for q in report.quarantine} == {6: "SKU is empty", 7: "On hand 'five' is not a number"}
        assert await env.events() == ()
        pending = await env.store.pending_observations()
        mtime_ms = SHOPIFY.stat().st_mtime_ns // 1_000_000
        assert [(o.location, o.sku, o.system, o.on_hand, o.observed_at_ms) for _, o in pending] == [
            ("S001", "MUG-01", "shopify", 7, mtime_ms), ("W001", "MUG-01", "shopify", 40, mtime_ms),
            ("S001", "TEE-M-BLK", "shopify", -2, mtime_ms),
        ]
        again = await env.importer.import_file(SHOPIFY)
        assert (again.observations, again.observation_duplicates) == (0, 3)
        obs_id, first = pending[0]
        assert first.to_wire(obs_id) == {
            "id": obs_id, "location": "S001", "sku": "MUG-01", "system": "shopify", "on_hand": 7,
            "observed_at_ms": mtime_ms, "source_file": "shopify_inventory.csv",
        }
        await env.store.mark_observations_sent([obs_id])
        assert [o.sku for _, o in await env.store.pending_observations()] == ["MUG-01", "TEE-M-BLK"]


async def test_a_copy_of_a_stock_export_imported_by_an_agent_from_before_keeps_its_first_time(tmp_path: Path) -> None:
    """An export imported before the store kept each import's file time: a copy of it with a new file time is
    dated by the time its counts were stored with then, never by its own."""
    old_s = 1_764_061_200  # 2025-11-25 09:00 UTC
    config = PosImportConfig.from_mapping({"locations": {"Main Street": "S001", "Warehouse": "W001"}})
    async with open_env(tmp_path, config) as env:
        path = env.copy(SHOPIFY, "inventory.csv")
        os.utime(path, (old_s, old_s))
        first = await env.importer.import_file(path)
        assert (first.observations, first.observation_duplicates) == (3, 0)
    with contextlib.closing(sqlite3.connect(PosImportConfig().store_path_for(tmp_path / "outbox.sqlite3"))) as conn:
        conn.execute("UPDATE imports SET file_time_ms = NULL")  # as an agent from before left them
        conn.commit()
    async with open_env(tmp_path, config) as env:
        copy = env.copy(SHOPIFY, "inventory (1).csv")  # a week later: today's file time
        assert copy.stat().st_mtime > old_s + 86400
        again = await env.importer.import_file(copy)
        assert (again.status, again.observations, again.observation_duplicates) == ("imported", 0, 3)
        assert {o.observed_at_ms for _, o in await env.store.pending_observations()} == {old_s * 1000}


async def test_generic_export(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(GENERIC)
        assert (report.profile, report.imported, report.quarantined) == ("generic", 5, 1)
        assert report.quarantine[0].line == 7 and "kind 'teleport' is not one this profile knows" in report.quarantine[0].reason
        assert [(e.kind, e.qty, e.ref) for e in await env.events()] == [
            (Kind.RECEIVE, 24, "PO-77"), (Kind.SALE, -1, "R-1"), (Kind.SALE, -1, "R-1"), (Kind.COUNT, 20, "CS-1"), (Kind.ADJUST, -2, None),
        ]


async def test_batches_are_transactions_and_results_do_not_depend_on_their_size(tmp_path: Path) -> None:
    small = PosImportConfig.from_mapping({"batch_rows": 2})
    async with open_env(tmp_path / "a", small) as env_small, open_env(tmp_path / "b") as env_big:
        progress: list[tuple[int, int, int]] = []
        r1 = await env_small.importer.import_file(SQUARE_UTF8, on_progress=lambda *p: progress.append(p))
        r2 = await env_big.importer.import_file(SQUARE_UTF8)
        assert r1.imported == r2.imported and r1.quarantined == r2.quarantined
        assert [e.event_id for e in await env_small.events()] == [e.event_id for e in await env_big.events()]
        assert len(progress) > 5  # one call per batch
        assert [p[2] for p in progress] == sorted(p[2] for p in progress) and progress[-1][2] == 15
        assert progress[-1][0] == progress[-1][1] == SQUARE_UTF8.stat().st_size


async def test_files_that_cannot_be_imported_give_a_failed_report(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("Foo,Bar\n1,2\n", encoding="utf-8")
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(unknown)
        assert report.status == "failed" and "matches no import profile" in (report.error or "")
        assert json.loads(report.to_json())["status"] == "failed"
        missing = await env.importer.import_file(tmp_path / "gone.csv")
        assert missing.status == "failed" and "could not be read" in (missing.error or "")
        assert [r.status for r in await env.store.recent_imports()] == ["failed"]


async def test_every_row_bad_is_status_quarantined(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,sku,qty,kind\n2024-01-01,A,x,sale\n2024-01-01,,1,sale\n", encoding="utf-8")
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(bad)
        assert (report.status, report.quarantined, report.rows_read) == ("quarantined", 2, 2)


async def test_a_closed_outbox_stops_the_import_with_one_clear_error(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        await env.outbox.close()
        with pytest.raises(PosImportError, match="the import stopped: the outbox .* is closed"):
            await env.importer.import_file(SQUARE_UTF8)


async def test_a_cancelled_import_leaves_only_whole_batches_and_can_be_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer_module, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every batch
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as f:
        f.write("date,sku,qty,kind,ref\n")
        for i in range(20_000):
            f.write(f"2024-03-04T09:{i // 1000 % 60:02d}:{i % 60:02d},SKU-{i % 50},1,sale,R-{i}\n")
    async with open_env(tmp_path, PosImportConfig.from_mapping({"batch_rows": 500})) as env:
        first_batch = asyncio.Event()
        task = asyncio.create_task(env.importer.import_file(big, on_progress=lambda *_: first_batch.set()))
        await first_batch.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        partial = len(await env.events())
        assert 500 <= partial < 20_000 and partial % 500 == 0
        report = await env.importer.import_file(big)
        # it goes on from its checkpoint: read again are at most the rows of the batch the cancel cut off
        # between the outbox's commit and the checkpoint's; the report is the whole file's
        assert report.imported + report.duplicates == 20_000 and report.duplicates <= 500
        assert len(await env.events()) == 20_000
        assert [r.status for r in await env.store.recent_imports()] == ["imported", "resumed"]


async def test_store_close_twice_and_use_after_close(tmp_path: Path) -> None:
    store = await PosStore.open(tmp_path / "pos.sqlite")
    await store.close()
    await store.close()
    with pytest.raises(PosImportError, match="is closed"):
        await store.quarantined()


async def test_quarantine_survives_a_restart(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        await env.importer.import_file(SQUARE_UTF8)
        path = env.store.path
    async with PosStore.open(path) as store:
        assert sorted(q.line for q in await store.quarantined()) == sorted(UTF8_QUARANTINED)


def test_importer_location_defaults_to_the_outbox(tmp_path: Path) -> None:
    class FakeOutbox:
        location = "S009"

    importer = PosImporter(FakeOutbox(), None, PosImportConfig())  # type: ignore[arg-type]
    assert importer.location == "S009"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
async def test_a_utf16_export_without_a_byte_order_mark_is_imported_whole(tmp_path: Path, encoding: str) -> None:
    # Windows "Unicode" text without its mark: read as UTF-8 it was a header of NUL-laced names, the file failed
    bare = tmp_path / "unicode-export.csv"
    bare.write_bytes(GENERIC.read_text(encoding="utf-8").replace("MUG-01", "MUG-Ω1").encode(encoding))
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(bare)
        assert (report.status, report.encoding, report.imported, report.quarantined) == ("imported", encoding, 5, 1)
        assert {e.sku for e in await env.events()} == {"MUG-Ω1"}


async def test_a_utf8_export_with_rows_in_cp1252_books_every_sku_as_written(tmp_path: Path) -> None:
    # two programs appended to one file: read whole as cp1252, the UTF-8 rows were booked as 'CAFÃ‰-01'
    mixed = tmp_path / "appended.csv"
    head = "date,sku,qty,kind,ref\n"
    mixed.write_bytes(
        "\ufeff".encode() + head.encode() + "2024-03-04T09:00:00,CAFÉ-01,3,receive,PO-1\n".encode()
        + "2024-03-04T10:00:00,CRÈME-02,2,receive,PO-2\n".encode("cp1252")
        + "2024-03-04T11:00:00,THÉ-03,1,receive,PO-3\n".encode()
    )  # fmt: skip
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(mixed)
        assert (report.status, report.encoding, report.imported) == ("imported", "utf-8+cp1252", 3)
        assert [e.sku for e in await env.events()] == ["CAFÉ-01", "CRÈME-02", "THÉ-03"]


@pytest.mark.parametrize("codec", ["utf-32-le", "utf-32-be"])
async def test_a_utf32_export_with_its_byte_order_mark_is_imported_whole(tmp_path: Path, codec: str) -> None:
    # FF FE 00 00 starts like the UTF-16 mark FF FE: read as UTF-16 its header was NUL-laced names, the file failed
    wide = tmp_path / "utf32-export.csv"
    wide.write_bytes(("\ufeff" + GENERIC.read_text(encoding="utf-8").replace("MUG-01", "MUG-Ω1")).encode(codec))
    async with open_env(tmp_path) as env:
        report = await env.importer.import_file(wide)
        assert (report.status, report.encoding, report.imported, report.quarantined) == ("imported", "utf-32", 5, 1)
        assert {e.sku for e in await env.events()} == {"MUG-Ω1"}


async def test_two_exports_joined_into_one_file_with_dos_end_marks_import_every_row(tmp_path: Path) -> None:
    # ``copy /b mon.csv+tue.csv week.csv`` of a DOS-era till: the second day's byte-order mark made its first
    # row's date '\ufeff2024-…', its header row was a bad row, and each day's Ctrl-Z mark one more
    def day(d: int) -> bytes:
        rows = "".join(f"2024-03-0{d}T10:0{i}:00,SKU-{d}{i},1,sale,r{d}{i}\r\n" for i in range(3))
        return "\ufeffdate,sku,qty,kind,ref\r\n".encode() + rows.encode() + b"\x1a"

    joined = tmp_path / "week.csv"
    joined.write_bytes(day(4) + day(5))
    async with open_env(tmp_path, PosImportConfig(profile="generic")) as env:
        report = await env.importer.import_file(joined)
        assert [(q.line, q.reason) for q in report.quarantine] == []
        assert (report.status, report.imported, report.skipped) == ("imported", 6, 1)
        assert report.skipped_reasons == {"the header row again (two exports joined into one file?)": 1}
        assert sorted(e.sku for e in await env.events()) == ["SKU-40", "SKU-41", "SKU-42", "SKU-50", "SKU-51", "SKU-52"]


async def test_a_row_of_the_hour_clocks_went_back_matching_one_imported_says_so_and_its_offset_imports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hourly exports across the fall-back: a sale at 01:30 EDT, then another at 01:30 EST. Without an offset
    the second reads as the first (the same row, the same id): it is a duplicate, and the import says so."""
    config = PosImportConfig.from_mapping({"time_zone": "America/New_York"})
    header = "date,time,sku,qty,kind\n"
    first, second = tmp_path / "sales-01-edt.csv", tmp_path / "sales-01-est.csv"
    first.write_text(header + "2025-11-02,01:30,SKU-1,1,sale\n2025-11-02,00:45,SKU-2,1,sale\n")
    second.write_text(header + "2025-11-02,01:30,SKU-1,1,sale\n2025-11-02,02:15,SKU-2,1,sale\n")
    async with open_env(tmp_path, config) as env:
        assert (await env.importer.import_file(first)).imported == 2
        caplog.clear()
        report = await env.importer.import_file(second)
        assert (report.imported, report.duplicates) == (1, 1)
        said = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(said) == 1, [r.getMessage() for r in caplog.records]
        assert said[0].getMessage() == (
            "1 row of the POS export sales-01-est.csv has a time that happens twice in America/New_York (clocks"
            " went back; 2025-11-02 01:30) and matches a movement already recorded, so it was not recorded again:"
            " if it happened in the repeated hour rather than being exported again, write its time with its UTC"
            " offset (2025-11-02T01:30:00-05:00) and import it again."
        )
        fixed = tmp_path / "sales-01-est-fixed.csv"
        fixed.write_text(header + "2025-11-02T01:30:00-05:00,,SKU-1,1,sale\n")
        assert (await env.importer.import_file(fixed)).imported == 1
        events = [e for e in await env.events() if e.sku == "SKU-1"]
        assert len(events) == 2
