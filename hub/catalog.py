"""The hub's barcode catalog: its HTTP routes and the re-booking of unknown barcodes.

An agent that scans a barcode it does not know records the movement under
``protocol.catalog.unknown_sku(barcode)`` (never dropping it). When the hub's
catalog learns that barcode, ``rebook`` moves those movements to the real SKU
through the normal ingest path, as the internal identity ``hub`` (epoch 1,
bound to the locations concerned): for every original event, one event that
cancels it on the unknown key and one that books ``qty × pack_size`` on the
real SKU, both at the original's ``occurred_at`` (``hub`` orders after the
``agent-…`` ids the hub issues, so a cancelling count follows the count it
cancels). Their ids, seqs and contents derive from the original only, so
re-booking again is answered as duplicates: a no-op. The ids derive from the
original's namespaced id (its credential and its event id), as a bundle part's
do: another credential sending a copy of a store's event id (every id is in the
ledger) books a movement of its own, and can no longer take the store's
re-booked ids first so that the store's movement is refused as a conflict and
stays on the unknown key. Originals re-booked before that (their ids derived
from the event id alone) are recognised by those ids and left as they are.
The ledger explains itself: ``source`` "hub:catalog", ``ref`` the original
event id.

Kinds: a count is cancelled by a count of 0 and booked as a count; every other
on-hand movement is cancelled by an adjust and booked as the same kind.
Transfers and reservations keep their own document ref (it pairs them), and
the original id goes to ``attrs["rebooked_from"]`` for every kind.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import os
import re
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
from aiohttp import web

from hub import csvexport, csvtext, heads, secretfiles, views
from hub import problems as problem_details
from hub.auth import ROLE_ADMIN, STORE_KEY, identity_of, role_refused
from hub.config import url_problem
from hub.storage import open_store
from hub.storage.base import AgentIdentity, CatalogItem, HubError, InvalidInput, LedgerRow
from hub.storage.checks import CATALOG_ITEMS_MAX, PACK_SIZE_MAX
from hub.storage.checks import catalog_items as check_catalog_items
from hub.storage.interfaces import CatalogStore, RebookingStore
from protocol import Kind, ProtocolError, StockEvent, derived_event_id, event_id_hex, values
from protocol.catalog import is_unknown_sku, sku_look, unknown_sku
from protocol.csvcells import uncell
from protocol.routes import CATALOG_PATH

if TYPE_CHECKING:
    from hub.config import HubSettings

log = logging.getLogger(__name__)

HUB_AGENT_ID = "hub"
HUB_EPOCH = 1
REBOOK_SOURCE = "hub:catalog"
REBOOK_BATCH_EVENTS = 5_000  # originals per ingest transaction (two events each)
ITEM_FIELDS = frozenset({"barcode", "sku", "pack_size", "description"})
ITEM_REQUIRED = frozenset({"barcode", "sku"})
# Kinds whose ref pairs them with other events: they keep it when re-booked.
DOCUMENT_KINDS = frozenset({Kind.TRANSFER_OUT, Kind.TRANSFER_IN, Kind.RESERVE, Kind.RELEASE})
OPPOSITE = {Kind.RESERVE: Kind.RELEASE, Kind.RELEASE: Kind.RESERVE}


# --- re-booking -------------------------------------------------------------


def rebooked_id(original: LedgerRow, tag: bytes, *, namespaced: bool = True) -> bytes:
    """The id of ``original``'s cancelling (``tag`` b"cancel") or booking (b"book") event: derived from its
    namespaced id (credential and event id); ``namespaced=False``, from its event id alone, as the hub derived
    them before (``rebooked_before``)."""
    if namespaced:
        key = b"\x1f".join((b"hub:catalog", tag, original.agent_id.encode(), original.event_id))
    else:
        key = b"hub:catalog:" + tag + b":" + original.event_id
    return derived_event_id(original.wall_ms, key)


def rebooked_before(original: LedgerRow, hub_rows: dict[bytes, LedgerRow]) -> bool:
    """Whether ``original`` was re-booked under the former ids, derived from its event id alone (``hub_rows``:
    the hub's events on its unknown key, by id): its cancelling event is there at its location, stamp and seq.
    Another credential's copy of its event id is at another location (or is another's movement all the same)
    and gets ids of its own."""
    cancel = hub_rows.get(rebooked_id(original, b"cancel", namespaced=False))
    return cancel is not None and (cancel.location, cancel.occurred_at, cancel.seq) == (
        original.location, original.occurred_at, original.seq,
    )  # fmt: skip


def corrections(original: LedgerRow, item: CatalogItem, *, namespaced: bool = True) -> tuple[StockEvent, StockEvent]:
    """The two events that move ``original`` (booked under an unknown barcode) to ``item``'s SKU
    (``namespaced=False``: with the former ids, ``rebooked_id``).

    Raises ``ProtocolError`` when they would break the event contract (qty × pack_size too large).
    """
    kind = Kind(original.kind)
    source_id = event_id_hex(original.event_id)
    keeps_ref = kind in DOCUMENT_KINDS
    ref = original.ref if keeps_ref else source_id
    if kind is Kind.COUNT:
        cancel_kind, cancel_qty = Kind.COUNT, 0
    elif kind in OPPOSITE:
        cancel_kind, cancel_qty = OPPOSITE[kind], -original.qty
    else:
        cancel_kind, cancel_qty = Kind.ADJUST, -original.qty
    attrs: dict[str, Any] = {k: v for k, v in original.attrs.items() if k != "unknown"}
    attrs |= {"pack_size": item.pack_size, "rebooked_from": source_id}
    if original.ref is not None and not keeps_ref:
        attrs["original_ref"] = original.ref

    def event(tag: bytes, sku: str, kind: Kind, qty: int, event_attrs: dict[str, Any]) -> StockEvent:
        return StockEvent(
            event_id=rebooked_id(original, tag, namespaced=namespaced),
            agent_id=HUB_AGENT_ID,
            epoch=HUB_EPOCH,
            seq=original.seq,
            location=original.location,
            sku=sku,
            kind=kind,
            qty=qty,
            occurred_at=original.occurred_at,
            wall_ms=original.wall_ms,
            source=REBOOK_SOURCE,
            ref=ref if kind in DOCUMENT_KINDS else source_id,
            reason=original.reason,
            attrs=event_attrs,
        )

    cancel = event(b"cancel", original.sku, cancel_kind, cancel_qty, {"rebooked_to": item.sku})
    book = event(b"book", item.sku, kind, original.qty * item.pack_size, attrs)
    return cancel, book


async def rebook(store: RebookingStore, items: Collection[CatalogItem]) -> int:
    """Re-book every stored unknown-barcode event of ``items``' barcodes; return how many
    originals were re-booked now (0 when they all were already)."""
    by_key = {unknown_sku(item.barcode): item for item in items}
    if not by_key:
        return 0
    stored = await store.unknown_events(list(by_key))
    hub_rows = {r.event_id: r for r in stored if r.agent_id == HUB_AGENT_ID}
    originals = [r for r in stored if r.agent_id != HUB_AGENT_ID]
    rebooked = 0
    for start in range(0, len(originals), REBOOK_BATCH_EVENTS):
        events: list[StockEvent] = []
        for original in originals[start : start + REBOOK_BATCH_EVENTS]:
            item = by_key[original.sku]
            try:
                events += corrections(original, item, namespaced=not rebooked_before(original, hub_rows))
            except ProtocolError as err:
                log.warning(
                    "Cannot re-book event %s of barcode %s on %s: %s; it stays under %s.",
                    event_id_hex(original.event_id),
                    item.barcode,
                    item.sku,
                    err,
                    original.sku,
                )
        if not events:
            continue
        who = AgentIdentity(HUB_AGENT_ID, frozenset(ev.location for ev in events), ROLE_ADMIN)
        result = await store.ingest(who, HUB_EPOCH, events)
        rebooked += result.applied // 2
        if result.rejected:
            log.warning(
                "%d re-booking event(s) were refused, first: %s (was a barcode's SKU or pack size changed "
                "after its scans were re-booked?)",
                len(result.rejected),
                result.rejected[0].reason,
            )
    if rebooked:
        log.info("Re-booked %d unknown-barcode movement(s) onto their catalog SKUs.", rebooked)
    return rebooked


class KnownBarcodes:
    """The catalog indexed by unknown-barcode key, reloaded only when its version moves."""

    def __init__(self) -> None:
        self._version = -1
        self._by_key: dict[str, CatalogItem] = {}

    async def lookup(self, store: CatalogStore, skus: Collection[str]) -> list[CatalogItem]:
        version = await store.catalog_version()
        if version != self._version:
            catalog = await store.catalog()
            self._by_key = {unknown_sku(item.barcode): item for item in catalog.items}
            self._version = catalog.version
        return [self._by_key[sku] for sku in skus if sku in self._by_key]


KNOWN_BARCODES_KEY = web.AppKey("known_barcodes", KnownBarcodes)


async def rebook_unknown(request: web.Request, skus: Collection[str]) -> int:
    """After a sync that booked unknown-barcode events: re-book those the catalog already
    knows (an agent with a stale catalog). A failure is logged; the next sync or PUT retries."""
    wanted = {sku for sku in skus if is_unknown_sku(sku)}
    if not wanted:
        return 0
    store: RebookingStore = request.app[STORE_KEY]
    try:
        known = await request.app[KNOWN_BARCODES_KEY].lookup(store, wanted)
        return await rebook(store, known) if known else 0
    except HubError as err:
        log.warning("Re-booking unknown barcodes after a sync failed (the next sync retries): %s", err)
        return 0


# --- HTTP -------------------------------------------------------------------


def etag(version: int, history: str) -> str:
    """The catalog's ETag: its version, and the database's feed history (``hub.storage.feed``), which a restored
    backup changes — a restored catalog counts its versions again from the backup's, to other items."""
    return f'"{version}.{history}"' if history else f'"{version}"'


