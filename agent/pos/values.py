"""Reading one field of a POS export: quantities, money, dates and times.

Pure functions, no I/O. Each raises ``BadValue`` with the sentence a person
reads in the quarantine list ("Qty '1.5' is not a whole number of units …").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Literal

from agent.pos.errors import BadValue

DateOrder = Literal["MDY", "DMY"]
DecimalSeparator = Literal[".", ","] | None  # None: decide from the text

# Units that mean "one piece": the quantity must then be a whole number.
PIECE_UNITS = frozenset({"", "ea", "each", "unit", "units", "pc", "pcs", "piece", "pieces", "item", "items", "qty"})
# Units sold by weight or volume: fractional quantities are normal, and need
# a configured scale to integer base units (kg = 1000 counts in grams).
MEASURE_UNITS = frozenset({"kg", "g", "lb", "lbs", "oz", "l", "ml", "m", "cm", "ft", "yd", "gal"})
YEAR_MIN = 2000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_SPACES = "\u00a0\u202f\u2009 '\u2019"  # spaces, no-break spaces, apostrophes: thousands separators
_MINUS = "-\u2212\u2012\u2013"
_DROP_SPACES = str.maketrans("", "", _SPACES)
_DROP_SPACES_AND_SYMBOLS = str.maketrans("", "", _SPACES + "$€£¥₹₩₽¢")
_PLAIN_QTY_RE = re.compile(r"-?\d{1,9}(?:\.\d{1,6})?")
_PLAIN_MONEY_RE = re.compile(r"(-?)[$€£]?(-?)(\d{1,12}\.\d{2})")  # "$4.50", "-$4.50", "$-4.50", "4.50"


def _fold_unit(unit: str) -> str:
    return unit.strip().casefold().rstrip(".")


def _split_sign(body: str) -> tuple[bool, str]:
    negative = False
    if body.startswith("(") and body.endswith(")"):
        negative, body = True, body[1:-1].strip()
    if body[:1] in _MINUS:
        negative, body = not negative, body[1:]
    elif body[:1] == "+":
        body = body[1:]
    elif body[-1:] in _MINUS:  # "12.50-", as some ledgers print it
        negative, body = not negative, body[:-1]
    return negative, body


def _to_decimal(digits: str, decimal_sep: str, original: str, what: str) -> Decimal:
    thousands = "," if decimal_sep == "." else "."
    whole, _, fraction = digits.partition(decimal_sep)
    if decimal_sep in fraction or thousands in fraction:
        raise BadValue(f"{what} {original!r} is not a number")
    groups = whole.split(thousands)
    if len(groups) > 1 and not (
        1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]) and all(g.isdigit() for g in groups)
    ):
        raise BadValue(f"{what} {original!r} is not a number (misplaced {thousands!r})")
    whole = "".join(groups)
    if not whole.isdigit() and not (whole == "" and fraction.isdigit()):
        raise BadValue(f"{what} {original!r} is not a number")
    if fraction and not fraction.isdigit():
        raise BadValue(f"{what} {original!r} is not a number")
    try:
        return Decimal(f"{whole or '0'}.{fraction or '0'}")
    except InvalidOperation:
        raise BadValue(f"{what} {original!r} is not a number") from None


def parse_quantity(text: str, *, decimal_separator: DecimalSeparator = None, what: str = "Qty") -> Decimal:
    """A quantity as written: "1", "1.0", "-2", "(3)", "1,234.0"; "1,5" with a decimal comma.

    Without a configured separator, "." is the decimal point; a lone comma
    followed by three digits ("1,500") could be either and is refused rather
    than guessed — for an item sold by weight the two readings differ 1000-fold.
    """
    original = text
    body = text.strip()
    if decimal_separator != "," and _PLAIN_QTY_RE.fullmatch(body):
        return Decimal(body)
    body = body.translate(_DROP_SPACES)
    if not body:
        raise BadValue(f"{what} is empty")
    negative, body = _split_sign(body)
    if not body or not all(c.isdigit() or c in ".," for c in body):
        raise BadValue(f"{what} {original.strip()[:40]!r} is not a number")
    sep = decimal_separator
    if sep is None:
        sep = "."
        if "," in body and "." not in body and body.count(",") == 1:
            after = len(body) - body.index(",") - 1
            if after == 3:
                raise BadValue(
                    f"{what} {original.strip()!r} is ambiguous (1,500 or 1.5?); set pos.decimal_separator"
                )
            sep = ","
    value = _to_decimal(body, sep, original.strip()[:40], what)
    return -value if negative else value


def parse_money(text: str, *, decimal_separator: DecimalSeparator = None, what: str = "amount") -> Decimal:
    """An amount as exports write it: "$1,234.50", "€1.234,50", "-$4.50", "($4.50)", "1 234,50 EUR".

    Without a configured separator the last of "." and "," is the decimal
    point; a lone separator followed by exactly three digits is a thousands
    separator (amounts have two decimals, rarely three).
    """
    stripped = text.strip()
    plain = _PLAIN_MONEY_RE.fullmatch(stripped) if decimal_separator != "," else None
    if plain:
        value = Decimal(plain[3])
        return -value if bool(plain[1]) != bool(plain[2]) else value
    original = stripped[:40]
    body = stripped.translate(_DROP_SPACES_AND_SYMBOLS)
    if not body.isascii():
        body = "".join(c for c in body if unicodedata.category(c) != "Sc")
    if body[:1].isalpha() or body[-1:].isalpha():
        body = re.sub(r"^[A-Za-z]{3}\s*|\s*[A-Za-z]{3}$", "", body.strip())
    if not body:
        raise BadValue(f"{what} {original!r} has no digits" if original else f"{what} is empty")
    negative, body = _split_sign(body)
    body = body.translate(_DROP_SPACES_AND_SYMBOLS)  # "- $4.50": the sign came first
    if not body.isascii():
        body = "".join(c for c in body if unicodedata.category(c) != "Sc")
    if not body or not all(c.isdigit() or c in ".," for c in body):
        raise BadValue(f"{what} {original!r} is not an amount of money")
    value = _to_decimal(body, decimal_separator or _money_separator(body), original, what)
    return -value if negative else value


def _money_separator(body: str) -> str:
    """The decimal separator of an amount written with "." and/or ","."""
    dots, commas = body.count("."), body.count(",")
    if dots and commas:
        return "." if body.rfind(".") > body.rfind(",") else ","
    if dots + commas == 0:
        return "."
    mark = "." if dots else ","
    other = "," if mark == "." else "."
    at = body.index(mark)
    three_after = len(body) - at - 1 == 3 and 1 <= at <= 3
    return other if (dots + commas > 1 or three_after) else mark


def to_base_units(qty: Decimal, unit: str, scales: Mapping[str, int], original: str) -> int:
    """Integer base units for ``qty`` of ``unit``.

    A piece must be whole ("1.0" is fine, "1.5" is not). A unit with a scale
    configured (kg = 1000) is multiplied and rounded half-even to a base unit.
    A measure unit without a scale must be whole too, and says how to fix it.
    """
    folded = _fold_unit(unit)
    scale = scales.get(folded)
    if scale is not None:
        return int((qty * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
    if qty == qty.to_integral_value():
        return int(qty)
    if folded in PIECE_UNITS or folded not in MEASURE_UNITS:
        shown = f"Qty {original.strip()!r}" + (f" ({unit.strip()})" if folded not in ("", "qty") else "")
        raise BadValue(f"{shown} is not a whole number of units; items sold by weight need their unit under [pos.units]")
    raise BadValue(
        f"Qty {original.strip()!r} {unit.strip()} is not whole; add {folded} = <base units per {folded}> under [pos.units]"
    )


# --- dates and times -----------------------------------------------------

_ISO_RE = re.compile(
    r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ](?P<time>[0-9:.,]+(?:\s*[AaPp]\.?[Mm]\.?)?))?"
    r"\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?"
)
_YEAR_LAST_RE = re.compile(
    r"(?P<a>\d{1,2})(?P<sep>[/.\-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4}|\d{2})"
    r"(?:[ T,]+(?P<time>[0-9:.,]+(?:\s*[AaPp]\.?[Mm]\.?)?))?"
)
_TIME_RE = re.compile(
    r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,6}))?)?\s*(?P<ap>[AaPp])?\.?(?:[Mm]\.?)?"
)


@lru_cache(maxsize=4096)  # a day's rows share their date text
def parse_date(text: str, order: DateOrder = "MDY") -> tuple[date, str | None, tzinfo | None]:
    """(date, time text if the field also holds a time, fixed zone if it carries an offset)."""
    body = text.strip()
    iso = _ISO_RE.fullmatch(body)
    try:
        if iso:
            zone = None
            if iso["tz"]:
                zone = UTC if iso["tz"] == "Z" else _offset_zone(iso["tz"])
            day = date(int(iso["y"]), int(iso["m"]), int(iso["d"]))
            return _check_year(day, text), iso["time"], zone
        other = _YEAR_LAST_RE.fullmatch(body)
        if other:
            a, b = int(other["a"]), int(other["b"])
            month, dom = (a, b) if order == "MDY" else (b, a)
            year = int(other["y"])
            year = year + 2000 if year < 100 else year
            return _check_year(date(year, month, dom), text), other["time"], None
    except BadValue:
        raise
    except ValueError:
        pass
    layout = "MM/DD/YYYY" if order == "MDY" else "DD/MM/YYYY"
    raise BadValue(f"date {text.strip()[:40]!r} is not a date (expected YYYY-MM-DD or {layout})")


def _check_year(day: date, text: str) -> date:
    if day.year < YEAR_MIN:
        raise BadValue(f"date {text.strip()[:40]!r} is before {YEAR_MIN}")
    return day


def _offset_zone(text: str) -> tzinfo:
    digits = text[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return timezone(-delta if text[0] == "-" else delta)


@lru_cache(maxsize=4096)
def parse_time(text: str) -> time:
    """"14:03", "14:03:07", "14:03:07.250", "2:03 PM", "2:03:07 p.m."."""
    match = _TIME_RE.fullmatch(text.strip())
    if match:
        hour, minute = int(match["h"]), int(match["mi"])
        second = int(match["s"] or 0)
        micro = int((match["f"] or "0").ljust(6, "0"))
        if match["ap"]:
            if not 1 <= hour <= 12:
                raise BadValue(f"time {text.strip()[:40]!r} is not a time")
            hour = hour % 12 + (12 if match["ap"] in "Pp" else 0)
        try:
            return time(hour, minute, second, micro)
        except ValueError:
            pass
    raise BadValue(f"time {text.strip()[:40]!r} is not a time (expected HH:MM[:SS] or H:MM AM/PM)")


def repeated_wall_time(date_text: str, ms: int, zone: tzinfo, order: DateOrder = "MDY") -> bool:
    """Whether the row time ``ms`` (read by ``timestamp_ms``) is a wall time ``zone`` shows twice (the hour clocks go
    back), read as its first occurrence: not when the date field carries its own offset."""
    moment = datetime.fromtimestamp(ms / 1000, zone)
    if moment.replace(fold=0).utcoffset() == moment.replace(fold=1).utcoffset():
        return False
    return parse_date(date_text, order)[2] is None


def timestamp_ms(date_text: str, time_text: str | None, zone: tzinfo, order: DateOrder = "MDY") -> int:
    """Unix milliseconds of a row's date (and time) read in ``zone``.

    An offset written in the date field wins over ``zone``. A wall time that
    occurs twice (the hour clocks go back) is read as its first occurrence.
    """
    day, inline_time, inline_zone = parse_date(date_text, order)
    clock = time(0, 0)
    text = time_text if time_text and time_text.strip() else inline_time
    if text:
        clock = parse_time(text)
    moment = datetime.combine(day, clock, tzinfo=inline_zone or zone)
    return (moment - _EPOCH) // _ONE_MS
