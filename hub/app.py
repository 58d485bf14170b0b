"""The hub's HTTP API: the application factory, its middlewares and routes.

Every route is documented in docs/hub-api.md and hub/openapi.py (tests check both). Errors are answered as
RFC 9457 problem details (``application/problem+json``, hub.problems) whose ``detail`` is one sentence a person
can act on; the sync route answers msgpack on success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from hub import (
    bundles,
    catalog,
    catchup,
    csvexport,
    dashboard,
    etag,
    events_api,
    exportslots,
    feed,
    heads,
    metrics,
    openapi,
    paging,
    peer_settings,
    problems,
    proxies,
    quarantine,
    ratelimit,
    reports,
    views,
    webhooks,
)
from hub.auth import (
    IDENTITY_CACHE_KEY,
    PUBLIC_ROUTES_KEY,
    ROLE_ADMIN,
    STORE_KEY,
    UNKNOWN_CREDENTIALS_KEY,
    CredentialOfAnotherAgent,
    Handler,
    IdentityCache,
    auth_middleware,
    authenticate_again,
    identity_of,
    ingest_confirmed,
    role_refused,
)
from hub.channels import http as channel_http
from hub.channels import order_routes
from hub.clock_window import HUB_CLOCK_AGREE_MS, HUB_CLOCK_OFF_MS, HubClockWatch
from hub.config import HubSettings
from hub.decoding import DECODE_INLINE_ALONE_MAX_BYTES, DECODE_INLINE_MAX_BYTES, SyncDecoder
from hub.drain import GATE_KEY, RequestGate
from hub.heads import (
    DB_RETRY_AFTER_S,
    REPEATS_KEY,
    RequestRepeats,
    announced_too_big,
    compressed,
    problem_of,
    refuse,
    store_failed,
    too_big,
)
from hub.leases import share_locks
from hub.proxies import client_of
from hub.starting import LIVE_PATH
from hub.storage import findings, keys
from hub.storage.base import (
    INGEST_ROLES,
    AgentIdentity,
    CredentialChanged,
    Forbidden,
    HubStore,
    InvalidInput,
    Lineage,
    StoreClosed,
    StoreError,
)
from hub.storage.keys import LedgerKey
from protocol import (
    MSGPACK_CONTENT_TYPE,
    QTY_MAX,
    BadEvents,
    ProtocolError,
    SyncRequest,
    SyncResponse,
    answers,
    encode_sync_response,
    routes,
    values,
    wall_ms_now,
)
from protocol.logsafety import RepeatLog
from protocol.retry import retry_after_value

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", HubSettings)
DECODER_KEY = web.AppKey("sync_decoder", SyncDecoder)
CLOCK_WATCH_KEY = web.AppKey("hub_clock_watch", HubClockWatch)  # the agents' skews: is the hub's own clock off?
RELEASED_BY_HUB = "hub"  # resolved_by of the held events the hub released itself once its clock was right
LIMIT_DEFAULT = 1000
LIMIT_MAX = 10_000
# A JSON page of the ledger ends early, with a ``next`` cursor, once its rows pass this many bytes (docs/hub-api.md,
# GET /v1/ledger): 10,000 events with attrs at their limits were a page of ~95 MiB.
LEDGER_PAGE_BYTES = 4 * 1024 * 1024
MSGPACK_CONTENT_TYPES = frozenset({MSGPACK_CONTENT_TYPE, "application/x-msgpack"})


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error answer: RFC 9457 problem details with ``message`` as its ``detail`` (hub.problems)."""
    return problems.response(status, message, headers=headers, **extra)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; an unexpected one is logged and answered 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_of(request, exc)
    except CredentialOfAnotherAgent as err:
        return error_response(403, str(err), credential_agent_id=err.credential_agent_id)
    except Forbidden as err:
        return error_response(403, str(err))
    except InvalidInput as err:
        return error_response(400, str(err))
    except CredentialChanged as err:  # bound elsewhere twice while one batch was booked: nothing was written
        again = {"Retry-After": retry_after_value(1)}
        return error_response(503, f"{err}, twice; nothing of it was written: send it again", headers=again)
    except (StoreClosed, StoreError) as err:  # its store closed (shutting down), its database failing: 503
        return store_failed(request, err)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 -- the first in a minute with its traceback, the rest counted; the hub keeps serving
        where = f"{request.method} {request.rel_url.raw_path}: {type(err).__name__}"
        request.app[REPEATS_KEY].unexpected.record(client_of(request), where, exc=err)
        metrics.observe_failure(request.app, "unexpected")
        return error_response(500, "the hub failed to handle this request; the cause is in the hub's log")


