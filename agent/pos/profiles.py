"""Import profiles: which header names mean which field, and what a row produces.

Columns are found by header name, never by position: exports add, drop and
reorder columns between versions. A profile is detected from the header row
(the one that resolves the most fields, with all its required ones) or named
in the configuration. Custom profiles come from TOML::

    [pos.profiles.lightspeed]
    vendor = "lightspeed"             # events get source "pos:lightspeed"
    key = ["ref", "sku", "kind"]      # row identity; default: a hash of the whole normalised row
    default_kind = "sale"
    [pos.profiles.lightspeed.columns]
    date = "Sale Date"
    sku = "Item SKU"
    qty = ["Quantity", "Qty"]
    ref = "Sale ID"
    [pos.profiles.lightspeed.kinds]
    Sale = "sale"
    Refund = "return"
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.pos.errors import FileRejected
from protocol import Kind
from protocol.values import shown


class Produces(StrEnum):
    MOVEMENTS = "movements"  # stock events into the outbox
    OBSERVATIONS = "observations"  # another system's stock-on-hand belief, never a movement


# Every field a profile can map, and what it means.
FIELDS: Mapping[str, str] = {
    "date": "the row's date, or date and time (ISO, MM/DD/YYYY or DD/MM/YYYY)",
    "time": "the row's time of day, if the date column has none",
    "time_zone": "the zone the date and time are in (IANA, Square's names, UTC±hh:mm)",
    "sku": "the master SKU",
    "qty": "quantity moved, in the export's unit",
    "unit": "unit of the quantity (empty or 'ea' for pieces, 'kg' …)",
    "kind": "what the row is (sale, refund, receive …), through the profile's kind values",
    "ref": "document reference (the POS transaction id)",
    "payment": "payment id inside the transaction (part of the row identity)",
    "token": "line token (part of the row identity)",
    "item": "item name (part of the row identity)",
    "variant": "variant or price point name (part of the row identity)",
    "modifiers": "modifiers applied (part of the row identity)",
    "location": "location name (mapped through [pos.locations]) or code",
    "gross_sales": "gross amount of money, kept in attrs",
    "net_sales": "net amount of money, kept in attrs",
    "itemization_type": "kind of line (physical item, service, custom amount …)",
    "gtin": "the item's barcode, kept in attrs",
    "reason": "reason code (damaged, theft, found …)",
    "on_hand": "stock on hand as the other system believes it (observations)",
}
MOVEMENT_REQUIRED = frozenset({"date", "sku", "qty"})
OBSERVATION_REQUIRED = frozenset({"sku", "on_hand"})
HEADER_NAMES_SHOWN = 8  # of a header row quoted in a sentence
HEADER_NAME_SHOWN_MAX_CHARS = 40
VENDOR_RE = re.compile(r"[a-z0-9][a-z0-9._\-]{0,31}")

_GENERIC_KINDS: Mapping[str, Kind] = {k.value: k for k in Kind} | {
    "refund": Kind.RETURN,
    "receipt": Kind.RECEIVE,
    "received": Kind.RECEIVE,
    "adjustment": Kind.ADJUST,
    "stocktake": Kind.COUNT,
}


def normalise_header(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").split()).casefold()


@dataclass(frozen=True, slots=True)
class Profile:
    """How to read one kind of export."""

    name: str
    vendor: str  # events get source "pos:<vendor>"; observations get system "<vendor>"
    produces: Produces
    columns: Mapping[str, tuple[str, ...]]  # field -> header names that mean it, first match wins
    required: frozenset[str]
    key_fields: tuple[str, ...] = ()  # the row identity; () means a hash of the whole normalised row
    kinds: Mapping[str, Kind] = field(default_factory=dict)  # casefolded kind value -> Kind
    default_kind: Kind | None = None
    negative_is_return: bool = False  # a sale with a negative quantity is a return (refund line)
    location_is_code: bool = False  # the location column holds location codes, not names
    non_stock: Mapping[str, frozenset[str]] = field(default_factory=dict)  # field -> casefolded values that are not stock

    @property
    def source(self) -> str:
        return f"pos:{self.vendor}"


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """A profile matched against one file's header row: field -> column index."""

    profile: Profile
    index: Mapping[str, int]
    header: tuple[str, ...]

    def missing(self) -> list[str]:
        return sorted(self.profile.required - set(self.index))


