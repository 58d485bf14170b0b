"""Input checks the store applies before it writes catalog items, observations,
import issues, bundle recipes and safety stock (one place, so SQLite and
PostgreSQL refuse the same things with the same sentence)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from hub.resolver import BUNDLE_PARTS_MAX, COMPONENT_UNITS_MAX, is_location
from hub.storage.base import (
    INGEST_ROLES,
    AgentIdentity,
    CatalogItem,
    Forbidden,
    ImportIssue,
    InvalidInput,
    Observation,
    ReportResult,
)
from hub.storage.keys import EXCEPTION_KINDS, ExceptionFilter
from protocol import QTY_MAX, values
from protocol.catalog import BARCODE_MAX_LEN, GTIN_LENGTHS, gtin14, is_unknown_sku
from protocol.event import SKU_MAX_LEN
from protocol.reports import (
    ISSUE_FILE_MAX_LEN,
    ISSUE_LINE_MAX,
    ISSUE_RAW_MAX_LEN,
    ISSUE_REASON_MAX_LEN,
    OBSERVED_AT_MS_MAX,
    REPORT_ID_MAX_LEN,
    SOURCE_FILE_MAX_LEN,
    SYSTEM_MAX_LEN,
)
from protocol.values import TEXT_RULE, is_text, is_unicode

T = TypeVar("T")

DESCRIPTION_MAX_LEN = 256
PACK_SIZE_MAX = 1_000_000
CATALOG_ITEMS_MAX = 100_000  # per write
LIMIT_MAX = 100_000  # rows one read may ask for


def text(value: object, what: str, max_len: int, *, allow_empty: bool = False, printable: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {max_len}")
    if printable and value and not is_text(value):
        raise InvalidInput(f"{what} {value[:40]!r} is not valid text ({TEXT_RULE})")
    if not printable and not is_unicode(value):
        raise InvalidInput(f"{what} holds a lone surrogate (\\ud800–\\udfff), which is not Unicode text")
    return value


def whole(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def location(value: object, what: str = "location") -> str:
    if not is_location(value):
        raise InvalidInput(f"{what} {value!r} is not a location code")
    return value


def catalog_items(items: Sequence[CatalogItem]) -> list[CatalogItem]:
    if len(items) > CATALOG_ITEMS_MAX:
        raise InvalidInput(f"{len(items)} catalog items in one write; the limit is {CATALOG_ITEMS_MAX}")
    seen: set[str] = set()
    for i, item in enumerate(items):
        what = f"items[{i}]"
        text(item.barcode, f"{what}.barcode", BARCODE_MAX_LEN)
        digits = item.barcode.isascii() and item.barcode.isdigit() and len(item.barcode) in GTIN_LENGTHS
        if digits and gtin14(item.barcode) is None:
            raise InvalidInput(
                f"{what}.barcode {item.barcode} looks like a GTIN-{len(item.barcode)} but its check digit is "
                "wrong; no scanner would read it"
            )
        if (problem := values.SKU.problem(item.sku)) is not None:  # the identifier rule: '.' and '..' refused too
            raise InvalidInput(f"{what}.sku {problem}; a SKU is {values.SKU.rule()}")
        if is_unknown_sku(item.sku):
            raise InvalidInput(f"{what}.sku {item.sku!r} is an unknown-barcode key, not a SKU")
        whole(item.pack_size, f"{what}.pack_size", 1, PACK_SIZE_MAX)
        text(item.description, f"{what}.description", DESCRIPTION_MAX_LEN, allow_empty=True)
        if item.barcode in seen:
            raise InvalidInput(f"{what}.barcode {item.barcode!r} appears more than once")
        seen.add(item.barcode)
    return list(items)


def reporter(who: AgentIdentity, what: str) -> None:
    """Only agents (and admins) report observations and import issues."""
    if who.role not in INGEST_ROLES:
        raise Forbidden(f"{who.agent_id} holds a {who.role} credential, which may not send {what}")


def observations(items: Sequence[Observation]) -> None:
    for i, o in enumerate(items):
        what = f"observations[{i}]"
        text(o.obs_id, f"{what}.id", REPORT_ID_MAX_LEN)
        location(o.location, f"{what}.location")
        text(o.sku, f"{what}.sku", SKU_MAX_LEN)
        text(o.system, f"{what}.system", SYSTEM_MAX_LEN)
        whole(o.on_hand, f"{what}.on_hand", -QTY_MAX, QTY_MAX)
        whole(o.observed_at_ms, f"{what}.observed_at_ms", 0, OBSERVED_AT_MS_MAX)
        text(o.source_file, f"{what}.source_file", SOURCE_FILE_MAX_LEN, allow_empty=True)


def import_issues(items: Sequence[ImportIssue]) -> None:
    for i, x in enumerate(items):
        what = f"issues[{i}]"
        text(x.issue_id, f"{what}.id", REPORT_ID_MAX_LEN)
        location(x.location, f"{what}.location")
        text(x.file, f"{what}.file", ISSUE_FILE_MAX_LEN)
        whole(x.line, f"{what}.line", 0, ISSUE_LINE_MAX)
        text(x.reason, f"{what}.reason", ISSUE_REASON_MAX_LEN)
        text(x.raw, f"{what}.raw", ISSUE_RAW_MAX_LEN, allow_empty=True, printable=False)


def triage(
    who: AgentIdentity,
    items: Sequence[T],
    item_id: Callable[[T], str],
    content: Callable[[T], tuple[Any, ...]],
    stored: Mapping[str, tuple[Any, ...]],
    noun: str,
) -> tuple[list[T], ReportResult]:
    """Sort one batch of reports: new ones (to insert), resends (accepted again)
    and refusals (another location than ``who``'s, or a known id with other content).

    ``stored`` maps the ids already stored for ``who`` to their ``content``.
    """
    fresh: list[T] = []
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, tuple[Any, ...]] = {}
    for item in items:
        ident, body = item_id(item), content(item)
        loc = body[0]
        known = stored.get(ident, seen.get(ident))
        if loc not in who.locations:
            bound = ", ".join(sorted(who.locations)) or "no location"
            rejected.append((ident, f"{who.agent_id} may not report for {loc}; it is bound to {bound}"))
        elif known is None:
            seen[ident] = body
            fresh.append(item)
            accepted.append(ident)
        elif known == body:
            accepted.append(ident)
        else:
            rejected.append((ident, f"{noun} {ident} was already received with different content; the first stands"))
    return fresh, ReportResult(tuple(accepted), tuple(rejected))


def observation_content(o: Observation) -> tuple[Any, ...]:
    """What a resend must repeat; the location comes first (``triage`` reads it)."""
    return (o.location, o.sku, o.system, o.on_hand, o.observed_at_ms, o.source_file)


def issue_content(x: ImportIssue) -> tuple[Any, ...]:
    return (x.location, x.file, x.line, x.reason, x.raw)


def bundle_recipe(sku: object, components: object) -> dict[str, int]:
    """A recipe's components (SKU -> units per bundle), checked: 1 to ``BUNDLE_PARTS_MAX`` SKUs by the
    identifier rule, none an unknown-barcode key or the bundle itself, units 1 to ``COMPONENT_UNITS_MAX``."""
    if (problem := values.SKU.problem(sku)) is not None:
        raise InvalidInput(f"the bundle SKU {problem}; a SKU is {values.SKU.rule()}")
    assert isinstance(sku, str)
    if is_unknown_sku(sku):
        raise InvalidInput(f"{sku!r} is an unknown-barcode key, not a SKU; a bundle needs a SKU of its own")
    if not isinstance(components, Mapping) or not components:
        raise InvalidInput("components must name at least one component SKU and its units, e.g. {\"A\": 2}")
    if len(components) > BUNDLE_PARTS_MAX:
        raise InvalidInput(f"a bundle names {len(components)} components; the limit is {BUNDLE_PARTS_MAX}")
    out: dict[str, int] = {}
    for component, units in components.items():
        if (problem := values.SKU.problem(component)) is not None:
            raise InvalidInput(f"a component SKU {problem}; a SKU is {values.SKU.rule()}")
        if is_unknown_sku(component):
            raise InvalidInput(f"component {component!r} is an unknown-barcode key; give the SKU its barcode maps to")
        if component == sku:
            raise InvalidInput(f"bundle {sku} names itself as a component")
        out[component] = whole(units, f"the units of component {component}", 1, COMPONENT_UNITS_MAX)
    return dict(sorted(out.items()))


def limit(value: int) -> int:
    """A read's row limit, from 1 to ``LIMIT_MAX``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMIT_MAX:
        raise InvalidInput(f"limit must be an integer from 1 to {LIMIT_MAX}, got {value!r}")
    return value


def exception_filter(location: str | None, kind: str | None, since_ms: int | None) -> ExceptionFilter:
    """The filter of an exceptions read: a kind the list names (``keys.EXCEPTION_KINDS``), a time in Unix ms."""
    if kind is not None and kind not in EXCEPTION_KINDS:
        raise InvalidInput(f"kind {kind!r} is not a kind of exception; it is one of {', '.join(EXCEPTION_KINDS)}")
    if since_ms is not None:
        whole(since_ms, "since_ms", 0, values.INT64_MAX)
    return ExceptionFilter(location, kind, since_ms)


def safety_stock(loc: str, sku: str, qty: int) -> None:
    """A safety stock to set: a location code, a SKU, 0 to ``QTY_MAX`` units."""
    if not is_location(loc):
        raise InvalidInput(f"{loc!r} is not a location code")
    if (problem := values.SKU.problem(sku)) is not None:
        raise InvalidInput(f"sku {problem}; a SKU is {values.SKU.rule()}")
    if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= QTY_MAX:
        raise InvalidInput(f"safety stock must be a whole number of units from 0 to {QTY_MAX}, got {qty!r}")