@web.middleware
async def path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route takes its path parameters and query as text: one that does not percent-decode to UTF-8 is a 400."""
    if (problem := views.target_problem(request)) is not None:
        raise web.HTTPBadRequest(text=problem)
    return await handler(request)


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a request's whole body within ``body_timeout_s`` before its handler runs (which then reads it from memory).

    A client that sends the head and then trickles the body, or stops, is answered 408 and its connection
    closed; one that goes away midway is logged in one line. A body over ``max_body_bytes`` is answered
    413, unread when its Content-Length says so. A compressed body (``Content-Encoding`` gzip, deflate,
    br …) is answered 415 unread: the app never inflates a body (``auto_decompress`` is off), so a small
    bomb cannot cost the hub a gigabyte, before authentication or after. A malformed body (broken chunked
    encoding, a Content-Length longer than what came) is a 400, counted in the log once a minute.
    """
    settings = request.app[SETTINGS_KEY]
    if not request.body_exists:
        return await handler(request)
    if (is_compressed := compressed(request)) is not None:
        response = problem_of(request, is_compressed)
        response.force_close()  # its body is not read: the connection cannot carry another request
        return response
    limit = settings.max_body_bytes
    if (announced := announced_too_big(request)) is not None:  # refused unread
        raise announced
    slot = request.get(catchup.SLOT_KEY)  # a catch-up slot taken from the head (_take_slot): held a while, not all
    give_back = None
    if slot is not None:
        deadline_s = catchup.upload_deadline_s(request.content_length or 0)
        give_back = asyncio.get_running_loop().call_later(deadline_s, _slow_upload, request, slot, deadline_s)
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            await request.read()
        if slot is not None:
            slot.working()  # its hold counts from here (hub/catchup.py), if it still has it
    except TimeoutError:
        log.info("cut off %s %s from %s: its body did not arrive within %g s", request.method, request.rel_url.raw_path,
                 client_of(request), settings.body_timeout_s)  # fmt: skip
        response = error_response(
            408, f"the request body did not arrive within {settings.body_timeout_s:g} s (body_timeout_s); send it again"
        )
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge as err:  # a chunked body, found too big while reading
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, text=too_big(limit)) from err
    except ConnectionError as err:
        log.info("%s %s from %s ended before its whole body arrived (%s)", request.method, request.rel_url.raw_path,
                 client_of(request), err)  # fmt: skip
        raise web.HTTPBadRequest(text="the connection was lost before the whole request body arrived") from err
    except RequestPayloadError as err:
        where = f"{request.method} {request.rel_url.raw_path}: {err}"
        request.app[REPEATS_KEY].bad_bodies.record(client_of(request), where)
        response = error_response(400, "the request body is malformed (its framing is broken); send it again whole")
        response.force_close()
        return response
    finally:
        if give_back is not None:
            give_back.cancel()
    await authenticate_again(request)  # revoked or re-bound while the body came: judged as it is now
    return await handler(request)


def _slow_upload(request: web.Request, slot: catchup.Slot, deadline_s: float) -> None:
    """A body slower than its slot allows (catchup.upload_deadline_s): the slot goes to the next batch in line;
    the body is read on, and takes a slot again once it has come (post_sync)."""
    if slot.released:
        return
    slot.release()
    log.info(
        "gave the catch-up slot of agent %s's batch from %s to the next: its %d bytes did not arrive within %g s "
        "(at least %d KiB/s); its body is read on and takes a slot again once it has come",
        slot.agent_id, client_of(request), request.content_length or 0, deadline_s, catchup.UPLOAD_MIN_BYTES_PER_S // 1024,
    )  # fmt: skip


