"""Opaque cursors of the hub's paged read routes.

A paged route answers ``next``: a cursor naming the last row of the page (its
full order key, ``hub.storage.keys``), or null when there is no further page;
it takes ``cursor=<next>`` to answer the page after it. A walk from the first
page to the last sees every row that existed before the walk exactly once, in
order, however many rows share a timestamp; rows committed during the walk
show up on a later page if they sort after the cursor.

A cursor is base64url (no padding) of ``[route, version, key fields…]`` as
compact JSON followed by an 8-byte BLAKE2b check, so a cursor that was cut,
altered or given to another route is refused (400) with one sentence instead
of silently starting somewhere else. The check is not a secret: a cursor only
names a position in data its holder may read anyway.

A cursor of a filtered list (the exceptions: ``location``, ``kind``,
``since``) also names the filter it was given out for, and is refused (400,
naming both filters) with any other: its position is one in that list, and
taken into another it would skip or repeat that list's rows unseen. A cursor
given out before the exceptions' cursors named their filter names none and
is taken with any, as it was then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from hub import views
from hub.auth import STORE_KEY
from hub.storage import keys
from hub.storage.keys import (
    EXCEPTION_KINDS,
    EXCEPTION_SOURCES,
    PART_EVENT,
    PART_WRITEOFF,
    CountKey,
    DivergenceKey,
    ExceptionFilter,
    ExceptionKey,
    LedgerKey,
)
from protocol import values

CURSOR_VERSION = 1
CURSOR_MAX_CHARS = 1024
CHECK_BYTES = 8
INT63_MAX = (1 << 63) - 1
EVENT_ID_BYTES = 16
TIEBREAK_MAX_BYTES = 32
KEY_BYTES_MAX = 64  # a bytes column of an exception source's key (event ids, content hashes)
_PERSON = b"shelfsync-cursor"


class BadCursor(ValueError):
    """A cursor this hub did not give out for the request; its argument, when given, is the 400's sentence."""


def _check(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=CHECK_BYTES, person=_PERSON).digest()


