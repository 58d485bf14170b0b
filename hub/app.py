"""The hub's HTTP API: the application factory, its middlewares and routes.

Every route is documented in docs/hub-api.md (a test checks it). Errors are
answered as JSON ``{"error": {"code": …, "message": …}}`` with one sentence a
person can act on; the sync route answers msgpack on success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hub import catalog, dashboard, events_api, feed, metrics, ratelimit, reports, views, webhooks
from hub.auth import (
    PUBLIC_ROUTES_KEY,
    ROLE_ADMIN,
    STORE_KEY,
    Handler,
    auth_middleware,
    require_role,
)
from hub.config import HubSettings
from hub.decoding import SyncDecoder
from hub.drain import GATE_KEY, RequestGate
from hub.storage.base import (
    INGEST_ROLES,
    AgentIdentity,
    Forbidden,
    HubStore,
    InvalidInput,
    StoreClosed,
    StoreError,
)
from protocol import (
    MSGPACK_CONTENT_TYPE,
    QTY_MAX,
    BadEvents,
    ProtocolError,
    SyncRequest,
    SyncResponse,
    encode_sync_response,
    wall_ms_now,
)

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", HubSettings)
DECODER_KEY = web.AppKey("sync_decoder", SyncDecoder)
LIMIT_DEFAULT = 1000
LIMIT_MAX = 10_000
MSGPACK_CONTENT_TYPES = frozenset({MSGPACK_CONTENT_TYPE, "application/x-msgpack"})

_ERROR_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_events",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": {"code": _ERROR_CODES.get(status, f"http_{status}"), "message": message, **extra}}
    return web.json_response(body, status=status, headers=headers, dumps=views.dumps)


def _message(request: web.Request, exc: web.HTTPException) -> str:
    text = exc.text or ""
    if text and text != f"{exc.status}: {exc.reason}":
        return text
    if isinstance(exc, web.HTTPNotFound):
        return f"there is no route {request.path}; the routes are listed in docs/hub-api.md"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.path} does not take {request.method}; it takes {allowed}"
    return f"the request failed: {exc.reason.lower()}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; an unexpected one is logged and answered 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {
            k: v for k, v in exc.headers.items() if k.lower() in ("www-authenticate", "allow", "connection", "retry-after")
        }
        return error_response(exc.status, _message(request, exc), headers=keep)
    except Forbidden as err:
        return error_response(403, str(err))
    except InvalidInput as err:
        return error_response(400, str(err))
    except StoreClosed:
        return error_response(503, "the hub is shutting down; try again shortly")
    except StoreError as err:
        log.warning("%s %s failed: %s", request.method, request.rel_url.raw_path, err)
        return error_response(503, f"the hub database is not available right now ({err}); try again shortly")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception(
            "%s %s failed with an unexpected error; the hub keeps serving", request.method, request.rel_url.raw_path
        )
        return error_response(500, "the hub failed to handle this request; the cause is in the hub's log")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a request's whole body within ``body_timeout_s`` before its handler runs (which then reads it from memory).

    A client that sends the head and then trickles the body, or stops, is answered 408 and its connection
    closed; one that goes away midway is logged in one line. A body over ``max_body_bytes`` is answered
    413, unread when its Content-Length says so.
    """
    settings = request.app[SETTINGS_KEY]
    if not request.body_exists:
        return await handler(request)
    limit = settings.max_body_bytes
    if (request.content_length or 0) > limit:  # refused unread
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length or 0, text=_too_big(limit))
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            await request.read()
    except TimeoutError:
        log.info("cut off %s %s from %s: its body did not arrive within %g s", request.method, request.rel_url.raw_path,
                 request.remote, settings.body_timeout_s)  # fmt: skip
        response = error_response(
            408, f"the request body did not arrive within {settings.body_timeout_s:g} s (body_timeout_s); send it again"
        )
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge as err:  # a chunked body, found too big while reading
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, text=_too_big(limit)) from err
    except ConnectionError as err:
        log.info("%s %s from %s ended before its whole body arrived (%s)", request.method, request.rel_url.raw_path,
                 request.remote, err)  # fmt: skip
        raise web.HTTPBadRequest(text="the connection was lost before the whole request body arrived") from err
    return await handler(request)


def _too_big(limit: int) -> str:
    return (
        f"the request body is larger than this hub's limit of {limit} bytes (max_body_bytes);"
        " send a smaller one (an agent: fewer events per request)"
    )


