"""What any device on the store network may send the local API for free, kept cheap and quiet.

The local API has no credential in front of its sockets: a handheld, a port scanner, a browser speaking TLS to
this plain-HTTP port or a hostile device can open connections and send garbage. Left alone, 1,100 idle
connections took every file descriptor of an agent at the usual limit of 1,024: the handheld page stopped
answering, the replicator could not open a socket to the hub (nothing synced), and asyncio logged a traceback
per failed accept (228,000 log lines in seconds). Here, below the application:

- at most ``connections_max`` connections are open (``CONNECTIONS_MAX``, at most a quarter of the open-file
  limit); when that many are, the one idle the longest gives way to the new one, else the one whose request has
  waited the longest for its body (past ``BODY_STALL_S``: a handheld's body comes with its head), and when every
  one is busy otherwise the new one is refused. Either is answered ``503`` with ``Retry-After: 1`` and ``Connection: close``, also one idle
  between two requests of a keep-alive handheld: closed without a word, the next request its handheld was sending
  just then (a scan: a POST, which no browser sends again by itself) was cut off by an end of file or a reset;
- a connection so answered is not closed at once: with its client's request unread, the kernel answered it with a
  reset, and a handheld that sends its whole request before it reads failed on that and never read the ``503``.
  It takes and drops what its client sends until the client closes, ``REFUSED_LINGER_S`` at most; at most
  ``REFUSED_LINGER_MAX`` linger at once, and past that the one that has lingered the longest closes (its client had
  the most time to read its answer) to make room for the new one;
- a connection that sends nothing for ``KEEPALIVE_TIMEOUT_S`` is closed (aiohttp's default is an hour);
- after the answer to a request whose body was not read whole (a ``408`` for a body trickled past
  ``app.BODY_TIMEOUT_S``, a ``401`` before any reading), the rest of that body is read for at most
  ``LINGER_S`` before the connection is closed (aiohttp's default is 10 s, a slot held for nothing);
- a request that is not HTTP is answered ``400`` with one sentence, never echoing its bytes;
- each of these, and an accept that fails for want of file descriptors, is counted: one log line at once,
  then at most one a minute with the count (``protocol.logsafety.RepeatLog``). Never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from agent.localapi.app import error_response
from protocol import values
from protocol.logsafety import RepeatLog
from protocol.serving import HandlerRunner

log = logging.getLogger(__name__)

KEEPALIVE_TIMEOUT_S = 30.0  # a connection silent this long is closed, whether it ever sent a request or not
LINGER_S = 1.0  # the rest of a body left unread by an answer is drained at most this long, then the connection closed
CONNECTIONS_MAX = 256  # a store's handhelds and back-office screens, with room to spare
REFUSED_LINGER_S = 1.0  # a connection answered 503 drops what its client sends this long at most, then closes
REFUSED_LINGER_MAX = 64  # refused connections lingering at once (their files come out of the agent's); past it, the
# one that has lingered the longest closes. The same bounds as the hub's (hub.limits), kept as a small copy: the
# two guards share the idea, not their handlers, and the agent must not import the hub.
FD_SHARE = 4  # the local API holds at most a quarter of the open-file limit: the outbox and the hub need the rest
# Every connection busy, one whose request has waited this long for its body gives way to a new one (the one that has
# waited the longest): a handheld's body comes with its head, in one packet. One device that held every connection
# with heads whose bodies never came, opened again as each was cut off at app.BODY_TIMEOUT_S, kept every handheld
# out (503) for as long as it went on.
BODY_STALL_S = 1.0
MALFORMED_ANSWER = "the request is not valid HTTP/1.1; fix the device or program that sent it"
BUSY_ANSWER = "the local API is serving as many devices as it can; try again in a moment"
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE/ENFILE/ENOBUFS on accept


def connections_max(soft_fd_limit: int | None = None) -> int:
    """How many connections the local API holds open at most, under this process's open-file limit."""
    if soft_fd_limit is None:
        soft_fd_limit = _soft_fd_limit()
    if soft_fd_limit is None or soft_fd_limit <= 0:
        return CONNECTIONS_MAX
    return max(8, min(CONNECTIONS_MAX, soft_fd_limit // FD_SHARE))


def _soft_fd_limit() -> int | None:
    """This process's open-file limit; None where there is none to read (Windows has no ``resource``) or it is
    unlimited."""
    try:
        import resource  # POSIX only: the agent's core also runs on Windows
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class Guard:
    """The local API's open connections and its tallies; one per server."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = connections_max() if limit is None else limit
        self._open: dict[GuardedHandler, None] = {}  # least recently active first
        # refused connections dropping what their client sends before they close; the oldest first
        self._lingering: dict[GuardedHandler, None] = {}
        self.malformed = RepeatLog(log, "Local API refused", "malformed HTTP request")
        self.evicted = RepeatLog(log, "Local API answered 503 and closed", "idle connection")
        self.linger_cut = RepeatLog(
            log,
            "Local API closed",
            "refused connection before its client did|refused connections before their clients did",
        )
        self.stalled = RepeatLog(
            log,
            "Local API answered 503 and closed",
            "connection waiting for its request's body|connections waiting for their requests' bodies",
        )
        self.busy = RepeatLog(log, "Local API refused", "connection")
        self.accept_failed = RepeatLog(log, "Local API could not accept", "connection")
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def lingering(self) -> int:
        return len(self._lingering)

    def opened(self, handler: GuardedHandler) -> bool:
        """Room for ``handler`` (closing the connection idle the longest if need be), or False: refuse it."""
        if len(self._open) >= self.limit:
            victim = next((h for h in self._open if h.idle), None)
            if victim is not None:
                self.evicted.record(victim.peer, f"to make room for a new one (at most {self.limit} open)")
            elif (victim := self._stalled()) is not None:
                self.stalled.record(victim.peer, f"to make room for a new one (at most {self.limit} open)")
            else:
                self.busy.record(handler.peer, f"all {self.limit} connections are busy (connections_max)")
                return False
            self.closed(victim)
            victim.refuse()  # its handheld may be sending its next request now: it reads the 503, not a reset
        self._open[handler] = None
        return True

    def _stalled(self) -> GuardedHandler | None:
        """The connection whose request has waited the longest for its body, if past ``BODY_STALL_S``."""
        mark = time.monotonic() - BODY_STALL_S
        waiting = [h for h in self._open if h.body_since is not None and h.body_since <= mark]
        return min(waiting, key=lambda h: h.body_since or 0.0, default=None)

    def active(self, handler: GuardedHandler) -> None:
        if handler in self._open:
            self._open[handler] = self._open.pop(handler)  # to the end: the most recently active

    def closed(self, handler: GuardedHandler) -> None:
        self._open.pop(handler, None)

    def linger(self, handler: GuardedHandler) -> None:
        """A refused connection waits for its client to close; if ``REFUSED_LINGER_MAX`` already do, the one that
        has waited the longest closes now (its client had the most time to read its answer). At a low open-file
        limit, no more linger than ``connections_max``."""
        most = min(REFUSED_LINGER_MAX, self.limit)
        if len(self._lingering) >= most:
            oldest = next(iter(self._lingering))
            self.linger_cut.record(oldest.peer, f"to keep at most {most} waiting for theirs")
            oldest.end_linger()
        self._lingering[handler] = None

    def unlinger(self, handler: GuardedHandler) -> None:
        self._lingering.pop(handler, None)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count accepts that fail for want of file descriptors on ``loop`` instead of a traceback each."""
        self._loop, self._previous = loop, loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() == self._loop_exception:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            exc = context.get("exception")
            self.accept_failed.record("the listening socket", str(getattr(exc, "strerror", None) or exc))
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def flush(self) -> None:
        for tally in (self.malformed, self.evicted, self.stalled, self.linger_cut, self.busy, self.accept_failed):
            tally.flush()


def _reason(exc: HttpProcessingError) -> str:
    """What was wrong, without the request's own bytes (aiohttp quotes them after a colon, over several lines)."""
    text = str(exc.message or "").strip().split(":", 1)[0]
    return values.shown(" ".join(text.split()).rstrip(".") or "not an HTTP request", 80, bare=True)


class GuardedHandler(RequestHandler):
    """One connection, counted by the guard; a request aiohttp cannot parse is answered 400 with one sentence."""

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.peer = "an unknown address"
        self._linger_timer: asyncio.TimerHandle | None = None  # set while it lingers, refused
        self.body_since: float | None = None  # when its request began waiting for its body (monotonic), while it does

    @contextlib.contextmanager
    def reading_body(self) -> Iterator[None]:
        """Within this block the connection's request waits for its body (``app._body``)."""
        self.body_since = time.monotonic()
        try:
            yield
        finally:
            self.body_since = None

    @property
    def idle(self) -> bool:
        return not self._request_in_progress and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else self.peer
        super().connection_made(transport)
        if not self._guard.opened(self):
            self.refuse()

    def refuse(self) -> None:
        """Answer ``503`` with ``Retry-After`` and ``Connection: close`` (refused, or giving way to a new connection)
        and close, lingering: a request its handheld sends before it sees the close reads this answer."""
        body = (error_response(503, "unavailable", BUSY_ANSWER).text or "").encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        self._guard.closed(self)
        transport = self.transport
        if transport is None or self._linger_timer is not None:
            return
        try:
            transport.write(head.encode("ascii") + body)
        except (OSError, RuntimeError):  # the peer is gone already
            self.force_close()
            return
        self._guard.linger(self)
        self._linger_timer = self._loop.call_later(REFUSED_LINGER_S, self.end_linger)
        if transport.can_write_eof():  # the answer is whole: the client reads its end after it
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    def end_linger(self) -> None:
        """Close a refused connection that has lingered long enough."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._guard.unlinger(self)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
            self._guard.unlinger(self)
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:  # refused: what the client sends is dropped unread
            return
        self._guard.active(self)
        super().data_received(data)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self._guard.malformed.record(self.peer, _reason(exc))
        response = error_response(400, "bad_request", MALFORMED_ANSWER)
        response.force_close()
        return response


class GuardedRunner(HandlerRunner):
    """``web.AppRunner`` whose connections the guard keeps in number, on time and quiet."""

    __slots__ = ()

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(
            app,
            functools.partial(GuardedHandler, guard=guard),
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            lingering_time=LINGER_S,
            **kwargs,
        )
