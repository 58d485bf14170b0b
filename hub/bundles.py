"""Bundles and kits over HTTP: an admin sets a bundle's recipe, any credential reads them.

* ``PUT /v1/bundles/{sku}`` (admin): ``{"components": {"A": 2, "C": 1}}`` — the bundle SKU is made of
  those component SKUs × units. Each change is a new recipe version that applies to the movements the hub
  stores from then on; those stored before keep how they were booked. The same recipe again changes nothing.
* ``GET /v1/bundles``: every bundle as it stands, by SKU, a page at a time (``next``/``cursor``). Its ETag
  names the bundles' version (``HubStore.bundles_version``, raised with every bundle change) and the page, so an
  unchanged page's ``304`` reads one row, not every bundle: agents ask for the list every minute.
* ``GET /v1/bundles/{sku}``: one bundle and every version of its recipe; its ETag names the bundles' version and
  the SKU (``bundle_etag``), so its ``304`` too reads one row, not the bundle and its versions.

The hub books each movement of a bundle on its parts and keeps a bundle's counts at every location from
its parts' (hub.storage.ingest, hub.resolver), so ``/v1/skus/{sku}/counts``, the change feed and the
channels serve a bundle like any SKU. docs/hub-api.md ("Bundles") and docs/design.md ("Bundles and kits").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web

from hub import etag, heads, paging, views
from hub.auth import ROLE_ADMIN, STORE_KEY, identity_of, role_refused
from hub.storage.base import AgentIdentity, Bundle, BundleConflict, BundleRecipe, HubStore
from protocol import values
from protocol.routes import BUNDLES_PATH

log = logging.getLogger(__name__)

ROUTE = "bundles"
LIMIT_DEFAULT = 100
LIMIT_MAX = 1_000
BODY_EXAMPLE = '{"components": {"A": 2, "C": 1}}'
ETAG_FORM = "bundles/1"  # in a page's ETag: change it with the answer's shape, so a kept page is not taken for it
ONE_ETAG_FORM = "bundle/1"  # the same, in one bundle's ETag


def recipe_json(r: BundleRecipe) -> dict[str, Any]:
    return {
        "sku": r.sku,
        "version": r.version,
        "valid_from_ms": r.valid_from_ms,
        "valid_from": views.iso_ms(r.valid_from_ms),
        "components": dict(r.components),
        "set_by": r.set_by,
    }


def bundle_json(b: Bundle) -> dict[str, Any]:
    """A bundle as it stands: its recipe in force, and ``parts``: what one of it moves (plain SKUs)."""
    return recipe_json(b.recipe) | {"parts": dict(b.parts)}


def parse_components(body: Any) -> Mapping[str, Any]:
    """The components of a PUT body, shape-checked (the store checks their values)."""
    if not isinstance(body, dict) or set(body) != {"components"} or not isinstance(body["components"], dict):
        raise web.HTTPBadRequest(
            text="the body must be a JSON object with one field, components: component SKU -> units, "
            f"e.g. {BODY_EXAMPLE}"
        )
    components: dict[str, Any] = {sku: views.whole(units) for sku, units in body["components"].items()}  # 2.0 is 2
    return components


def _head(request: web.Request, who: AgentIdentity) -> None:
    """What ``put_bundle`` refuses before it reads the body, asked of a head too (hub.heads)."""
    heads.refuse(role_refused(who, {ROLE_ADMIN}, "set a bundle's recipe"))
    views.Query(request, set())
    views.sku_param(request.match_info["sku"])


async def put_bundle(request: web.Request) -> web.Response:
    """Set a bundle's recipe (admin); 409 when it would put a bundle inside itself or the SKU holds stock."""
    who = identity_of(request)
    _head(request, who)
    sku = views.sku_param(request.match_info["sku"])
    try:
        body = views.loads(await request.read())
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
    components = parse_components(body)
    try:
        bundle, changed = await request.app[STORE_KEY].put_bundle(sku, components, who.agent_id)
    except BundleConflict as err:
        log.info("refused a recipe for bundle %s from %s: %s", sku, who.agent_id, err)
        raise web.HTTPConflict(text=f"{err}; the recipe was not changed") from err
    return web.json_response({"bundle": bundle_json(bundle), "changed": changed}, dumps=views.dumps)


