"""The hub in the test's own process: its aiohttp app over a real store, served over real HTTP on 127.0.0.1.

``serve_hub(store, **settings)`` serves ``create_app(store, HubSettings(**settings))`` on a port of 127.0.0.1
(port 0: a free one; a fixed port lets a test serve the same database again where agents expect it), with a
client for relative paths; ``serve_app(app)`` serves an app a test has added to. ``hub_in_process(db,
**settings)`` also opens the store: a SQLite file or the URL of a PostgreSQL schema (``tests.harness.pg``).
``hub_in_thread`` serves it from a thread of its own, for tests that are not coroutines (hypothesis).
``client_factory`` makes clients of one store with different settings (the ``make_client`` fixture).

Requests are handled as ``python -m hub serve`` handles them (the same keep-alive and linger times; a request
whose client goes away is not cancelled half way), without the connection guard of hub/limits.py, which the
tests of real hub processes meet.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub import HubSettings, HubStore, create_app, open_store
from hub.app import SETTINGS_KEY, STORE_KEY
from hub.server import LINGER_MAX_S

T = TypeVar("T")
SHUTDOWN_S = 1.0  # what a request still running at the end of a test gets before it is cancelled
THREAD_CALL_S = 60.0
IN_PROCESS_DB = "in-process"  # HubSettings.db when the caller's store has no path to name (channels need one)


class _ServedAsInProduction(TestServer):
    """aiohttp's test server, handling requests as hub/server.py's runner does (its connection guard aside)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        settings = self.app[SETTINGS_KEY]
        kwargs["handler_cancellation"] = False  # aiohttp's default, which hub/server.py keeps
        kwargs["keepalive_timeout"] = settings.keepalive_timeout_s
        kwargs["lingering_time"] = min(LINGER_MAX_S, settings.body_timeout_s)
        kwargs.setdefault("shutdown_timeout", SHUTDOWN_S)
        return await super()._make_runner(**kwargs)


@dataclass(frozen=True, slots=True)
class ServedHub:
    """A hub app being served: ``url`` for any client, ``client`` for relative paths (``client.get("/healthz")``)."""

    app: web.Application
    store: HubStore
    client: TestClient[Any, Any]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@asynccontextmanager
async def serve_hub(store: HubStore, *, port: int = 0, **settings: Any) -> AsyncIterator[ServedHub]:
    """Serve ``create_app(store, HubSettings(**settings))`` on 127.0.0.1 until the block ends."""
    settings.setdefault("db", IN_PROCESS_DB)
    async with serve_app(create_app(store, HubSettings(**settings)), port=port) as served:
        yield served


@asynccontextmanager
async def serve_app(app: web.Application, *, port: int = 0) -> AsyncIterator[ServedHub]:
    """Serve a hub app made by ``create_app`` (a test may add to it first) on 127.0.0.1 until the block ends."""
    client: TestClient[Any, Any] = TestClient(_ServedAsInProduction(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield ServedHub(app, app[STORE_KEY], client, f"http://127.0.0.1:{client.port}")
    finally:
        await client.close()


@asynccontextmanager
async def hub_in_process(db: Path | str, *, port: int = 0, **settings: Any) -> AsyncIterator[ServedHub]:
    """Open the store at ``db`` (a SQLite path or a PostgreSQL URL) and serve it (``serve_hub``)."""
    async with open_store(str(db)) as store, serve_hub(store, port=port, db=str(db), **settings) as served:
        yield served


@dataclass(frozen=True, slots=True)
class ThreadedHub:
    """A hub served by an event loop in another thread; ``call`` runs a coroutine there and returns its result."""

    served: ServedHub
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def store(self) -> HubStore:
        return self.served.store

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = THREAD_CALL_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


@contextmanager
def hub_in_thread(db: Path | str, **settings: Any) -> Iterator[ThreadedHub]:
    """``hub_in_process`` on an event loop of its own thread, for a test that is not a coroutine."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hub-in-thread", daemon=True)
    thread.start()
    serving = hub_in_process(db, **settings)
    try:
        hub = ThreadedHub(asyncio.run_coroutine_threadsafe(serving.__aenter__(), loop).result(THREAD_CALL_S), loop)
        try:
            yield hub
        finally:
            hub.call(serving.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@asynccontextmanager
async def client_factory(store: HubStore) -> AsyncIterator[ClientFactory]:
    """``await make(**settings)``: a client of the hub app over ``store`` served with those settings.

    Every client made is closed at the end of the block."""
    async with AsyncExitStack() as stack:

        async def make(**settings: Any) -> TestClient[Any, Any]:
            return (await stack.enter_async_context(serve_hub(store, **settings))).client

        yield make
