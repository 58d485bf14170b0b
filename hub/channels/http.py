"""The channels' HTTP routes, and running the channels beside the app (docs/hub-api.md, "Channels").

* ``GET /v1/channels`` (reader, admin): where each channel stands — connected,
  last push, lag, queue, throttle, last error, divergences open, refused
  levels, unmapped SKUs, last reconciliation;
* ``GET /v1/channels/{name}/divergences`` (reader, admin): the divergences
  reconciliation found, newest first, a page at a time (``next``/``cursor``);
* ``POST /v1/channels/{name}/mapping/refresh`` (admin): load the SKU mapping
  again and push every mapped level once;
* ``POST /v1/channels/{name}/reconcile`` (admin): read the channel's levels
  back now.

Both admin routes run their work as work of the channel's job on this hub (``runner.run_asked``).

``setup`` registers the routes whether or not channels are configured (an
unknown name is a 404) and, when some are, runs their pushers and reconcilers
(``hub.channels.runner``) while the app runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from hub import feed, heads, paging, views
from hub.auth import STORE_KEY, identity_of, require_role, role_refused
from hub.channels.config import NAME_RE, ChannelSpec
from hub.channels.connector import ChannelRejected, ChannelUnavailable
from hub.channels.mapping import MappingError
from hub.channels.orders import ID_MAX_LEN as WEBHOOK_ID_MAX_LEN
from hub.channels.pusher import SALE_PREFIX, ChannelPusher
from hub.channels.runner import NotDone, channel_pushers, pushes_here, reconcile_asked, refresh_asked
from hub.channels.square import ADJUSTMENT_ID_MAX_LEN
from hub.channels.state import Divergence, Reconciled, RefusedOrder
from hub.leases import LOCKS_KEY, share_locks
from hub.storage.base import AgentIdentity
from protocol import values, wall_ms_now

log = logging.getLogger(__name__)

READ_ROLES = frozenset({"reader", "admin"})
DISMISS_PATH = "/v1/channels/{name}/orders/{order_id}/dismiss"
UNDISMISS_PATH = "/v1/channels/{name}/orders/{order_id}/undismiss"
# The id of a refused order a channel holds: a Square order's, as its webhook named it (hub.channels.orders.ID_MAX_LEN),
# or a register sale's listed as ``sale:`` and Square's adjustment id (hub.channels.square.ADJUSTMENT_ID_MAX_LEN)
ORDER_ID_MAX_LEN = max(WEBHOOK_ID_MAX_LEN, len(SALE_PREFIX) + ADJUSTMENT_ID_MAX_LEN)
ORDER_ID = values.TextField("channel order id", ORDER_ID_MAX_LEN, path_segment=True)
ADMIN_ROLES = frozenset({"admin"})
DIVERGENCES_LIMIT_DEFAULT = 100
DIVERGENCES_LIMIT_MAX = 1_000
UNMAPPED_LISTED_MAX = 1_000  # the unmapped SKUs named per channel (the count is exact)
FINDINGS_ANSWERED_MAX = 100  # mapping findings in a refresh's answer (all are stored and logged)


class Channels:
    """The configured channels and, while the app runs, their pushers."""

    def __init__(self, specs: Sequence[ChannelSpec], db_path: str, db_timeout_s: float | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.db_path = db_path
        self.db_timeout_s = db_timeout_s
        self.pushers: dict[str, ChannelPusher] = {}


CHANNELS_KEY = web.AppKey("channels", Channels)


def setup(app: web.Application, specs: Sequence[ChannelSpec], db_path: str, db_timeout_s: float | None = None) -> None:
    """The channel routes; with ``specs``, each channel's pusher and reconciler while the app runs (``db_timeout_s``:
    the hub's, for the channel state's connections)."""
    app[CHANNELS_KEY] = Channels(specs, db_path, db_timeout_s)
    r = app.router
    r.add_get("/v1/channels", get_channels, name="channels")
    r.add_get("/v1/channels/{name}/divergences", get_divergences, name="channel_divergences")
    heads.add(
        app, "POST", "/v1/channels/{name}/mapping/refresh", post_mapping_refresh, name="channel_mapping_refresh",
        check=_refresh_head,
    )  # fmt: skip
    heads.add(
        app, "POST", "/v1/channels/{name}/reconcile", post_reconcile, name="channel_reconcile", check=_reconcile_head
    )
    heads.add(app, "POST", DISMISS_PATH, post_dismiss_order, name="channel_order_dismiss", check=_dismiss_head)
    heads.add(app, "POST", UNDISMISS_PATH, post_undismiss_order, name="channel_order_undismiss", check=_undismiss_head)
    if specs:  # push what each sales channel shows (docs/channels.md)
        share_locks(app, db_path)  # on PostgreSQL, the channels' lock connection, lease_stale_s and lease_retry_s
        app.cleanup_ctx.append(_run)


async def _run(app: web.Application) -> AsyncIterator[None]:
    channels = app[CHANNELS_KEY]
    specs = list(channels.specs.values())
    async with channel_pushers(
        specs, app[STORE_KEY], channels.db_path, app[feed.FEED_KEY], app[LOCKS_KEY], channels.db_timeout_s
    ) as pushers:
        channels.pushers = pushers
        try:
            yield
        finally:
            channels.pushers = {}


# --- reads ------------------------------------------------------------------------------------------


async def get_channels(request: web.Request) -> web.Response:
    """Every configured channel: where it stands (the dashboard's Channels tab)."""
    require_role(request, READ_ROLES, "read the channels")
    views.Query(request, set())
    head = await request.app[STORE_KEY].latest_change_id()
    pushers = request.app[CHANNELS_KEY].pushers
    return _json({"channels": [await channel_status(p, head) for p in pushers.values()]})


async def channel_status(p: ChannelPusher, head: int) -> dict[str, Any]:
    """One channel's status (``GET /v1/channels``); ``head``: the newest change id of the feed."""
    spec, status, conn = p.spec, p.status, p.connector.status()
    unmapped = p.unmapped()
    reconciler = p.reconciler
    last = reconciler.last if reconciler is not None else await p.state.reconciled(spec.name)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "url": spec.display_url,
        "pusher": "this hub" if pushes_here(p) else "another hub",  # several hubs on one PostgreSQL database
        "connected": conn.connected,
        "last_call_ms": conn.last_call_ms,
        "last_call": views.iso_ms(conn.last_call_ms),
        "last_push_ms": status.last_push_ms,
        "last_push": views.iso_ms(status.last_push_ms),
        "lag": {
            "last_ms": p.lag.last_ms,
            "p50_ms": p.lag.percentile_ms(50),
            "p99_ms": p.lag.percentile_ms(99),
            "samples": p.lag.samples,
        },
        "cursor": str(status.cursor),
        "queue": max(0, head - status.cursor),
        "throttle": _with_times(conn.throttle),
        "failures": status.failures,
        "last_error": status.last_error,
        "divergences_open": await p.state.open_divergences(spec.name),
        "refused": status.refused,
        "mapped": status.mapped,
        "findings": status.findings,
        "unmapped": {"count": len(unmapped), "skus": unmapped[:UNMAPPED_LISTED_MAX]},
        "reconcile_s": spec.reconcile_s if reconciler is not None else 0,
        "last_reconciliation": None if last is None else reconciled_json(last),
        "reconcile_error": reconciler.last_error if reconciler is not None else None,
        "settings": settings_json(p, reconciler is not None),
    }