async def get_bundles(request: web.Request) -> web.Response:
    """Every bundle as it stands, by SKU, a page at a time; ``If-None-Match`` with the page's ETag → 304, from the
    bundles' version alone."""
    params = views.Query(request, {"limit", "cursor"})
    after = _after(request)
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    store: HubStore = request.app[STORE_KEY]
    # The version is read before the page: a change in between gives the new page the old version's tag, which
    # the next request misses (one answer more), never an old page under the new version's tag.
    tag = page_etag(store.feed_history, await store.bundles_version(), after, limit)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and etag.matches(if_none_match, tag):
        return etag.not_modified(tag)
    rows = await store.bundles(after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return web.json_response(
        {
            "bundles": [bundle_json(b) for b in rows],
            "next": paging.encode(ROUTE, [rows[-1].recipe.sku]) if more else None,
        },
        dumps=views.dumps,
        headers={"ETag": tag},
    )


def page_etag(history: str, version: int, after: str | None, limit: int) -> str:
    """The strong ETag of one page of ``GET /v1/bundles``: what determines its bytes — the bundles' version and
    the page asked for — and the database's feed history (``hub.storage.feed``), which a restored backup changes:
    a restored database's version goes on from an older number, and may reach the same numbers with other bundles."""
    return etag.tag_of(json.dumps([ETAG_FORM, history, version, after, limit]).encode())


async def get_bundle(request: web.Request) -> web.Response:
    """One bundle as it stands and every version of its recipe, oldest first; ``If-None-Match`` with its ETag →
    304, from the bundles' version alone (read before the bundle, as for the list)."""
    views.Query(request, set())
    sku = views.sku_param(request.match_info["sku"])
    store: HubStore = request.app[STORE_KEY]
    tag = bundle_etag(store.feed_history, await store.bundles_version(), sku)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _names(if_none_match, tag):
        return etag.not_modified(tag)
    found = await store.bundles(sku=sku, limit=1)
    if not found:
        raise web.HTTPNotFound(
            text=f"{values.shown(sku)} is not a bundle; PUT /v1/bundles/{{sku}} with its components makes it one"
        )
    versions = await store.bundle_versions(sku)
    return web.json_response(
        {"bundle": bundle_json(found[0]), "versions": [recipe_json(r) for r in versions]},
        dumps=views.dumps,
        headers={"ETag": tag},
    )


def bundle_etag(history: str, version: int, sku: str) -> str:
    """The strong ETag of ``GET /v1/bundles/{sku}``: its recipes and parts change only with the bundles' version
    (every change to them raises it, migration 008); the feed history for a restored database, as ``page_etag``."""
    return etag.tag_of(json.dumps([ONE_ETAG_FORM, history, version, sku]).encode())


def _names(if_none_match: str, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` itself; ``*`` is left to the answer read (a SKU that is no bundle
    has no representation, and is answered 404, not 304)."""
    named = ", ".join(c for c in if_none_match.split(",") if c.strip() != "*")
    return bool(named) and etag.matches(named, tag)


def _after(request: web.Request) -> str | None:
    def read(cursor: str) -> str:
        fields = paging.decode(ROUTE, cursor)
        if len(fields) != 1 or values.SKU.problem(fields[0]) is not None:
            raise paging.BadCursor
        sku: str = fields[0]
        return sku

    after: str | None = paging.parse(request, read, "the bundles")
    return after


def setup(app: web.Application) -> None:
    app.router.add_get(BUNDLES_PATH, get_bundles, name="bundles")
    app.router.add_get("/v1/bundles/{sku}", get_bundle, name="bundle")
    heads.add(app, "PUT", "/v1/bundles/{sku}", put_bundle, name="bundle_put", check=_head)


async def bundle_parts_of(feed: object, skus: Collection[str]) -> dict[str, dict[str, int]]:
    """The bundles that are, or are made of, one of ``skus``, with their parts (plain SKU -> units per
    bundle), when ``feed`` is a hub store; {} otherwise. For a channel pusher (hub.channels.pusher): a
    change to a part moves the level of every bundle made of it."""
    if isinstance(feed, HubStore) and skus:
        return await feed.bundle_parts(skus)
    return {}
