"""The read routes the dashboard needs beyond the core API: an operations summary and all counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from hub import csvexport, paging, peer_settings, views
from hub.auth import STORE_KEY, identity_of
from hub.clock_window import HUB_CLOCK_RECENT_MS, hub_clock_suspicion
from hub.metrics import events_last_hour
from hub.storage.base import AgentStatus, StoreError
from hub.webhooks import WEBHOOKS_KEY, webhook_statuses
from protocol import wall_ms_now

ONLINE_WITHIN_S = 300  # an agent that synced this recently is shown as online
COUNTS_LIMIT_DEFAULT = 1_000
COUNTS_LIMIT_MAX = 10_000
COUNTS_SKUS_MAX = 500  # sku= parameters of one GET /v1/counts (since API 1.10)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/status", get_status, name="status")
    app.router.add_get("/v1/counts", get_counts, name="counts")


def agent_summary(app: web.Application, r: AgentStatus, now_ms: int) -> dict[str, Any]:
    age_s = None if r.last_sync_ms is None else max(0, now_ms - r.last_sync_ms) // 1000
    return {
        **views.agent_status(r),
        "last_sync_age_s": age_s,
        "online": age_s is not None and age_s <= ONLINE_WITHIN_S and not r.revoked,
        "events_last_hour": events_last_hour(app, r.agent_id),
    }


async def get_status(request: web.Request) -> web.Response:
    """What the dashboard's status strip shows: the database, agents, the feed and the webhooks."""
    views.Query(request, set())
    store = request.app[STORE_KEY]
    now_ms = wall_ms_now()
    try:
        await store.health()
        db: dict[str, Any] = {"ok": True}
    except StoreError as err:
        db = {"ok": False, "error": str(err)}
    agents = await store.agent_status()
    try:
        differ = await peer_settings.settings_differ(request.app)
    except StoreError:  # the database's health above says why
        differ = []
    latest = await store.latest_change_id()
    newest = await store.changes(latest - 1, 1) if latest else []
    return web.json_response(
        {
            "hub_time_ms": now_ms,
            "hub_time": views.iso_ms(now_ms),
            "you": identity_of(request).agent_id,
            "online_within_s": ONLINE_WITHIN_S,
            "db": db,
            "feed": {
                "cursor": str(latest),
                "last_change_ms": newest[0].at_ms if newest else None,
                "last_change": views.iso_ms(newest[0].at_ms) if newest else None,
            },
            "agents": [agent_summary(request.app, r, now_ms) for r in agents],
            "hub_clock": hub_clock(agents, now_ms),
            "settings_differ": differ,
            "webhooks": webhook_statuses(request.app) if WEBHOOKS_KEY in request.app else [],
        },
        dumps=views.dumps,
        headers={"Cache-Control": "no-store"},
    )


def hub_clock(agents: Sequence[AgentStatus], now_ms: int) -> dict[str, Any] | None:
    """Whether the agents that synced lately agree that the hub's own clock is off (hub.clock_window); None: no."""
    skews = {
        r.agent_id: r.clock_skew_ms
        for r in agents
        if r.role == "agent" and not r.revoked and r.clock_skew_ms is not None and r.last_sync_ms is not None
        and abs(now_ms - r.last_sync_ms) <= HUB_CLOCK_RECENT_MS
    }  # fmt: skip
    found = hub_clock_suspicion(skews)
    if found is None:
        return None
    return {"offset_ms": found.offset_ms, "agents": list(found.agents), "asked": found.asked, "message": found.message}


async def get_counts(request: web.Request) -> web.StreamResponse:
    """Counts of every (location, SKU), optionally of one location or of one or more SKUs (``sku`` repeated, at most
    ``COUNTS_SKUS_MAX``); every page as CSV when asked."""
    if csvexport.wants_csv(request):
        return await csvexport.counts(request, {"location", "sku", "limit", "cursor"}, skus_max=COUNTS_SKUS_MAX)
    params = views.Query(request, {"location", "sku", "limit", "cursor"}, repeatable={"sku"})
    body = await paging.counts_page(
        request, params, COUNTS_LIMIT_DEFAULT, COUNTS_LIMIT_MAX,
        location=params.location(), skus=params.skus(COUNTS_SKUS_MAX),
    )  # fmt: skip
    return web.json_response(body, dumps=views.dumps)
