"""CSV answers of the hub's lists, for the spreadsheets every operations team lives in.

A list route answers CSV instead of JSON when asked with ``Accept: text/csv``
(preferred over JSON) or ``?format=csv``: ``text/csv; charset=utf-8;
header=present``, one header row, RFC 4180 (comma separated, fields quoted
when they hold a comma, a quote or a line break, quotes doubled, CRLF line
ends), UTF-8 without a byte-order mark. The answer is the **whole list**, not
one page: the hub walks the same opaque-cursor pages as the JSON route
(``hub.paging``) and streams each page out as it goes, so memory stays
bounded whatever the list's length. ``limit`` caps the rows (default: all);
``cursor`` starts after a JSON page's ``next``.

Cells are safe to open in a spreadsheet: a text cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return (also in full width, ``＝``),
or with a character that shows nothing (a zero-width space, a direction
override), is written with a leading ``'`` so no spreadsheet runs it as a
formula (protocol/csvcells.py; numbers stay numbers: a sale of
−3 is the number -3). Times are ISO 8601 UTC (``…Z``); 63-bit integers (an
epoch, a packed HLC) are written exactly — a spreadsheet rounds integers past
15 digits, so import such columns as text.

At most ``export_max_per_credential`` downloads of one credential and
``export_max`` of the hub run at once (hub/exportslots.py): one more is
answered ``429`` or ``503`` with ``Retry-After``. Each page is its own short
read (no read transaction spans the download, so a long one holds back
neither the SQLite writer nor its checkpoints), and the download yields the
event loop after writing each page, so syncs waiting for it go first.

A database failure before the first row is the usual ``503``; one during the
stream cuts the connection (the download ends unfinished, never looking whole)
and is logged in one sentence.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from hub import metrics, paging, views
from hub.auth import STORE_KEY, identity_of
from hub.config import ExceptionWindows
from hub.exportslots import SLOTS_KEY
from hub.storage import keys
from hub.storage.base import (
    AgentDisk,
    AgentStatus,
    CatalogItem,
    CountRow,
    ExceptionRow,
    HubError,
    LedgerRow,
    QuarantineRow,
)
from hub.storage.interfaces import LedgerStore, QuarantineStore, ReportStore
from hub.storage.keys import LedgerKey
from protocol import event_id_hex, values
from protocol.csvcells import guarded

log = logging.getLogger(__name__)

R = TypeVar("R")

CSV_MEDIA_TYPE = "text/csv"
CONTENT_TYPE = "text/csv; charset=utf-8; header=present"
PAGE_ROWS = 1_000  # rows read from the store per page of a walk (and written per chunk)
# The ledger's pages are sized by their bytes instead: about this much of CSV each (100 rows first, then from 50 to
# PAGE_ROWS by the size of the page before), read, written and sent before the next is read. 1,000 events with
# attrs at their limits are ~9 MiB of CSV, made in one go on the event loop (a small read waited 0.3-0.7 s).
LEDGER_PAGE_BYTES = 256 * 1024
LEDGER_FIRST_ROWS = 100
LEDGER_PAGE_ROWS_MIN = 50
LEDGER_ROW_BYTES = 250  # a ledger row's cells but its attrs, about
ROWS_MAX = 1_000_000_000  # the largest ``limit`` a CSV answer takes
FILENAME_PART_RE = re.compile(r"[^A-Za-z0-9._-]+")
JSON_TYPES = frozenset({"application/json", "application/*"})


# --- asking for CSV -----------------------------------------------------------------------------------


def _accept_q(accept: str) -> dict[str, float]:
    """Media type → quality of an Accept header (malformed parts are skipped, as RFC 9110 lets a server do)."""
    out: dict[str, float] = {}
    for part in accept.split(",")[:64]:
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        out[media] = max(out.get(media, 0.0), q if 0.0 <= q <= 1.0 else 0.0)
    return out


def prefers_csv(accept: str) -> bool:
    """True when an Accept header names ``text/csv`` and ranks it at least as high as JSON."""
    q = _accept_q(accept)
    csv_q = q.get(CSV_MEDIA_TYPE, 0.0)
    json_q = max((q.get(t, 0.0) for t in JSON_TYPES), default=0.0)
    return csv_q > 0.0 and csv_q >= json_q


def wants_csv(request: web.Request) -> bool:
    """Whether to answer this request with CSV: ``?format=csv``, else ``Accept: text/csv`` (over JSON)."""
    raw = request.rel_url.query.getall("format", [])
    if raw:
        if len(raw) > 1 or raw[0] != "csv":
            got = values.shown(raw[0], values.QUOTE_MAX_CHARS)
            raise web.HTTPBadRequest(
                text=f"format takes only csv (got {got}, or more than one); leave format out for JSON"
            )
        return True
    return prefers_csv(request.headers.get("Accept", ""))


# --- cells --------------------------------------------------------------------------------------------


def cell(value: object) -> object:
    """One value as a CSV cell: numbers as numbers, text guarded against formulas (protocol.csvcells), None
    empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, (dict, list)):
        value = views.dumps(value)
    return guarded(str(value))


