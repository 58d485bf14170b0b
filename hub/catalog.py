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
re-booking again is answered as duplicates: a no-op. The ledger explains
itself: ``source`` "hub:catalog", ``ref`` the original event id.

Kinds: a count is cancelled by a count of 0 and booked as a count; every other
on-hand movement is cancelled by an adjust and booked as the same kind.
Transfers and reservations keep their own document ref (it pairs them), and
the original id goes to ``attrs["rebooked_from"]`` for every kind.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from aiohttp import web

from hub import views
from hub.auth import ROLE_ADMIN, STORE_KEY, require_role
from hub.storage.base import AgentIdentity, CatalogItem, HubError, HubStore, LedgerRow
from protocol import Kind, ProtocolError, StockEvent, derived_event_id, event_id_hex
from protocol.catalog import is_unknown_sku, unknown_sku

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


def corrections(original: LedgerRow, item: CatalogItem) -> tuple[StockEvent, StockEvent]:
    """The two events that move ``original`` (booked under an unknown barcode) to ``item``'s SKU.

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
            event_id=derived_event_id(original.wall_ms, b"hub:catalog:" + tag + b":" + original.event_id),
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


async def rebook(store: HubStore, items: Collection[CatalogItem]) -> int:
    """Re-book every stored unknown-barcode event of ``items``' barcodes; return how many
    originals were re-booked now (0 when they all were already)."""
    by_key = {unknown_sku(item.barcode): item for item in items}
    if not by_key:
        return 0
    originals = [r for r in await store.unknown_events(list(by_key)) if r.agent_id != HUB_AGENT_ID]
    rebooked = 0
    for start in range(0, len(originals), REBOOK_BATCH_EVENTS):
        events: list[StockEvent] = []
        for original in originals[start : start + REBOOK_BATCH_EVENTS]:
            item = by_key[original.sku]
            try:
                events += corrections(original, item)
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

    async def lookup(self, store: HubStore, skus: Collection[str]) -> list[CatalogItem]:
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
    store = request.app[STORE_KEY]
    try:
        known = await request.app[KNOWN_BARCODES_KEY].lookup(store, wanted)
        return await rebook(store, known) if known else 0
    except HubError as err:
        log.warning("Re-booking unknown barcodes after a sync failed (the next sync retries): %s", err)
        return 0


# --- HTTP -------------------------------------------------------------------


def etag(version: int) -> str:
    return f'"{version}"'


def _matches(if_none_match: str, tag: str) -> bool:
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == tag for c in candidates)


async def get_catalog(request: web.Request) -> web.Response:
    """The whole catalog and its version (ETag); ``If-None-Match`` with the current ETag → 304."""
    views.Query(request, set())
    store = request.app[STORE_KEY]
    tag = etag(await store.catalog_version())
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _matches(if_none_match, tag):
        return web.Response(status=304, headers={"ETag": tag})
    catalog = await store.catalog()
    body = {"version": catalog.version, "items": [item_json(i) for i in catalog.items]}
    return web.json_response(body, dumps=views.dumps, headers={"ETag": etag(catalog.version)})


async def put_catalog(request: web.Request) -> web.Response:
    """Upsert catalog items by barcode (admin), then re-book the scans of barcodes that were unknown."""
    who = require_role(request, {ROLE_ADMIN}, "change the catalog")
    views.Query(request, set())
    items = parse_items(await _json_body(request))
    store = request.app[STORE_KEY]
    update = await store.put_catalog(items)
    rebooked = await rebook(store, items)
    log.info(
        "%s %s wrote %d catalog item(s): %d changed, version %d, %d movement(s) re-booked",
        who.role,
        who.agent_id,
        len(items),
        update.updated,
        update.version,
        rebooked,
    )
    body = {"version": update.version, "updated": update.updated, "rebooked": rebooked}
    return web.json_response(body, dumps=views.dumps, headers={"ETag": etag(update.version)})


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
        out.append(CatalogItem(raw["barcode"], raw["sku"], raw.get("pack_size", 1), raw.get("description", "")))
    return out


async def _json_body(request: web.Request) -> Any:
    try:
        return views.loads(await request.read())
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err


def routes(app: web.Application) -> None:
    app[KNOWN_BARCODES_KEY] = KnownBarcodes()
    app.router.add_get("/v1/catalog", get_catalog, name="catalog")
    app.router.add_put("/v1/catalog", put_catalog, name="catalog_put")
