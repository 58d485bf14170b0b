"""Running the hub: open the store, serve HTTP until SIGTERM/SIGINT, shut down cleanly.

The hub may face the open internet: connections are kept within a budget
under the open-file limit, on time (header, body and keep-alive timeouts)
and quiet (floods are counted, not logged one by one); see hub/limits.py.
No secret reaches the log: the database password and webhook secrets are
masked on every log handler while the hub serves (protocol/logsafety.py).

A SQLite hub checks every ``DB_FILE_CHECK_S`` that its database's path still
names the file it has open. Deleted or replaced while the hub runs (a
backup put back without stopping it), every commit would go to a file
nothing opens again: the hub stops serving, saves what it holds (written
back in place of a deleted file, beside a replacing one as
``<name>.replaced-<UTC time>``) and exits 1, so that its service starts it
again on the file the path names (``DatabaseMoved``). Written over in place
(``cp backup.db hub.db``: the same inode), the file no longer holds what the
hub wrote (``SqliteHubStore.file_overwritten``, read without SQLite's view):
the hub copies nothing more of its -wal into it, stops serving, renames its
-wal and -shm aside as ``<name>.overwritten-<UTC time>-wal`` and exits 1.

With ``tls_cert`` and ``tls_key`` the hub serves HTTPS itself (TLS 1.2 or
newer); a client must finish its TLS handshake within ``header_timeout_s``.

The hub listens before it opens its database: a migration at an upgrade may
take minutes, and a probe refused meanwhile restarted the hub mid-step. Until
the store is open the starting application answers (hub.starting: ``/livez``
200, everything else 503 with Retry-After); then the listener hands every new
connection to the hub's application, closes those the starting application
holds (once their answer is sent), and ``hub listening on …`` is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from aiohttp import web

from hub import secretfiles
from hub.app import create_app
from hub.config import ConfigError, HubSettings, check_tls_pair
from hub.discovery import HubAdvertiser, start_advertiser
from hub.drain import GATE_KEY
from hub.feed import end_streams
from hub.limits import (
    KERNEL_BACKLOG,
    LISTEN_BACKLOG,
    AccessLog,
    ConnectionGuard,
    GuardedHandler,
    GuardedRunner,
    plan_fd_budget,
)
from hub.servelock import hold_serving_lock
from hub.starting import create_starting_app
from hub.storage import open_store, sqlite_file
from hub.storage.base import HubError, HubStore
from hub.storage.migrations import MigrationProgress
from hub.storage.sqlite import SqliteHubStore
from protocol.logsafety import secrets_masked
from protocol.runtime import gc_for_serving

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
OVERWRITTEN = "overwritten: "  # a ``moved`` entry: the file was written over in place
DB_FILE_CHECK_S = 2.0  # how often a SQLite hub checks that its database's path still names the file it has open
RESPONSE_FLUSH_S = 5.0  # after draining: time to finish writing the last answers before connections close
STARTING_SAY_S = 5.0  # a start still opening its database after this says where it answers meanwhile
LINGER_MAX_S = 10.0  # after answering a request whose body was not read, read and drop the rest this long at most


class ServeError(HubError):
    """The hub could not start serving (the address is taken, the database cannot be opened …)."""


class DatabaseMoved(HubError):
    """The SQLite database file was deleted or replaced while the hub ran; what the hub held is saved, and the
    hub stops so that it starts again on the file its path names now (exit status 1: the service restarts it)."""


T = TypeVar("T")


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``event_loop`` setting's loop: uvloop's where it is installed (the hub's extra installs it on Linux and
    macOS) unless it says "asyncio"; None: the standard library's. Over HTTP, on a 2-core VM, uvloop cut the hub's
    CPU per event and the time its PostgreSQL transactions wait for it (docs/scaling.md)."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise ServeError("event_loop is uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run_serving(main: Coroutine[Any, Any, T], event_loop: str = "auto") -> T:
    """``asyncio.run`` on the loop the ``event_loop`` setting picks (``loop_factory``)."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)


