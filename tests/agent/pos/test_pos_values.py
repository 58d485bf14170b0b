"""Reading quantities, money, dates, times and zones as exports write them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from agent.pos.errors import BadValue
from agent.pos.timezones import SQUARE_ZONE_NAMES, ZoneResolver
from agent.pos.values import parse_money, parse_quantity, parse_time, timestamp_ms, to_base_units


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("1.0", 1), ("-2", -2), ("(3)", -3), ("+4", 4), (" 12 ", 12), ("1,234.0", 1234), ("1,5", Decimal("1.5")), ("0.250", Decimal("0.25"))],
)
def test_quantities(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == Decimal(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [("two", "is not a number"), ("", "is empty"), ("1.2.3", "is not a number"), ("1,500", "ambiguous"), ("1,23,4", "not a number")],
)
def test_bad_quantities_say_why(text: str, reason: str) -> None:
    with pytest.raises(BadValue, match=reason):
        parse_quantity(text)


def test_a_configured_decimal_comma_reads_1_500_as_one_and_a_half() -> None:
    assert parse_quantity("1,500", decimal_separator=",") == Decimal("1.5")
    assert parse_quantity("1.500", decimal_separator=",") == 1500


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1,234.50", "1234.50"), ("€1.234,50", "1234.50"), ("-$4.50", "-4.50"), ("$-4.50", "-4.50"),
        ("($4.50)", "-4.50"), ("1 234,50 EUR", "1234.50"), ("USD 3", "3"), ("0,99 €", "0.99"), ("£12", "12"),
        ("1.234.567,89", "1234567.89"), ("12.5", "12.5"), ("4.50-", "-4.50"), ("(6,50 €)", "-6.50"),
    ],
)
def test_money(text: str, expected: str) -> None:
    assert parse_money(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["$", "abc", "$1.2.3,4,5", "1,23,45.6"])
def test_bad_money_is_refused(text: str) -> None:
    with pytest.raises(BadValue):
        parse_money(text)


def test_pieces_must_be_whole_and_weights_need_a_scale() -> None:
    assert to_base_units(Decimal("1.0"), "", {}, "1.0") == 1
    with pytest.raises(BadValue, match=r"Qty '1.5' is not a whole number of units; items sold by weight"):
        to_base_units(Decimal("1.5"), "", {}, "1.5")
    with pytest.raises(BadValue, match=r"add kg = <base units per kg> under \[pos.units\]"):
        to_base_units(Decimal("0.5"), "kg", {}, "0.5")
    assert to_base_units(Decimal("0.5"), "kg", {"kg": 1000}, "0.5") == 500
    assert to_base_units(Decimal("1.2345"), "KG", {"kg": 1000}, "1.2345") == 1234  # half-even to the gram
    assert to_base_units(Decimal(-2), "kg", {}, "-2") == -2  # whole kilograms need no scale


def test_dates_in_the_exports_zone() -> None:
    eastern = ZoneResolver().resolve("Eastern Time (US & Canada)")
    expected = utc_ms(2024, 3, 5, 19, 3)
    assert timestamp_ms("2024-03-05", "14:03:00", eastern) == expected
    assert timestamp_ms("03/05/2024", "2:03 PM", eastern) == expected
    assert timestamp_ms("3/5/24", "14:03", eastern) == expected
    assert timestamp_ms("05/03/2024", "14:03", eastern, "DMY") == expected
    assert timestamp_ms("2024-03-05T19:03:00Z", None, eastern) == expected  # an offset in the field wins
    assert timestamp_ms("2024-03-05 20:03:00+01:00", None, eastern) == expected
    assert timestamp_ms("2024-03-05 14:03", None, eastern) == expected
    assert timestamp_ms("05.03.2024", "19:03:00.250", ZoneInfo("UTC"), "DMY") == expected + 250
    assert timestamp_ms("2024-03-05", None, ZoneInfo("UTC")) == utc_ms(2024, 3, 5)
    # summer time: the same wall clock is an hour earlier in UTC
    assert timestamp_ms("2024-07-05", "14:03", eastern) == utc_ms(2024, 7, 5, 18, 3)


@pytest.mark.parametrize(
    ("date", "reason"),
    [("2024-02-30", "is not a date"), ("13/45/2024", "MM/DD/YYYY"), ("yesterday", "is not a date"), ("1999-01-01", "before 2000")],
)
def test_bad_dates_say_why(date: str, reason: str) -> None:
    with pytest.raises(BadValue, match=reason):
        timestamp_ms(date, None, ZoneInfo("UTC"))


def test_day_first_order_rejects_a_13th_month() -> None:
    with pytest.raises(BadValue, match="DD/MM/YYYY"):
        timestamp_ms("03/13/2024", None, ZoneInfo("UTC"), "DMY")


@pytest.mark.parametrize("text", ["25:00", "12:61", "13:00 PM", "noon"])
def test_bad_times(text: str) -> None:
    with pytest.raises(BadValue, match="is not a time"):
        parse_time(text)


def test_square_zone_names_all_exist() -> None:
    resolver = ZoneResolver()
    for name, iana in SQUARE_ZONE_NAMES.items():
        assert resolver.resolve(name) == ZoneInfo(iana)
    assert resolver.resolve("eastern time (us & canada)") == ZoneInfo("America/New_York")


def test_zone_names_offsets_aliases_and_unknowns() -> None:
    resolver = ZoneResolver({"Store time": "Europe/Lisbon"})
    assert resolver.resolve("Store  Time") == ZoneInfo("Europe/Lisbon")
    assert resolver.resolve("America/Denver") == ZoneInfo("America/Denver")
    assert resolver.resolve("UTC-05:00").utcoffset(None).total_seconds() == -5 * 3600  # type: ignore[union-attr]
    with pytest.raises(BadValue, match=r"unknown time zone 'Mars/Olympus'.*\[pos.time_zones\]"):
        resolver.resolve("Mars/Olympus")
    with pytest.raises(BadValue):
        resolver.resolve("../../etc/passwd")
    with pytest.raises(ValueError, match="not an IANA zone"):
        ZoneResolver({"x": "Nowhere/Special"})