def settings_json(p: ChannelPusher, reconciled: bool) -> dict[str, Any]:
    """Every key of the channel's ``[[channel]]`` table with the value the hub runs it with, defaults filled in
    (docs/channels.md); a secret by where it is read from, never itself; null for a key that does not apply to the
    channel's kind (``reason``: Shopify; ``notification_url``, ``unbooked_sale_wait_s``, ``order_match_window_s``:
    Square) or is not set."""
    spec = p.spec
    square = spec.kind == "square"
    return {
        "pool": dict(spec.pool),
        "buffer": {"units": spec.buffer.units, "percent": spec.buffer.percent, "skus": dict(spec.buffer.skus)},
        "secret": spec.secret_source,
        "url": spec.display_url,
        "api_version": spec.api_version or None,
        "mapping_csv": spec.mapping_csv,
        "mapping_encoding": spec.mapping_encoding,
        "batch_max": spec.batch_max,
        "timeout_s": spec.timeout_s,
        "retry_max_s": spec.retry_max_s,
        "reason": spec.reason if spec.kind == "shopify" else None,
        "coalesce_s": spec.coalesce_s,
        "reconcile_s": spec.reconcile_s if reconciled else 0,
        "webhook_secret": spec.webhook_secret_source or None,
        "notification_url": spec.notification_url or None,
        "fulfil_from": dict(spec.fulfil_from),
        "order_location": spec.order_location or None,
        "unbooked_sale_wait_s": p.unbooked_sale_wait_ms / 1000 if square else None,
        "order_match_window_s": p.order_match_window_ms / 1000 if square else None,
    }