SQUARE_ITEM_SALES = Profile(
    name="square",
    vendor="square",
    produces=Produces.MOVEMENTS,
    columns={
        "date": ("Date",),
        "time": ("Time",),
        "time_zone": ("Time Zone",),
        "sku": ("SKU",),
        "qty": ("Qty", "Quantity"),
        "unit": ("Unit",),
        "kind": ("Event Type",),
        "ref": ("Transaction ID",),
        "payment": ("Payment ID",),
        "token": ("Token",),
        "item": ("Item",),
        "variant": ("Price Point Name",),
        "modifiers": ("Modifiers Applied",),
        "location": ("Location",),
        "gross_sales": ("Gross Sales",),
        "net_sales": ("Net Sales",),
        "itemization_type": ("Itemization Type",),
        "gtin": ("GTIN",),
    },
    required=frozenset({"date", "time", "sku", "qty", "ref"}),
    key_fields=("ref", "payment", "token", "sku", "item", "variant", "modifiers", "kind"),
    kinds={"payment": Kind.SALE, "sale": Kind.SALE, "refund": Kind.RETURN, "return": Kind.RETURN},
    default_kind=Kind.SALE,
    negative_is_return=True,
    non_stock={"itemization_type": frozenset({"custom amount", "gift card", "service", "gift card activation"})},
)

SHOPIFY_INVENTORY = Profile(
    name="shopify",
    vendor="shopify",
    produces=Produces.OBSERVATIONS,
    columns={
        "sku": ("SKU", "Variant SKU"),
        "location": ("Location",),
        "on_hand": ("On hand", "On hand (current)", "On Hand Quantity"),
        "item": ("Title",),
        "variant": ("Option1 Value",),
    },
    required=frozenset({"sku", "on_hand"}),
    non_stock={"on_hand": frozenset({"not stocked", "not tracked"})},
)

GENERIC = Profile(
    name="generic",
    vendor="generic",
    produces=Produces.MOVEMENTS,
    columns={
        "date": ("date", "timestamp", "occurred_at", "datetime"),
        "time": ("time",),
        "time_zone": ("time_zone", "timezone", "tz"),
        "sku": ("sku",),
        "qty": ("qty", "quantity"),
        "unit": ("unit",),
        "kind": ("kind", "type"),
        "ref": ("ref", "reference"),
        "location": ("location",),
        "reason": ("reason",),
    },
    required=frozenset({"date", "sku", "qty", "kind"}),
    kinds=_GENERIC_KINDS,
    location_is_code=True,
)

BUILTIN_PROFILES: Mapping[str, Profile] = {p.name: p for p in (SQUARE_ITEM_SALES, SHOPIFY_INVENTORY, GENERIC)}


def match(profile: Profile, header: Sequence[str]) -> ColumnMap:
    """Find each of the profile's fields in ``header`` by name (case and spacing ignored)."""
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        positions.setdefault(normalise_header(name), i)
    index: dict[str, int] = {}
    for field_name, names in profile.columns.items():
        for name in names:
            at = positions.get(normalise_header(name))
            if at is not None:
                index[field_name] = at
                break
    return ColumnMap(profile, index, tuple(header))


def _shown(header: Sequence[str]) -> str:
    """The header row for a sentence: its first 8 names, each escaped and bounded (a binary file's "header"
    is kilobytes of control bytes, and the sentence goes into a log line)."""
    names = ", ".join(shown(h.strip(), HEADER_NAME_SHOWN_MAX_CHARS, bare=True) for h in header[:HEADER_NAMES_SHOWN])
    more = len(header) > HEADER_NAMES_SHOWN
    return names + (f", … ({len(header)} columns)" if more else "")


