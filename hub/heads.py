"""A request's head decides what its body cannot change, before the body is sent (``Expect: 100-continue``).

aiohttp answers ``100 Continue`` to every request asking for it unless its route has an Expect handler of its
own (there is none for a whole app), so a client with a revoked credential, a reader's credential on a write
route, or a body too big or of the wrong type, uploaded its whole body to be refused after it. Every route that
takes a body is added here (``add``) with one Expect handler, ``expect``, which refuses from the head what the
middlewares and the route would refuse once the body came, in their order and with the same problem, with
``Connection: close`` and no ``100 Continue``:

- the hub is draining (``503`` with Retry-After, hub.drain), or its database cannot say whose the credential is
  (``503`` with Retry-After, as ``store_failed`` answers any request then);
- a missing, malformed, unknown or revoked credential (``401``; ``400`` for two Authorization headers), looked up
  once: the auth middleware takes the identity found here (``auth.HEAD_IDENTITY_KEY``);
- a path or query that does not percent-decode (``400``), the credential's rate limit (``429``, counted once); on a
  public route, its client address's budget of refused attempts (``429``, hub.ratelimit.RefusedAttempts);
- a compressed body (``415``) or a Content-Length over ``max_body_bytes`` (``413``);
- the route's own ``check``, which its handler calls as well, so both answer alike (the role, a query parameter,
  the Content-Type, a limit of its own …), then its ``admit`` (the sync's catch-up slot, hub/catchup.py);
- a public route's ``guard`` (no credential: a channel's order webhook, the dashboard's forms), which its handler
  calls first as well: what the route decides without its body (no such channel, no signature header, a form from
  another origin or without a session …), raised as a refusal or returned as the answer (a redirect, a page).

Anything else is answered ``100 Continue`` and then judged by its body as without the header. The refusals the
middlewares give after a body (``compressed``, ``announced_too_big``, ``problem_of``, ``store_failed``) live here,
so both paths give the same answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import HttpVersion11, web

from hub import catchup, problems, ratelimit, views
from hub.auth import HEAD_IDENTITY_KEY, PUBLIC_ROUTES_KEY, STORE_KEY, Handler, bearer_token, unknown_credential
from hub.drain import GATE_KEY, RETRY_AFTER_S
from hub.proxies import client_of
from hub.storage.base import AgentIdentity, StoreClosed, StoreError
from protocol.logsafety import RepeatLog
from protocol.retry import retry_after_value

log = logging.getLogger("hub.app")  # the requests' log, as the middlewares write it

DB_RETRY_AFTER_S = 1.0  # a 503 for a database failure: most pass within a second (a restart, a lock timeout)
IDENTITY_ENCODINGS = frozenset({"", "identity"})  # the only Content-Encoding of a request body the hub takes

Check = Callable[[web.Request, AgentIdentity], None]  # raises the route's refusal (web.HTTPException), if any
Admit = Callable[[web.Request, AgentIdentity], Awaitable[None]]
# a public route's answer from its head (its handler's, before it reads the body), raised or returned; None: go on
Guard = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


@dataclass(frozen=True, slots=True)
class Head:
    """What a route asks of a request's head beyond the middlewares' checks: ``check``, what its handler refuses
    before it reads the body (it calls it too); ``admit``, what only the head is asked (a catch-up slot);
    ``guard``, a public route's ``check``, which may answer (not only refuse) and is awaited."""

    check: Check | None = None
    admit: Admit | None = None
    guard: Guard | None = None


HEADS_KEY = web.AppKey("route_heads", dict[str, Head])  # by route name


def add(
    app: web.Application, method: str, path: str, handler: Handler, *, name: str, check: Check | None = None,
    admit: Admit | None = None, guard: Guard | None = None,
) -> web.AbstractRoute:  # fmt: skip
    """Add a route that takes a body, with the hub's one Expect handler and its ``check``, ``admit`` and ``guard``."""
    heads = app.get(HEADS_KEY)
    if heads is None:
        heads = app[HEADS_KEY] = {}
    heads[name] = Head(check, admit, guard)
    return app.router.add_route(method, path, handler, name=name, expect_handler=expect)


class RequestRepeats:
    """Failures that can come thousands of times a second, each logged once a minute with a count."""

    __slots__ = ("bad_bodies", "db_failures", "unexpected")

    def __init__(self) -> None:
        self.unexpected = RepeatLog(
            log, "failed", "request with an unexpected error|requests with an unexpected error", level=logging.ERROR
        )
        self.db_failures = RepeatLog(
            log, "answered", "request 503 as the database failed|requests 503 as the database failed",
            level=logging.WARNING,
        )  # fmt: skip
        self.bad_bodies = RepeatLog(log, "refused", "request with a malformed body|requests with a malformed body")


REPEATS_KEY = web.AppKey("request_repeats", RequestRepeats)


async def expect(request: web.Request) -> web.StreamResponse | None:
    """The Expect handler of every route that takes a body: its refusal from the head, with its connection closed
    (its body is not read), or ``100 Continue``."""
    asked = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if asked.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {asked}")
    try:
        answered = await _admit(request)
        request.app[GATE_KEY].check()  # the hub began draining meanwhile (a lookup, a slot handed over just then)
    except (web.HTTPException, StoreClosed, StoreError) as refused:
        if (slot := request.get(catchup.SLOT_KEY)) is not None:
            slot.release()  # to the next in line now, not once this answer is sent
        if isinstance(refused, web.HTTPException):
            response = problem_of(request, refused)
        else:
            response = store_failed(request, refused)
        response.force_close()  # its body is not read: the connection cannot carry another request
        return response
    if answered is not None:  # a public route's answer from its head (a redirect, a page)
        answered.force_close()
        return answered
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own bytes start after it
    return None