def create_app(store: HubStore, settings: HubSettings) -> web.Application:
    """The hub's aiohttp application over an open ``store``. The caller owns (and closes) the store."""
    gate = RequestGate()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"auto_decompress": False},  # a body is never inflated; body_middleware refuses compressed ones
        middlewares=[
            error_middleware, gate.middleware, auth_middleware, path_middleware, etag.middleware, ratelimit.middleware,
            body_middleware,
        ],
    )
    proxies.setup(app, settings.trusted_proxies, settings.trusted_proxy_header)  # the client behind a reverse proxy
    ratelimit.setup(app, settings.rate_limit_per_s, settings.rate_limit_burst)  # 429 on the write routes
    ratelimit.setup_reads(app, settings.read_bytes_per_s, settings.read_burst_bytes)  # 429 past a read budget
    # 429 on the public routes to an address refused too often (bad signatures, failed sign-ins)
    ratelimit.setup_refusals(app, settings.refused_attempts_per_s, settings.refused_attempts_burst)
    exportslots.setup(app, settings.export_max_per_credential, settings.export_max)  # 429/503 past the CSV caps
    catchup.setup(app, settings.catchup_slots)  # catch-up batches at once, a short line, 429 past it
    app[GATE_KEY] = gate
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings
    app[REPEATS_KEY] = RequestRepeats()
    app[CLOCK_WATCH_KEY] = HubClockWatch()
    app[CLOCK_CHORES_KEY] = ClockChores()
    app.on_cleanup.append(app[CLOCK_CHORES_KEY].close)  # a release under way finishes before the store closes
    app[UNKNOWN_CREDENTIALS_KEY] = RepeatLog(
        log, "refused", "request with an unknown or revoked credential|requests with an unknown or revoked credential"
    )
    app.on_cleanup.append(_flush_repeats)  # counts still pending are logged on the way out
    app.on_response_prepare.append(_name_the_database)  # every answer, refusals included (Shelfsync-Hub-Id)
    app[DECODER_KEY] = SyncDecoder(
        inline_max_bytes=DECODE_INLINE_MAX_BYTES if store.WRITES_ON_A_THREAD else DECODE_INLINE_ALONE_MAX_BYTES
    )
    app.on_cleanup.append(_close_decoder)
    app[PUBLIC_ROUTES_KEY] = frozenset({"healthz", "livez"})
    # The routes whose ingest confirms the credential (hub.auth.ingest_confirmed): the sync, a connector's events
    app[IDENTITY_CACHE_KEY] = IdentityCache(frozenset({"sync", events_api.ROUTE}))
    openapi.setup(app)  # GET /v1/openapi.json (public)
    r = app.router
    r.add_get(routes.HEALTH_PATH, healthz, name="healthz")
    r.add_get(LIVE_PATH, livez, name="livez")  # 200 from the hub's start, through its migration (hub.starting)
    heads.add(app, "POST", routes.SYNC_PATH, post_sync, name="sync", check=_sync_head, admit=_take_slot)
    r.add_get("/v1/locations/{location}/counts", get_location_counts, name="location_counts")
    r.add_get("/v1/skus/{sku}/counts", get_sku_counts, name="sku_counts")
    r.add_get("/v1/ledger", get_ledger, name="ledger")
    r.add_get("/v1/exceptions", get_exceptions, name="exceptions")
    r.add_get("/v1/agents", get_agents, name="agents")
    heads.add(
        app, "POST", findings.LOST_DISMISS_PATH, post_dismiss_lost, name="agent_lost_dismiss", check=_dismiss_lost_head
    )  # fmt: skip
    heads.add(
        app, "PUT", "/v1/locations/{location}/skus/{sku}/safety-stock", put_safety_stock, name="safety_stock",
        check=_safety_stock_head,
    )  # fmt: skip
    catalog.routes(app)  # GET/PUT /v1/catalog
    bundles.setup(app)  # PUT /v1/bundles/{sku}, GET /v1/bundles, GET /v1/bundles/{sku}
    reports.routes(app)  # POST /v1/observations, POST /v1/import-issues, GET /v1/divergence
    feed.setup(  # GET /v1/changes, GET /v1/changes/stream; 429 past a credential's read budget
        app, store, settings.change_recheck_s, settings.feed_read_rows_per_s, settings.feed_read_burst
    )
    metrics.setup(app, settings.exception_windows())  # GET /metrics
    peer_settings.setup(app, settings)  # at start: which settings differ from another running hub's (PostgreSQL)
    if settings.webhooks or settings.channels:  # on PostgreSQL, their lock connection: lease_stale_s, lease_retry_s
        share_locks(app, settings.db, settings.lease_stale_s, settings.lease_retry_s)
    webhooks.setup(app, settings.webhooks, settings.db)  # GET /v1/webhooks, GET /v1/webhooks/{name}/deliveries
    events_api.setup(app, settings.clock_window_s)  # POST /v1/events
    quarantine.setup(app)  # GET /v1/quarantine, POST /v1/quarantine/release, POST /v1/quarantine/{id}
    dashboard.setup(app, store, settings.public_url, tls=bool(settings.tls_cert))  # /, /dashboard/…, /v1/status
    # POST /v1/channels/{name}/webhooks
    order_routes.setup(app, settings.channels, settings.db, settings.clock_window_s, settings.db_timeout_s)
    channel_http.setup(app, settings.channels, settings.db, settings.db_timeout_s)  # GET /v1/channels …; the pushers
    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=views.dumps)