def choose(header: Sequence[str], profiles: Mapping[str, Profile], wanted: str = "auto") -> ColumnMap:
    """The profile for this header row: the one named, or the best match of ``profiles``."""
    if wanted != "auto":
        profile = profiles.get(wanted)
        if profile is None:
            raise FileRejected(f"there is no import profile named {wanted!r}; known: {', '.join(sorted(profiles))}")
        columns = match(profile, header)
        if columns.missing():
            wanted_names = [profile.columns[f][0] for f in columns.missing()]
            raise FileRejected(
                f"the header row ({_shown(header)}) lacks the {', '.join(wanted_names)} column(s) "
                f"that profile {profile.name!r} needs"
            )
        return columns
    complete = [m for m in (match(p, header) for p in profiles.values()) if not m.missing()]
    if not complete:
        raise FileRejected(
            f"the header row ({_shown(header)}) matches no import profile "
            f"({', '.join(sorted(profiles))}); set pos.profile or add a custom profile"
        )
    complete.sort(key=lambda m: len(m.index), reverse=True)
    if len(complete) > 1 and len(complete[0].index) == len(complete[1].index):
        raise FileRejected(
            f"the header row matches profiles {complete[0].profile.name!r} and {complete[1].profile.name!r} "
            "equally well; set pos.profile to choose"
        )
    return complete[0]


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) and value.strip():
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value)
    raise ValueError(f"{where} must be a header name or a list of header names")


def profile_from_toml(name: str, table: Mapping[str, Any]) -> Profile:
    """A custom profile from its TOML table; ValueError with a clear sentence if it is wrong."""
    where = f"pos.profiles.{name}"
    known = {"vendor", "produces", "columns", "key", "kinds", "default_kind", "negative_is_return", "location_is_code", "skip"}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    vendor = table.get("vendor", name)
    if not isinstance(vendor, str) or not VENDOR_RE.fullmatch(vendor):
        raise ValueError(f"{where}.vendor must be a short lowercase name such as 'lightspeed'")
    try:
        produces = Produces(table.get("produces", "movements"))
    except ValueError:
        raise ValueError(f"{where}.produces must be 'movements' or 'observations'") from None
    raw_columns = table.get("columns")
    if not isinstance(raw_columns, Mapping) or not raw_columns:
        raise ValueError(f"{where}.columns must map fields ({', '.join(FIELDS)}) to header names")
    columns: dict[str, tuple[str, ...]] = {}
    for field_name, names in raw_columns.items():
        if field_name not in FIELDS:
            raise ValueError(f"{where}.columns.{field_name} is not a field; fields are {', '.join(FIELDS)}")
        columns[field_name] = _names(names, f"{where}.columns.{field_name}")
    kinds = {str(k).casefold(): _kind(v, f"{where}.kinds.{k}") for k, v in (table.get("kinds") or {}).items()}
    default_kind = _kind(table["default_kind"], f"{where}.default_kind") if "default_kind" in table else None
    required = set(MOVEMENT_REQUIRED if produces is Produces.MOVEMENTS else OBSERVATION_REQUIRED)
    if produces is Produces.MOVEMENTS and default_kind is None:
        required.add("kind")
    if "kind" in columns and not kinds:
        kinds = dict(_GENERIC_KINDS)
    lacking = required - set(columns)
    if lacking:
        raise ValueError(f"{where}.columns must map {', '.join(sorted(lacking))}")
    key = table.get("key", [])
    if not isinstance(key, list) or any(k not in columns for k in key):
        raise ValueError(f"{where}.key must list mapped fields, such as [\"ref\", \"sku\"]")
    skip = {str(f): frozenset(str(v).casefold() for v in vals) for f, vals in (table.get("skip") or {}).items()}
    for flag in ("negative_is_return", "location_is_code"):
        if not isinstance(table.get(flag, False), bool):
            raise TypeError(f"{where}.{flag} must be true or false")
    return Profile(
        name=name,
        vendor=vendor,
        produces=produces,
        columns=columns,
        required=frozenset(required),
        key_fields=tuple(key),
        kinds=kinds,
        default_kind=default_kind,
        negative_is_return=bool(table.get("negative_is_return", False)),
        location_is_code=bool(table.get("location_is_code", False)),
        non_stock=skip,
    )


def _kind(value: Any, where: str) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        raise ValueError(f"{where} must be one of {', '.join(k.value for k in Kind)}") from None
