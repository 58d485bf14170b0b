"""Running the hub: open the store, serve HTTP until SIGTERM/SIGINT, shut down cleanly.

The hub may face the open internet: connections are kept within a budget
under the open-file limit, on time (header, body and keep-alive timeouts)
and quiet (floods are counted, not logged one by one); see hub/limits.py.
No secret reaches the log: the database password and webhook secrets are
masked on every log handler while the hub serves (hub/logsafety.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from aiohttp import web

from hub.app import create_app
from hub.config import HubSettings
from hub.discovery import HubAdvertiser, start_advertiser
from hub.drain import GATE_KEY
from hub.feed import end_streams
from hub.limits import LISTEN_BACKLOG, AccessLog, ConnectionGuard, GuardedRunner, plan_fd_budget
from hub.logsafety import secrets_masked
from hub.storage import open_store
from hub.storage.base import HubError, HubStore

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESPONSE_FLUSH_S = 5.0  # after draining: time to finish writing the last answers before connections close
LINGER_MAX_S = 10.0  # after answering a request whose body was not read, read and drop the rest this long at most


class ServeError(HubError):
    """The hub could not start serving (the address is taken, the database cannot be opened …)."""


async def serve(settings: HubSettings, stop: asyncio.Event | None = None) -> None:
    """Serve the hub until SIGTERM, SIGINT or ``stop`` is set; then finish in-flight requests and close the store."""
    stop = stop or asyncio.Event()
    with secrets_masked(secrets_of(settings)):
        await _serve(settings, stop)
    log.info("hub stopped; the database is closed")


async def _serve(settings: HubSettings, stop: asyncio.Event) -> None:
    budget = plan_fd_budget(settings.max_connections)
    guard = ConnectionGuard(budget.max_connections, settings.header_timeout_s)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(guard.loop_exception_handler)  # accept() out of files: counted, no traceback each
    try:
        async with open_store(settings.db) as store:
            await _serve_store(settings, stop, store, guard, budget.describe())
    finally:
        loop.set_exception_handler(previous_handler)
        guard.flush()


async def _serve_store(
    settings: HubSettings, stop: asyncio.Event, store: HubStore, guard: ConnectionGuard, budget: str
) -> None:
    app = create_app(store, settings)
    runner = GuardedRunner(
        app,
        guard,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        access_log_class=AccessLog,  # no query string, header or userinfo: they may carry a secret
        shutdown_timeout=RESPONSE_FLUSH_S,  # requests are drained before aiohttp's own shutdown
        keepalive_timeout=settings.keepalive_timeout_s,
        lingering_time=min(LINGER_MAX_S, settings.body_timeout_s),
    )
    await runner.setup()
    advertiser: HubAdvertiser | None = None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as err:
            why = os.strerror(err.errno).lower() if err.errno else str(err)
            raise ServeError(f"the hub cannot listen on {settings.host}:{settings.port}: {why}") from err
        host, port = runner.addresses[0][:2]
        log.info("hub listening on http://%s:%d, database %s", host, port, display_db(settings.db))
        log.info("the hub holds %s", budget)
        if settings.advertise:  # agents match the hub by this id; the address is data (hub/discovery.py)
            advertiser = await start_advertiser(str((await store.health()).get("hub_id") or ""), settings.host, port)
        with _stop_on_signals(stop):  # kept while draining: a second signal does not cut a commit short
            await stop.wait()
            await site.stop()
            gate = app[GATE_KEY]
            log.info("hub stopping: refusing new requests and finishing the %d in flight", gate.active)
            await end_streams(app)  # long-polls answer now and event streams end: they hold no writes
            if not await gate.drain(settings.shutdown_timeout_s):
                log.warning(
                    "%d request(s) were still running after %.0f s (shutdown_timeout_s); cancelling them",
                    gate.active,
                    settings.shutdown_timeout_s,
                )
    finally:
        if advertiser is not None:
            await advertiser.stop()
        await runner.cleanup()


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def secrets_of(settings: HubSettings) -> list[str]:
    """What the log must never show: the database password (as written and decoded) and webhook secrets."""
    found = [spec.secret for spec in settings.webhooks]
    if "://" in settings.db:
        try:
            password = urlsplit(settings.db).password
        except ValueError:  # an unparsable URL: open_store says so, without the URL
            password = None
        if password:
            found += [password, unquote(password)]
    return found


def display_db(db: str) -> str:
    """The database as a log may show it: a URL loses its password."""
    if "://" not in db:
        return os.path.abspath(db)
    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