def create_app(store: HubStore, settings: HubSettings) -> web.Application:
    """The hub's aiohttp application over an open ``store``. The caller owns (and closes) the store."""
    gate = RequestGate()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, gate.middleware, auth_middleware, ratelimit.middleware, body_middleware],
    )
    ratelimit.setup(app, settings.rate_limit_per_s, settings.rate_limit_burst)  # 429 on the write routes
    app[GATE_KEY] = gate
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings
    app[DECODER_KEY] = SyncDecoder()
    app.on_cleanup.append(_close_decoder)
    app[PUBLIC_ROUTES_KEY] = frozenset({"healthz"})
    r = app.router
    r.add_get("/healthz", healthz, name="healthz")
    r.add_post("/v1/sync", post_sync, name="sync")
    r.add_get("/v1/locations/{location}/counts", get_location_counts, name="location_counts")
    r.add_get("/v1/skus/{sku}/counts", get_sku_counts, name="sku_counts")
    r.add_get("/v1/ledger", get_ledger, name="ledger")
    r.add_get("/v1/exceptions", get_exceptions, name="exceptions")
    r.add_get("/v1/agents", get_agents, name="agents")
    r.add_put("/v1/locations/{location}/skus/{sku}/safety-stock", put_safety_stock, name="safety_stock")
    catalog.routes(app)  # GET/PUT /v1/catalog
    reports.routes(app)  # POST /v1/observations, POST /v1/import-issues, GET /v1/divergence
    feed.setup(app, store, settings.change_recheck_s)  # GET /v1/changes, GET /v1/changes/stream
    metrics.setup(app)  # GET /metrics
    webhooks.setup(app, settings.webhooks)  # GET /v1/webhooks, GET /v1/webhooks/{name}/deliveries
    events_api.setup(app)  # POST /v1/events
    dashboard.setup(app, store)  # /, /dashboard/…, GET /v1/status, GET /v1/counts
    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=views.dumps)


# --- sync -------------------------------------------------------------------


async def post_sync(request: web.Request) -> web.Response:
    """Ingest one batch of an agent's events; answer its new mark and counts (msgpack)."""
    who = require_role(request, INGEST_ROLES, "send events")
    started = time.perf_counter()
    if request.content_type not in MSGPACK_CONTENT_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=f"a sync body must be msgpack sent with Content-Type: {MSGPACK_CONTENT_TYPE}, "
            f"got {request.content_type}"
        )
    body = await _read_body(request, "; send fewer events per request")
    try:
        sync = await request.app[DECODER_KEY].decode(body)
    except BadEvents as err:
        _check_sender(who, err.agent_id)
        log.info(
            "refused a batch from agent %s: %d of its events are invalid, first %s",
            who.agent_id,
            len(err.bad),
            err.bad[0].reason,
        )
        metrics.observe_invalid(request.app, "sync", len(err.bad))
        return error_response(422, str(err), rejected=[views.bad_event(b) for b in err.bad])
    except ProtocolError as err:
        log.info("refused a sync request from agent %s: %s", who.agent_id, err)
        raise web.HTTPBadRequest(text=str(err)) from err
    _check_sender(who, sync.agent_id)
    store = request.app[STORE_KEY]
    result = await store.ingest(
        who, sync.epoch, sync.events, sync.acked_seq, backlog=sync.backlog, oldest_pending_ms=sync.oldest_pending_ms
    )
    if result.applied:  # scans of barcodes the catalog learned after the agent's copy of it
        await catalog.rebook_unknown(request, {ev.sku for ev in sync.events})
    feed.poke(request.app)  # committed: wake the change feed's long-polls, streams and webhooks
    metrics.observe_ingest(request.app, "sync", result, time.perf_counter() - started)
    answer = SyncResponse(
        agent_id=result.agent_id,
        epoch=result.epoch,
        hwm=result.hwm,
        rejected=result.rejected,
        duplicates=result.duplicates,
        counts=result.counts,
        server_time_ms=wall_ms_now(),
    )
    _log_sync(sync, result.applied, result.duplicates, len(result.rejected), result.hwm, started)
    return web.Response(body=encode_sync_response(answer), content_type=MSGPACK_CONTENT_TYPE)


async def _read_body(request: web.Request, advice: str = "") -> bytes:
    """The whole body, or 413 as soon as it is known to be over ``max_body_bytes``."""
    limit = request.app[SETTINGS_KEY].max_body_bytes
    too_big = f"the request body is larger than this hub's limit of {limit} bytes (max_body_bytes){advice}"
    length = request.content_length
    if length is not None and length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length, text=too_big)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, text=too_big) from err


async def _close_decoder(app: web.Application) -> None:
    app[DECODER_KEY].close()