# --- sync -------------------------------------------------------------------


async def post_sync(request: web.Request) -> web.Response:
    """Ingest one batch of an agent's events; answer its new mark and counts (msgpack)."""
    slot = request.get(catchup.SLOT_KEY)  # taken from the head, before the body was sent (_take_slot)
    try:
        who = identity_of(request)
        _sync_head(request, who)
        started = time.perf_counter()
        body = await _read_body(request, "; send fewer events per request")  # read whole already (body_middleware)
        if slot is not None and not slot.released:  # not given back for a slow upload (body_middleware)
            return await _sync(request, who, body, started)
        async with request.app[catchup.SLOTS_KEY].take(who.agent_id, len(body)):  # the bytes that came, chunked or not
            return await _sync(request, who, body, started)
    finally:
        if slot is not None:
            slot.release()


def _sync_head(request: web.Request, who: AgentIdentity) -> None:
    """What ``post_sync`` refuses before it reads the body, asked of a head too (hub.heads): a credential not an
    agent's (403), a body not sent as msgpack (415)."""
    refuse(role_refused(who, INGEST_ROLES, "send events"))
    refuse(_not_msgpack(request))


def _not_msgpack(request: web.Request) -> web.HTTPUnsupportedMediaType | None:
    """The 415 for a sync body not sent as msgpack, or None."""
    if request.content_type in MSGPACK_CONTENT_TYPES:
        return None
    return web.HTTPUnsupportedMediaType(
        text=f"a sync body must be msgpack sent with Content-Type: {MSGPACK_CONTENT_TYPE}, got {request.content_type}"
    )


async def _take_slot(request: web.Request, who: AgentIdentity) -> None:
    """A sync asking to continue, found good by its head (hub.heads.expect): a known agent's catch-up batch (its
    Content-Length over ``catchup.CATCHUP_BODY_BYTES``) takes its slot for the request (``catchup.SLOT_KEY``),
    waiting in line first if need be, before the hub answers ``100 Continue`` (hub/catchup.py); past the line it
    is refused 429, and one waiting when the hub starts draining is answered 503 then. A live sale takes none."""
    length = request.content_length
    if length is None:
        return  # chunked: its slot, if any, is taken once its body has come (post_sync)
    gate = request.app[GATE_KEY]
    gate.check()  # with no await before the batch is in line: one waiting is sent away by the drain (leave)
    try:
        slot = await request.app[catchup.SLOTS_KEY].reserve(who.agent_id, length, leave=gate.closing)
    except catchup.LeftLine:
        gate.check()  # the hub began draining while the batch waited in line: 503 now, not once it has a slot
        raise
    if slot is None:
        return
    request[catchup.SLOT_KEY] = slot
    task = asyncio.current_task()  # the request's own: ends once it is answered, or gone
    if task is not None:
        task.add_done_callback(lambda _: slot.release())  # a middleware answered, the client went away