def encode(rows: Iterable[Sequence[object]]) -> bytes:
    """RFC 4180 lines (CRLF) of ``rows``, each value through ``cell``, as UTF-8."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        writer.writerow([cell(v) for v in row])
    # a lone surrogate (a row stored before the identifier rule) cannot be UTF-8: served as U+FFFD
    return buf.getvalue().encode("utf-8", errors="replace")


def filename(*parts: str | None) -> str:
    """``ledger-S001-20260105T101500Z.csv``: the list, its filters (only safe characters) and the UTC time."""
    named = [FILENAME_PART_RE.sub("_", p).strip("_")[:40] for p in parts if p]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return "-".join([*(n for n in named if n), stamp]) + ".csv"


# --- walking every page ---------------------------------------------------------------------------------


async def walk(
    fetch: Callable[[Any, int], Awaitable[list[R]]], key_of: Callable[[R], Any], *, after: Any = None,
    limit: int | None = None, first_rows: int | None = None, rows_after: Callable[[list[R]], int] | None = None,
) -> AsyncGenerator[list[R], None]:  # fmt: skip
    """Every page of a list in order: ``fetch(after, n)`` reads the ``n`` rows after key ``after`` (None: from
    the start); the next page starts after the last row's ``key_of``. Stops at a short page or ``limit`` rows.
    Pages are ``first_rows`` (default ``PAGE_ROWS``), then ``rows_after(the page before)`` when given, else
    ``PAGE_ROWS``, rows long."""
    remaining = limit
    size = PAGE_ROWS if first_rows is None else first_rows
    while remaining is None or remaining > 0:
        n = size if remaining is None else min(size, remaining)
        rows = await fetch(after, n)
        if rows:
            yield rows
        if len(rows) < n:
            return
        if remaining is not None:
            remaining -= len(rows)
        after = key_of(rows[-1])
        size = rows_after(rows) if rows_after is not None else PAGE_ROWS


async def stream(
    request: web.Request, name: str, header: Sequence[str], pages: AsyncIterator[list[Sequence[object]]]
) -> web.StreamResponse:
    """Answer ``header`` and the rows of ``pages`` as one CSV download named ``name``.

    The first page is read before anything is sent, so a database failure there is an ordinary error
    answer; a failure later cuts the connection (logged), so a broken download never looks complete. It
    holds one of the hub's export slots (hub/exportslots.py) throughout: none free is a 429 or 503."""
    slots = request.app.get(SLOTS_KEY)
    if slots is None:
        return await _stream(request, name, header, pages)
    with slots.take(identity_of(request).agent_id):
        return await _stream(request, name, header, pages)