def _matches(if_none_match: str, tag: str) -> bool:
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == tag for c in candidates)


async def get_catalog(request: web.Request) -> web.StreamResponse:
    """The whole catalog and its version (ETag); ``If-None-Match`` with the current ETag → 304. As CSV when
    asked: the columns ``PUT /v1/catalog`` takes, so a spreadsheet round trip imports as it exported."""
    if csvexport.wants_csv(request):
        return await catalog_csv(request)
    views.Query(request, set())
    store: CatalogStore = request.app[STORE_KEY]
    tag = etag(await store.catalog_version(), store.feed_history)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _matches(if_none_match, tag):
        return web.Response(status=304, headers={"ETag": tag})
    catalog = await store.catalog()
    body = {"version": catalog.version, "items": [item_json(i) for i in catalog.items]}
    return web.json_response(body, dumps=views.dumps, headers={"ETag": etag(catalog.version, store.feed_history)})


async def put_catalog(request: web.Request) -> web.Response:
    """Upsert catalog items by barcode (admin), from JSON (all or nothing) or CSV (all or nothing, or with
    ``?partial=true`` its good rows, every refused row listed), then re-book the scans of barcodes that were
    unknown."""
    who = identity_of(request)
    partial, charset = _head(request, who)
    store: RebookingStore = request.app[STORE_KEY]
    read: CsvCatalog | None = None
    if request.content_type in CSV_CONTENT_TYPES:
        try:
            known = {item.sku for item in (await store.catalog()).items}
            read = parse_csv(await request.read(), known, charset=charset)
            if read.refused and not partial:
                raise CatalogCsvError(read.refused, good=read.taken)
        except CatalogCsvError as err:
            log.info("%s %s sent a catalog CSV the hub refused: %s", who.role, who.agent_id, err.summary)
            return csv_refusal(err)
        items = read.items
    else:
        items = parse_items(await _json_body(request))
        looks = LookAlikes({item.sku for item in (await store.catalog()).items})
        for i, item in enumerate(items):  # a SKU that is no string is the store's to refuse, with its sentence
            if isinstance(item.sku, str) and (alike := looks.problem(item.sku, f"items[{i}]")) is not None:
                raise InvalidInput(f"items[{i}]: {alike}; nothing was written")
    update = await store.put_catalog(items)
    rebooked = await rebook(store, items)
    refused = f", {len(read.refused):,} row(s) refused" if read is not None and read.refused else ""
    log.info(
        "%s %s wrote %d catalog item(s): %d changed, version %d, %d movement(s) re-booked%s",
        who.role,
        who.agent_id,
        len(items),
        update.updated,
        update.version,
        rebooked,
        refused,
    )
    body: dict[str, Any] = {"version": update.version, "updated": update.updated, "rebooked": rebooked}
    if read is not None:
        body |= {
            "rows": read.rows,
            "imported": read.taken,
            "refused_count": len(read.refused),
            "refused": [{"line": p.line, "column": p.column, "reason": p.reason} for p in read.refused],
            "refused_csv": refused_csv(read.refused) if read.refused else "",
        }
    return web.json_response(body, dumps=views.dumps, headers={"ETag": etag(update.version, store.feed_history)})


