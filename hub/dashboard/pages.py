"""The dashboard's pages: sign-in, the single-page app and its static assets.

Plain HTML, CSS and JavaScript files shipped in this package: nothing to
build, nothing fetched from elsewhere (the Content-Security-Policy allows this
origin only). The app reads the JSON API with its session cookie and follows
the change feed over server-sent events.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from hub import heads, problems, proxies, ratelimit
from hub.dashboard.sessions import DashboardSessions, SignInRefused
from protocol.logsafety import RepeatLog

log = logging.getLogger(__name__)

SESSIONS_KEY = web.AppKey("dashboard_sessions", DashboardSessions)
ASSETS = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
PAGES = ("index.html", "sign-in.html")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null on the form POST
    "X-Frame-Options": "DENY",
}
SIGN_IN_FORM_MAX_BYTES = 4_096
FORM_TYPES = frozenset({"", "application/x-www-form-urlencoded", "multipart/form-data"})  # what request.post() reads
ERROR_SLOT = "<!--error-->"
ROUTE_NAMES = frozenset(
    {
        "root",
        "dashboard_redirect",
        "dashboard",
        "dashboard_sign_in_page",
        "dashboard_sign_in",
        "dashboard_sign_out",
        "dashboard_asset",
    }
)


def _read(name: str) -> bytes:
    return resources.files("hub.dashboard").joinpath(name).read_bytes()


FILES_KEY = web.AppKey("dashboard_files", dict[str, bytes])
# The origin of the hub's public_url ("https://hub.example.com"), "" without one: behind a reverse proxy the browser's
# origin, which the Host the proxy forwards (nginx's default: the hub's own 127.0.0.1:8470) does not name.
PUBLIC_ORIGIN_KEY = web.AppKey("dashboard_public_origin", str)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Refused sign-ins: the first of a quiet spell logged at once, a flood as one line a minute with a count
SIGN_INS_REFUSED_KEY = web.AppKey("dashboard_sign_ins_refused", RepeatLog)


def setup(app: web.Application, sessions: DashboardSessions, public_url: str = "") -> None:
    app[SESSIONS_KEY] = sessions
    app[PUBLIC_ORIGIN_KEY] = origin_of(public_url) or ""
    app[FILES_KEY] = {name: _read(name) for name in (*PAGES, *ASSETS)}
    app[SIGN_INS_REFUSED_KEY] = RepeatLog(log, "refused", "dashboard sign-in|dashboard sign-ins")
    app.on_cleanup.append(_flush_refused)
    r = app.router
    r.add_get("/", get_root, name="root")
    r.add_get("/dashboard", get_root, name="dashboard_redirect")
    r.add_get("/dashboard/", get_dashboard, name="dashboard")
    r.add_get("/dashboard/sign-in", get_sign_in, name="dashboard_sign_in_page")
    heads.add(app, "POST", "/dashboard/sign-in", post_sign_in, name="dashboard_sign_in", guard=_sign_in_head)  # public
    ratelimit.answer_refusals(app, "dashboard_sign_in", _sign_in_limited)
    heads.add(app, "POST", "/dashboard/sign-out", post_sign_out, name="dashboard_sign_out", guard=_sign_out_head)
    r.add_get("/dashboard/assets/{name}", get_asset, name="dashboard_asset")


def _page(
    request: web.Request, name: str, status: int = 200, error: str | None = None, headers: Mapping[str, str] = {}
) -> web.Response:
    if status >= 400 and not _from_browser(request):  # a script, not a browser's form:
        return problems.response(status, (error or "the sign-in was refused").rstrip("."))  # the API's error shape
    body = request.app[FILES_KEY][name]
    if name == "sign-in.html":
        slot = f'<p class="form-error" role="alert">{html.escape(error)}</p>' if error else ""
        body = body.replace(ERROR_SLOT.encode(), slot.encode())
    headers = {**headers, **SECURITY_HEADERS, "Cache-Control": "no-store"}
    return web.Response(body=body, status=status, content_type="text/html", charset="utf-8", headers=headers)


def _from_browser(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _sign_in_limited(request: web.Request, refused: web.HTTPTooManyRequests) -> web.Response | None:
    """A person's sign-in past its address's refused attempts (hub.ratelimit.RefusedAttempts): the sign-in page,
    429, saying how long to wait, with the refusal's Retry-After and RateLimit fields. A script gets the problem."""
    if not _from_browser(request):
        return None
    kept = {k: v for k, v in refused.headers.items() if k.lower() in ("retry-after", "ratelimit-policy", "ratelimit")}
    wait = refused.headers["Retry-After"]
    said = f"Too many refused sign-ins from this address; try again in {wait} s."
    return _page(request, "sign-in.html", 429, said, headers=kept)


async def get_root(request: web.Request) -> web.Response:
    """Send people to the dashboard."""
    return _see_other("/dashboard/")