async def _sync(request: web.Request, who: AgentIdentity, body: bytes, started: float) -> web.Response:
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
        return error_response(422, str(err), **answers.rejected_members(err.bad))
    except ProtocolError as err:
        log.info("refused a sync request from agent %s: %s", who.agent_id, err)
        raise web.HTTPBadRequest(text=str(err)) from err
    _check_sender(who, sync.agent_id)
    lineage = Lineage(sync.chain, sync.epoch_base or 0, sync.base_chain)
    skew_ms = None if sync.sent_ms is None else wall_ms_now() - sync.sent_ms
    # the store's clock is right and the hub's off: what the window holds now is held because of the hub's clock
    off_ms = None if skew_ms is None else _watch_the_hubs_clock(request.app, who.agent_id, skew_ms)
    noticed, decided_ms = request.app[CLOCK_WATCH_KEY].found, wall_ms_now()
    # the store's clock is off the hub's and the other stores side with the hub's: its clock is the odd one (kept
    # with what it holds, so an admin's release is checked against it: hub.storage.held.check_not_vouched)
    vouched = (
        None if off_ms is not None or skew_ms is None or abs(skew_ms) < HUB_CLOCK_OFF_MS
        else request.app[CLOCK_WATCH_KEY].vouched(who.agent_id)
    )  # fmt: skip
    result = await ingest_confirmed(
        request, who, sync.epoch, sync.events, _sync_head, acked_seq=sync.acked_seq, backlog=sync.backlog,
        oldest_pending_ms=sync.oldest_pending_ms, lineage=lineage,
        clock_window_ms=request.app[SETTINGS_KEY].clock_window_s * 1000, sent_ms=sync.sent_ms,
        after_seq=sync.after_seq, peer=client_of(request), disk=sync.disk, hub_clock_off_ms=off_ms,
        hub_clock_vouched=vouched, hub_clock_at_ms=decided_ms, lost=sync.lost,
    )  # fmt: skip
    held = any(r.code == "quarantined" for r in result.rejected)
    if held and off_ms is None and request.app[CLOCK_WATCH_KEY].found != noticed:  # found while it was written
        _held_before_it_knew(request.app, decided_ms)
    elif result.release_hub_clock:  # marked by another hub process's finding, already right again
        request.app[CLOCK_CHORES_KEY].run(_release_hub_clock(request.app, right=False))
    if result.applied:  # scans of barcodes the catalog learned after the agent's copy of it
        await catalog.rebook_unknown(request, {ev.sku for ev in sync.events})
    feed.poke(request.app)  # committed: wake the change feed's long-polls, streams and webhooks
    metrics.observe_ingest(request.app, "sync", result, time.perf_counter() - started)
    headers = {routes.SYNC_PIPELINE_HEADER: "1"}
    if off_ms is not None:  # the store's clock is right: the hub's is off, and the agent says so, not its own
        headers[routes.HUB_CLOCK_HEADER] = str(off_ms)
    elif vouched is not None:  # the other stores side with the hub: this store's clock is the odd one
        headers[routes.HUB_CLOCK_AGREED_HEADER] = str(vouched)
    answer = SyncResponse(
        agent_id=result.agent_id,
        epoch=result.epoch,
        hwm=result.hwm,
        rejected=result.rejected,
        duplicates=result.duplicates,
        counts=result.counts,
        server_time_ms=wall_ms_now(),
        chain=result.chain if sync.chain is not None else None,  # an agent from before lineages refuses the field
        held=result.held if sync.chain is not None else None,  # … and this one
        change_id=result.change_id if sync.follows_feed else None,  # … and one not following the change feed this
    )
    _log_sync(sync, result.applied, result.duplicates, len(result.rejected), result.hwm, started)
    return web.Response(body=encode_sync_response(answer), content_type=MSGPACK_CONTENT_TYPE, headers=headers)


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


async def _flush_repeats(app: web.Application) -> None:
    repeats = app[REPEATS_KEY]
    for counter in (repeats.unexpected, repeats.db_failures, repeats.bad_bodies, app[UNKNOWN_CREDENTIALS_KEY]):
        counter.flush()


