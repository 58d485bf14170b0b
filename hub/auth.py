"""Bearer-token authentication for the hub's HTTP API.

A middleware resolves ``Authorization: Bearer <token>`` to an
``AgentIdentity`` through the store for every route except the public ones
(``/healthz``); handlers then state which roles they accept with
``require_role``. The store keeps only a hash of each token, so a revoked or
unknown token simply finds no identity.

A request without an ``Authorization`` header may instead carry a dashboard
session cookie (``hub.dashboard.sessions``): it is accepted on GET and HEAD
only, and always identifies a reader, so no write route accepts it.

A request with a body is authenticated again once its body has come
(``authenticate_again``), so a credential revoked while the body was on its way
writes nothing.

The two routes whose write confirms the credential inside its own transaction instead (``POST /v1/sync`` and
``POST /v1/events``, both through ``ingest_confirmed``: the store's ``ingest`` reads it again in the write and
writes nothing if it was revoked or bound elsewhere meanwhile) find it in ``IdentityCache`` first: an agent's
batches, dozens a second, and a connector's pushes no longer cost a read of the credential each before the
transaction that reads it anyway. What they answer before that transaction (a 403 for a role, a 415, a 400, 409 or
422 for the body) depends on the request alone, never on what the store holds, so an identity the cache still
holds for a revoked credential tells it nothing and writes nothing. No other route takes an identity from it, and
a request asking to continue (``Expect: 100-continue``, a catch-up's) is still looked up from its head
(``hub.heads``), so a revoked credential's big batch is refused before it is uploaded.

A response that lasts (a change stream, a long-poll) asks ``still_valid``
before it delivers what it waited for: that reads the credential (or the
session and its credential) from the store again, so a revocation, even one
made through another hub process sharing the database, or a sign-out ends it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

from aiohttp import web

from hub.proxies import client_of
from hub.storage.base import AgentIdentity, CredentialChanged, Forbidden, HubStore, IngestResult
from hub.storage.credentials import token_hash
from hub.storage.interfaces import IngestStore
from protocol import StockEvent
from protocol.logsafety import RepeatLog

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROLE_AGENT = "agent"
ROLE_READER = "reader"
ROLE_ADMIN = "admin"
TOKEN_MAX_CHARS = 512  # far above any token the hub issues; longer headers are refused unread

IDENTITY_KEY = web.RequestKey("identity", AgentIdentity)
STORE_KEY = web.AppKey("store", HubStore)
PUBLIC_ROUTES_KEY = web.AppKey("public_routes", frozenset[str])
UNKNOWN_CREDENTIALS_KEY = web.AppKey("unknown_credentials", RepeatLog)  # refusals, logged once a minute with a count
SESSION_METHODS = frozenset({"GET", "HEAD"})  # the only methods a cookie session is accepted on
BY_SESSION_KEY = web.RequestKey("by_session", bool)  # True: authenticated by a dashboard session cookie
# What the store answered for the request's bearer token when a route's Expect handler looked it up from the head
# (hub.heads.expect): the middleware takes it instead of asking the store again.
HEAD_IDENTITY_KEY: web.RequestKey[AgentIdentity | None] = web.RequestKey("head_identity")
# A batch whose credential the store found changed (CredentialChanged) is tried once more with the credential as
# it is now (bound elsewhere: its events are checked against the new locations); a second change answers 503.
CREDENTIAL_ATTEMPTS = 2


class IdentityCache:
    """The identities bearer tokens were found to have lately (by their hash), for ``routes`` only: routes whose
    write confirms the credential in its own transaction, so an identity found here that is no longer true costs
    that request a second look (``forget``, then the store), never a write it may not make. Bounded in entries
    (the least recently used goes) and in age, so a revoked credential's requests stop getting this far soon."""

    def __init__(
        self, routes: frozenset[str], max_entries: int = 4096, max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.routes, self.max_entries, self.max_age_s, self._clock = routes, max_entries, max_age_s, clock
        self._found: OrderedDict[str, tuple[AgentIdentity, float]] = OrderedDict()

    def get(self, key: str) -> AgentIdentity | None:
        found = self._found.get(key)
        if found is None:
            return None
        if self._clock() - found[1] > self.max_age_s:
            del self._found[key]
            return None
        self._found.move_to_end(key)
        return found[0]

    def put(self, key: str, identity: AgentIdentity) -> None:
        self._found[key] = (identity, self._clock())
        self._found.move_to_end(key)
        while len(self._found) > self.max_entries:
            self._found.popitem(last=False)

    def forget(self, key: str) -> None:
        self._found.pop(key, None)


IDENTITY_CACHE_KEY = web.AppKey("identity_cache", IdentityCache)


async def find_identity(request: web.Request, token: str) -> AgentIdentity | None:
    """The identity of ``token`` for ``request``: from the ``IdentityCache`` on a route that confirms it in its
    write, else (and when not there) from the store."""
    cache = request.app.get(IDENTITY_CACHE_KEY)
    if cache is None or request.match_info.route.name not in cache.routes:
        return await request.app[STORE_KEY].authenticate(token)
    key = token_hash(token)
    identity = cache.get(key)
    if identity is None:
        identity = await request.app[STORE_KEY].authenticate(token)
        if identity is not None:
            cache.put(key, identity)
    return identity


async def identity_again(request: web.Request) -> AgentIdentity:
    """After the store said the request's credential changed (``CredentialChanged``): the credential as the store
    finds it now, kept for the request (and the cache), or the 401 of one unknown or revoked."""
    token = bearer_token(request)
    cache = request.app.get(IDENTITY_CACHE_KEY)
    if cache is not None:
        cache.forget(token_hash(token))
    identity = await find_identity(request, token)
    if identity is None:
        raise unknown_credential(request)
    request[IDENTITY_KEY] = identity
    return identity


async def ingest_confirmed(
    request: web.Request, who: AgentIdentity, epoch: int, events: Sequence[StockEvent],
    check: Callable[[web.Request, AgentIdentity], None], **batch: Any,
) -> IngestResult:  # fmt: skip
    """Book ``events`` by the store's ``ingest`` (``batch``: its other arguments), which confirms the request's
    credential in the transaction that writes them: ``who`` may be the ``IdentityCache``'s, or found before the body
    came. Found changed (``CredentialChanged``, nothing written): 401 if revoked, else ``check`` (what the route
    refuses from the head) and the events are judged again by the credential as it is now, once; changed a second
    time, ``CredentialChanged`` goes to the caller (503, hub.app). The one loop of every route in ``IdentityCache``."""
    credential = token_hash(bearer_token(request))
    store: IngestStore = request.app[STORE_KEY]
    for _ in range(CREDENTIAL_ATTEMPTS - 1):
        try:
            return await store.ingest(who, epoch, events, credential=credential, **batch)
        except CredentialChanged:
            who = await identity_again(request)  # 401 if revoked; bound elsewhere: the events are checked again
            check(request, who)
    return await store.ingest(who, epoch, events, credential=credential, **batch)  # changed again: raised


class CookieSessions(Protocol):
    async def identify(self, request: web.Request, *, recheck: bool = False) -> AgentIdentity | None:
        """The read-only identity of the request's session cookie, or None; ``recheck``: ask the store now
        whether its credential is revoked, whenever it was last asked."""


COOKIE_SESSIONS_KEY = web.AppKey("cookie_sessions", CookieSessions)


class CredentialOfAnotherAgent(Forbidden):
    """A request for one agent sent with another agent's credential: answered 403 with ``credential_agent_id``,
    so an agent configured with the wrong id can say so instead of "token refused"."""

    def __init__(self, credential_agent_id: str, agent_id: str) -> None:
        super().__init__(
            f"this credential belongs to agent {credential_agent_id}, but the request is for agent {agent_id}"
        )
        self.credential_agent_id = credential_agent_id


class Unauthorized(web.HTTPUnauthorized):
    """401 with the challenge header RFC 6750 asks for."""

    def __init__(self, message: str) -> None:
        super().__init__(text=message, headers={"WWW-Authenticate": 'Bearer realm="shelfsync-hub"'})


def bearer_token(request: web.Request) -> str:
    """The token of the Authorization header, or a 401 saying what is wrong with it."""
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:  # which one counts is ambiguous (a proxy may check the other): refuse, never pick one
        raise web.HTTPBadRequest(text="the request has more than one Authorization header; send exactly one")
    header = headers[0] if headers else None
    if header is None:
        raise Unauthorized("this route needs a credential: send the header 'Authorization: Bearer <token>'")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must have the form 'Bearer <token>'")
    if len(token) > TOKEN_MAX_CHARS or not token.isprintable() or not token.isascii():
        raise Unauthorized("the credential is not valid")
    return token


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every matched, non-public route before its handler runs."""
    match = request.match_info
    if match.http_exception is not None or match.route.name in request.app[PUBLIC_ROUTES_KEY]:
        return await handler(request)
    sessions = request.app.get(COOKIE_SESSIONS_KEY)
    if sessions is not None and request.method in SESSION_METHODS and "Authorization" not in request.headers:
        session = await sessions.identify(request)
        if session is not None:
            request[IDENTITY_KEY] = AgentIdentity(session.agent_id, frozenset(), ROLE_READER)  # never more
            request[BY_SESSION_KEY] = True
            return await handler(request)
    token = bearer_token(request)
    if HEAD_IDENTITY_KEY in request:  # looked up from the head, for this token: the same answer, not asked twice
        identity = request[HEAD_IDENTITY_KEY]
    else:
        identity = await find_identity(request, token)
    if identity is None:
        raise unknown_credential(request)
    request[IDENTITY_KEY] = identity
    return await handler(request)


async def authenticate_again(request: web.Request) -> None:
    """Once a request's body has come (hub.app.body_middleware): read its bearer credential from the store again,
    and judge the request by what it is now. The middleware looked it up from the head, and a body may take up to
    ``body_timeout_s`` to arrive (and a catch-up batch its turn in line before that): a credential revoked
    meanwhile, on this hub process or another sharing the database, writes nothing (401), and one bound to other
    locations meanwhile writes only at those. A dashboard session writes nothing: it is left as it is. A route whose
    write confirms the credential in its own transaction (``IdentityCache.routes``: the sync, a connector's events,
    ``ingest_confirmed``) is left to it."""
    if IDENTITY_KEY not in request or request.get(BY_SESSION_KEY, False):
        return
    cache = request.app.get(IDENTITY_CACHE_KEY)
    if cache is not None and request.match_info.route.name in cache.routes:
        return
    identity = await request.app[STORE_KEY].authenticate(bearer_token(request))
    if identity is None:
        raise unknown_credential(request)
    request[IDENTITY_KEY] = identity


def unknown_credential(request: web.Request) -> Unauthorized:
    """The 401 for a request whose bearer token names no credential (unknown or revoked), its refusal counted in
    the log (once a minute). The middleware raises it, and a route's Expect handler from the head (hub.app)."""
    where = f"{request.method} {request.rel_url.raw_path}"  # as sent (percent-encoded): no forged log lines
    repeats = request.app.get(UNKNOWN_CREDENTIALS_KEY)
    if repeats is not None:
        repeats.record(client_of(request), where)
    else:
        log.info("refused a request to %s from %s: unknown or revoked credential", where, client_of(request))
    return Unauthorized("the credential is unknown or has been revoked")


async def still_valid(request: web.Request) -> bool:
    """Whether the credential (or dashboard session) that authenticated ``request`` is still good now.

    Asks the store every time, never a cache: one read of the credential's row (and, for a session, the
    in-memory session too, which signing out removes). A session whose credential is found revoked is ended.
    """
    who = request[IDENTITY_KEY]
    if request.get(BY_SESSION_KEY, False):
        now = await request.app[COOKIE_SESSIONS_KEY].identify(request, recheck=True)
    else:
        now = await request.app[STORE_KEY].authenticate(bearer_token(request))
    return now is not None and now.agent_id == who.agent_id


def identity_of(request: web.Request) -> AgentIdentity:
    """The caller the middleware authenticated."""
    return request[IDENTITY_KEY]


def require_role(request: web.Request, roles: Collection[str], action: str) -> AgentIdentity:
    """The caller, if its role is one of ``roles``; otherwise a 403 naming ``action``."""
    who = identity_of(request)
    refused = role_refused(who, roles, action)
    if refused is not None:
        raise refused
    return who


def role_refused(who: AgentIdentity, roles: Collection[str], action: str) -> web.HTTPForbidden | None:
    """The 403 ``require_role`` raises when ``who``'s role is not one of ``roles``, or None."""
    if who.role in roles:
        return None
    allowed = " or ".join(sorted(roles))
    return web.HTTPForbidden(
        text=f"{_article(who.role)} {who.role} credential cannot {action}; only {allowed} credentials can"
    )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