def _check_head(request: web.Request, who: AgentIdentity) -> None:
    _head(request, who)


def _head(request: web.Request, who: AgentIdentity) -> tuple[bool, csvtext.Charset | None]:
    """What ``put_catalog`` refuses before it reads the body, asked of a head too (hub.heads); whether it is to
    take a CSV's good rows (``?partial=true``), and the charset a CSV body is declared in (None: UTF-8)."""
    heads.refuse(role_refused(who, {ROLE_ADMIN}, "change the catalog"))
    partial = partial_param(views.Query(request, {PARTIAL_PARAM}))
    if request.content_type not in CSV_CONTENT_TYPES:
        return partial, None
    try:
        label = csvtext.declared(request.headers.get("Content-Type"))
        if label is None:
            return partial, None
        return partial, csvtext.lookup(label, "the Content-Type's charset", CHARSETS_LISTED)
    except csvtext.CharsetRefused as err:
        raise CharsetUnsupported(f"{err}; nothing was imported") from None


class CharsetUnsupported(web.HTTPUnsupportedMediaType):
    """The 415 for a CSV body in a charset the hub does not read (hub.csvtext), its ``charsets`` member listing
    every one it does (hub.heads.problem_of)."""

    def __init__(self, detail: str) -> None:
        super().__init__(text=detail)
        self.problem_members = {"charsets": list(csvtext.accepted())}


def item_json(item: CatalogItem) -> dict[str, Any]:
    return {"barcode": item.barcode, "sku": item.sku, "pack_size": item.pack_size, "description": item.description}


def parse_items(body: Any) -> list[CatalogItem]:
    """The items of a PUT body, shape-checked (their values are checked by the store)."""
    if not isinstance(body, dict) or set(body) != {"items"} or not isinstance(body["items"], list):
        raise web.HTTPBadRequest(text='the body must be a JSON object {"items": [...]}')
    out: list[CatalogItem] = []
    for i, raw in enumerate(body["items"]):
        if not isinstance(raw, dict):
            raise web.HTTPBadRequest(text=f"items[{i}] must be an object with barcode, sku, pack_size, description")
        unknown = sorted(set(raw) - ITEM_FIELDS)
        missing = sorted(ITEM_REQUIRED - set(raw))
        if unknown or missing:
            problem = f"unknown field(s) {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
            raise web.HTTPBadRequest(text=f"items[{i}] has {problem}; it takes barcode, sku, pack_size, description")
        pack_size = views.whole(raw.get("pack_size", 1))  # 12.0 is the JSON number 12
        out.append(CatalogItem(raw["barcode"], raw["sku"], pack_size, raw.get("description", "")))
    return out


async def _json_body(request: web.Request) -> Any:
    try:
        return views.loads(await request.read())
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err


# --- CSV ----------------------------------------------------------------------------------------------------

CSV_CONTENT_TYPES = frozenset({"text/csv", "application/csv"})
CSV_HEADER = ("barcode", "sku", "pack_size", "description")
PROBLEM_COLUMN = "problem"  # the refused rows' file names why in it; an import leaves it aside
REFUSED_HEADER = (PROBLEM_COLUMN, *CSV_HEADER)
COLUMN_NAMES = {  # a header cell, lower-cased with spaces as "_" → the column it names
    "barcode": "barcode", "gtin": "barcode", "ean": "barcode", "upc": "barcode",
    "sku": "sku",
    "pack_size": "pack_size", "pack": "pack_size",
    "description": "description", "name": "description",
    PROBLEM_COLUMN: PROBLEM_COLUMN,
}  # fmt: skip
PROBLEMS_SHOWN = 100  # row problems named in one refusal
REFUSED_MAX = 10_000  # refused rows one PUT names; past it the file is taken for another one and refused whole
LINES_NAMED = 5  # lines of one barcode named in a sentence
COLUMNS_NAMED = 10  # unknown header names named in a sentence
EXCEL_NUMBER_RE = re.compile(r"\d(?:[.,]\d+)?E\+\d+", re.IGNORECASE)  # what Excel makes of a long barcode
ITEM_PREFIX_RE = re.compile(r"^items\[0\]\.")
SPACES_RE = re.compile(r"\s+")
LINE_END_RE = re.compile(r"\r\n|\r|\n")
ITEM_COLUMN_RE = re.compile(r"^items\[0\]\.(barcode|sku|pack_size|description)\b")
PARTIAL_PARAM = "partial"
CHARSETS_LISTED = " (the answer's charsets lists every one)"


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int  # the file's line the row starts on (1: the header)
    reason: str
    column: str | None = None  # the catalog column at fault (barcode, sku, pack_size, description); None: the row
    cells: tuple[str, ...] = ()  # the row as read: barcode, sku, pack_size, description, then any field too many


@dataclass(frozen=True, slots=True)
class CsvCatalog:
    """What a catalog CSV holds: the items to write, and every row refused (by line), so that each data row of
    the file is either taken or refused: ``rows == taken + len(refused)``."""

    items: list[CatalogItem]
    rows: int
    taken: int
    refused: tuple[RowProblem, ...]


