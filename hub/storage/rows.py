"""Database rows to the store's values, the same for both backends (their queries select the same columns)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hub.resolver import Effect, available
from hub.storage.base import Bundle, BundleExpansion, BundleRecipe, CountRow, ExceptionRow, LedgerRow
from hub.storage.ingest import BundleParts
from protocol import event_id_hex
from protocol.values import ATTR_STR_MAX_LEN, json_safe

COUNT_FIELDS = "location, sku, on_hand, reserved, in_transit, safety_stock, last_count_at, updated_at_ms"


def count_row(r: Sequence[Any]) -> CountRow:
    # COUNT_FIELDS
    return CountRow(r[0], r[1], r[2], r[3], available(r[2], r[3], r[5]), r[4], r[5], r[6], r[7])


def ledger_row(r: Sequence[Any]) -> LedgerRow:
    # EVENT_FIELDS, then effect, variance, duplicates, received_at_ms, rejection, rejection_code
    return LedgerRow(
        event_id=r[0],
        agent_id=r[1],
        epoch=r[2],
        seq=r[3],
        location=r[4],
        sku=r[5],
        kind=r[6],
        qty=r[7],
        occurred_at=r[8],
        wall_ms=r[9],
        source=r[10],
        ref=r[11],
        reason=r[12],
        attrs=stored_attrs(r[13]),
        effect=Effect(r[14]),
        variance=r[15],
        duplicates=r[16],
        received_at_ms=r[17],
        rejection=r[18],
        rejection_code=r[19],
        content_hash=r[20] if len(r) > 20 else None,
    )


def stored_attrs(text: str | None) -> dict[str, Any]:
    """An event's stored attrs, made strict-JSON-safe: rows stored before protocol.values refused them may
    hold NaN, ±Infinity (served as null) or a lone surrogate (served as U+FFFD); sanitised on read, so old
    rows are served unchanged in the database and never break a read."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text[:ATTR_STR_MAX_LEN]}
    safe = json_safe(value)
    return safe if isinstance(safe, dict) else {"value": safe}


def rejection_exception(r: Sequence[Any]) -> ExceptionRow:
    event_id, agent_id, seq, location, sku, kind, qty, code, detail, attempts, at_ms = r
    return ExceptionRow(
        "rejected_event",
        location,
        sku,
        f"{agent_id}'s {kind} of {qty:+d} {sku} at {location} was refused ({code}): {detail}.",
        {"event_id": event_id_hex(event_id), "agent_id": agent_id, "seq": seq, "code": code, "attempts": attempts},
        at_ms,
    )


# --- bundles (schema version 6) --------------------------------------------------------------------------


def bundle_recipe(r: Sequence[Any]) -> BundleRecipe:
    # RECIPE_FIELDS
    components = json.loads(r[3])
    return BundleRecipe(r[0], r[1], r[2], tuple(sorted((str(k), int(v)) for k, v in components.items())), r[4])


def bundle_book(rows: Iterable[Sequence[Any]]) -> dict[str, BundleParts]:
    """Rows of BUNDLE_PART_FIELDS grouped per bundle (parts by SKU)."""
    grouped: dict[str, tuple[int, dict[str, int]]] = {}
    for bundle, part, units, version in rows:
        grouped.setdefault(bundle, (int(version), {}))[1][part] = int(units)
    return {b: BundleParts(v, dict(sorted(parts.items()))) for b, (v, parts) in sorted(grouped.items())}


def bundles_of(recipes: Iterable[BundleRecipe], book: Mapping[str, BundleParts]) -> list[Bundle]:
    return [Bundle(r, tuple(book[r.sku].parts.items()) if r.sku in book else ()) for r in recipes]


def with_expansions(rows: list[LedgerRow], found: Iterable[Sequence[Any]]) -> list[LedgerRow]:
    """``rows`` with the expansion of each bundle movement filled in from rows of EXPANSION_FIELDS."""
    by_id = {(r[0], bytes(r[1])): BundleExpansion(r[2], tuple(sorted(json.loads(r[3]).items()))) for r in found}
    return [
        replace(row, expansion=by_id.get((row.agent_id, row.event_id))) if row.effect is Effect.EXPANDED else row
        for row in rows
    ]


def expanded_ids(rows: Iterable[LedgerRow]) -> list[tuple[str, bytes]]:
    """(agent_id, event_id) of the bundle movements among ``rows``."""
    return [(row.agent_id, row.event_id) for row in rows if row.effect is Effect.EXPANDED]
