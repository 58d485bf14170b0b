"""Fuzzing the POS export import (agent.pos) with random bytes and random rows.

Whatever the file holds, ``PosImporter.import_file`` returns a report and
raises nothing: a file it cannot read at all fails with one sentence and
records nothing; otherwise every row is accounted for (imported, already
imported, not stock, or quarantined with a reason), every recorded event is
valid, and importing the same file again records nothing new.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.outbox import Outbox
from agent.pos import ImportReport, PosImportConfig, PosImporter, PosStore

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOCATION = "S001"
GENERIC_HEADER = ["date", "sku", "qty", "kind", "ref", "location"]
SQUARE_HEADER = ["Date", "Time", "Time Zone", "Item", "Qty", "SKU", "Transaction ID", "Event Type", "Location"]
STATUSES = {"imported", "quarantined", "failed"}


async def import_twice(data: bytes, name: str) -> tuple[ImportReport, ImportReport, int, int]:
    """Import the bytes as a file twice into a fresh outbox; return both reports and the event counts after each."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = root / name
        export.write_bytes(data)
        config = PosImportConfig()
        async with (
            Outbox.open(root / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox,
            PosStore.open(config.store_path_for(root / "outbox.sqlite3")) as store,
        ):
            importer = PosImporter(outbox, store, config)
            first = await importer.import_file(export)
            after_first = len(await outbox.pending(1_000_000))  # decodes (so validates) every recorded event
            second = await importer.import_file(export)
            after_second = len(await outbox.pending(1_000_000))
    return first, second, after_first, after_second


def check(report: ImportReport) -> None:
    assert report.status in STATUSES
    if report.status == "failed":
        assert report.error and "\n" not in report.error
        assert report.imported == report.observations == 0
        return
    accounted = report.imported + report.duplicates + report.observations + report.observation_duplicates
    assert accounted + report.skipped + report.quarantined == report.rows_read, report
    assert all(q.reason and q.line >= 1 for q in report.quarantine)


def run(data: bytes, name: str = "export.csv") -> tuple[ImportReport, ImportReport]:
    first, second, after_first, after_second = asyncio.run(import_twice(data, name))
    check(first)
    check(second)
    assert after_first == first.imported, "the report counts exactly what the outbox recorded"
    assert after_second == after_first and second.imported == 0, "a file imported twice records nothing new"
    if first.status != "failed":
        assert second.duplicates == first.imported
    return first, second


@FUZZ
@given(st.binary(max_size=2_000) | st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff\x00a", b"\n\n\n", b"\x00" * 100]))
def test_random_bytes_import_or_fail_with_one_sentence(data: bytes) -> None:
    run(data)


@FUZZ
@given(
    header=st.sampled_from([GENERIC_HEADER, SQUARE_HEADER]),
    prefix=st.sampled_from([b"", codecs.BOM_UTF8]),
    tail=st.binary(max_size=200),
    cut=st.booleans(),
)
def test_a_real_header_then_random_bytes(header: list[str], prefix: bytes, tail: bytes, cut: bool) -> None:
    data = prefix + ",".join(header).encode() + b"\r\n" + tail
    run(data[: len(data) // 2] if cut else data)


field_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
dates = st.sampled_from(["2024-03-04T09:00:00", "2024-03-04", "03/04/2024", "2024-13-45T99:00:00", "", "yesterday",
                         "1969-12-31T23:59:59", "9999-12-31T23:59:59", "2024-03-04T09:00:00+05:00"]) | field_text  # fmt: skip
quantities = st.sampled_from(["1", "-1", "0", "2.5", "1,5", "1e9", "99999999999999999999", "-0", " 3 ", "NaN", "3 kg"]) | field_text  # fmt: skip
kinds = st.sampled_from(["sale", "receive", "return", "count", "adjust", "transfer_out", "teleport", ""]) | field_text
skus = st.sampled_from(["MUG-01", "A" * 65, "x\x00y", " ", "é"]) | field_text
locations = st.sampled_from([LOCATION, "", "S 001", "S002"]) | field_text


VALID_GENERIC = st.tuples(
    st.sampled_from(["2024-03-04T09:00:00", "2024-03-05T18:30:00", "2024-03-04"]),
    st.sampled_from(["MUG-01", "CUP-L", "TEE-M"]),
    st.integers(1, 40).map(str),
    st.sampled_from(["sale", "receive", "return", "count"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8),
    st.just(LOCATION),
).map(list)


@st.composite
def generic_rows(draw: st.DrawFn) -> tuple[list[list[str]], int]:
    """Rows, most of them valid and some with one field (or the row's length) broken; and how many are intact."""
    n = draw(st.integers(1, 25))
    rows: list[list[str]] = []
    intact = 0
    for _ in range(n):
        row = draw(VALID_GENERIC)
        damage = draw(st.integers(0, 5))
        if damage == 1:
            field = draw(st.integers(0, len(row) - 1))
            row[field] = draw((dates, skus, quantities, kinds, field_text, locations)[field])
        elif damage == 2:
            del row[draw(st.integers(0, len(row) - 1)) :]  # a short row
        elif damage == 3:
            row = [draw(dates), draw(skus), draw(quantities), draw(kinds), draw(field_text), draw(locations)]
        else:
            intact += 1
        rows.append(row)
    return rows, intact


@FUZZ
@given(drawn=generic_rows(), delimiter=st.sampled_from([",", ";", "\t"]), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
def test_random_rows_under_a_real_header_are_each_accounted_for(drawn: tuple[list[list[str]], int], delimiter: str, encoding: str) -> None:
    rows, intact = drawn
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(GENERIC_HEADER)
    writer.writerows(rows)
    data = out.getvalue().encode(encoding, errors="replace")
    first, _ = run(data)
    assert first.status != "failed", first.error
    assert first.rows_read == sum(1 for r in rows if any(f.strip() for f in r)), "every row but blank ones is read"
    assert first.imported >= intact, "broken rows never keep the good ones out"


@FUZZ
@given(st.lists(st.lists(field_text, min_size=9, max_size=9), min_size=1, max_size=15))
def test_random_square_rows_are_each_accounted_for(rows: list[list[str]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SQUARE_HEADER)
    writer.writerows(rows)
    first, _ = run(out.getvalue().encode("utf-8"), name="items.csv")
    assert first.status != "failed", first.error