class CatalogCsvError(HubError):
    """A catalog CSV that cannot be imported; ``problems`` names its bad rows (up to ``PROBLEMS_SHOWN``).

    ``file_level``: the file itself cannot be used (its header, its text, its size), so no row can be taken;
    else ``good`` rows could have been (``PUT /v1/catalog?partial=true`` takes them)."""

    def __init__(
        self, problems: Sequence[RowProblem], total: int | None = None, *, good: int = 0, file_level: bool = False,
        stopped_at: int | None = None,
    ) -> None:  # fmt: skip
        self.problems = tuple(problems[:PROBLEMS_SHOWN])
        self.total = len(problems) if total is None else total
        self.file_level = file_level
        shown = "; ".join(f"line {p.line}: {p.reason}" for p in self.problems)
        more = f"; and {self.total - len(self.problems):,} more" if self.total > len(self.problems) else ""
        rows = "row" if self.total == 1 else "rows"
        if stopped_at is not None:
            self.summary = (
                f"more than {REFUSED_MAX:,} rows cannot be used (the file was read up to line {stopped_at:,})"
            )
            super().__init__(
                f"{self.summary}, so nothing was imported: check that it is the catalog, with its columns named in its "
                f"first line, and send it again; the first of them: {shown}{more}"
            )
            return
        if file_level:
            self.summary = "the file cannot be read"
        else:
            self.summary = f"{self.total:,} {rows} cannot be used"
        hint = ""
        if good and not file_level:
            hint = (
                f" or send it with ?{PARTIAL_PARAM}=true to import the {good:,} good rows and get the refused ones back"
            )
        super().__init__(
            f"{self.summary}, so nothing was imported (fix them and send the file again{hint}): {shown}{more}"
        )


def csv_refusal(err: CatalogCsvError) -> web.Response:
    problems = [{"line": p.line, "column": p.column, "reason": p.reason} for p in err.problems]
    return problem_details.response(400, str(err), problems=problems, problem_count=err.total)


def refused_csv(refused: Sequence[RowProblem]) -> str:
    """The refused rows as a CSV file to fix and import again: each row's sentence in a ``problem`` column first
    (an import leaves that column aside), then its cells as the import read them, guarded as every CSV the hub
    writes is (``hub.csvexport``: no formula runs when a spreadsheet opens it)."""
    rows = [REFUSED_HEADER, *((f"line {p.line}: {p.reason}", *p.cells) for p in refused)]
    return csvexport.encode(rows).decode("utf-8")


def partial_param(query: views.Query) -> bool:
    """``?partial=``: ``true`` takes a CSV's good rows and lists the refused ones; ``false`` (the default) is all or
    nothing."""
    raw = query.raw(PARTIAL_PARAM)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise web.HTTPBadRequest(
        text=f"{PARTIAL_PARAM} must be true or false, got {values.shown(raw, values.QUOTE_MAX_CHARS)}"
    )


def _columns(header: list[str]) -> list[str]:
    named = [re.sub(r"\s+", "_", c.strip().lower()) for c in header]
    columns = [COLUMN_NAMES.get(c, "") for c in named]
    unknown = [header[i].strip() for i, c in enumerate(columns) if not c]
    problems = []
    if unknown:
        shown = ", ".join(values.shown(u, 40, bare=True) for u in unknown[:COLUMNS_NAMED])
        more = f" and {len(unknown) - COLUMNS_NAMED:,} more" if len(unknown) > COLUMNS_NAMED else ""
        problems.append(
            f"the header names column(s) the catalog does not take: {shown}{more}; it takes {', '.join(CSV_HEADER)} "
            "(remove the others)"
        )
    twice = sorted(c for c, n in Counter(columns).items() if c and n > 1)
    if twice:
        problems.append(f"the header names {', '.join(twice)} more than once")
    missing = [c for c in ("barcode", "sku") if c not in columns]
    if missing:
        problems.append(
            f"the header has no {' and no '.join(missing)} column; the first line must name the columns, "
            f"e.g. {','.join(CSV_HEADER)}"
        )
    if problems:
        raise CatalogCsvError([RowProblem(1, "; ".join(problems))], file_level=True)
    return columns


def _header_again(row: list[str]) -> list[str] | None:
    """The columns a header row met after the first one names (its cells all column names, barcode and sku among
    them, none twice), or None for a row of data."""
    named: list[str] = []
    for cell in row:  # a row of data fails at its first cell, which most often needs no regular expression
        if not cell.strip():
            named.append("")
            continue
        key = cell.strip().lstrip("\ufeff").strip().lower()
        name = COLUMN_NAMES.get(key)
        if name is None and not key.replace("_", "").isalnum():
            name = COLUMN_NAMES.get(SPACES_RE.sub("_", key))
        if name is None:
            return None
        named.append(name)
    cells = [n for n in named if n]
    if len(set(cells)) != len(cells) or not {"barcode", "sku"} <= set(cells):
        return None
    return named


def _item(fields: dict[str, str]) -> CatalogItem:
    """One row's item, or ``RowInvalid`` saying what is wrong with it (the store's rule, hub.storage.checks)."""
    barcode = uncell(fields.get("barcode", ""))
    sku = uncell(fields.get("sku", ""))
    if EXCEL_NUMBER_RE.fullmatch(barcode):
        raise RowInvalid(
            "barcode",
            f"barcode {barcode} is a number a spreadsheet rounded (scientific notation); format the barcode "
            "column as Text and copy the barcodes in again",
        )
    raw_pack = fields.get("pack_size", "").strip()
    if raw_pack and not (raw_pack.isascii() and raw_pack.isdigit() and len(raw_pack) <= 9):
        raise RowInvalid(
            "pack_size",
            f"pack_size must be a whole number of units from 1 to {PACK_SIZE_MAX:,}, got {values.shown(raw_pack, 20)}",
        )
    pack = int(raw_pack) if raw_pack else 1
    item = CatalogItem(barcode, sku, pack, uncell(fields.get("description", "")))
    try:
        check_catalog_items([item])
    except InvalidInput as err:
        column = ITEM_COLUMN_RE.match(str(err))
        raise RowInvalid(column[1] if column else None, ITEM_PREFIX_RE.sub("", str(err))) from None
    return item