def _check_sender(who: AgentIdentity, agent_id: str) -> None:
    if agent_id != who.agent_id:
        log.warning(
            "refused a sync request naming agent %s sent with the credential of agent %s", agent_id, who.agent_id
        )
        raise web.HTTPForbidden(
            text=f"this credential belongs to agent {who.agent_id}, but the request is for agent {agent_id}"
        )


def _log_sync(sync: SyncRequest, applied: int, duplicates: int, rejected: int, hwm: int, started: float) -> None:
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    level = logging.INFO if sync.events else logging.DEBUG
    log.log(
        level,
        "agent %s synced %d events (%d applied, %d duplicates, %d rejected) in %d ms",
        sync.agent_id,
        len(sync.events),
        applied,
        duplicates,
        rejected,
        elapsed_ms,
    )
    if sync.acked_seq > hwm:
        log.warning(
            "agent %s holds seq %d of epoch %d as acknowledged but the hub's mark is %d; "
            "was the hub database restored from an older copy?",
            sync.agent_id,
            sync.acked_seq,
            sync.epoch,
            hwm,
        )


# --- reads ------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness and database health; needs no credential."""
    try:
        db = await request.app[STORE_KEY].health()
    except StoreClosed:
        return _json({"status": "unavailable", "db": {"error": "the hub store is closed"}}, status=503)
    except StoreError as err:
        log.warning("the health check found the database failing: %s", err)
        return _json({"status": "error", "db": {"error": str(err)}}, status=503)
    return _json({"status": "ok", "db": db})


async def get_location_counts(request: web.Request) -> web.Response:
    """Counts of every SKU at one location."""
    params = views.Query(request, {"limit"})
    location = views.location_param(request.match_info["location"])
    rows = await request.app[STORE_KEY].counts(location=location, limit=params.limit(LIMIT_DEFAULT, LIMIT_MAX))
    return _json({"location": location, "counts": [views.count_row(r) for r in rows]})


async def get_sku_counts(request: web.Request) -> web.Response:
    """Counts of one SKU at every location."""
    params = views.Query(request, {"limit"})
    sku = views.sku_param(request.match_info["sku"])
    rows = await request.app[STORE_KEY].counts(sku=sku, limit=params.limit(LIMIT_DEFAULT, LIMIT_MAX))
    return _json({"sku": sku, "counts": [views.count_row(r) for r in rows]})


async def get_ledger(request: web.Request) -> web.Response:
    """Events and rejected attempts, newest first in resolution order."""
    params = views.Query(request, {"location", "sku", "limit", "before"})
    rows = await request.app[STORE_KEY].ledger(
        location=params.location(),
        sku=params.sku(),
        limit=params.limit(LIMIT_DEFAULT, LIMIT_MAX),
        before=params.before(),
    )
    return _json({"events": [views.ledger_row(r) for r in rows]})


async def get_exceptions(request: web.Request) -> web.Response:
    """What the operations team should look at: negative stock, transfer differences, rejections."""
    params = views.Query(request, {"location", "limit"})
    rows = await request.app[STORE_KEY].exceptions(
        location=params.location(), limit=params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    )
    return _json({"exceptions": [views.exception_row(r) for r in rows]})


async def get_agents(request: web.Request) -> web.Response:
    """Every agent's last sync, high-water marks and clock skew."""
    views.Query(request, set())
    rows = await request.app[STORE_KEY].agent_status()
    return _json({"agents": [views.agent_status(r) for r in rows]})


# --- admin ------------------------------------------------------------------


async def put_safety_stock(request: web.Request) -> web.Response:
    """Set the safety stock held back from ``available`` for one SKU at one location."""
    who = require_role(request, {ROLE_ADMIN}, "change safety stock")
    views.Query(request, set())
    location = views.location_param(request.match_info["location"])
    sku = views.sku_param(request.match_info["sku"])
    body = await _json_body(request)
    qty = body.get("qty") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) != {"qty"}:
        raise web.HTTPBadRequest(text='the body must be a JSON object with one field, e.g. {"qty": 5}')
    if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= QTY_MAX:
        raise web.HTTPBadRequest(text=f"qty must be a whole number of units from 0 to {QTY_MAX}, got {qty!r}")
    row = await request.app[STORE_KEY].set_safety_stock(location, sku, qty)
    log.info("%s %s set the safety stock of %s at %s to %d", who.role, who.agent_id, sku, location, qty)
    return _json({"count": views.count_row(row)})


async def _json_body(request: web.Request) -> Any:
    raw = await _read_body(request)
    try:
        return views.loads(raw)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