async def _name_the_database(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names the database the hub serves (``routes.HUB_ID_HEADER``, as public as /healthz): an agent
    refused by a hub restored from another hub's backup can say that, not only that its token was refused. The
    same id whoever asks, with whatever credential: it tells nothing of the agents. And the hub's API version
    (``routes.API_VERSION_HEADER``), as public as /v1/openapi.json."""
    response.headers[routes.API_VERSION_HEADER] = openapi.API_VERSION
    hub_id = request.app[STORE_KEY].hub_id
    if hub_id:
        response.headers[routes.HUB_ID_HEADER] = hub_id


async def _close_decoder(app: web.Application) -> None:
    app[DECODER_KEY].close()


def _watch_the_hubs_clock(app: web.Application, agent_id: str, skew_ms: int) -> int | None:
    """Say once when the agents that sync agree the hub's own clock is off, and once when it is right again.
    Returns how far the hub's clock is off when this agent's clock agrees with theirs (its skew is within
    HUB_CLOCK_AGREE_MS of the offset), else None."""
    watch = app[CLOCK_WATCH_KEY]
    said = watch.heard(agent_id, skew_ms, time.monotonic())
    if said is not None and said[1] is not None:
        log.error("%s", said[1].message)
        app[CLOCK_CHORES_KEY].run(_hub_clock_found(app, said[1].offset_ms))
    elif said is not None:
        log.info("The hub's clock agrees with its agents' again.")
    if watch.take_right_again():
        app[CLOCK_CHORES_KEY].run(_release_hub_clock(app))
    found = watch.current
    if found is None or abs(skew_ms - found.offset_ms) > HUB_CLOCK_AGREE_MS:
        return None
    return found.offset_ms


def _held_before_it_knew(app: web.Application, decided_ms: int) -> None:
    """A sync whose clock window was decided (at the hub's time ``decided_ms``) before the hub found its own clock
    off, and written after: its held events may have missed the marking of those held before it noticed
    (``HubStore.hub_clock_found``, run once the sync that made it notice was written, maybe before this one). Mark
    them after this write as that marking would have: then they are released with the others, at once when the
    hub's clock looks right again already (its release may have run before they were marked)."""
    watch = app[CLOCK_WATCH_KEY]
    app[CLOCK_CHORES_KEY].run(_mark_held(app, watch.found_offset_ms, decided_ms))
    if watch.current is None and watch.agreed:
        app[CLOCK_CHORES_KEY].run(_release_hub_clock(app))


async def _mark_held(app: web.Application, offset_ms: int, at_ms: int) -> None:
    try:
        await app[STORE_KEY].mark_held_by_hub_clock(offset_ms, at_ms)
    except StoreError as err:
        log.error("Could not note the hub's own clock in the quarantine: %s.", err)


class ClockChores:
    """What the hub does when it finds its own clock off (``HubStore.hub_clock_found``) or right again
    (``HubStore.release_hub_clock``), one after the other in the background: a sync is never kept waiting."""

    def __init__(self) -> None:
        self._last: asyncio.Task[None] | None = None

    def run(self, chore: Coroutine[Any, Any, None]) -> None:
        before = self._last

        async def after() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await chore

        self._last = asyncio.get_running_loop().create_task(after(), name="hub-clock")

    async def close(self, app: web.Application) -> None:
        if self._last is not None:
            await asyncio.gather(self._last, return_exceptions=True)


CLOCK_CHORES_KEY = web.AppKey("hub_clock_chores", ClockChores)  # marking and releasing what it held meanwhile


async def _hub_clock_found(app: web.Application, offset_ms: int) -> None:
    try:
        await app[STORE_KEY].hub_clock_found(offset_ms)
    except StoreError as err:
        log.error("Could not note the hub's own clock in the quarantine and the credentials: %s.", err)


async def _release_hub_clock(app: web.Application, *, right: bool = True) -> None:
    """Release what the hub held because of its own clock; ``right``: its clock looks right again (kept for the
    other hub processes sharing the database first, ``HubStore.hub_clock_right``)."""
    try:
        if right:
            await app[STORE_KEY].hub_clock_right()
        await app[STORE_KEY].release_hub_clock(app[SETTINGS_KEY].clock_window_s * 1000, RELEASED_BY_HUB, if_right=True)
    except StoreError as err:
        log.error("Could not release the events held because of the hub's own clock: %s.", err)
    else:
        feed.poke(app)  # committed: the counts they moved go out on the change feed


def _check_sender(who: AgentIdentity, agent_id: str) -> None:
    if agent_id != who.agent_id:
        log.warning(
            "refused a sync request naming agent %s sent with the credential of agent %s", agent_id, who.agent_id
        )
        raise CredentialOfAnotherAgent(who.agent_id, agent_id)


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


async def livez(request: web.Request) -> web.Response:
    """Liveness: the process answers (as it does from its start, while it migrates, hub.starting); no credential
    and no database asked: a database failing is /healthz's to say, and restarting the hub does not mend it."""
    return _json({"status": "ok"})


async def healthz(request: web.Request) -> web.Response:
    """Readiness and database health; needs no credential."""
    again = {"Retry-After": retry_after_value(DB_RETRY_AFTER_S)}  # as every other 503 says when to ask again
    try:
        db = await request.app[STORE_KEY].health()
    except StoreClosed:
        return problems.response(
            503, "the hub is shutting down; its store is closed", health="unavailable",
            db={"error": "the hub store is closed"}, headers=again,
        )  # fmt: skip
    except StoreError as err:
        log.warning("the health check found the database failing: %s", err)
        return problems.response(
            503, f"the hub database fails its health check ({err})", health="error", db={"error": str(err)},
            headers=again,
        )  # fmt: skip
    return _json({"status": "ok", "db": db})


async def get_location_counts(request: web.Request) -> web.StreamResponse:
    """Counts of every SKU at one location, by SKU, a page at a time (``next``/``cursor``)."""
    location = views.location_param(request.match_info["location"])
    if csvexport.wants_csv(request):  # every page, streamed (hub/csvexport.py)
        return await csvexport.counts(request, {"limit", "cursor"}, location=location)
    params = views.Query(request, {"limit", "cursor"})
    body = await paging.counts_page(request, params, LIMIT_DEFAULT, LIMIT_MAX, location=location)
    return _json({"location": location, **body})


async def get_sku_counts(request: web.Request) -> web.StreamResponse:
    """Counts of one SKU at every location, by location, a page at a time (``next``/``cursor``)."""
    sku = views.sku_param(request.match_info["sku"])
    if csvexport.wants_csv(request):
        return await csvexport.counts(request, {"limit", "cursor"}, sku=sku)
    params = views.Query(request, {"limit", "cursor"})
    body = await paging.counts_page(request, params, LIMIT_DEFAULT, LIMIT_MAX, sku=sku)
    return _json({"sku": sku, **body})


async def get_ledger(request: web.Request) -> web.StreamResponse:
    """Events and rejected attempts, newest first in resolution order, a page at a time (``next``/``cursor``).

    ``before`` (a packed HLC) only says where the first page starts; the pages after it follow ``next``.
    """
    if csvexport.wants_csv(request):
        return await csvexport.ledger(request)
    params = views.Query(request, {"location", "sku", "limit", "before", "cursor"})
    after = paging.parse(request, paging.ledger_key, "the ledger")
    before = params.before()
    if after is not None and before is not None:
        raise web.HTTPBadRequest(
            text="give cursor or before, not both: before only says where the first page starts, "
            "and the next page is the next value of the page before it"
        )
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    rows, last = await _ledger_rows(request.app[STORE_KEY], params.location(), params.sku(), limit, before, after)
    nxt = views.dumps(None if last is None else paging.ledger_cursor(last)).encode()
    body = b'{"events":[' + b",".join(rows) + b'],"next":' + nxt + b"}"
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def _ledger_rows(
    store: HubStore, location: str | None, sku: str | None, limit: int, before: int | None, after: LedgerKey | None
) -> tuple[list[bytes], LedgerKey | None]:
    """A page of the ledger as JSON rows, and the key of its last row when more follow (its ``next``).

    Read from the store a part at a time (``csvexport.ledger_pages``, as the CSV download reads it), each part
    turned to JSON before the next is read, so the event loop serves other requests between them; and the page
    ends once it passes ``LEDGER_PAGE_BYTES``, whatever ``limit`` says. 10,000 events with attrs at their limits
    are ~95 MiB of JSON, once built in one go on the loop: one reader of such pages held every other answer ~2 s
    (docs/hub-api.md, GET /v1/ledger)."""
    out: list[bytes] = []
    size = 0
    last: LedgerKey | None = None
    parts = csvexport.ledger_pages(store, location, sku, before=before, after=after, limit=limit + 1)
    try:
        async for part in parts:
            for row in part:
                if len(out) == limit or size >= LEDGER_PAGE_BYTES:
                    return out, last  # a row follows: the page ends here, ``next`` continues after its last row
                text = views.dumps(views.ledger_row(row)).encode()
                out.append(text)
                size += len(text) + 1
                last = keys.ledger_key(row)
    finally:
        await parts.aclose()
    return out, None  # the ledger (under these filters) ends with this page


async def get_exceptions(request: web.Request) -> web.StreamResponse:
    """What the operations team should look at: negative stock, transfer differences, rejections … newest
    first, a page at a time (``next``/``cursor``), of one location, one kind, since a time (each optional); a
    cursor goes with the filter it was given out for."""
    if csvexport.wants_csv(request):
        return await csvexport.exceptions(request, request.app[SETTINGS_KEY].exception_windows())
    params = views.Query(request, {"location", "kind", "since", "limit", "cursor"})
    only = params.exception_filter()
    after = paging.parse(request, paging.exception_reader(only), "the exceptions")
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    rows = await request.app[STORE_KEY].exceptions(
        location=only.location, kind=only.kind, since_ms=only.since_ms, limit=limit + 1, after=after,
        **request.app[SETTINGS_KEY].exception_windows(),
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return _json(
        {
            "exceptions": [views.exception_row(r) for r in rows],
            "next": paging.exception_cursor(keys.exception_key(rows[-1]), only) if more else None,
        }
    )


async def get_agents(request: web.Request) -> web.StreamResponse:
    """Every agent's last sync, high-water marks and clock skew (as CSV when asked, hub/csvexport.py)."""
    if csvexport.wants_csv(request):
        return await csvexport.agents(request)
    views.Query(request, set())
    rows = await request.app[STORE_KEY].agent_status()
    return _json({"agents": [views.agent_status(r) for r in rows]})


# --- admin ------------------------------------------------------------------


async def post_dismiss_lost(request: web.Request) -> web.Response:
    """An admin's word that a store was counted again after its agent reported movements the hub lacks for good
    (``agent_movements_lost``): the agent's entries still listed leave the exceptions list. 404 when none is."""
    who = identity_of(request)
    _dismiss_lost_head(request, who)
    agent_id = request.match_info["agent_id"]
    if request.body_exists and await request.content.read(1):  # a chunked body: refused once its first byte came
        raise _lost_body_refused(request)
    dismissed = await request.app[STORE_KEY].dismiss_lost(agent_id, who.agent_id, wall_ms_now())
    if not dismissed:
        raise web.HTTPNotFound(
            text=f"agent {agent_id} has no lost movements listed; GET /v1/exceptions?kind=agent_movements_lost lists "
            "those that are (one dismissed already is not)"
        )
    log.info(
        "%s %s dismissed agent %s's report%s of movements the hub lacks for good (%s), its store counted again; they"
        " leave the exceptions list",
        who.role, who.agent_id, agent_id, "" if len(dismissed) == 1 else "s",
        ", ".join(f"seq {first}-{last}: {'at least ' if at_least else ''}{lost:,}" for first, last, lost, at_least in dismissed),
    )  # fmt: skip
    return _json({
        "agent_id": agent_id,
        "dismissed": [{"first_seq": first, "last_seq": last, "lost": lost, "at_least": at_least}
                      for first, last, lost, at_least in dismissed],
    })  # fmt: skip


def _dismiss_lost_head(request: web.Request, who: AgentIdentity) -> None:
    """What ``post_dismiss_lost`` refuses before it looks at the body, asked of a head too (hub.heads): a credential
    not an admin's, a malformed agent id, a body (the route acts on the path alone)."""
    refuse(role_refused(who, {ROLE_ADMIN}, "dismiss lost movements"))
    views.Query(request, set())
    views.text_param(values.AGENT_ID, request.match_info["agent_id"], "agent_id")
    if request.content_length:
        raise _lost_body_refused(request)


def _lost_body_refused(request: web.Request) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"{request.method} {request.path} takes no body; send the request without one")


async def put_safety_stock(request: web.Request) -> web.Response:
    """Set the safety stock held back from ``available`` for one SKU at one location."""
    who = identity_of(request)
    _safety_stock_head(request, who)
    location = views.location_param(request.match_info["location"])
    sku = views.sku_param(request.match_info["sku"])
    body = await _json_body(request)
    qty = views.whole(body.get("qty")) if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) != {"qty"}:
        raise web.HTTPBadRequest(text='the body must be a JSON object with one field, e.g. {"qty": 5}')
    if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= QTY_MAX:
        raise web.HTTPBadRequest(text=f"qty must be a whole number of units from 0 to {QTY_MAX}, got {qty!r}")
    row = await request.app[STORE_KEY].set_safety_stock(location, sku, qty)
    log.info("%s %s set the safety stock of %s at %s to %d", who.role, who.agent_id, sku, location, qty)
    return _json({"count": views.count_row(row)})


def _safety_stock_head(request: web.Request, who: AgentIdentity) -> None:
    """What ``put_safety_stock`` refuses before it reads the body, asked of a head too (hub.heads)."""
    refuse(role_refused(who, {ROLE_ADMIN}, "change safety stock"))
    views.Query(request, set())
    views.location_param(request.match_info["location"])
    views.sku_param(request.match_info["sku"])


async def _json_body(request: web.Request) -> Any:
    raw = await _read_body(request)
    try:
        return views.loads(raw)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
