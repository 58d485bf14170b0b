"""The agent's local HTTP API for handhelds, and the handheld page it serves.

Every route is documented in docs/agent-api.md (a test checks it). Errors are
JSON ``{"error": {"code": …, "message": …}}`` with one sentence a person can
act on. Everything under ``/api/v1`` except ``login`` needs a staff sign-in:
the cookie the page gets, or ``Authorization: Bearer <token>``. A request that
changes something must send ``Content-Type: application/json`` (with the
SameSite=Strict cookie, this keeps other web pages from posting on a signed-in
handheld's behalf).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.errors import OutboxClosed, OutboxError, disk_full
from agent.localapi import views
from agent.localapi.auth import AuthError, LockedOut, Login, StaffDirectory
from agent.localapi.hosts import HostCheck
from agent.outbox import Outbox
from agent.pos import PosFolderState
from agent.saved import waiting_in
from agent.scanning import SAME_CODE_S, SAME_CODE_S_MAX
from agent.sessions import (
    AlreadyReceived,
    ExceedsOnHand,
    InvalidSessionInput,
    SessionConflict,
    SessionError,
    SessionManager,
    SessionNotFound,
    SessionNotOpen,
    SessionStatus,
    SessionStoreClosed,
    UnlikelyQuantity,
)
from agent.sessions.model import check_scan_id, check_sku
from agent.sessions.store import LINES_MAX
from protocol import values
from protocol.logsafety import RepeatLog

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE_NAME = "shelfsync_login"
BODY_MAX_BYTES = 1 << 20
# A request's body must arrive whole within this. Without it a device that sends a head and then trickles its
# body a byte every few seconds holds a connection for ever: 256 such connections (guard.CONNECTIONS_MAX) kept
# every handheld out (503) for as long as they dripped. A handheld's bodies are a few hundred bytes.
BODY_TIMEOUT_S = 15.0
JSON_DEPTH_MAX = 16  # every body here is a flat object; deeper nesting is refused before any use
LIST_LIMIT_MAX = 500
LINES_SHOWN_MAX = 20_000
JSON_TYPE = "application/json"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
# The only names /static/{name} serves: the page's own files, listed once. A name is looked up, never joined to a
# path: on Windows "..\\x.js", "C:\\x.js" or "\\\\server\\share\\x.js" joined to the folder lead out of it.
STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}


@dataclass(frozen=True, slots=True)
class LocalApiContext:
    """What the routes work with."""

    sessions: SessionManager
    outbox: Outbox
    staff: StaffDirectory
    hub_url: Callable[[], str | None] = lambda: None  # the hub address in use (configured or discovered)
    pos_state: Callable[[], PosFolderState | None] = lambda: None  # the POS drop folder's watcher, if one runs
    readers: Sequence[str] = ()  # back-office scanner ids a session can be bound to
    login_ttl_s: float = 12 * 3600.0
    public_paths: frozenset[str] = field(default_factory=lambda: frozenset({"/", "/healthz", "/api/v1/login"}))
    allowed_hosts: tuple[str, ...] = ()  # names the agent is reached by besides its own (agent.localapi.hosts)
    same_code_s: float = SAME_CODE_S  # the page takes the same code again within this long for a double read (0: off)


CONTEXT_KEY = web.AppKey("context", LocalApiContext)
HOSTS_KEY = web.AppKey("hosts", HostCheck)
LOGIN_KEY = web.RequestKey("login", Login)
CUT_OFF_KEY = web.AppKey("cut_off", RepeatLog)  # requests whose device closed the connection before their body ended
WAITING_KEY = web.AppKey("waiting", RepeatLog)  # sign-ins refused while their device and staff id wait (429)
UNKNOWN_KEY = web.AppKey("unknown", RepeatLog)  # sign-ins refused for a staff id that is not configured
LATE_KEY = web.AppKey("late", RepeatLog)  # requests cut off (408) when their body did not arrive in time
MADE_MS_MAX = 2**53  # a client's clock in ms (performance.timeOrigin + performance.now(), Date.now())
BOUNCES_KEPT_MAX = 10_000  # (session, sign-in) pairs remembered; past it those older than SAME_CODE_S_MAX are dropped


@dataclass(frozen=True, slots=True)
class _Scanned:
    what: tuple[str, str]  # ("code", the text as sent) or ("sku", the SKU keyed)
    scan_id: object
    made_ms: float | None  # the client's own clock when it was made, if it said
    at_s: float  # the agent's monotonic clock when it arrived


class Bounces:
    """The scan before of each sign-in in each session, for ``POST …/scans``' trigger-bounce rule: the same code
    again less than ``same_code_s`` after it is one label read twice, as at the agent's scanners and on the page,
    whichever client sends it. Measured by the client's ``made_ms`` when both scans carry it (scans queued behind a
    slow agent arrive back to back, made seconds apart), else by when they arrived."""

    def __init__(self, monotonic_s: Callable[[], float] = time.monotonic) -> None:
        self._before: dict[tuple[str, str], _Scanned] = {}
        self._monotonic_s = monotonic_s

    def check(
        self, key: tuple[str, str], what: tuple[str, str], scan_id: object, made_ms: float | None, window_s: float
    ) -> int | None:
        """Note this scan as the key's scan before; return how many ms after the same code it came when it is a
        bounce, else None. A scan sent again by its ``scan_id`` is the same scan, never its own bounce."""
        now_s = self._monotonic_s()
        before = self._before.get(key)
        if len(self._before) >= BOUNCES_KEPT_MAX and before is None:
            old = now_s - SAME_CODE_S_MAX
            self._before = {k: v for k, v in self._before.items() if v.at_s >= old}
        self._before[key] = _Scanned(what, scan_id, made_ms, now_s)
        if before is None or not window_s or before.what != what or (scan_id is not None and scan_id == before.scan_id):
            return None
        if made_ms is not None and before.made_ms is not None:
            gap_ms = made_ms - before.made_ms
        else:
            gap_ms = (now_s - before.at_s) * 1000
        return round(gap_ms) if 0 <= gap_ms < window_s * 1000 else None


BOUNCES_KEY = web.AppKey("bounces", Bounces)  # each sign-in's scan before, per session: a trigger bounce repeats it


def create_app(context: LocalApiContext, hosts: HostCheck | None = None) -> web.Application:
    """The app; ``hosts`` says which ``Host`` names it answers (default: loopback, this machine's name and
    ``context.allowed_hosts``)."""
    app = web.Application(
        client_max_size=BODY_MAX_BYTES,
        middlewares=[_headers_middleware, _error_middleware, _host_middleware, _auth_middleware],
    )
    app[CONTEXT_KEY] = context
    app[BOUNCES_KEY] = Bounces()
    app[HOSTS_KEY] = hosts if hosts is not None else HostCheck("127.0.0.1", context.allowed_hosts)
    # A device that goes out of the Wi-Fi's reach mid-request, or a hostile one opening hundreds of requests and
    # dropping them, logged a traceback each (ERROR, "failed with an unexpected error"): counted, one line a minute.
    app[CUT_OFF_KEY] = RepeatLog(
        log, "Local API dropped", "request cut off by its device|requests cut off by their devices"
    )

    # Sign-ins sent while their staff id waits on a device cost no hash: one device sent 2,000 a second, a WARNING
    # line each. The first is said at once, the rest counted.
    app[WAITING_KEY] = RepeatLog(
        log,
        "Local API refused",
        "sign-in while its device waits after wrong PINs|sign-ins while their devices wait after wrong PINs",
        level=logging.WARNING,
    )

    app[UNKNOWN_KEY] = RepeatLog(
        log, "Local API refused", "sign-in of an unknown staff id|sign-ins of unknown staff ids", level=logging.WARNING
    )

    app[LATE_KEY] = RepeatLog(
        log, "Local API cut off", "request whose body came too late|requests whose bodies came too late"
    )

    async def flush_counts(app: web.Application) -> None:
        for counted in (app[CUT_OFF_KEY], app[WAITING_KEY], app[UNKNOWN_KEY], app[LATE_KEY]):
            counted.flush()

    app.on_cleanup.append(flush_counts)
    r = app.router
    r.add_get("/", index, name="index")
    r.add_get("/static/{name}", static, name="static")
    r.add_get("/healthz", healthz, name="healthz")
    r.add_post("/api/v1/login", login, name="login")
    r.add_post("/api/v1/logout", logout, name="logout")
    r.add_get("/api/v1/me", me, name="me")
    r.add_get("/api/v1/status", status, name="status")
    r.add_get("/api/v1/readers", readers, name="readers")
    r.add_get("/api/v1/skus/{sku}/count", sku_count, name="sku_count")
    r.add_get("/api/v1/sessions", list_sessions, name="sessions")
    r.add_post("/api/v1/sessions", open_session, name="open_session")
    r.add_get("/api/v1/sessions/{id}", get_session, name="session")
    r.add_post("/api/v1/sessions/{id}/scans", add_scan, name="scan")
    r.add_post("/api/v1/sessions/{id}/undo", undo, name="undo")
    r.add_post("/api/v1/sessions/{id}/unstored", send_unstored, name="send_unstored")
    r.add_post("/api/v1/sessions/{id}/not_added/dismiss", dismiss_not_added, name="dismiss_not_added")
    r.add_post("/api/v1/sessions/{id}/lines/{no}/confirm", confirm_line, name="confirm_line")
    r.add_post("/api/v1/sessions/{id}/lines/{no}/reject", reject_line, name="reject_line")
    r.add_post("/api/v1/sessions/{id}/close", close_session, name="close")
    r.add_post("/api/v1/sessions/{id}/cancel", cancel_session, name="cancel")
    r.add_put("/api/v1/sessions/{id}/reader", bind_reader, name="bind_reader")
    r.add_post("/api/v1/refused/{event_id}/dismiss", dismiss_refused, name="dismiss_refused")
    return app


# --- middlewares -------------------------------------------------------------------


RETRY_SOON = {"Retry-After": "1"}  # an agent restarting answers again within seconds: the handheld sends it again


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers, dumps=dumps)


def dumps(obj: Any) -> str:
    """Strict JSON of an answer (no NaN/Infinity, no lone surrogate: ``values.json_safe`` makes such a value safe)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = None
    if text is None or values.SURROGATE_RE.search(text):
        text = json.dumps(values.json_safe(obj), ensure_ascii=False, allow_nan=False)
    return text


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type",
               421: "misdirected_request"}  # fmt: skip


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else None
        if isinstance(exc, web.HTTPNotFound) and text is None:
            text = f"there is no route {request.path}; the routes are listed in docs/agent-api.md"
        if isinstance(exc, web.HTTPRequestEntityTooLarge):  # aiohttp's own words otherwise, unlike every other error
            text = f"the body is larger than {BODY_MAX_BYTES >> 20} MiB; a handheld's requests are a few hundred bytes"
        if isinstance(exc, web.HTTPMethodNotAllowed) and text is None:
            text = f"{request.path} does not take {request.method}; it takes {', '.join(sorted(exc.allowed_methods))}"
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = error_response(
            exc.status, _HTTP_CODES.get(exc.status, f"http_{exc.status}"), text or exc.reason, keep
        )
        if isinstance(exc, web.HTTPRequestTimeout):
            response.force_close()  # the rest of the body may still trickle in: the connection cannot carry another
        return response
    except LockedOut as err:
        return error_response(429, "locked_out", str(err), {"Retry-After": str(max(1, round(err.retry_after_s)))})
    except AuthError as err:
        return error_response(401, "unauthorized", str(err))
    except SessionNotFound as err:
        return error_response(404, "not_found", str(err))
    except AlreadyReceived as err:
        return error_response(409, "already_received", str(err))
    except ExceedsOnHand as err:
        return error_response(409, "exceeds_on_hand", str(err))
    except UnlikelyQuantity as err:
        return error_response(409, "unlikely_quantity", str(err))
    except (SessionNotOpen, SessionConflict) as err:
        return error_response(409, "conflict", str(err))
    except InvalidSessionInput as err:
        return error_response(400, "bad_request", str(err))
    except (SessionStoreClosed, OutboxClosed):
        return error_response(503, "unavailable", "the agent is shutting down; try again shortly", RETRY_SOON)
    except (SessionError, OutboxError) as err:
        log.error("%s %s failed: %s", request.method, request.path, err)
        if disk_full(err):
            # 507, not 503: nothing changes until someone frees disk space, and a client told "unavailable" (come
            # back soon) would send the same write again and again. The message says what to do.
            return error_response(507, "insufficient_storage", f"the agent could not do that right now: {err}")
        return error_response(503, "unavailable", f"the agent could not do that right now: {err}")
    except Exception:
        log.exception(
            "%s %s failed with an unexpected error; the local API keeps serving", request.method, request.path
        )
        return error_response(500, "internal_error", "the agent failed to handle this request; the cause is in its log")