def loop_kind() -> str:
    """Which event loop runs the caller, for the log: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


async def serve(
    settings: HubSettings, stop: asyncio.Event | None = None, sockets: Sequence[socket.socket] = ()
) -> None:
    """Serve the hub until SIGTERM, SIGINT or ``stop`` is set; then finish in-flight requests and close the store.

    ``sockets``: listening sockets to serve on instead of binding the settings' host and port (systemd's socket
    activation, hub.activation); they are closed at the end, but a socket systemd holds stays open."""
    stop = stop or asyncio.Event()
    with secrets_masked(secrets_of(settings)):
        await _serve(settings, stop, sockets)
    log.info("hub stopped; the database is closed")


def tls_context(settings: HubSettings) -> ssl.SSLContext | None:
    """The server's TLS context from ``tls_cert`` and ``tls_key``, or None for plain HTTP; ``ServeError`` says
    which file is wrong."""
    try:
        check_tls_pair(settings)
    except ConfigError as err:
        raise ServeError(str(err)) from err
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for key, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        try:
            with open(path, "rb") as f:
                if key == "tls_key":
                    secretfiles.warn_if_open(f.fileno(), path, "the private key of the hub's TLS certificate")
        except OSError as err:
            raise ServeError(f"the hub cannot read its {key} {path}: {err.strerror or err}") from err
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as err:
        raise ServeError(
            f"the hub cannot use tls_cert {settings.tls_cert} with tls_key {settings.tls_key} ({err.reason or err}); "
            "both must be PEM files, the key the certificate's own and not protected by a passphrase"
        ) from err
    return context


def _lengthen_queue(server: asyncio.Server) -> None:
    """Give the kernel's queue of completed connections ``KERNEL_BACKLOG`` (asyncio listens with the number it
    accepts a turn, ``LISTEN_BACKLOG``): ``listen`` again on the same socket sets only the queue's length."""
    for listening in server.sockets:
        try:
            with socket.fromfd(listening.fileno(), listening.family, listening.type) as sock:
                sock.listen(KERNEL_BACKLOG)
        except OSError as err:  # the queue stays asyncio's
            log.debug("The hub could not lengthen the queue of %s: %s", listening.getsockname(), err)


