"""Running the hub: open the store, serve HTTP until SIGTERM/SIGINT, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from hub.app import create_app
from hub.config import HubSettings
from hub.discovery import HubAdvertiser, start_advertiser
from hub.drain import GATE_KEY
from hub.feed import end_streams
from hub.storage import open_store
from hub.storage.base import HubError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESPONSE_FLUSH_S = 5.0  # after draining: time to finish writing the last answers before connections close


class ServeError(HubError):
    """The hub could not start serving (the address is taken, the database cannot be opened …)."""


async def serve(settings: HubSettings, stop: asyncio.Event | None = None) -> None:
    """Serve the hub until SIGTERM, SIGINT or ``stop`` is set; then finish in-flight requests and close the store."""
    stop = stop or asyncio.Event()
    async with open_store(settings.db) as store:
        app = create_app(store, settings)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
            shutdown_timeout=RESPONSE_FLUSH_S,  # requests are drained before aiohttp's own shutdown
        )
        await runner.setup()
        advertiser: HubAdvertiser | None = None
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            try:
                await site.start()
            except OSError as err:
                why = os.strerror(err.errno).lower() if err.errno else str(err)
                raise ServeError(f"the hub cannot listen on {settings.host}:{settings.port}: {why}") from err
            host, port = runner.addresses[0][:2]
            log.info("hub listening on http://%s:%d, database %s", host, port, display_db(settings.db))
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
    log.info("hub stopped; the database is closed")


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


def display_db(db: str) -> str:
    """The database as a log may show it: a URL loses its password."""
    if "://" not in db:
        return os.path.abspath(db)
    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