@web.middleware
async def _host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request naming a host that is not this agent's: a DNS-rebinding web page's (agent.localapi.hosts)."""
    hosts = request.app[HOSTS_KEY]
    header = request.headers.get("Host")
    if not await hosts.answers(header):
        hosts.refused(header or "", request.remote)
        raise web.HTTPMisdirectedRequest(
            text=f"this agent does not answer to the name {values.shown(header or '', 60)};"
            " if it is reached by that name, add it to allowed_hosts in [localapi]"
        )
    return await handler(request)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT_KEY]
    if request.path in ctx.public_paths or request.path.startswith("/static/"):
        return await handler(request)
    if request.method not in ("GET", "HEAD") and request.content_type != JSON_TYPE:
        raise web.HTTPUnsupportedMediaType(text=f"send the request with Content-Type: {JSON_TYPE}")
    token = _token(request)
    login = ctx.staff.check(token) if token else None
    if login is None:
        raise web.HTTPUnauthorized(text="sign in with your staff id and PIN first (POST /api/v1/login)")
    request[LOGIN_KEY] = login
    return await handler(request)


@web.middleware
async def _headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")  # frame-ancestors for a WebView that predates it
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE_NAME, "")


def _who(request: web.Request) -> Login:
    login: Login = request[LOGIN_KEY]
    return login


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != JSON_TYPE:
        raise web.HTTPUnsupportedMediaType(text=f"send the request with Content-Type: {JSON_TYPE}")
    waiting = getattr(request.protocol, "reading_body", None)  # agent.localapi.guard's connections say so
    try:
        with waiting() if waiting is not None else contextlib.nullcontext():
            async with asyncio.timeout(BODY_TIMEOUT_S):
                raw = await request.read()
    except TimeoutError:
        request.app[LATE_KEY].record(
            request.remote, f"{request.method} {request.path}: its body did not arrive within {BODY_TIMEOUT_S:g} s"
        )
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {BODY_TIMEOUT_S:g} s; send it again"
        ) from None
    except ConnectionResetError:  # the device closed the connection (or left the Wi-Fi) before its body ended
        request.app[CUT_OFF_KEY].record(
            request.remote, f"{request.method} {request.path}: the connection closed before the body arrived whole"
        )
        raise web.HTTPBadRequest(text="the connection closed before the request body arrived whole") from None
    if not raw.strip():
        return {}
    try:  # the one rule for JSON bodies (protocol.values): no NaN/Infinity, no lone surrogates, bounded depth
        body = values.loads_json(raw, JSON_DEPTH_MAX, unique_keys=True)
    except values.JsonRefused as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err}); send a flat JSON object") from err
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(allowed))}")


def _whole_number(text: str, name: str, lo: int, hi: int) -> int:
    """A query parameter that is a whole number from ``lo`` to ``hi``, or a 400. ASCII digits only: "²" is a
    digit to ``str.isdigit`` and not to ``int``, and ``int`` of 5,000 digits raises."""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(hi)) and lo <= int(text) <= hi):
        raise web.HTTPBadRequest(text=f"{name} must be a whole number from {lo} to {hi}, got {values.shown(text, 20)}")
    return int(text)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


# --- page and health ---------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    """The handheld page."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def static(request: web.Request) -> web.FileResponse:
    """The page's own script and style sheet (no CDN, nothing from the internet)."""
    name = request.match_info["name"]
    path = STATIC_FILES.get(name)
    if path is None:
        raise web.HTTPNotFound(text=f"there is no file {name!r} here")
    return web.FileResponse(path, headers={"Content-Type": f"{STATIC_TYPES[path.suffix]}; charset=utf-8"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness; no sign-in needed."""
    outbox = request.app[CONTEXT_KEY].outbox
    return _json({"status": "ok", "agent_id": outbox.agent_id, "location": outbox.location})


# --- signing in --------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    """Sign in with a staff id and PIN; answers a token and sets the page's cookie."""
    ctx = request.app[CONTEXT_KEY]
    body = await _body(request)
    _fields(body, {"staff", "pin"})
    staff, pin = body.get("staff"), body.get("pin")
    if not isinstance(staff, str) or not isinstance(pin, str):
        raise web.HTTPBadRequest(text='send {"staff": "<staff id>", "pin": "<PIN>"}')
    if (problem := values.STAFF.problem(staff.strip())) is not None:
        raise web.HTTPBadRequest(text=f"staff {problem}; a staff id is {values.STAFF.rule()}")
    try:
        token, who = await ctx.staff.sign_in(staff.strip(), pin, remote=request.remote or "")
    except LockedOut as err:  # costs no hash: a device sends thousands a second, so they are counted
        request.app[WAITING_KEY].record(request.remote, f"staff id {staff[:32]!r}: {err}")
        raise
    except AuthError as err:
        if ctx.staff.knows(staff.strip()):
            log.warning("Sign-in refused for staff id %r from %s: %s.", staff[:32], request.remote, err)
        else:  # guesses of ever new staff ids from ever new addresses pass every brake: counted
            request.app[UNKNOWN_KEY].record(request.remote, f"{staff[:32]!r} is no such staff id")
        raise
    log.info("Staff %s signed in from %s.", who.staff, request.remote)
    response = _json({"staff": who.staff, "token": token, "expires_in_s": ctx.login_ttl_s})
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Strict", path="/", max_age=int(ctx.login_ttl_s))
    return response


async def logout(request: web.Request) -> web.Response:
    """Sign out: the token stops working."""
    request.app[CONTEXT_KEY].staff.sign_out(_token(request))
    response = _json({"signed_out": True})
    response.del_cookie(COOKIE_NAME, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    """Who is signed in, at which store, and the page's setting for a trigger bounce."""
    ctx = request.app[CONTEXT_KEY]
    return _json(
        {
            "staff": _who(request).staff,
            "agent_id": ctx.outbox.agent_id,
            "location": ctx.outbox.location,
            "same_code_s": ctx.same_code_s,  # the page takes the same code again within this long for a double read
        }
    )


# --- status and counts -----------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """Backlog, whether the hub answered at the last sync, the last sync, clock skew, the POS drop folder."""
    ctx = request.app[CONTEXT_KEY]
    stats = await ctx.outbox.stats()
    active = await ctx.sessions.list(active=True, limit=LIST_LIMIT_MAX)
    saved = await waiting_in(Path(ctx.outbox.path), ctx.outbox.agent_id)  # agent.saved: sent by the agent itself
    reserve = ctx.outbox.reserve.state() if ctx.outbox.reserve is not None else None
    return _json(views.status_json(stats, ctx.hub_url(), len(active), ctx.pos_state(), saved, reserve))


async def readers(request: web.Request) -> web.Response:
    """The back-office scanners, and the session each one feeds."""
    ctx = request.app[CONTEXT_KEY]
    out = []
    for reader_id in ctx.readers:
        session = await ctx.sessions.for_reader(reader_id)
        out.append({"id": reader_id, "session": None if session is None else session.id})
    return _json({"readers": out})


async def sku_count(request: web.Request) -> web.Response:
    """A SKU's local count: the hub's count plus this store's movements not yet acknowledged."""
    ctx = request.app[CONTEXT_KEY]
    sku = check_sku(request.match_info["sku"])
    location = request.query.get("location") or ctx.outbox.location
    if (problem := values.LOCATION.problem(location)) is not None:  # the rule the hub reads locations by
        raise web.HTTPBadRequest(text=f"location {problem}; a location code is {values.LOCATION.rule()}")
    count = await ctx.outbox.counts.local_count(location, sku)
    return _json(views.count_json(count, agent_location=ctx.outbox.location))


# --- sessions ------------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    """Open sessions (``?state=active``, the default) or finished ones (``?state=done``), newest first."""
    state = request.query.get("state", "active")
    if state not in ("active", "done"):
        raise web.HTTPBadRequest(text=f"state must be active or done, got {state[:20]!r}")
    limit = _whole_number(request.query.get("limit", "100"), "limit", 1, LIST_LIMIT_MAX)
    sessions = request.app[CONTEXT_KEY].sessions
    found = await sessions.list(active=state == "active", limit=limit)
    # What the hub refused of a closed session (after the close, when the agent did not know better) reaches the
    # staff here, on the handheld's home screen, until one of them dismisses it or newer set-asides push it out.
    refused = await sessions.refused_not_dismissed()
    held = await sessions.held_counts(found)  # a scanner's lines waiting for a person, shown on the home screen too
    return _json(
        {
            "sessions": [
                {
                    **views.session_json(s),
                    "held": held.get(s.id, 0),
                    "unstored": sessions.unstored_count(s.id),
                    "not_added": sessions.not_added_count(s.id),
                }
                for s in found
            ],
            "refused": [views.refused_json(r) for r in refused],
        }
    )


async def dismiss_refused(request: web.Request) -> web.Response:
    """Dismiss one refusal from the home screen (recorded: it stays dismissed; what was refused is kept)."""
    await _body(request)
    event_id = request.match_info["event_id"]
    refused = await request.app[CONTEXT_KEY].sessions.dismiss_refused(event_id, by=_who(request).staff)
    if refused is None:
        raise web.HTTPNotFound(text=f"the hub refused no session movement {event_id[:40]!r}")
    return _json({"dismissed": views.refused_json(refused)})


async def open_session(request: web.Request) -> web.Response:
    """Open a session."""
    ctx = request.app[CONTEXT_KEY]
    body = await _body(request)
    again = body.pop("again", False)  # a delivery or transfer received here before, received again on purpose
    if not isinstance(again, bool):
        raise web.HTTPBadRequest(text="again must be true or false")
    spec = views.spec_from_json(body)
    if spec.reader_id is not None and spec.reader_id not in ctx.readers:
        raise web.HTTPBadRequest(text=_no_reader(spec.reader_id, ctx.readers))
    session = await ctx.sessions.open(spec, by=_who(request).staff, again=again)
    return _json({"session": views.session_json(session)}, status=201)


async def get_session(request: web.Request) -> web.Response:
    """A session with its newest lines (``?lines=``, default 200) and running totals."""
    shown = _whole_number(request.query.get("lines", str(views.LINES_SHOWN_DEFAULT)), "lines", 0, LINES_SHOWN_MAX)
    view = await request.app[CONTEXT_KEY].sessions.view(request.match_info["id"])
    return _json(views.view_json(view, shown))


async def add_scan(request: web.Request) -> web.Response:
    """Add a scanned barcode (``code``) or a SKU keyed by hand (``sku``), ``qty`` times."""
    body = await _body(request)
    _fields(body, {"code", "sku", "qty", "disposition", "scan_id", "confirm", "made_ms"})
    ctx = request.app[CONTEXT_KEY]
    sessions = ctx.sessions
    session_id, by = request.match_info["id"], _who(request).staff
    qty, scan_id = body.get("qty", 1), body.get("scan_id")
    confirm = body.get("confirm", False)  # a quantity far past the usual (UnlikelyQuantity), said right by the staff
    if not isinstance(confirm, bool):
        raise web.HTTPBadRequest(text="confirm must be true or false")
    if ("code" in body) == ("sku" in body):
        raise web.HTTPBadRequest(text='send either "code" (what was scanned) or "sku" (keyed by hand)')
    if scan_id is not None:
        check_scan_id(scan_id)  # a bad request is no scan before the next one
    made_ms = body.get("made_ms")
    if made_ms is not None and not (
        isinstance(made_ms, int | float) and not isinstance(made_ms, bool) and math.isfinite(made_ms)
        and 0 <= made_ms <= MADE_MS_MAX
    ):  # fmt: skip
        raise web.HTTPBadRequest(text="made_ms must be a number of milliseconds on the client's clock, 0 or more")
    what = ("code", str(body["code"])) if "code" in body else ("sku", str(body["sku"]))
    deliberate = confirm or ("qty" in body and body["qty"] != 1)
    bounce_ms = await _bounce(request, session_id, what, scan_id, made_ms, deliberate=deliberate)
    if bounce_ms is not None:
        log.info(
            "Session %s: a scan of %s came %d ms after the same scan before from the same sign-in; refused as a"
            " double read.",
            session_id, values.shown(str(what[1]), 40), bounce_ms,
        )  # fmt: skip
        return error_response(
            409,
            "double_read",
            f"the same code came {bounce_ms:,} ms after this sign-in's scan of it before, faster than anyone"
            " scans two items (a trigger read one label twice); nothing was added: if it was a second item, scan it"
            " again (or send it with its quantity)",
        )
    if "code" in body:
        if not isinstance(body["code"], str):
            raise web.HTTPBadRequest(text="code must be the scanned text")
        line = await sessions.scan(
            session_id,
            body["code"],
            by=by,
            qty=qty,
            disposition=body.get("disposition"),
            scan_id=scan_id,
            confirm=confirm,
        )
    else:
        line = await sessions.key(
            session_id, body["sku"], qty, by=by, disposition=body.get("disposition"), scan_id=scan_id, confirm=confirm
        )
    view = await sessions.view(session_id)
    return _json({"line": views.line_json(line), **views.view_json(view)}, status=201)


async def _bounce(
    request: web.Request,
    session_id: str,
    what: tuple[str, str],
    scan_id: object,
    made_ms: float | None,
    *,
    deliberate: bool,
) -> int | None:
    """How many ms after the same scan of this sign-in in this session the scan came when it is a trigger bounce
    (``[localapi] same_code_s``), else None. ``deliberate`` (a quantity of its own, not 1, or a confirmation: a
    person's word) is never one, nor a scan sent again by its ``scan_id`` (the scan it was)."""
    ctx = request.app[CONTEXT_KEY]
    key = (session_id, _token(request))
    gap_ms = request.app[BOUNCES_KEY].check(key, what, scan_id, made_ms, 0.0 if deliberate else ctx.same_code_s)
    if gap_ms is None:
        return None
    if isinstance(scan_id, str) and await ctx.sessions.store.scanned(session_id, scan_id) is not None:
        return None
    with contextlib.suppress(SessionNotFound):  # a session taking no scans says so, in its own words
        if (await ctx.sessions.store.get(session_id)).status is not SessionStatus.OPEN:
            return None
    return gap_ms


async def undo(request: web.Request) -> web.Response:
    """Undo the newest line of the person asking that still counts, or the line ``line`` of theirs (the same
    Undo sent again after its answer was lost takes back nothing more)."""
    body = await _body(request)
    _fields(body, {"line"})
    no = body.get("line")
    if no is not None and (not isinstance(no, int) or isinstance(no, bool) or not 1 <= no <= LINES_MAX):
        raise web.HTTPBadRequest(text=f"line must be the number of a line of the session, 1 to {LINES_MAX:,}")
    sessions = request.app[CONTEXT_KEY].sessions
    line = await sessions.undo(request.match_info["id"], by=_who(request).staff, no=no)
    view = await sessions.view(request.match_info["id"])
    return _json({"undone": None if line is None else views.line_json(line), **views.view_json(view)})


async def send_unstored(request: web.Request) -> web.Response:
    """Send again the scans of the session's scanner that a full disk refused (its view's ``unstored``)."""
    await _body(request)
    sessions = request.app[CONTEXT_KEY].sessions
    session_id = request.match_info["id"]
    added, refused = await sessions.send_unstored(session_id, by=_who(request).staff)
    view = await sessions.view(session_id)
    return _json(
        {
            "added": [views.line_json(line) for line in added],
            "refused": [{**views.unstored_json(u), "why": why} for u, why in refused],
            **views.view_json(view),
        }
    )


async def dismiss_not_added(request: web.Request) -> web.Response:
    """Mark the scans of the session's scanner that it did not take (its view's ``not_added``) seen."""
    await _body(request)
    view = await request.app[CONTEXT_KEY].sessions.dismiss_not_added(request.match_info["id"], by=_who(request).staff)
    return _json(views.view_json(view))


async def confirm_line(request: web.Request) -> web.Response:
    """Confirm a line a back-office scanner added held (a quantity far past the usual): it counts from now on."""
    return await _decide_line(request, confirm=True)


async def reject_line(request: web.Request) -> web.Response:
    """Reject a held line: it is kept for the record, undone, and never booked."""
    return await _decide_line(request, confirm=False)


async def _decide_line(request: web.Request, *, confirm: bool) -> web.Response:
    await _body(request)
    sessions = request.app[CONTEXT_KEY].sessions
    session_id, by = request.match_info["id"], _who(request).staff
    no = _whole_number(request.match_info["no"], "the line number", 1, LINES_MAX)
    if confirm:
        line = await sessions.confirm_line(session_id, no, by=by)
    else:
        line = await sessions.reject_line(session_id, no, by=by)
    view = await sessions.view(session_id)
    return _json({"line": views.line_json(line), **views.view_json(view)})


async def close_session(request: web.Request) -> web.Response:
    """Close: book the session's events (one outbox transaction) and answer the report."""
    body = await _body(request)
    _fields(body, {"zero_unscanned"})
    zero = body.get("zero_unscanned", False)
    if not isinstance(zero, bool):
        raise web.HTTPBadRequest(text="zero_unscanned must be true or false")
    session = await request.app[CONTEXT_KEY].sessions.close(
        request.match_info["id"], by=_who(request).staff, zero_unscanned=zero
    )
    return _json({"session": views.session_json(session)})


async def cancel_session(request: web.Request) -> web.Response:
    """Cancel: nothing is booked."""
    await _body(request)
    session = await request.app[CONTEXT_KEY].sessions.cancel(request.match_info["id"], by=_who(request).staff)
    return _json({"session": views.session_json(session)})


async def bind_reader(request: web.Request) -> web.Response:
    """Let a back-office scanner feed this session (``{"reader_id": null}`` unbinds)."""
    ctx = request.app[CONTEXT_KEY]
    body = await _body(request)
    _fields(body, {"reader_id"})
    reader_id = body.get("reader_id")
    if reader_id is not None and reader_id not in ctx.readers:
        raise web.HTTPBadRequest(text=_no_reader(reader_id, ctx.readers))
    session = await ctx.sessions.bind_reader(request.match_info["id"], reader_id)
    return _json({"session": views.session_json(session)})


def _no_reader(reader_id: object, known: Sequence[str]) -> str:
    return f"there is no scanner {str(reader_id)[:40]!r}; the scanners are: {', '.join(known) or 'none configured'}"
