"""The operations dashboard the hub serves at ``/dashboard/``.

Plain HTML, CSS and JavaScript in this package (nothing to build, no CDN):
stores online or offline, counts by location and SKU with their product
names, a SKU's ledger a page at a time, the exceptions, the clock
quarantine and the shrinkage report — all updated live from the change feed,
each list downloadable as CSV (``hub.csvexport``). Readers sign in with a
reader credential and get a read-only session cookie (``sessions``); mapping
an unknown barcode from the Exceptions page sends an admin credential the
person pastes (held in the page's memory), never the cookie.

Public API::

    setup(app, store, public_url, https=False)   # routes, sessions and the cookie hook of hub.auth
    DashboardSessions, SESSION_COOKIE, HTTPS_SESSION_COOKIE
"""

from __future__ import annotations

from aiohttp import web

from hub.auth import COOKIE_SESSIONS_KEY, PUBLIC_ROUTES_KEY
from hub.dashboard import api, pages
from hub.dashboard.sessions import HTTPS_SESSION_COOKIE, SESSION_COOKIE, DashboardSessions
from hub.storage.interfaces import CredentialStore

__all__ = ["HTTPS_SESSION_COOKIE", "SESSION_COOKIE", "DashboardSessions", "setup"]


def setup(app: web.Application, store: CredentialStore, public_url: str = "", *, tls: bool = False) -> None:
    """Serve the dashboard on ``app`` and let its session cookie read (only read) the API; ``public_url``: the hub's
    address as people reach it, perhaps through a reverse proxy (its forms are taken from that origin too); ``tls``:
    the hub serves HTTPS itself. Served over HTTPS either way, the cookie is ``HTTPS_SESSION_COOKIE``."""
    https = tls or public_url.strip().lower().startswith("https:")
    sessions = DashboardSessions(store, https=https)
    app[COOKIE_SESSIONS_KEY] = sessions
    pages.setup(app, sessions, public_url)
    api.setup(app)
    app[PUBLIC_ROUTES_KEY] = app.get(PUBLIC_ROUTES_KEY, frozenset()) | pages.ROUTE_NAMES