async def _admit(request: web.Request) -> web.StreamResponse | None:
    """Refuse from the head what the middlewares and the route would refuse after the body, in their order and
    raised as they raise it (a database failing as the credential is looked up: its StoreError); or a public
    route's answer from its head (``guard``)."""
    request.app[GATE_KEY].check()  # the gate's middleware: 503
    route = request.match_info.route.name or ""
    who = None if route in request.app[PUBLIC_ROUTES_KEY] else await _identify(request)  # 401 (400)
    if (problem := views.target_problem(request)) is not None:
        raise web.HTTPBadRequest(text=problem)  # path_middleware's
    if who is not None:
        ratelimit.count(request, who)  # 429; the middleware does not count the request again
    elif (answered := ratelimit.refusal_answer(request)) is not None:  # a public route's 429: its address spent
        return answered  # its refused attempts (a page of the route's own, for a person signing in)
    head = request.app[HEADS_KEY].get(route, Head())
    try:
        for refused in (compressed(request), announced_too_big(request)):  # body_middleware's 415, 413
            if refused is not None:
                raise refused
        if who is not None and head.check is not None:
            head.check(request, who)
        if who is not None and head.admit is not None:
            await head.admit(request, who)
        if who is None and head.guard is not None:
            return await head.guard(request)
    except web.HTTPException as refused:
        if who is not None and (limiter := ratelimit.limiter_of(request)) is not None:
            refused.headers.update(limiter.headers(who.agent_id))  # as the middleware adds to a handler's refusal
        raise
    return None


async def _identify(request: web.Request) -> AgentIdentity:
    """The credential the request's bearer token names, looked up from the head and handed to the auth
    middleware (``HEAD_IDENTITY_KEY``), which does not ask the store again; a malformed header's 401 (or 400)
    and an unknown or revoked credential's 401, raised as the middleware raises them; the store's failure as it
    raised it. (A credential revoked while a batch waits in line is found by the next request, as one revoked
    while a body uploads.)"""
    token = bearer_token(request)
    identity = await request.app[STORE_KEY].authenticate(token)
    if identity is None:
        raise unknown_credential(request)
    request[HEAD_IDENTITY_KEY] = identity
    return identity


def store_failed(request: web.Request, err: StoreClosed | StoreError) -> web.Response:
    """The 503 of a request the store failed: shutting down (its store closed), or its database not available,
    counted in the log once a minute and in the metrics; both say when to ask again (Retry-After)."""
    if isinstance(err, StoreClosed):
        again = {"Retry-After": retry_after_value(RETRY_AFTER_S)}  # as the draining gate's 503
        return problems.response(503, "the hub is shutting down; try again shortly", headers=again)
    from hub import metrics  # here: hub.metrics needs hub.config, whose channels' bundles add their route here

    where = f"{request.method} {request.rel_url.raw_path}: {err}"
    request.app[REPEATS_KEY].db_failures.record(client_of(request), where)
    metrics.observe_failure(request.app, "database")
    return problems.response(
        503, f"the hub database is not available right now ({err}); try again shortly",
        headers={"Retry-After": retry_after_value(DB_RETRY_AFTER_S)},
    )  # fmt: skip


def problem_of(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The problem answer of a refusal raised as an aiohttp HTTP exception, with the headers it must keep and the
    members of its own it names (``problem_members``, e.g. a 415's ``charsets``)."""
    keep = {
        k: v for k, v in exc.headers.items()
        if k.lower() in ("www-authenticate", "allow", "connection", "retry-after", "ratelimit-policy", "ratelimit")
    }  # fmt: skip
    members = getattr(exc, "problem_members", {})
    return problems.response(exc.status, _message(request, exc), headers=keep, **members)


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


def compressed(request: web.Request) -> web.HTTPUnsupportedMediaType | None:
    """The 415 for a compressed body (Content-Encoding other than identity), which the hub never inflates; or None."""
    if not request.body_exists:
        return None
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in IDENTITY_ENCODINGS:
        return None
    return web.HTTPUnsupportedMediaType(
        text=f"this hub takes request bodies without compression, got Content-Encoding {encoding[:20]!r}; "
        "send the body uncompressed"
    )


def announced_too_big(request: web.Request) -> web.HTTPRequestEntityTooLarge | None:
    """The 413 for a body whose Content-Length is over ``max_body_bytes`` (the app's client_max_size), or None."""
    limit = request.client_max_size
    length = request.content_length or 0
    if length <= limit:
        return None
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length, text=too_big(limit))


def too_big(limit: int) -> str:
    return (
        f"the request body is larger than this hub's limit of {limit} bytes (max_body_bytes);"
        " send a smaller one (an agent: fewer events per request)"
    )


def refuse(refused: web.HTTPException | None) -> None:
    """Raise ``refused``, if any: a route's ``check`` raises what the shared refusals (``auth.role_refused`` …)
    return."""
    if refused is not None:
        raise refused
