"""Dashboard sign-in sessions: opaque, server-side, read-only.

Signing in with a reader (or admin) credential creates a session: a random
256-bit id in an HttpOnly, SameSite=Strict cookie; the hub keeps only the
SHA-256 of that id, in this process's memory, with the agent id and an
expiry. One credential holds at most ``SESSIONS_PER_CREDENTIAL_MAX`` sessions
(its oldest is dropped past it), so signing in with one credential again and
again ends no other credential's sessions (of ``SESSIONS_MAX`` in all). A
session identifies its holder as a *reader* whatever credential opened it, and the auth middleware accepts the cookie on GET and HEAD only,
so no write route can ever be reached with it. Signing out forgets the
session at once; a revoked credential's sessions end within
``SESSION_RECHECK_S`` (at once for an open change stream or long-poll, which
asks with ``recheck``). Sessions do not survive a hub restart and are not
shared between hub processes (sign in again, or pin dashboard users to one
hub behind a load balancer).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from aiohttp import web

from hub.auth import ROLE_ADMIN, ROLE_READER, TOKEN_MAX_CHARS
from hub.storage.base import AgentIdentity, HubError
from hub.storage.interfaces import CredentialStore

log = logging.getLogger(__name__)

SESSION_COOKIE = "shelfsync_session"  # over plain HTTP
# Over HTTPS (TLS on the hub, or an https public_url): a browser keeps a cookie of this name only when it is Secure,
# Path=/ and has no Domain, so no other host — a sibling subdomain setting Domain=.example.com — can set one the hub
# would read, and a cookie of the plain name is not read then.
HTTPS_SESSION_COOKIE = "__Host-" + SESSION_COOKIE
SESSION_TTL_S = 12 * 3_600.0
SESSION_RECHECK_S = 60.0
SESSIONS_MAX = 10_000  # the oldest session is dropped past this
# One credential's sessions at once (people sharing a reader credential, each in a browser or two); past it the
# credential's own oldest is dropped, so one credential signing in again and again (a leaked reader key, a script)
# cannot push every other person's session out past SESSIONS_MAX.
SESSIONS_PER_CREDENTIAL_MAX = 20
SIGN_IN_ROLES = frozenset({ROLE_READER, ROLE_ADMIN})


class SignInRefused(HubError):
    """The credential cannot open a dashboard session; the message says why."""


@dataclass(frozen=True, slots=True)
class Session:
    agent_id: str
    expires_s: float  # time.monotonic()
    checked_s: float  # when the credential was last found valid


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class DashboardSessions:
    """The open sessions of this hub process."""

    def __init__(
        self,
        store: CredentialStore,
        ttl_s: float = SESSION_TTL_S,
        recheck_s: float = SESSION_RECHECK_S,
        *,
        https: bool = False,
    ) -> None:
        self._store = store
        self.https = https  # the dashboard is served over HTTPS: the cookie is HTTPS_SESSION_COOKIE, always Secure
        self.cookie = HTTPS_SESSION_COOKIE if https else SESSION_COOKIE
        self._ttl_s = ttl_s
        self._recheck_s = recheck_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    async def sign_in(self, token: str) -> tuple[str, str]:
        """Open a session for ``token``; return (session id for the cookie, agent id)."""
        token = token.strip()
        if not token or len(token) > TOKEN_MAX_CHARS or not token.isascii() or not token.isprintable():
            raise SignInRefused("that is not a shelfsync credential; paste the reader credential you were given")
        who = await self._store.authenticate(token)
        if who is None:
            raise SignInRefused("the credential is unknown or has been revoked")
        if who.role not in SIGN_IN_ROLES:
            raise SignInRefused(
                f"this is {who.role} {who.agent_id}'s credential, which is for sending events; "
                "sign in with a reader credential (shelfsync-hub agent add --role reader)"
            )
        session_id = secrets.token_urlsafe(32)
        now = time.monotonic()
        mine = [key for key, session in self._sessions.items() if session.agent_id == who.agent_id]  # oldest first
        for key in mine[: max(0, len(mine) - SESSIONS_PER_CREDENTIAL_MAX + 1)]:
            del self._sessions[key]
        self._sessions[_key(session_id)] = Session(who.agent_id, now + self._ttl_s, now)
        while len(self._sessions) > SESSIONS_MAX:
            self._sessions.popitem(last=False)
        log.info("%s %s signed in to the dashboard", who.role, who.agent_id)
        return session_id, who.agent_id

    def holds(self, session_id: str | None) -> bool:
        """Whether ``session_id`` names an open session of this hub process, not yet expired (the store is not
        asked: signing out needs only this)."""
        session = self._sessions.get(_key(session_id)) if session_id and len(session_id) <= 128 else None
        return session is not None and time.monotonic() < session.expires_s

    def sign_out(self, session_id: str | None) -> None:
        if session_id:
            session = self._sessions.pop(_key(session_id), None)
            if session is not None:
                log.info("%s signed out of the dashboard", session.agent_id)

    async def identify(self, request: web.Request, *, recheck: bool = False) -> AgentIdentity | None:
        """The (read-only) identity of the request's session cookie, or None; ``recheck``: ask the store
        now whether its credential is revoked (else at most every ``recheck_s``)."""
        session_id = request.cookies.get(self.cookie)
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = time.monotonic()
        if now >= session.expires_s:
            del self._sessions[key]
            return None
        if recheck or now - session.checked_s >= self._recheck_s:
            status = await self._store.agent_status(session.agent_id)
            if not status or status[0].revoked:
                self._sessions.pop(key, None)
                log.info("ended the dashboard session of %s: its credential was revoked", session.agent_id)
                return None
            self._sessions[key] = replace(session, checked_s=now)
        return AgentIdentity(session.agent_id, frozenset(), ROLE_READER)

    def session_id(self, request: web.Request) -> str | None:
        """The session id the request's cookie carries (of this hub's cookie name), or None."""
        return request.cookies.get(self.cookie)

    def set_cookie(self, response: web.StreamResponse, session_id: str, *, secure: bool) -> None:
        """The session cookie; ``secure``: the browser reached the hub over HTTPS (directly or through a proxy),
        always so when the dashboard is served over HTTPS."""
        response.set_cookie(
            self.cookie,
            session_id,
            max_age=int(SESSION_TTL_S),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure or self.https,
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        """Clear the session cookie (a __Host- one only with the attributes it was set with)."""
        response.del_cookie(self.cookie, path="/", secure=self.https, httponly=True, samesite="Strict")
