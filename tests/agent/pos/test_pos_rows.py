"""One row to one outcome, deterministically: the pure half of the import."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent.outbox import Movement
from agent.pos import Observation, PosImportConfig, Quarantined, Skipped
from agent.pos.occurrences import OccurrenceCounter
from agent.pos.profiles import choose
from agent.pos.rows import RowMapper
from protocol import Kind, pack_hlc, unpack_hlc

NOW_MS = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp() * 1000)
SQUARE = ["Date", "Time", "Time Zone", "Item", "Qty", "SKU", "Transaction ID", "Payment ID", "Event Type", "Location", "Net Sales", "Unit"]


@pytest.fixture
def counter() -> Iterator[OccurrenceCounter]:
    c = OccurrenceCounter()
    yield c
    c.close()


def mapper(header: list[str], counter: OccurrenceCounter, config: PosImportConfig | None = None, *, name: str = "f.csv") -> RowMapper:
    config = config or PosImportConfig()
    return RowMapper(
        choose(header, config.all_profiles()), config, default_location="S001", source_file=name,
        file_time_ms=NOW_MS - 1000, now_ms=NOW_MS, counter=counter,
    )


def sq(**kw: str) -> list[str]:
    base = {
        "Date": "2024-03-05", "Time": "14:03:00", "Time Zone": "Eastern Time (US & Canada)", "Item": "Latte", "Qty": "1",
        "SKU": "LAT-12", "Transaction ID": "T1", "Payment ID": "P1", "Event Type": "Payment", "Location": "Main St",
        "Net Sales": "$4.50", "Unit": "",
    }
    base.update({k.replace("_", " "): v for k, v in kw.items()})
    return [base[h] for h in SQUARE]


def test_a_square_sale(counter: OccurrenceCounter) -> None:
    m = mapper(SQUARE, counter).map(2, sq())
    assert isinstance(m, Movement)
    assert (m.location, m.sku, m.kind, m.qty, m.source, m.ref) == ("S001", "LAT-12", Kind.SALE, -1, "pos:square", "T1")
    assert m.attrs == {"net_sales": "4.50"}
    row_ms = int(datetime(2024, 3, 5, 19, 3, tzinfo=UTC).timestamp() * 1000)
    assert m.occurred_at == pack_hlc(row_ms, 0)
    assert m.event_id is not None and int.from_bytes(m.event_id[:6], "big") == row_ms  # time-ordered id


@pytest.mark.parametrize(("event_type", "qty"), [("Refund", "-1"), ("Refund", "1"), ("Payment", "-1"), ("", "-2")])
def test_refunds_and_negative_quantities_are_returns(counter: OccurrenceCounter, event_type: str, qty: str) -> None:
    m = mapper(SQUARE, counter).map(2, sq(Event_Type=event_type, Qty=qty))
    assert isinstance(m, Movement)
    assert m.kind is Kind.RETURN and m.qty == abs(int(qty))


def test_the_same_row_maps_to_the_same_event_in_any_file(counter: OccurrenceCounter) -> None:
    first = mapper(SQUARE, counter, name="a.csv").map(2, sq())
    with OccurrenceCounter() as other:
        again = mapper(SQUARE, other, name="b.csv").map(90, sq())
    assert isinstance(first, Movement) and isinstance(again, Movement)
    assert first.event_id == again.event_id
    assert first == again


def test_repeated_lines_in_one_transaction_are_distinct_sales(counter: OccurrenceCounter) -> None:
    m = mapper(SQUARE, counter)
    one, two = m.map(2, sq()), m.map(3, sq())
    other_txn = m.map(4, sq(Transaction_ID="T2"))
    ids = {x.event_id for x in (one, two, other_txn) if isinstance(x, Movement)}
    assert len(ids) == 3


def test_refund_of_a_line_is_not_a_duplicate_of_its_sale(counter: OccurrenceCounter) -> None:
    m = mapper(SQUARE, counter)
    sale, refund = m.map(2, sq()), m.map(3, sq(Event_Type="Refund", Qty="-1"))
    assert isinstance(sale, Movement) and isinstance(refund, Movement)
    assert sale.event_id != refund.event_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Qty": "1.5"}, "Qty '1.5' is not a whole number of units"),
        ({"Qty": "0"}, "Qty is 0: a sale of nothing moves no stock"),
        ({"Qty": "lots"}, "Qty 'lots' is not a number"),
        ({"SKU": ""}, "SKU is empty (item 'Latte')"),
        ({"Date": "2024-02-30"}, "date '2024-02-30' is not a date"),
        ({"Date": ""}, "Date is empty"),
        ({"Date": "2030-01-01"}, "date '2030-01-01 14:03:00' is in the future"),
        ({"Time_Zone": "Mars"}, "unknown time zone 'Mars'"),
        ({"Event_Type": "Exchange"}, "Event Type 'Exchange' is not one this profile knows"),
        ({"Net_Sales": "$4.5.0"}, "Net Sales '$4.5.0' is not a number"),
        ({"SKU": "A\x81B"}, "SKU 'A\\x81B' holds a control character"),
        ({"SKU": "A\x07B"}, "SKU 'A\\x07B' holds a control character"),
        ({"SKU": "X" * 65}, "SKU: is 65 characters long; the limit is 64"),
    ],
)
def test_bad_rows_are_quarantined_with_a_reason(counter: OccurrenceCounter, change: dict[str, str], reason: str) -> None:
    out = mapper(SQUARE, counter).map(7, sq(**change))
    assert isinstance(out, Quarantined)
    assert out.line == 7
    assert reason in out.reason
    assert "LAT-12" in out.raw or change.get("SKU") is not None


def test_a_row_without_any_time_is_quarantined(counter: OccurrenceCounter) -> None:
    out = mapper(GENERIC, counter).map(2, ["", "MUG-01", "1", "sale", "", ""])
    assert isinstance(out, Quarantined) and out.reason == "date is empty"


def test_short_and_overlong_rows(counter: OccurrenceCounter) -> None:
    m = mapper(SQUARE, counter)
    short = m.map(2, sq()[:5])
    assert isinstance(short, Quarantined) and "the row has 5 fields but the header has 12" in short.reason
    padded = m.map(3, [*sq(), "", " "])
    assert isinstance(padded, Movement)  # empty trailing fields are harmless
    shifted = m.map(4, [*sq(), "extra"])
    assert isinstance(shifted, Quarantined) and "13 fields" in shifted.reason


def test_weighed_items_with_a_configured_unit(counter: OccurrenceCounter) -> None:
    config = PosImportConfig.from_mapping({"units": {"kg": 1000}})
    m = mapper(SQUARE, counter, config).map(2, sq(Qty="0.75", Unit="kg"))
    assert isinstance(m, Movement)
    assert m.qty == -750 and m.attrs["unit"] == "kg"


def test_location_names_map_to_codes(counter: OccurrenceCounter) -> None:
    config = PosImportConfig.from_mapping({"locations": {"Main St": "S001", "Harbour": "S002"}})
    m = mapper(SQUARE, counter, config)
    a, b, c = m.map(2, sq()), m.map(3, sq(Location="harbour")), m.map(4, sq(Location="Airport"))
    assert isinstance(a, Movement) and a.location == "S001"
    assert isinstance(b, Movement) and b.location == "S002"
    assert isinstance(c, Quarantined) and "location 'Airport' is not mapped" in c.reason


def test_without_a_map_a_second_location_name_is_refused(counter: OccurrenceCounter) -> None:
    m = mapper(SQUARE, counter)
    assert isinstance(m.map(2, sq(Location="Main St")), Movement)
    assert isinstance(m.map(3, sq(Location="")), Movement)
    other = m.map(4, sq(Location="Harbour"))
    assert isinstance(other, Quarantined) and "more than one location" in other.reason


def test_square_non_stock_lines_are_skipped(counter: OccurrenceCounter) -> None:
    header = [*SQUARE, "Itemization Type"]
    out = mapper(header, counter).map(2, [*sq(SKU=""), "Custom Amount"])
    assert out == Skipped(2, "Itemization Type: Custom Amount")


GENERIC = ["date", "sku", "qty", "kind", "ref", "location"]


@pytest.mark.parametrize(
    ("kind", "qty", "expected_kind", "expected_qty"),
    [("sale", "3", Kind.SALE, -3), ("sale", "-3", Kind.SALE, -3), ("receive", "24", Kind.RECEIVE, 24),
     ("return", "-1", Kind.RETURN, 1), ("adjust", "-2", Kind.ADJUST, -2), ("count", "0", Kind.COUNT, 0),
     ("Refund", "1", Kind.RETURN, 1), ("stocktake", "7", Kind.COUNT, 7)],
)
def test_generic_kinds_give_the_sign(counter: OccurrenceCounter, kind: str, qty: str, expected_kind: Kind, expected_qty: int) -> None:
    m = mapper(GENERIC, counter).map(2, ["2024-03-04T09:00:00", "MUG-01", qty, kind, "", "S002"])
    assert isinstance(m, Movement)
    assert (m.kind, m.qty, m.location, m.source) == (expected_kind, expected_qty, "S002", "pos:generic")
    assert unpack_hlc(m.occurred_at or 0)[0] == int(datetime(2024, 3, 4, 9, tzinfo=UTC).timestamp() * 1000)


def test_generic_rows_without_an_id_are_keyed_by_content(counter: OccurrenceCounter) -> None:
    m = mapper(GENERIC, counter)
    row = ["2024-03-04T12:00:00", "MUG-01", "1", "sale", "R-1", "S001"]
    one, two, changed = m.map(2, row), m.map(3, row), m.map(4, [*row[:2], "2", *row[3:]])
    ids = [x.event_id for x in (one, two, changed) if isinstance(x, Movement)]
    assert len(set(ids)) == 3
    with OccurrenceCounter() as fresh:
        assert mapper(GENERIC, fresh).map(50, row) == one


def test_a_transfer_without_ref_is_quarantined(counter: OccurrenceCounter) -> None:
    out = mapper(GENERIC, counter).map(2, ["2024-03-04", "MUG-01", "1", "transfer_out", "", "S001"])
    assert isinstance(out, Quarantined) and out.reason.startswith("ref: a transfer_out needs the transfer reference")


SHOPIFY = ["Handle", "SKU", "Location", "Available", "On hand"]


def test_stock_on_hand_is_an_observation_never_a_movement(counter: OccurrenceCounter) -> None:
    config = PosImportConfig.from_mapping({"locations": {"Main Street": "S001"}})
    m = mapper(SHOPIFY, counter, config, name="inv.csv")
    obs = m.map(2, ["mug", "MUG-01", "Main Street", "6", "7"])
    assert obs == Observation("S001", "MUG-01", "shopify", 7, NOW_MS - 1000, "inv.csv")
    assert m.map(3, ["tee", "TEE-1", "Main Street", "0", "-2"]) == Observation("S001", "TEE-1", "shopify", -2, NOW_MS - 1000, "inv.csv")
    assert m.map(4, ["cup", "CUP-L", "Main Street", "not stocked", "Not Stocked"]) == Skipped(4, "On hand: Not Stocked")
    bad = m.map(5, ["tee", "TEE-2", "Main Street", "0", "1.5"])
    assert isinstance(bad, Quarantined) and "not a whole number" in bad.reason