def encode(route: str, fields: list[Any]) -> str:
    payload = json.dumps([route, CURSOR_VERSION, *fields], separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(payload + _check(payload)).rstrip(b"=").decode("ascii")


def decode(route: str, cursor: str) -> list[Any]:
    """The key fields of a cursor this hub gave out for ``route``; ``BadCursor`` for anything else."""
    if not cursor or len(cursor) > CURSOR_MAX_CHARS or not cursor.isascii():
        raise BadCursor
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as err:
        raise BadCursor from err
    payload, check = raw[:-CHECK_BYTES], raw[-CHECK_BYTES:]
    if len(raw) <= CHECK_BYTES or _check(payload) != check:
        raise BadCursor
    try:
        value = json.loads(payload)
    except ValueError as err:
        raise BadCursor from err
    if not isinstance(value, list) or len(value) < 2 or value[0] != route or value[1] != CURSOR_VERSION:
        raise BadCursor
    return value[2:]


def _int(value: Any, lo: int = 0, hi: int = INT63_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadCursor
    return value


def _hex(value: Any, sizes: range) -> bytes:
    if not isinstance(value, str) or len(value) // 2 not in sizes:
        raise BadCursor
    try:
        return bytes.fromhex(value)
    except ValueError as err:
        raise BadCursor from err


def _stored_text(value: Any) -> str:
    """Text a cursor names as a row held it: any valid Unicode (rows from before the identifier rule may hold
    what it refuses today, and their cursors must still work), never a lone surrogate no database takes."""
    if not isinstance(value, str) or not values.is_unicode(value):
        raise BadCursor
    return value


def _text(field: values.TextField, value: Any, *, allow_empty: bool = False) -> str:
    if field.problem(value, allow_empty=allow_empty, stored=True) is not None:  # a key of what is stored
        raise BadCursor
    assert isinstance(value, str)
    return value


# --- one encoding per key ----------------------------------------------------------------------------


def ledger_cursor(key: LedgerKey) -> str:
    return encode(
        "ledger", [key.occurred_at, key.agent_id, key.seq, key.event_id.hex(), key.part, key.tiebreak.hex()]
    )


def ledger_key(cursor: str) -> LedgerKey:
    f = decode("ledger", cursor)
    if len(f) != 6:
        raise BadCursor
    part = _int(f[4], PART_EVENT, PART_WRITEOFF)
    return LedgerKey(
        _int(f[0]),
        _text(values.AGENT_ID, f[1]),
        _int(f[2]),
        _hex(f[3], range(EVENT_ID_BYTES, EVENT_ID_BYTES + 1)),
        part,
        _hex(f[5], range(TIEBREAK_MAX_BYTES + 1)),
    )


def count_cursor(key: CountKey) -> str:
    return encode("counts", [key.location, key.sku])


def count_key(cursor: str) -> CountKey:
    f = decode("counts", cursor)
    if len(f) != 2:
        raise BadCursor
    return CountKey(_text(values.LOCATION, f[0]), _text(values.SKU, f[1]))


def exception_cursor(key: ExceptionKey, only: ExceptionFilter) -> str:
    ident = [v.hex() if isinstance(v, bytes) else v for v in key.ident]
    return encode("exceptions", [key.at_ms, key.source, ident, [only.location, only.kind, only.since_ms]])


def _ident_part(kind: str, value: Any) -> str | int | bytes:
    if kind == "i":
        return _int(value)
    if kind == "b":
        return _hex(value, range(KEY_BYTES_MAX + 1))
    return _stored_text(value)


def _filter(value: Any) -> ExceptionFilter:
    if not isinstance(value, list) or len(value) != 3:
        raise BadCursor
    location, kind, since_ms = value
    if (location is not None and not isinstance(location, str)) or (kind is not None and kind not in EXCEPTION_KINDS):
        raise BadCursor
    return ExceptionFilter(
        None if location is None else _stored_text(location), kind, None if since_ms is None else _int(since_ms)
    )


def exception_key(cursor: str) -> tuple[ExceptionKey, ExceptionFilter | None]:
    """The key a cursor of the exceptions names, and the filter it was given out for (None: a cursor of a hub
    from before cursors named it)."""
    f = decode("exceptions", cursor)
    if len(f) not in (3, 4) or not isinstance(f[1], str) or f[1] not in EXCEPTION_SOURCES or not isinstance(f[2], list):
        raise BadCursor
    types = EXCEPTION_SOURCES[f[1]].types
    if len(f[2]) != len(types):
        raise BadCursor
    key = ExceptionKey(_int(f[0]), f[1], tuple(_ident_part(t, v) for t, v in zip(types, f[2], strict=True)))
    return key, _filter(f[3]) if len(f) == 4 else None


def _said(only: ExceptionFilter) -> str:
    since = "all time" if only.since_ms is None else f"since {views.iso_ms(only.since_ms)}"
    where = "every location" if only.location is None else f"location {values.shown(only.location)}"
    return f"{where}, {only.kind or 'every kind'}, {since}"


def exception_reader(only: ExceptionFilter) -> Callable[[str], ExceptionKey]:
    """Reads a cursor of the exceptions given out for the filter ``only`` (one for another filter is bad)."""

    def read(cursor: str) -> ExceptionKey:
        key, given = exception_key(cursor)
        if given is not None and given != only:
            raise BadCursor(
                f"cursor was given out for another filter ({_said(given)}) than this request's ({_said(only)}); "
                "send it with the location, kind and since it was given out for, or start again without cursor"
            )
        return key

    return read


def divergence_cursor(key: DivergenceKey) -> str:
    return encode("divergence", [key.location, key.sku, key.system])


def divergence_key(cursor: str) -> DivergenceKey:
    f = decode("divergence", cursor)
    if len(f) != 3:
        raise BadCursor
    return DivergenceKey(_stored_text(f[0]), _stored_text(f[1]), _stored_text(f[2]))


def variance_sku_cursor(report_id: str, start: int) -> str:
    """A place in a kept shrinkage report by SKU (``hub.storage.reports``): the report's id and the number of rows
    before the next page."""
    return encode("variance-sku", [report_id, start])


REPORT_ID_HEX = 32


def variance_sku_key(cursor: str) -> tuple[str, int]:
    f = decode("variance-sku", cursor)
    if len(f) == 4:  # a row's place in the order, as every page read the whole period again
        raise BadCursor(
            "cursor is of the report by SKU as the hub paged it before it kept a report for its pages; read the "
            "first page again (without cursor) and walk on from its next"
        )
    if len(f) != 2 or not isinstance(f[0], str) or len(f[0]) != REPORT_ID_HEX:
        raise BadCursor
    _hex(f[0], range(REPORT_ID_HEX // 2, REPORT_ID_HEX // 2 + 1))
    return f[0], _int(f[1], 1)


def delivery_cursor(webhook: str, delivery_id: int) -> str:
    return encode("deliveries", [webhook, delivery_id])


def delivery_reader(webhook: str) -> Callable[[str], int]:
    """Reads a cursor of ``webhook``'s delivery log into the delivery id it names (another webhook's is bad)."""

    def read(cursor: str) -> int:
        f = decode("deliveries", cursor)
        if len(f) != 2 or f[0] != webhook:
            raise BadCursor
        return _int(f[1], 1)

    return read


def parse(request: web.Request, read: Any, what: str) -> Any:
    """The key of the request's ``cursor`` parameter read by ``read`` (None without one), or a 400 saying why."""
    raw = request.rel_url.query.get("cursor")
    if raw is None:
        return None
    try:
        return read(raw)
    except BadCursor as err:
        raise web.HTTPBadRequest(
            text=str(err) if err.args else f"cursor is not one this hub gave out for {what} (it is cut, altered or "
            "from another route); send the next value of the previous page unchanged, or start again without cursor"
        ) from None


async def counts_page(
    request: web.Request, params: views.Query, limit_default: int, limit_max: int, *,
    location: str | None = None, sku: str | None = None, skus: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``{"counts": [...], "next": cursor | None}``: one page of counts, ordered by (location, sku); ``skus``: of
    any of these SKUs."""
    after = parse(request, count_key, "counts")
    limit = params.limit(limit_default, limit_max)
    rows = await request.app[STORE_KEY].counts(location=location, sku=sku, limit=limit + 1, after=after, skus=skus)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "counts": [views.count_row(r) for r in rows],
        "next": count_cursor(keys.count_key(rows[-1])) if more else None,
    }