def ledger_page_rows(page: list[LedgerRow]) -> int:
    """How many rows the ledger's next CSV page reads: about ``LEDGER_PAGE_BYTES`` of them, by the size of
    ``page`` (its attrs counted by their text, cheaply)."""
    size = sum(LEDGER_ROW_BYTES + sum(len(k) + len(str(v)) for k, v in r.attrs.items()) for r in page)
    return min(PAGE_ROWS, max(LEDGER_PAGE_ROWS_MIN, LEDGER_PAGE_BYTES * len(page) // max(1, size)))


def ledger_pages(
    store: LedgerStore, location: str | None, sku: str | None, *, before: int | None = None,
    after: LedgerKey | None = None, limit: int | None = None,
) -> AsyncGenerator[list[LedgerRow], None]:  # fmt: skip
    """The ledger (of a location, a SKU) newest first, after ``after`` (else before ``before``), in parts:
    ``LEDGER_FIRST_ROWS`` rows first, then about ``LEDGER_PAGE_BYTES`` of rows (``ledger_page_rows``), so whoever
    turns each part into its answer before reading the next lets the event loop serve others between them."""

    async def fetch(key: LedgerKey | None, n: int) -> list[LedgerRow]:
        return await store.ledger(location=location, sku=sku, limit=n, before=None if key else before, after=key)

    return walk(
        fetch, keys.ledger_key, after=after, limit=limit, first_rows=min(LEDGER_FIRST_ROWS, PAGE_ROWS),
        rows_after=ledger_page_rows,
    )  # fmt: skip


async def _stream(
    request: web.Request, name: str, header: Sequence[str], pages: AsyncIterator[list[Sequence[object]]]
) -> web.StreamResponse:
    first: list[Sequence[object]] = await anext(pages, [])
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    rows = len(first)
    try:
        await response.write(encode([header, *first]))
        async for page in pages:
            await asyncio.sleep(0)  # let what waits on the loop (a sync's next step) go before the next page
            await response.write(encode(page))
            rows += len(page)
    except ConnectionError:
        log.info("the client of %s went away after %d CSV row(s)", request.rel_url.raw_path, rows)
        return response
    except HubError as err:
        log.warning("cut the CSV answer of %s short after %d row(s): %s", request.rel_url.raw_path, rows, err)
        metrics.observe_failure(request.app, "database")
        if request.transport is not None:
            request.transport.abort()  # no last chunk: the client sees an unfinished download
        return response
    await response.write_eof()
    return response


def limit_param(params: views.Query) -> int | None:
    """A CSV answer's ``limit``: how many rows at most (None: every row)."""
    return params.number("limit", 1, ROWS_MAX)


# --- product names ------------------------------------------------------------------------------------------


def product_names(items: Iterable[CatalogItem]) -> dict[str, str]:
    """SKU → its name in the catalog: the description of its single-unit barcode, else of its smallest pack."""
    best: dict[str, tuple[int, str]] = {}
    for item in items:
        if not item.description:
            continue
        held = best.get(item.sku)
        if held is None or item.pack_size < held[0]:
            best[item.sku] = (item.pack_size, item.description)
    return {sku: name for sku, (_, name) in best.items()}


async def names_of(request: web.Request) -> dict[str, str]:
    return product_names((await request.app[STORE_KEY].catalog()).items)


# --- the lists --------------------------------------------------------------------------------------------

COUNT_HEADER = (
    "location", "sku", "name", "on_hand", "reserved", "available", "in_transit", "safety_stock",
    "last_count_time", "updated_at",
)  # fmt: skip
LEDGER_HEADER = (
    "occurred_at_time", "location", "sku", "name", "kind", "qty", "effect", "variance", "ref", "reason",
    "source", "agent_id", "epoch", "seq", "event_id", "received_at", "duplicates", "rejection_code", "rejection",
    "occurred_at", "attrs",
)  # fmt: skip
EXCEPTION_HEADER = ("at", "kind", "location", "sku", "name", "detail", "data")
AGENT_HEADER = (
    "agent_id", "role", "revoked", "locations", "last_sync", "epoch", "hwm", "epochs", "clock_skew_ms", "backlog",
    "oldest_pending", "backlog_at", "disk", "disk_since", "disk_free_bytes",
)  # fmt: skip
QUARANTINE_HEADER = (
    "id", "status", "received", "occurred", "skew_ms", "agent_id", "epoch", "seq", "location", "sku", "name", "kind",
    "qty", "ref", "reason", "source", "attempts", "detail", "resolved_by", "resolved_at", "event_id", "occurred_at",
    "attrs", "hub_clock_vouched", "hub_clock_off_ms", "wall_ms", "received_at_ms", "resolved_at_ms",
)  # fmt: skip


def count_cells(r: CountRow, names: dict[str, str]) -> tuple[object, ...]:
    return (
        r.location, r.sku, names.get(r.sku), r.on_hand, r.reserved, r.available, r.in_transit, r.safety_stock,
        views.hlc_time(r.last_count_at), views.iso_ms(r.updated_at_ms),
    )  # fmt: skip


def ledger_cells(r: LedgerRow, names: dict[str, str]) -> tuple[object, ...]:
    row = views.ledger_row(r)
    return (
        row["occurred_at_time"], r.location, r.sku, names.get(r.sku), r.kind, r.qty, row["effect"], r.variance,
        r.ref, r.reason, r.source, r.agent_id, str(r.epoch), r.seq, row["event_id"], row["received_at"],
        r.duplicates, r.rejection_code, r.rejection, str(r.occurred_at), r.attrs or None,
    )  # fmt: skip


def exception_cells(r: ExceptionRow, names: dict[str, str]) -> tuple[object, ...]:
    return (views.iso_ms(r.at_ms), r.kind, r.location, r.sku, names.get(r.sku or ""), r.detail, r.data or None)


def agent_cells(r: AgentStatus) -> tuple[object, ...]:
    """One credential; its current epoch (the one marked last) and that epoch's mark, and how many it has had."""
    epoch, hwm = next(reversed(r.hwm.items()), (None, None))
    return (
        r.agent_id, r.role, r.revoked, " ".join(r.locations), views.iso_ms(r.last_sync_ms),
        None if epoch is None else str(epoch), hwm, len(r.hwm), r.clock_skew_ms, r.backlog,
        views.iso_ms(r.oldest_pending_ms), views.iso_ms(r.backlog_at_ms), *_disk_cells(r.disk),
    )  # fmt: skip


def _disk_cells(d: AgentDisk | None) -> tuple[object, ...]:
    """The agent's disk (``views.agent_disk``): its state, since when, the free bytes reported; empty: never."""
    return (None, None, None) if d is None else (d.state, views.iso_ms(d.since_ms), d.free_bytes)


def quarantine_cells(r: QuarantineRow, names: dict[str, str]) -> tuple[object, ...]:
    return (
        r.quarantine_id, r.status, views.iso_ms(r.received_at_ms), views.hlc_time(r.occurred_at), r.skew_ms,
        r.agent_id, str(r.epoch), r.seq, r.location, r.sku, names.get(r.sku), r.kind, r.qty, r.ref, r.reason,
        r.source, r.attempts, r.detail, r.resolved_by, views.iso_ms(r.resolved_at_ms), event_id_hex(r.event_id),
        str(r.occurred_at), r.attrs or None, r.hub_clock_vouched, r.hub_clock_off_ms, r.wall_ms, r.received_at_ms,
        r.resolved_at_ms,
    )  # fmt: skip


async def _rows(
    pages: AsyncIterator[list[R]], to_cells: Callable[[R], Sequence[object]]
) -> AsyncIterator[list[Sequence[object]]]:
    async for page in pages:
        yield [to_cells(r) for r in page]


async def counts(request: web.Request, allowed: set[str], *, location: str | None = None,
                 sku: str | None = None, skus_max: int = 0) -> web.StreamResponse:  # fmt: skip
    """Every count (of one location, one SKU, or the filters of ``GET /v1/counts``: ``skus_max`` SKUs at most), by
    (location, sku)."""
    params = views.Query(request, allowed | {"format"}, repeatable={"sku"} if skus_max else ())
    if "location" in allowed:
        location = params.location()
    skus = None
    if "sku" in allowed and skus_max:
        skus = params.skus(skus_max)
        if skus is not None and len(skus) == 1:  # one SKU: named in the file's name
            sku, skus = skus[0], None
    elif "sku" in allowed:
        sku = params.sku()
    after = paging.parse(request, paging.count_key, "counts")
    store: LedgerStore = request.app[STORE_KEY]
    names = await names_of(request)

    async def fetch(key: Any, n: int) -> list[CountRow]:
        return await store.counts(location=location, sku=sku, limit=n, after=key, skus=skus)

    pages = walk(fetch, keys.count_key, after=after, limit=limit_param(params))
    return await stream(
        request, filename("counts", location, sku), COUNT_HEADER, _rows(pages, lambda r: count_cells(r, names))
    )


async def ledger(request: web.Request) -> web.StreamResponse:
    """The whole ledger (of a location, a SKU), newest first in resolution order, as ``GET /v1/ledger``."""
    params = views.Query(request, {"location", "sku", "limit", "before", "cursor", "format"})
    after = paging.parse(request, paging.ledger_key, "the ledger")
    before = params.before()
    if after is not None and before is not None:
        raise web.HTTPBadRequest(text="give cursor or before, not both: before only says where the walk starts")
    location, sku = params.location(), params.sku()
    store: LedgerStore = request.app[STORE_KEY]
    names = await names_of(request)

    pages = ledger_pages(store, location, sku, before=before, after=after, limit=limit_param(params))
    return await stream(
        request, filename("ledger", location, sku), LEDGER_HEADER, _rows(pages, lambda r: ledger_cells(r, names))
    )


async def exceptions(request: web.Request, windows: ExceptionWindows) -> web.StreamResponse:
    """Every exception (of a location, a kind, since a time), newest first, as ``GET /v1/exceptions``
    (``windows``: ``HubSettings.exception_windows``)."""
    params = views.Query(request, {"location", "kind", "since", "limit", "cursor", "format"})
    only = params.exception_filter()
    after = paging.parse(request, paging.exception_reader(only), "the exceptions")
    store: ReportStore = request.app[STORE_KEY]
    names = await names_of(request)

    async def fetch(key: Any, n: int) -> list[ExceptionRow]:
        return await store.exceptions(
            location=only.location, kind=only.kind, since_ms=only.since_ms, limit=n, after=key, **windows,
        )  # fmt: skip

    pages = walk(fetch, keys.exception_key, after=after, limit=limit_param(params))
    return await stream(
        request, filename("exceptions", only.location, only.kind), EXCEPTION_HEADER,
        _rows(pages, lambda r: exception_cells(r, names)),
    )  # fmt: skip


async def agents(request: web.Request) -> web.StreamResponse:
    """Every credential's status, as ``GET /v1/agents`` (one row per credential, its current epoch)."""
    views.Query(request, {"format"})
    rows = await request.app[STORE_KEY].agent_status()

    async def pages() -> AsyncIterator[list[Sequence[object]]]:
        for start in range(0, len(rows), PAGE_ROWS):
            yield [agent_cells(r) for r in rows[start : start + PAGE_ROWS]]

    return await stream(request, filename("agents"), AGENT_HEADER, pages())


async def quarantine(
    request: web.Request, params: views.Query, *, status: str | None, location: str | None, before_id: int | None
) -> web.StreamResponse:
    """Every held event of ``GET /v1/quarantine`` (its ``status`` and ``location``), newest first."""
    store: QuarantineStore = request.app[STORE_KEY]
    names = await names_of(request)

    async def fetch(key: int | None, n: int) -> list[QuarantineRow]:
        return await store.quarantine(status=status, location=location, limit=n, before_id=key)

    pages = walk(fetch, lambda r: r.quarantine_id, after=before_id, limit=limit_param(params))
    return await stream(
        request, filename("quarantine", status or "all", location), QUARANTINE_HEADER,
        _rows(pages, lambda r: quarantine_cells(r, names)),
    )  # fmt: skip