async def get_divergences(request: web.Request) -> web.Response:
    """One channel's divergences, newest first, a page at a time (``next``/``cursor``)."""
    require_role(request, READ_ROLES, "read a channel's divergences")
    params = views.Query(request, {"limit", "cursor"})
    p = _pusher(request)
    name = p.spec.name
    before_id = paging.parse(request, _cursor_reader(name), f"the divergences of channel {name}")
    limit = params.limit(DIVERGENCES_LIMIT_DEFAULT, DIVERGENCES_LIMIT_MAX)
    rows = await p.state.divergences(name, limit + 1, before_id)
    more = len(rows) > limit
    rows = rows[:limit]
    return _json(
        {
            "channel": name,
            "divergences": [divergence_json(d) for d in rows],
            "next": paging.encode("channel_divergences", [name, rows[-1].divergence_id]) if more else None,
        }
    )


def reconciled_json(r: Reconciled) -> dict[str, Any]:
    return {"at_ms": r.at_ms, "at": views.iso_ms(r.at_ms), "checked": r.checked, "diverged": r.diverged}


def divergence_json(d: Divergence) -> dict[str, Any]:
    return {
        "id": d.divergence_id,
        "sku": d.sku,
        "item_id": d.key.item_id,
        "channel_location": d.key.location_id,
        "location": d.location,
        "hub_level": d.hub_level,
        "last_pushed": d.last_pushed,
        "channel_level": d.channel_level,
        "difference": d.channel_level - d.hub_level,
        "found_at_ms": d.found_at_ms,
        "found_at": views.iso_ms(d.found_at_ms),
        "corrected_at_ms": d.corrected_at_ms,
        "corrected_at": views.iso_ms(d.corrected_at_ms),
    }


# --- admin --------------------------------------------------------------------------------------------


async def post_mapping_refresh(request: web.Request) -> web.Response:
    """Load the channel's SKU mapping again (its listing or its CSV) and push every mapped level once."""
    _refresh_head(request, identity_of(request))
    await _no_body(request)
    p = _pusher(request, pushing=True)
    name = p.spec.name
    try:
        mapping = await refresh_asked(p)  # work of the channel's job: watched and stopped with it
    except NotDone as err:
        raise web.HTTPServiceUnavailable(
            text=f'{err}; ask again the hub whose GET /v1/channels says "pusher": "this hub"'
        ) from err
    except MappingError as err:
        raise web.HTTPUnprocessableEntity(text=f"the mapping of channel {name} was not refreshed: {err}") from err
    except ChannelUnavailable as err:
        raise web.HTTPServiceUnavailable(text=f"{err}; the mapping was not refreshed, try again later") from err
    except ChannelRejected as err:
        raise web.HTTPBadGateway(text=f"{err}; the mapping was not refreshed") from err
    unmapped = sum(1 for f in mapping.findings if f.kind == "unmapped_sku")
    return _json(
        {
            "channel": name,
            "mapped": len(mapping.items),
            "unmapped": unmapped,
            "findings": [
                {"kind": f.kind, "sku": f.sku, "detail": f.detail} for f in mapping.findings[:FINDINGS_ANSWERED_MAX]
            ],
            "findings_total": len(mapping.findings),
        }
    )


async def post_reconcile(request: web.Request) -> web.Response:
    """Read the channel's levels back now; divergences are stored, listed and corrected as the loop's are."""
    _reconcile_head(request, identity_of(request))
    await _no_body(request)
    p = _pusher(request, pushing=True)
    name = p.spec.name
    if not p.connector.readable:
        raise web.HTTPConflict(text=f"channel {name} is a {p.spec.kind} channel: its levels cannot be read back")
    try:
        done = await reconcile_asked(p)  # work of the channel's job: watched and stopped with it
    except NotDone as err:
        raise web.HTTPServiceUnavailable(
            text=f'{err}; ask again the hub whose GET /v1/channels says "pusher": "this hub"'
        ) from err
    except MappingError as err:
        raise web.HTTPUnprocessableEntity(text=f"channel {name} was not reconciled: {err}") from err
    except ChannelUnavailable as err:
        raise web.HTTPServiceUnavailable(text=f"{err}; channel {name} was not reconciled, try again later") from err
    except ChannelRejected as err:
        raise web.HTTPBadGateway(text=f"{err}; channel {name} was not reconciled") from err
    return _json(
        {
            "channel": name,
            "at_ms": done.done.at_ms,
            "at": views.iso_ms(done.done.at_ms),
            "checked": done.done.checked,
            "divergences": [divergence_json(d) for d in done.divergences],
        }
    )