class RowInvalid(InvalidInput):
    """A row that cannot be an item, and the column at fault (None: the row as a whole)."""

    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column


def _stray_quote(err: csv.Error) -> str:
    return (
        f'the row cannot be read ({err}): a double quote inside a field must be doubled (""), so to keep one, '
        'double it ("") and put the whole field in double quotes, e.g. "12"" mug"'
    )


class _Lines:
    """The lines of a text as the csv reader counts them (ended by \\n, \\r\\n or \\r), found once, when first
    asked for."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._starts: list[int] | None = None

    def get(self, first: int, last: int) -> str:
        """Lines ``first`` to ``last`` (1-based), joined by \\n."""
        if self._starts is None:
            self._starts = [0, *(m.end() for m in LINE_END_RE.finditer(self._text))]
        lines = self._text[self._starts[first - 1] : self._starts[min(last, len(self._starts) - 1)]]
        return "\n".join(LINE_END_RE.split(lines.rstrip("\r\n")))


def _unreadable(err: csv.Error) -> str:
    """Why the reader stopped, in words (a field is never over its limit: ``parse_csv`` raises it to the file's
    length, so a huge field is one row's problem)."""
    return f"{err}; a field that starts with a double quote must end with one"


class LookAlikes:
    """The SKUs met so far by their look (``protocol.catalog.sku_look``): a SKU that looks like one of them and is
    spelt otherwise is another SKU nobody can tell apart on a screen or a label."""

    def __init__(self, known_skus: Collection[str]) -> None:
        self._looks: dict[str, tuple[str, str]] = {sku_look(sku): (sku, "the catalog") for sku in known_skus}

    def problem(self, sku: str, where: str) -> str | None:
        """The sentence refusing ``sku`` (met at ``where``) when it looks like another SKU met before; else None,
        and it is met."""
        spelt = self._looks.setdefault(sku_look(sku), (sku, where))
        if spelt[0] == sku:
            return None
        return look_alike(sku, spelt[0], spelt[1])


def look_alike(sku: str, other: str, where: str, fix: str | None = None) -> str:
    return (
        f"sku {values.shown(sku, values.QUOTE_MAX_CHARS)} looks like the SKU {other} of {where} but is another "
        f"(invisible or full-width characters in it); {fix or f'write it as {other}'}, or as a SKU that looks like "
        "no other"
    )


def _lines(lines: Sequence[int]) -> str:
    named = [f"{n:,}" for n in lines[:LINES_NAMED]]
    if len(lines) > LINES_NAMED:
        return f"lines {', '.join(named)} and {len(lines) - LINES_NAMED:,} more"
    return f"lines {', '.join(named[:-1])} and {named[-1]}"


def _cells(columns: list[str], row: list[str]) -> tuple[str, ...]:
    """A row's cells in the catalog's columns (then any field past the header's), each as the import reads it."""
    fields = dict(zip(columns, row, strict=False))
    named = tuple(uncell(fields.get(c, "")) for c in CSV_HEADER)
    return named + tuple(uncell(c) for c in row[len(columns) :])


def _item_cells(item: CatalogItem) -> tuple[str, ...]:
    return (item.barcode, item.sku, str(item.pack_size), item.description)


def parse_csv(
    data: bytes, known_skus: Collection[str] = (), *, max_items: int | None = CATALOG_ITEMS_MAX,
    max_refused: int | None = REFUSED_MAX, charset: csvtext.Charset | None = None, how_to_name: str = "charset=",
) -> CsvCatalog:  # fmt: skip
    """The rows of a catalog CSV (a header row naming barcode, sku and optionally pack_size, description; comma,
    semicolon or tab separated): the items of its good rows, and every row refused with its line, column and why.

    A row is refused by the store's rule for one item, and for what rows say together, whatever their order: the
    same barcode with other content on two rows refuses both (which one is right, no one said); a SKU that only
    looks like another of the file or of ``known_skus`` (the catalog's: ``protocol.catalog.sku_look``) refuses
    the row of the odd spelling — the catalog's spelling stands, else the file's plain one (as it looks), else
    every spelling of that look is refused. ``CatalogCsvError`` when the file itself cannot be used: not text, no
    header, unreadable quoting, more than ``max_items`` barcodes, or more than ``max_refused`` refused rows (read
    no further: such a file is not this catalog). The file is text in ``charset``, else UTF-8 or UTF-16 with its
    byte-order mark (``hub.csvtext``; ``how_to_name``: how the sender names a charset, in the sentence refusing a
    file that is not UTF-8)."""
    try:
        text = csvtext.text_of(data, charset, how_to_name=how_to_name)
    except csvtext.TextUnreadable as err:
        raise CatalogCsvError([RowProblem(err.line, err.reason)], file_level=True) from None
    first_line = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first_line), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    refused: list[RowProblem] = []
    firsts: dict[str, tuple[int, CatalogItem]] = {}  # the good rows by barcode: its first line and item
    repeats: dict[str, list[tuple[int, CatalogItem]]] = {}  # and the later rows of a barcode, if any
    conflicts: dict[str, None] = {}  # the barcodes with other content on another row (in order): rows refused
    conflicting = 0  # those rows
    columns: list[str] | None = None
    rows = 0
    line = 1
    raw_lines = _Lines(text)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # a huge field is one row's
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:  # a quote inside a field: that row alone (the reader goes on at the next line)
                if columns is None or "end of data" in str(err):  # the header, or a quote never closed: the rest
                    raise
                start, line = line, reader.line_num + 1
                rows += 1
                raw = raw_lines.get(start, reader.line_num)
                try:  # its cells as a lenient reader sees them, for the refused rows' file
                    lenient = next(csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter), [raw])
                except csv.Error:
                    lenient = [raw]
                refused.append(RowProblem(start, _stray_quote(err), None, _cells(columns, lenient)))
                continue
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns = _columns(row)
                continue
            again = _header_again(row)
            if again is not None:  # files joined (cat a.csv b.csv): the rows after it are in its columns
                columns = again
                continue
            rows += 1
            if len(row) > len(columns):
                refused.append(
                    RowProblem(
                        start,
                        f"the row has {len(row)} fields but the header names "
                        f"{len(columns)}; a field holding {delimiter!r} must be in double quotes",
                        None, _cells(columns, row),
                    )
                )  # fmt: skip
            else:
                try:
                    item = _item(dict(zip(columns, row, strict=False)))
                except RowInvalid as err:
                    refused.append(RowProblem(start, str(err), err.column, _cells(columns, row)))
                else:
                    held = firsts.get(item.barcode)
                    if held is None:
                        firsts[item.barcode] = (start, item)
                        if max_items is not None and len(firsts) > max_items:
                            raise CatalogCsvError(
                                [RowProblem(start, f"the file holds more than {max_items:,} barcodes; send at most "
                                            f"{max_items:,} per request (shelfsync-hub catalog import splits it)")],
                                file_level=True,
                            )  # fmt: skip
                    else:
                        later = repeats.setdefault(item.barcode, [])
                        later.append((start, item))
                        if item.barcode in conflicts:
                            conflicting += 1
                        elif held[1] != item:
                            conflicts[item.barcode] = None
                            conflicting += 1 + len(later)
            if max_refused is not None and len(refused) + conflicting > max_refused:
                for barcode in list(conflicts)[:PROBLEMS_SHOWN]:
                    refused += _conflict(barcode, [firsts[barcode], *repeats[barcode]])[:PROBLEMS_SHOWN]
                refused.sort(key=lambda p: p.line)
                raise CatalogCsvError(refused, max_refused + 1, file_level=True, stopped_at=start)
    except csv.Error as err:  # a quote never closed: the rest cannot be read as rows
        raise CatalogCsvError([RowProblem(line, _unreadable(err))], file_level=True) from None
    finally:
        csv.field_size_limit(old_limit)
    if columns is None:
        raise CatalogCsvError(
            [RowProblem(1, f"the file is empty; the first line must name the columns, e.g. {','.join(CSV_HEADER)}")],
            file_level=True,
        )
    items: dict[str, CatalogItem] = {}
    for barcode, (line, item) in firsts.items():
        if barcode not in conflicts:
            items[barcode] = item
    for barcode in conflicts:
        refused += _conflict(barcode, [firsts[barcode], *repeats[barcode]])

    def item_lines(barcode: str) -> list[int]:
        return [firsts[barcode][0], *(n for n, _ in repeats.get(barcode, ()))]

    known = known_skus if isinstance(known_skus, (set, frozenset)) else frozenset(known_skus)
    refused += _look_alikes(items, item_lines, known)
    refused.sort(key=lambda p: p.line)
    return CsvCatalog(list(items.values()), rows, rows - len(refused), tuple(refused))