class Listener:
    """The hub's listening socket, from its start to its stop. Until the store is open its connections are served
    by the starting application (hub.starting: /livez, and 503 to the rest); ``hand_over`` gives every new one to
    the hub's. With TLS, a client must finish its handshake within ``handshake_timeout_s`` (asyncio's default is
    60 s)."""

    __slots__ = ("_later", "_runner", "_servers", "inherited", "said", "scheme")

    def __init__(self, runner: web.BaseRunner) -> None:
        self._runner = runner
        self._servers: list[asyncio.Server] = []
        self._later: asyncio.Task[None] | None = None  # an inherited socket's first accept, if the store is slow
        self.scheme = "http"
        self.inherited = False  # serving sockets systemd passed, not its own
        self.said: asyncio.TimerHandle | None = None  # the line saying it answers, for a start that takes a while

    async def start(
        self, settings: HubSettings, tls: ssl.SSLContext | None, inherited: Sequence[socket.socket] = ()
    ) -> None:
        """Listen on the settings' host and port, or on the ``inherited`` sockets (systemd's: hub.activation);
        ``ServeError`` says why it cannot.

        An inherited socket's queue holds the connections made while the hub restarted: they are taken once the
        store is open (``accept``), or after ``STARTING_SAY_S`` if opening takes longer (a migration), so that
        they are answered by the hub rather than by the starting application's 503."""
        # TLS closes within header_timeout_s too: asyncio's default (30 s) kept reading and decrypting a refused
        # body that long after body_timeout_s had cut it off
        more: dict[str, Any] = {} if tls is None else {
            "ssl": tls, "ssl_handshake_timeout": settings.header_timeout_s,
            "ssl_shutdown_timeout": settings.header_timeout_s,
        }  # fmt: skip
        self.scheme = "http" if tls is None else "https"
        loop = asyncio.get_running_loop()
        if inherited:
            self.inherited = True
            for sock in inherited:  # listen() again only sets the queue's length: the connections in it stay
                self._servers.append(
                    await loop.create_server(
                        self._connection, sock=sock, backlog=LISTEN_BACKLOG, start_serving=False, **more
                    )
                )
            self._later = asyncio.create_task(self._accept_later(), name="hub-inherited-socket")
            return
        try:
            server = await loop.create_server(
                self._connection, settings.host, settings.port, backlog=LISTEN_BACKLOG, **more
            )
        except socket.gaierror as err:  # its errno is getaddrinfo's (-2), which os.strerror does not know
            raise ServeError(
                f"the hub cannot listen on {settings.host}:{settings.port}: the host name {settings.host} cannot "
                f"be resolved ({err.strerror}); give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
            ) from err
        except OSError as err:
            why = os.strerror(err.errno).lower() if err.errno else str(err)
            raise ServeError(f"the hub cannot listen on {settings.host}:{settings.port}: {why}") from err
        _lengthen_queue(server)
        self._servers.append(server)

    @property
    def address(self) -> tuple[str, int]:
        """The first socket's address (an inherited socket's, not the settings' host and port)."""
        assert self._servers and self._servers[0].sockets
        host, port = self._servers[0].sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def addresses(self) -> list[str]:
        """Every socket's address, as ``host:port`` (``[host]:port`` for IPv6)."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return found

    async def accept(self) -> None:
        """Take connections from every socket (inherited ones wait for this; bound ones take them at once)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        for server in self._servers:
            if not server.is_serving():
                await server.start_serving()  # listen() with asyncio's length again
                _lengthen_queue(server)

    async def _accept_later(self) -> None:
        await asyncio.sleep(STARTING_SAY_S)
        self._later = None  # accept() must not cancel the task it runs in
        await self.accept()

    def hand_over(self, runner: web.BaseRunner) -> None:
        """Every connection from now on is served by ``runner``'s application; the starting application's close
        once their answer is sent (at once if idle), so that none asks it once the hub serves."""
        starting = self._runner.server
        self._runner = runner
        for handler in starting.connections if starting is not None else ():
            if isinstance(handler, GuardedHandler):  # an idle one asking afterwards was answered 503 "migrating"
                handler.close_when_answered()
        if self.said is not None:
            self.said.cancel()

    def stop(self) -> None:
        """Listen no more (the connections open are the runners' to close). An inherited socket's descriptor is
        closed, but systemd holds the socket: connections still queued in it wait for the next start."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self.said is not None:
            self.said.cancel()
        for server in self._servers:
            server.close()

    def _connection(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None, "the runner is set up before it is given connections"
        return server()


async def _serve(settings: HubSettings, stop: asyncio.Event, sockets: Sequence[socket.socket]) -> None:
    tls = tls_context(settings)  # before anything opens: a wrong file is one sentence, the database untouched
    budget = plan_fd_budget(settings.max_connections)
    guard = ConnectionGuard(budget.max_connections, settings.header_timeout_s)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(guard.loop_exception_handler)  # accept() out of files: counted, no traceback each
    try:
        moved: list[str] = []
        path = sqlite_file(settings.db)  # a SQLite file is served by one process at a time (hub.servelock)
        progress = MigrationProgress(display_db(settings.db))
        with hold_serving_lock(path) if path is not None else contextlib.nullcontext():
            async with (
                _answering_while_opening(settings, guard, tls, progress, sockets) as listener,
                open_store(settings.db, progress, db_timeout_s=settings.db_timeout_s) as store,
            ):
                guard.hub_id = store.hub_id  # the answers made below the app name the database too
                await _serve_store(settings, stop, store, guard, budget.describe(), listener, moved)
                overwritten = moved[0] if moved and moved[0].startswith(OVERWRITTEN) else None
                saved = None
                if moved and not overwritten and isinstance(store, SqliteHubStore):
                    saved = await _save_moved(store)
            if overwritten is not None:
                raise DatabaseMoved(overwritten.removeprefix(OVERWRITTEN))
            if saved is not None and isinstance(store, SqliteHubStore):
                store.remove_stale_side_files()  # closed now: its -wal must not be read into the file under its name
                raise DatabaseMoved(saved)
    finally:
        loop.set_exception_handler(previous_handler)
        guard.flush()


def _runner(app: web.Application, settings: HubSettings, guard: ConnectionGuard) -> GuardedRunner:
    return GuardedRunner(
        app,
        guard,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        access_log_class=AccessLog,  # no query string, header or userinfo: they may carry a secret
        shutdown_timeout=RESPONSE_FLUSH_S,  # requests are drained before aiohttp's own shutdown
        keepalive_timeout=settings.keepalive_timeout_s,
        lingering_time=min(LINGER_MAX_S, settings.body_timeout_s),
    )


@contextlib.asynccontextmanager
async def _answering_while_opening(
    settings: HubSettings,
    guard: ConnectionGuard,
    tls: ssl.SSLContext | None,
    progress: MigrationProgress,
    sockets: Sequence[socket.socket] = (),
) -> AsyncIterator[Listener]:
    """Listen at once, answering /livez and 503 (hub.starting) until ``_serve_store`` hands the listener over; on
    the way out, listen no more. Inherited ``sockets`` are served instead of the settings' host and port."""
    starting = _runner(create_starting_app(progress), settings, guard)
    await starting.setup()
    listener = Listener(starting)
    try:
        await listener.start(settings, tls, sockets)
        if sockets:
            log.info(
                "the hub serves on the socket(s) systemd passed it (%s), not on host and port of its settings; "
                "connections made while it starts wait in the socket's queue",
                ", ".join(listener.addresses),
            )
        host, port = listener.address
        listener.said = asyncio.get_running_loop().call_later(
            STARTING_SAY_S, log.info,
            "hub answering on %s://%s:%d while it opens its database: /livez 200, every other request 503 until it "
            "serves", listener.scheme, host, port,
        )  # fmt: skip
        yield listener
    finally:
        listener.stop()
        await starting.cleanup()