async def get_dashboard(request: web.Request) -> web.Response:
    """The dashboard app, or the sign-in page when there is no session."""
    if await request.app[SESSIONS_KEY].identify(request) is None:
        return _see_other("/dashboard/sign-in")
    return _page(request, "index.html")


async def get_sign_in(request: web.Request) -> web.Response:
    return _page(request, "sign-in.html")


async def _flush_refused(app: web.Application) -> None:
    app[SIGN_INS_REFUSED_KEY].flush()


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def origin_of(url: str) -> str | None:
    """``url``'s origin as a browser's ``Origin`` header writes it (``https://hub.example.com``: scheme and host in
    lower case, no default port), or None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[scheme]) else f":{port}")


def _same_origin(request: web.Request) -> bool:
    """Whether a form comes from the hub's own pages: its ``Origin`` names the host the request was sent to, or the
    origin of the hub's ``public_url`` (a reverse proxy forwards another Host)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None  # a browser always sends Origin on a form POST; "null" is an opaque origin
    return urlsplit(origin).netloc == request.host or _from_public_origin(request)


def _from_public_origin(request: web.Request) -> bool:
    public = request.app[PUBLIC_ORIGIN_KEY]
    return bool(public) and origin_of(request.headers.get("Origin", "")) == public


def _secure(request: web.Request) -> bool:
    """Whether the browser reached the hub over HTTPS: this connection is TLS, a trusted proxy says so
    (``trusted_proxies``: X-Forwarded-Proto, or Forwarded's proto), or the form came from the https ``public_url`` (a
    proxy that ends TLS forwards plain HTTP) — the session cookie is then ``Secure``."""
    if request.secure or proxies.forwarded_https(request):
        return True
    return _from_public_origin(request) and request.app[PUBLIC_ORIGIN_KEY].startswith("https:")


async def _sign_in_head(request: web.Request) -> web.Response | None:
    """What ``post_sign_in`` answers before it reads the form, asked of a head too (hub.heads: ``guard``): a form
    from another origin (403), one over ``SIGN_IN_FORM_MAX_BYTES`` or not sent as a form (400, the page)."""
    if not _same_origin(request):
        raise web.HTTPForbidden(text="sign in from the hub's own sign-in page")
    if request.content_length is not None and request.content_length > SIGN_IN_FORM_MAX_BYTES:
        return _page(request, "sign-in.html", 400, "The form is too large; paste only the credential.")
    if request.content_type not in FORM_TYPES:  # request.post() would find no field in it
        return _page(request, "sign-in.html", 400, "The credential was not sent as a form; use the sign-in page.")
    return None


async def post_sign_in(request: web.Request) -> web.Response:
    """Exchange a reader credential for a session cookie."""
    if (answer := await _sign_in_head(request)) is not None:
        return answer
    try:  # aiohttp raises these for a form it cannot read (no boundary, an unknown charset, bytes not UTF-8 …)
        form = await request.post()
    except (ValueError, LookupError, RuntimeError):
        return _page(request, "sign-in.html", 400, "The form could not be read; paste the credential again.")
    token = form.get("token")
    if not isinstance(token, str):
        return _page(request, "sign-in.html", 400, "Paste your reader credential into the field.")
    try:
        session_id, _agent_id = await request.app[SESSIONS_KEY].sign_in(token)
    except SignInRefused as err:
        request.app[SIGN_INS_REFUSED_KEY].record(proxies.client_of(request), str(err))
        ratelimit.refused(request)  # counted against its address (hub.ratelimit.RefusedAttempts)
        return _page(request, "sign-in.html", 403, f"Not signed in: {err}.")
    response = _see_other("/dashboard/")
    request.app[SESSIONS_KEY].set_cookie(response, session_id, secure=_secure(request))
    return response


async def _sign_out_head(request: web.Request) -> web.Response | None:
    """What ``post_sign_out`` answers without its body, asked of a head too (hub.heads: ``guard``): a form from
    another origin (403); without a session of this hub process, the sign-in page (303), as after it."""
    if not _same_origin(request):
        raise web.HTTPForbidden(text="sign out from the dashboard itself")
    sessions = request.app[SESSIONS_KEY]
    if not sessions.holds(sessions.session_id(request)):
        return _signed_out(sessions)
    return None


async def post_sign_out(request: web.Request) -> web.Response:
    """Forget the session (it ends at once, in this hub process) and clear the cookie."""
    if (answer := await _sign_out_head(request)) is not None:
        return answer
    sessions = request.app[SESSIONS_KEY]
    sessions.sign_out(sessions.session_id(request))
    return _signed_out(sessions)


def _signed_out(sessions: DashboardSessions) -> web.Response:
    response = _see_other("/dashboard/sign-in")
    sessions.clear_cookie(response)
    return response


async def get_asset(request: web.Request) -> web.Response:
    """The dashboard's CSS and JavaScript (public: they hold no data)."""
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"the dashboard has no file {name[:64]!r}")
    return web.Response(
        body=request.app[FILES_KEY][name],
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