def _conflict(barcode: str, rows: Sequence[tuple[int, CatalogItem]]) -> list[RowProblem]:
    """The rows of a barcode found with other content on another row: each refused (which one is right, no one
    said)."""
    why = (
        f"barcode {values.shown(barcode, values.QUOTE_MAX_CHARS, bare=True)} is on {_lines([n for n, _ in rows])} "
        "with another SKU, pack size or description; keep one of them"
    )
    return [RowProblem(n, why, "barcode", _item_cells(item)) for n, item in rows]


def _look_alikes(
    items: dict[str, CatalogItem], item_lines: Callable[[str], list[int]], known_skus: Collection[str]
) -> list[RowProblem]:
    """The rows whose SKU only looks like another's (``parse_csv``), each taken out of ``items``. An ASCII SKU looks
    as it is spelt, so only the looks of the others are worked out (a catalog of a million plain SKUs costs no
    second copy of them)."""
    catalog_odd = {sku_look(sku): sku for sku in known_skus if not sku.isascii()}
    relevant = {sku_look(item.sku) for item in items.values() if not item.sku.isascii()} | catalog_odd.keys()
    if not relevant:
        return []

    def look_of(sku: str) -> str:
        return sku if sku.isascii() else sku_look(sku)

    spellings: dict[str, dict[str, int]] = {}  # look → spelling → its first line in the file
    for barcode, item in items.items():
        if (look := look_of(item.sku)) in relevant:
            first, line = spellings.setdefault(look, {}), item_lines(barcode)[0]
            first[item.sku] = min(first.get(item.sku, line), line)
    out: list[RowProblem] = []
    for barcode, item in list(items.items()):
        look = look_of(item.sku)
        spelt = spellings.get(look)
        if spelt is None:
            continue
        in_catalog = look if look in known_skus else catalog_odd.get(look)
        if in_catalog is not None:
            right, where = in_catalog, "the catalog"
        elif len(spelt) == 1:
            continue
        elif look in spelt:
            right, where = look, f"line {spelt[look]:,}"
        else:
            right, where = None, ""
        if item.sku == right:
            continue
        if right is None:
            other = min((s for s in spelt if s != item.sku), key=spelt.__getitem__)
            why = look_alike(item.sku, other, f"line {spelt[other]:,}", "write both as the SKU they look like")
        else:
            why = look_alike(item.sku, right, where)
        out += [RowProblem(n, why, "sku", _item_cells(item)) for n in item_lines(barcode)]
        del items[barcode]
    return out


async def catalog_csv(request: web.Request) -> web.StreamResponse:
    """The whole catalog as CSV (barcode, sku, pack_size, description), ordered by barcode."""
    views.Query(request, {"format"})
    catalog = await request.app[STORE_KEY].catalog()

    async def pages() -> AsyncIterator[list[Sequence[object]]]:
        rows = catalog.items
        for start in range(0, len(rows), csvexport.PAGE_ROWS):
            yield [(i.barcode, i.sku, i.pack_size, i.description) for i in rows[start : start + csvexport.PAGE_ROWS]]

    return await csvexport.stream(request, csvexport.filename("catalog"), CSV_HEADER, pages())