async def _serve_store(
    settings: HubSettings,
    stop: asyncio.Event,
    store: HubStore,
    guard: ConnectionGuard,
    budget: str,
    listener: Listener,
    moved: list[str],
) -> None:
    app = create_app(store, settings)
    runner = _runner(app, settings, guard)
    await runner.setup()
    advertiser: HubAdvertiser | None = None
    watcher = None
    if isinstance(store, SqliteHubStore):
        watcher = asyncio.create_task(_watch_file(store, stop, moved), name="hub-database-file")
    try:
        # From the hand-over to the end of the drain: a signal at any point stops the hub cleanly (a SIGTERM
        # while zeroconf starts used to kill it with the store open); a second one does not cut a commit short.
        with _stop_on_signals(stop), gc_for_serving():  # protocol/runtime.py
            listener.hand_over(runner)
            await listener.accept()  # an inherited socket's queue: the connections made while the hub restarted
            host, port = listener.address
            log.info("hub listening on %s://%s:%d, database %s", listener.scheme, host, port, display_db(settings.db))
            log.info("the hub holds %s", budget)
            log.info("the hub runs on %s's event loop", loop_kind())
            if settings.trusted_proxies:
                log.info(
                    "the hub takes a request's client address from its %s header when it comes from %s "
                    "(trusted_proxies)", settings.trusted_proxy_header, ", ".join(settings.trusted_proxies),
                )  # fmt: skip
            if settings.advertise:  # agents match the hub by this id; the address is data (hub/discovery.py)
                where = settings.host if not listener.inherited else "0.0.0.0" if host == "::" else host
                advertiser = await start_advertiser(str((await store.health()).get("hub_id") or ""), where, port)
            await stop.wait()
            listener.stop()
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
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if advertiser is not None:
            await advertiser.stop()
        await runner.cleanup()


async def _watch_file(store: SqliteHubStore, stop: asyncio.Event, moved: list[str]) -> None:
    """Stop the hub once its database's path no longer names the file it has open (``moved`` says how)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DB_FILE_CHECK_S)
        what = None if stop.is_set() else store.file_moved()
        if what is not None:
            log.error("the hub database %s was %s while the hub ran; the hub stops to save what it holds",
                      store.path, what)  # fmt: skip
            moved.append(what)
            stop.set()
            continue
        why = None if stop.is_set() else await store.file_overwritten()
        if why is not None:
            suffix = f".overwritten-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            kept = await store.freeze(suffix)  # first: not one more page of its -wal goes into the file written over
            log.error("the hub database %s was written over in place while the hub ran (%s); the hub stops "
                      "serving and copies nothing more into it", store.path, why)  # fmt: skip
            where = f" in {', '.join(str(p) for p in kept)}" if kept else ""
            moved.append(
                f"{OVERWRITTEN}the hub database {store.path} was written over in place while the hub ran ({why}; a "
                f"backup copied over it?); the hub kept what it wrote since its last checkpoint{where}, not copied "
                "into the new file, and stops so that it starts again on the new file, to which the agents send "
                "again what it lacks"
            )
            stop.set()


async def _save_moved(store: SqliteHubStore) -> str:
    """Once nothing is served any more: save the database the hub has open; what ``DatabaseMoved`` says."""
    path = store.path
    if store.file_moved() == "deleted":  # nothing took the name: the database goes back under it
        events = await store.save_copy(path)
        return (
            f"the hub database {path} was deleted while the hub ran; the hub wrote the database it had open "
            f"({events:,} events) back to {path} and stops, so that it starts again on it"
        )
    saved = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    events = await store.save_copy(saved)
    return (
        f"the hub database {path} was replaced while the hub ran (a backup put back without stopping the hub?); "
        f"the database the hub had open ({events:,} events) is saved as {saved}, and the hub stops so that it "
        "starts again on the new file, to which the agents send again what it lacks"
    )


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
    """What the log must never show: the database password (as written and decoded), webhook secrets and the
    password and query of webhook URLs."""
    found = [s for spec in settings.webhooks for s in (spec.secret, *spec.url_secrets)]
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