# --- helpers ---------------------------------------------------------------------------------------------


def _refresh_head(request: web.Request, who: AgentIdentity) -> None:
    _admin_head(request, who, "refresh a channel's mapping")


def _reconcile_head(request: web.Request, who: AgentIdentity) -> None:
    _admin_head(request, who, "reconcile a channel")


async def _refused_order(request: web.Request, listed: str) -> tuple[ChannelPusher, str, RefusedOrder, str]:
    """The dismiss and undismiss routes' order (no body taken): its channel's pusher, its id, the order as held, and
    the 404 sentence (the exceptions list lists ``listed``); 400 for an id no order the hub holds can have
    (``ORDER_ID``), 404 when the channel holds no such refused order."""
    await _no_body(request)
    p = _pusher(request)
    name, order_id = p.spec.name, views.text_param(ORDER_ID, request.match_info["order_id"], "order_id")
    missing = (
        f"channel {name} holds no refused order {values.shown(order_id, values.QUOTE_MAX_CHARS)}; GET /v1/exceptions"
        f"?kind=channel_order_refused lists {listed} (one booked since, or refused more than two days ago, is not held)"
    )
    before = await p.state.refused_order(name, order_id)
    if before is None:
        raise web.HTTPNotFound(text=missing)
    return p, order_id, before, missing


def _dismiss_head(request: web.Request, who: AgentIdentity) -> None:
    _admin_head(request, who, "dismiss a refused order")


async def post_dismiss_order(request: web.Request) -> web.Response:
    """An admin booked a refused Square order's sale by hand: its ``channel_order_refused`` exception leaves the
    list; the order stays refused, so its register sales are still not taken off the counts pushed."""
    who = identity_of(request)
    _dismiss_head(request, who)
    p, order_id, before, missing = await _refused_order(request, "them")
    name = p.spec.name
    if before.dismissed_at_ms is not None:
        raise _dismissed_already(name, order_id, before)
    after = await p.state.dismiss_order(name, order_id, who.agent_id, wall_ms_now())
    if after is None:
        raise await _unchanged(p, order_id, missing, dismissing=True)
    log.info(
        "channel %s: Square order %s, refused at %s (%s), was dismissed by %s as booked by hand; it leaves the "
        "exceptions list, and its register sales stay out of the counts pushed",
        name, order_id, views.iso_ms(after.refused_at_ms), after.reason, after.dismissed_by,
    )  # fmt: skip
    return _json({"order": refused_order_json(after)})


def _undismiss_head(request: web.Request, who: AgentIdentity) -> None:
    _admin_head(request, who, "undo the dismissal of a refused order")


async def post_undismiss_order(request: web.Request) -> web.Response:
    """An admin dismissed a refused Square order by mistake (its sale was not booked by hand): the dismissal is
    undone, its ``channel_order_refused`` exception is listed again, and a later delivery of the order (Square's
    retry, once the cause is fixed) books it as any."""
    who = identity_of(request)
    _undismiss_head(request, who)
    p, order_id, before, missing = await _refused_order(request, "those not dismissed")
    name = p.spec.name
    if before.dismissed_at_ms is None:
        raise _not_dismissed(name, order_id)
    after = await p.state.undismiss_order(name, order_id)
    if after is None:
        raise await _unchanged(p, order_id, missing, dismissing=False)
    log.info(
        "channel %s: the dismissal of Square order %s by %s at %s was undone by %s; it is on the exceptions list "
        "again, and a later delivery of it is booked",
        name, order_id, before.dismissed_by, views.iso_ms(before.dismissed_at_ms), who.agent_id,
    )  # fmt: skip
    return _json({"order": refused_order_json(after)})