def routes(app: web.Application) -> None:
    app[KNOWN_BARCODES_KEY] = KnownBarcodes()
    app.router.add_get(CATALOG_PATH, get_catalog, name="catalog")
    heads.add(app, "PUT", CATALOG_PATH, put_catalog, name="catalog_put", check=_check_head)


# --- command line: shelfsync-hub catalog import -------------------------------------------------------------

IMPORT_CHUNK_ROWS = 5_000  # items per write (per PUT with --hub): far below max_body_bytes
IMPORT_TIMEOUT_S = 120.0  # one PUT, re-booking included
ANSWER_MAX_BYTES = 1 << 20  # of the hub's answer read
CATALOG_ANSWER_MAX_BYTES = 1 << 30  # of the hub's catalog read (its SKUs, to check the file against)
ADMIN_TOKEN_ENV = "SHELFSYNC_ADMIN_TOKEN"


class CatalogImportError(HubError):
    """``catalog import`` cannot go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    updated: int
    rebooked: int
    version: int


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """``catalog import`` under ``commands`` (the CLI's subparsers); ``common`` gives --db and --config."""
    cat = commands.add_parser("catalog", help="import the barcode catalog from a CSV file")
    actions = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import",
        parents=[common],
        help="import a catalog CSV (barcode, sku, pack_size, description): its good rows, "
        "and its refused ones written to a file to fix and import",
    )
    imp.add_argument("file", metavar="FILE", help="the CSV file, with a header row ('-': standard input)")
    imp.add_argument("--encoding", metavar="CHARSET", help="the charset the file is saved in, e.g. windows-1252, "
                     "iso-8859-15, shift_jis (default: UTF-8, or UTF-16 with its byte-order mark)")  # fmt: skip
    imp.add_argument(
        "--hub",
        metavar="URL",
        help="send it to the running hub at this address with an admin credential (--token-file, else "
        f"${ADMIN_TOKEN_ENV}); without --hub it is written into the database (--db, or db of the config) directly",
    )
    imp.add_argument("--token-file", metavar="FILE", help=f"a file holding an admin credential for --hub (default: "
                     f"${ADMIN_TOKEN_ENV})")  # fmt: skip
    imp.add_argument("--ca-file", metavar="PEM", help="with --hub: the CA certificate(s) to check the hub's TLS "
                     "certificate with (default: the system's)")  # fmt: skip
    imp.add_argument("--refused", metavar="FILE", help="where to write the rows that cannot be imported, with why, to "
                     "fix and import (default: FILE.refused.csv beside the file; stdin.refused.csv for standard input)")  # fmt: skip
    imp.add_argument("--all-or-nothing", action="store_true", help="import nothing if one row cannot be imported")


def import_command(args: argparse.Namespace, settings_of: Callable[[], HubSettings], out: TextIO, err: TextIO) -> int:
    """Run ``catalog import``: check the whole file first, write its refused rows (if any) to the refused file,
    then write its good rows in chunks with a progress line each (``--all-or-nothing``: nothing at all if a row is
    refused). Returns the exit status (2: nothing or not everything was imported)."""
    name = "standard input" if args.file == "-" else args.file
    charset = None
    if args.encoding is not None:
        try:
            charset = csvtext.lookup(args.encoding, "--encoding", f" or one of {', '.join(csvtext.accepted())}")
        except csvtext.CharsetRefused as error:
            raise CatalogImportError(f"{error}; nothing was imported") from None
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        raise CatalogImportError(f"cannot read {name}: {error.strerror or error}") from error
    refused_path = _refused_path(args.file, args.refused)
    if args.hub is not None:
        problem = url_problem(args.hub)
        if problem:
            raise CatalogImportError(f"--hub {problem}")
        token = _admin_token(args.token_file)
        known = asyncio.run(_hub_catalog_skus(args.hub, token, args.ca_file))
    else:
        if args.token_file is not None or args.ca_file is not None:
            raise CatalogImportError("--token-file and --ca-file go with --hub; leave them out to write to --db")
        known = asyncio.run(_catalog_skus(settings_of().db))
    try:
        read = parse_csv(data, known, max_items=None, max_refused=None, charset=charset, how_to_name="--encoding ")
        if read.refused and args.all_or_nothing:
            raise CatalogCsvError(read.refused, good=read.taken)
    except CatalogCsvError as error:
        err.write(f"shelfsync-hub catalog import: {name}: {error.summary}, so nothing was imported; fix them and "
                  "run the command again:\n")  # fmt: skip
        _write_problems(err, error.problems, error.total)
        return 2
    if read.refused:
        try:
            refused_path.write_text(refused_csv(read.refused), encoding="utf-8", newline="")
        except OSError as error:
            raise CatalogImportError(f"cannot write the refused rows to {refused_path}: {error.strerror or error}; "
                                     "nothing was imported (give --refused FILE)") from error  # fmt: skip
        rows = "row" if len(read.refused) == 1 else "rows"
        err.write(f"shelfsync-hub catalog import: {name}: {len(read.refused):,} {rows} cannot be used; fix them in "
                  f"{refused_path} and import that file:\n")  # fmt: skip
        _write_problems(err, read.refused, len(read.refused))
        err.flush()
    items = read.items

    def progress(done: int) -> None:
        err.write(f"catalog import: {done:,} of {len(items):,} rows written ({done * 100 // max(1, len(items))} %)\n")
        err.flush()

    if args.hub is not None:
        result = asyncio.run(_import_http(args.hub, token, args.ca_file, items, progress))
    else:
        result = asyncio.run(_import_db(settings_of().db, items, progress))
    refused = f"; {len(read.refused):,} row(s) refused, written to {refused_path}" if read.refused else ""
    out.write(
        f"imported {read.taken:,} catalog row(s) from {name}: {result.updated:,} new or changed, catalog version "
        f"{result.version}, {result.rebooked:,} movement(s) of unknown barcodes re-booked{refused}\n"
    )
    return 2 if read.refused else 0


