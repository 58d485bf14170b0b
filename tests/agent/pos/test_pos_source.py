"""Encodings, delimiters and line numbers of export files, read as a stream."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.pos import FileRejected
from agent.pos.source import CsvRows, scan_file
from tests.agent.pos.pos_helpers import SQUARE_CP1252, SQUARE_UTF8


def rows_of(path: Path) -> tuple[CsvRows, list[tuple[int, list[str] | None]]]:
    with CsvRows(scan_file(path)) as rows:
        return rows, list(rows)


def test_utf8_with_bom_is_detected_and_the_bom_is_not_in_the_header() -> None:
    scan = scan_file(SQUARE_UTF8)
    assert scan.encoding == "utf-8-sig"
    assert scan.sha256 == hashlib.sha256(SQUARE_UTF8.read_bytes()).hexdigest()
    assert scan.size_bytes == SQUARE_UTF8.stat().st_size
    rows, body = rows_of(SQUARE_UTF8)
    assert rows.header[0] == "Date"
    assert any(fields and "Café crème" in fields for _, fields in body)


def test_cp1252_is_the_fallback_and_decodes_accents_and_euro_signs() -> None:
    scan = scan_file(SQUARE_CP1252)
    assert scan.encoding == "cp1252"
    rows, body = rows_of(SQUARE_CP1252)
    assert rows.delimiter == ";"
    first = body[0][1]
    assert first is not None
    assert "Café crème" in first and "7,60 €" in first
    assert body[1][1] is not None and "Crème brûlée" in body[1][1]


def test_plain_utf8_and_utf16(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("date,sku\n2024-01-01,CAFÉ\n", encoding="utf-8")
    assert scan_file(plain).encoding == "utf-8"
    wide = tmp_path / "wide.csv"
    wide.write_text("date\tsku\n2024-01-01\tCAFÉ\n", encoding="utf-16")
    assert scan_file(wide).encoding == "utf-16"
    rows, body = rows_of(wide)
    assert rows.header == ("date", "sku") and body == [(2, ["2024-01-01", "CAFÉ"])]


def test_a_byte_cp1252_leaves_undefined_is_kept_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(b"sku,qty\nA\x81,1\nB,2\n")
    _, body = rows_of(path)
    assert body == [(2, ["A\x81", "1"]), (3, ["B", "2"])]


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text('\n\nsku,note\nA,"two\nlines"\n\nB,x\n', encoding="utf-8")
    _, body = rows_of(path)
    assert body == [(4, ["A", "two\nlines"]), (6, []), (7, ["B", "x"])]


def test_a_broken_row_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_bytes(b'sku,qty\nA,1\nB,"' + b"x" * 200_000 + b'"\nC,3\n')
    rows, body = rows_of(path)
    assert body[0] == (2, ["A", "1"])
    assert body[1] == (3, None)
    assert rows.error and "field larger than field limit" in rows.error
    assert body[2] == (4, ["C", "3"])


def test_empty_and_missing_files_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"\n\n")
    with pytest.raises(FileRejected, match="is empty: it has no header row"):
        CsvRows(scan_file(empty)).open()
    with pytest.raises(FileRejected, match="could not be read"):
        scan_file(tmp_path / "missing.csv")


def test_bytes_read_reaches_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("sku,qty\n" + "".join(f"S{i},1\n" for i in range(50_000)), encoding="utf-8")
    with CsvRows(scan_file(path)) as rows:
        seen = []
        for i, _ in enumerate(rows):
            if i % 10_000 == 0:
                seen.append(rows.bytes_read)
        assert seen == sorted(seen) and seen[-1] < path.stat().st_size
        assert rows.bytes_read == path.stat().st_size


def test_a_field_holding_line_breaks_is_one_row_even_when_a_line_inside_looks_like_a_row(tmp_path: Path) -> None:
    # What the POS fuzz test found: the middle line, read by itself, has the header's six fields, so it was taken
    # for a row swallowed by a stray quote and the whole (valid) row was quarantined.
    path = tmp_path / "notes.csv"
    text = 'date,sku,qty,kind,ref,location\r\n"\n0",MUG-01,1,sale,,"\n"\r\n2024-03-04,MUG-02,1,sale,,S001\r\n'
    path.write_bytes(text.encode())
    rows, body = rows_of(path)
    assert body == [(2, ["\n0", "MUG-01", "1", "sale", "", "\n"]), (5, ["2024-03-04", "MUG-02", "1", "sale", "", "S001"])]
    assert rows.error is None


def test_a_stray_quote_still_gives_back_the_rows_it_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "stray.csv"
    path.write_text('sku,qty,note\nA,1,"open\nB,2,x\nC,3,"close\nD,4,y\n', encoding="utf-8")
    rows, body = rows_of(path)
    assert body[0] == (2, None) and rows.error is not None and "never closed" in rows.error
    assert (3, ["B", "2", "x"]) in body and (5, ["D", "4", "y"]) in body