def _dismissed_already(name: str, order_id: str, r: RefusedOrder) -> web.HTTPConflict:
    return web.HTTPConflict(
        text=f"refused order {order_id} of channel {name} was already dismissed by {r.dismissed_by} at "
        f"{views.iso_ms(r.dismissed_at_ms)}; nothing was changed"
    )


def _not_dismissed(name: str, order_id: str) -> web.HTTPConflict:
    return web.HTTPConflict(
        text=f"refused order {order_id} of channel {name} is not dismissed (it is on the exceptions list); "
        "nothing was changed"
    )


async def _unchanged(p: ChannelPusher, order_id: str, missing: str, *, dismissing: bool) -> web.HTTPException:
    """The answer to a dismissal (or its undoing) the store made nothing of: another request on the order, on this
    hub or another, came first (the 409 it would have had after it), or the order was booked or dropped (404)."""
    name = p.spec.name
    now = await p.state.refused_order(name, order_id)
    if now is None:
        return web.HTTPNotFound(text=missing)
    if dismissing and now.dismissed_at_ms is not None:
        return _dismissed_already(name, order_id, now)
    if not dismissing and now.dismissed_at_ms is None:
        return _not_dismissed(name, order_id)
    return web.HTTPConflict(  # dismissed and undone (or the other way round) by others meanwhile
        text=f"refused order {order_id} of channel {name} was changed by other requests meanwhile; nothing was "
        "changed, look it up again (GET /v1/exceptions?kind=channel_order_refused)"
    )


def refused_order_json(r: RefusedOrder) -> dict[str, Any]:
    return {
        "channel": r.channel,
        "order_id": r.order_id,
        "location": r.location,
        "channel_location": r.channel_location,
        "reason": r.reason,
        "refused_at_ms": r.refused_at_ms,
        "refused_at": views.iso_ms(r.refused_at_ms),
        "dismissed_at_ms": r.dismissed_at_ms,
        "dismissed_at": views.iso_ms(r.dismissed_at_ms),
        "dismissed_by": r.dismissed_by,
    }


def _admin_head(request: web.Request, who: AgentIdentity, action: str) -> None:
    """What the two posts refuse before they look at the body, asked of a head too (hub.heads): a body its
    Content-Length announces is refused unsent (a chunked one once its first byte has come: ``_no_body``)."""
    heads.refuse(role_refused(who, ADMIN_ROLES, action))
    views.Query(request, set())
    if request.content_length:
        raise _body_refused(request)


def _body_refused(request: web.Request) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"{request.method} {request.path} takes no body; send the request without one")


async def _no_body(request: web.Request) -> None:
    """These routes act on the name alone: a body is a client's mistake, refused before anything is looked up."""
    if request.body_exists and (request.content_length or (await request.content.read(1))):
        raise _body_refused(request)


def _pusher(request: web.Request, pushing: bool = False) -> ChannelPusher:
    """The named channel's pusher; ``pushing``: 409 unless this hub process pushes the channel."""
    raw = request.match_info["name"]
    channels = request.app[CHANNELS_KEY]
    p = channels.pushers.get(raw) if NAME_RE.fullmatch(raw) else None
    if p is None:
        known = ", ".join(sorted(channels.pushers)) or "none is configured"
        raise web.HTTPNotFound(
            text=f"there is no channel named {values.shown(raw, values.QUOTE_MAX_CHARS)}; the channels are: {known}"
        )
    if pushing and not pushes_here(p):
        raise web.HTTPConflict(
            text=f"another hub process sharing this database pushes channel {raw}; send this to that hub (its "
            'GET /v1/channels says "pusher": "this hub")'
        )
    return p


def _cursor_reader(channel: str) -> Any:
    def read(cursor: str) -> int:
        f = paging.decode("channel_divergences", cursor)
        if len(f) != 2 or f[0] != channel or isinstance(f[1], bool) or not isinstance(f[1], int) or f[1] < 1:
            raise paging.BadCursor
        value: int = f[1]
        return value

    return read


def _with_times(throttle: dict[str, Any] | None) -> dict[str, Any] | None:
    """A throttle state with the ISO time beside each ``…_ms`` time."""
    if throttle is None:
        return None
    out = dict(throttle)
    for key in ("at_ms", "until_ms"):
        if isinstance(out.get(key), int):
            out[key.removesuffix("_ms")] = views.iso_ms(out[key])
    return out


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=views.dumps)