def _write_problems(err: TextIO, problems: Sequence[RowProblem], total: int) -> None:
    shown = problems[:PROBLEMS_SHOWN]
    err.writelines(f"  line {p.line}{f', {p.column}' if p.column else ''}: {p.reason}\n" for p in shown)
    if total > len(shown):
        err.write(f"  and {total - len(shown):,} more\n")


def _refused_path(file: str, refused: str | None) -> Path:
    """Where the refused rows go: ``--refused``, else beside the file as ``NAME.refused.csv`` (never the file
    itself: a refused file imported again writes ``NAME.refused.refused.csv``)."""
    if refused is not None:
        path = Path(refused)
    elif file == "-":
        path = Path("stdin.refused.csv")
    else:
        source = Path(file)
        path = source.with_name(f"{source.stem if source.suffix.lower() == '.csv' else source.name}.refused.csv")
    if file != "-" and path.resolve() == Path(file).resolve():
        raise CatalogImportError(f"--refused {refused} is the file being imported; name another file")
    return path


def _admin_token(token_file: str | None) -> str:
    if token_file is not None:
        source = f"the credential file {token_file}"
        try:
            with open(token_file, "rb") as f:
                secretfiles.warn_if_open(f.fileno(), token_file, "an admin credential")
                token = f.read().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CatalogImportError(f"cannot read the credential file {token_file}: {error}") from error
    else:
        source = ADMIN_TOKEN_ENV
        token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if not token:
        raise CatalogImportError(
            f"--hub needs an admin credential: give --token-file FILE or set {ADMIN_TOKEN_ENV} "
            "(an admin creates one with: shelfsync-hub agent add --role admin)"
        )
    problem = values.token_problem(token)
    if problem:  # it goes into an Authorization header, which cannot hold these; the token itself is never shown
        raise CatalogImportError(f"{source} must hold the admin credential alone on one line; {problem}")
    return token


async def _catalog_skus(db: str) -> set[str]:
    async with open_store(db) as store:
        return {item.sku for item in (await store.catalog()).items}


async def _import_db(db: str, items: list[CatalogItem], progress: Callable[[int], None]) -> ImportResult:
    updated = rebooked = version = 0
    async with open_store(db) as store:
        for start in range(0, len(items), IMPORT_CHUNK_ROWS):
            chunk = items[start : start + IMPORT_CHUNK_ROWS]
            update = await store.put_catalog(chunk)
            rebooked += await rebook(store, chunk)
            updated, version = updated + update.updated, update.version
            progress(start + len(chunk))
        if not items:
            version = await store.catalog_version()
    return ImportResult(len(items), updated, rebooked, version)


def _hub_session(ca_file: str | None) -> aiohttp.ClientSession:
    try:
        tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
    except (OSError, ssl.SSLError) as error:
        raise CatalogImportError(f"--ca-file {ca_file} cannot be used: {error}") from error
    timeout = aiohttp.ClientTimeout(total=IMPORT_TIMEOUT_S)
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=tls or True))


async def _hub_call(
    session: aiohttp.ClientSession, method: str, hub: str, start: int, max_bytes: int, **kwargs: Any
) -> dict[str, Any]:
    """One call of the catalog route; its JSON answer, or ``CatalogImportError`` saying why not (``start``: the
    rows imported before it)."""
    try:
        async with session.request(method, hub.rstrip("/") + CATALOG_PATH, **kwargs) as resp:
            status, got = resp.status, bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):  # one read() gives what arrived so far
                got += chunk
                if len(got) >= max_bytes:
                    break
            raw = bytes(got)
    except (aiohttp.ClientError, TimeoutError) as error:
        why = str(error) or type(error).__name__
        raise CatalogImportError(_http_failure(hub, start, f"it cannot be reached: {why}")) from error
    try:
        answer = views.loads(raw)
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict):
        refusal = answer.get("error") if isinstance(answer, dict) else None  # a hub from before RFC 9457
        message = refusal.get("message") if isinstance(refusal, dict) else None
        if message is None and isinstance(answer, dict):
            message = answer.get("detail")  # problem details (hub.problems)
        why = message or values.shown(raw.decode("utf-8", "replace"), 200) or "no reason given"
        raise CatalogImportError(_http_failure(hub, start, f"HTTP {status}: {why}"))
    return answer


async def _hub_catalog_skus(hub: str, token: str, ca_file: str | None) -> set[str]:
    """The SKUs of the hub's catalog, so that the file is checked against them (look-alikes) before anything is
    sent."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with _hub_session(ca_file) as session:
        answer = await _hub_call(session, "GET", hub, 0, CATALOG_ANSWER_MAX_BYTES, headers=headers)
    items = answer.get("items")
    if not isinstance(items, list):
        raise CatalogImportError(_http_failure(hub, 0, "its catalog has no list of items"))
    return {item["sku"] for item in items if isinstance(item, dict) and isinstance(item.get("sku"), str)}


async def _import_http(
    hub: str, token: str, ca_file: str | None, items: list[CatalogItem], progress: Callable[[int], None]
) -> ImportResult:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    updated = rebooked = version = 0
    async with _hub_session(ca_file) as session:
        for start in range(0, max(1, len(items)), IMPORT_CHUNK_ROWS):
            chunk = items[start : start + IMPORT_CHUNK_ROWS]
            body = views.dumps({"items": [item_json(i) for i in chunk]}).encode()
            answer = await _hub_call(session, "PUT", hub, start, ANSWER_MAX_BYTES, data=body, headers=headers)
            updated += int(answer["updated"])
            rebooked += int(answer["rebooked"])
            version = int(answer["version"])
            progress(start + len(chunk))
    return ImportResult(len(items), updated, rebooked, version)


def _http_failure(hub: str, start: int, why: str) -> str:
    done = f"the first {start:,} rows were imported; importing the file again is safe" if start else (
        "nothing was imported")  # fmt: skip
    return f"the hub at {hub} did not take the catalog ({why}); {done}"
