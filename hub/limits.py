"""Connection limits that let the hub face the open internet.

aiohttp closes a connection that sends nothing for ``keepalive_timeout``, but
a client that trickles a request head (slowloris) and a crowd of idle
connections are its own problem, and its parser logs a traceback per
malformed request. This module adds, below the application:

- a budget of open connections under the process's open-file limit
  (``RLIMIT_NOFILE``, raised to its hard limit at start), keeping files for
  the database, its WAL, worker threads, the log and a burst of accepts;
- at that budget, the connection idle the longest gives way to the new one (so
  ``/healthz`` still answers with a thousand idle sockets open): answered
  ``503`` with ``Retry-After`` and ``Connection: close``, also when it was idle
  between two requests (its client may be sending its next one just then: it
  reads that answer rather than a reset or an end of file, which a client
  library answers by sending the request again only if it is a GET, never a
  POST such as /v1/sync); when every connection is busy the new one is answered
  ``503`` with ``Retry-After``. A refused connection is not closed at once:
  with the client's request unread, the kernel answered it with a reset, and a
  client that sends its whole request before it reads failed on that and never
  read the 503. It takes and drops what its client sends until the client
  closes, ``REFUSED_LINGER_S`` at most; at most ``REFUSED_LINGER_MAX`` linger
  at once, and past that the one that has lingered the longest closes (its
  client had the most time to read its answer) to make room for the new one;
- long-polls and change streams, which wait for minutes with nothing to do,
  hold at most all but a tenth of the budget (``parked``): past it one is
  answered ``503`` with ``Retry-After``, so that they never lock agents and
  ``/healthz`` out;
- a request head (request line and headers) must arrive whole within
  ``header_timeout_s`` of its first byte, else ``408`` and the connection closes;
- a malformed request is answered ``400`` with one sentence and counted, and
  the count is logged once a minute (``protocol.logsafety.RepeatLog``).

``GuardedRunner`` is ``web.AppRunner`` with these; ``serve`` uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from hub import problems
from hub.proxies import client_of
from protocol.logsafety import RepeatLog, one_line
from protocol.retry import retry_after_value
from protocol.routes import API_VERSION_HEADER, HUB_ID_HEADER
from protocol.serving import HandlerRunner

log = logging.getLogger(__name__)

FD_RESERVE = 64  # files kept for the database and its WAL, worker threads, the log, PostgreSQL and webhook sockets
LISTEN_BACKLOG = 64  # asyncio accepts this many connections per turn of the loop
# The kernel's queue of connections it has completed and the hub not yet taken (the system caps it at
# net.core.somaxconn). At asyncio's 64 a flood overflowed it: the kernel dropped handshakes, and their clients waited
# for its retransmissions (1 s, 3 s, 7 s …) before the hub could even answer 503 (1,611 drops in a 10 s flood of 200
# clients against 50 connections).
KERNEL_BACKLOG = 1024
# asyncio accepts a batch per turn of the loop and a connection reaches the guard two turns later, and the file of
# one the guard closed is released a turn after that: up to three batches are open beyond the guard's count.
ACCEPT_SLACK = 3 * LISTEN_BACKLOG
CONNECTIONS_MIN = 16  # below this the open-file limit is too low to serve; the hub says so and uses this
FD_TARGET_MAX = 1 << 20  # raising an unlimited hard limit: ask for this many files
MALFORMED_KEY = web.ResponseKey("shelfsync_malformed", bool)  # on the 400 answer to a malformed request
_QUOTED_RE = re.compile(r"""(?:^|(?<=\s))b?(['"`])(.*?)(\1|$)""")  # opening quotes only, not "can't"
_NAME_RE = re.compile(r"[A-Za-z-]{1,32}")  # a header name in a parser message; anything else may be a secret
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REFUSED_LINGER_S = 1.0  # a connection answered 503 drops what its client sends this long at most, then closes
REFUSED_LINGER_MAX = LISTEN_BACKLOG  # connections lingering so at once (files the budget keeps for them); past it,
# the one that has lingered the longest closes. Under a flood of 200 clients against 50 connections, when the new
# one closed at once instead, 32 left 1,631 refusals reset, 64 left 145.


@dataclass(frozen=True, slots=True)
class FdBudget:
    """How many connections the hub may hold open, and why."""

    soft_limit: int  # RLIMIT_NOFILE after the raise
    raised_from: int | None  # the soft limit before, when it was raised
    in_use_at_start: int  # files open when the budget was made (stdio, the listening socket's neighbours …)
    max_connections: int
    clipped_from: int | None  # a configured max_connections above what the limit allows

    def describe(self) -> str:
        raised = f", raised from {self.raised_from}" if self.raised_from is not None else ""
        return (
            f"at most {self.max_connections} open connections (max_connections) for an open-file limit of "
            f"{self.soft_limit}{raised}; the connection idle the longest gives way to a new one"
        )


def raise_fd_limit() -> tuple[int, int | None]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; the soft limit now, and the old one if it changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_TARGET_MAX if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # the kernel caps it lower (nr_open): keep what we have
            return soft, None
        return target, soft
    return (FD_TARGET_MAX if soft == resource.RLIM_INFINITY else soft), None


def open_fd_count() -> int:
    """Files this process has open now (0 where /proc is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def fd_budget(configured: int, soft_limit: int, in_use: int, raised_from: int | None = None) -> FdBudget:
    """The connection budget: ``configured`` (0: automatic) within what ``soft_limit`` leaves."""
    allowed = max(CONNECTIONS_MIN, soft_limit - in_use - FD_RESERVE - ACCEPT_SLACK - REFUSED_LINGER_MAX)
    if configured == 0:
        return FdBudget(soft_limit, raised_from, in_use, allowed, None)
    if configured > allowed:
        return FdBudget(soft_limit, raised_from, in_use, allowed, configured)
    return FdBudget(soft_limit, raised_from, in_use, configured, None)


def plan_fd_budget(configured: int) -> FdBudget:
    """Raise the open-file limit and make the budget for this process (logging a clipped or cramped setting)."""
    soft, raised_from = raise_fd_limit()
    budget = fd_budget(configured, soft, open_fd_count(), raised_from)
    if budget.clipped_from is not None:
        log.warning(
            "max_connections %d is more than an open-file limit of %d allows; the hub holds at most %d",
            budget.clipped_from, soft, budget.max_connections,
        )  # fmt: skip
    if soft - budget.in_use_at_start - FD_RESERVE - ACCEPT_SLACK - REFUSED_LINGER_MAX < CONNECTIONS_MIN:
        log.warning(
            "the open-file limit of %d is too low to serve many clients; raise it (ulimit -n, LimitNOFILE=)", soft
        )
    return budget


def _raw_error(status: int, reason: str, code: str, message: str, named: str, extra: str = "") -> bytes:
    """A whole answer written on the transport itself; ``named``: the header lines every answer carries
    (``ConnectionGuard.named_lines``)."""
    body = json.dumps(problems.body(status, message, code), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {problems.CONTENT_TYPE}; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{named}{extra}\r\n"
    )
    return head.encode("ascii") + body


def parse_error_reason(exc: BaseException | None, message: str | None) -> str:
    """What was wrong with a request aiohttp could not parse, without echoing any of its bytes."""
    text = one_line(message or (exc.message if isinstance(exc, HttpProcessingError) else "") or "")
    text = text.split(":", 1)[0]  # what follows a colon is the offending bytes
    text = _QUOTED_RE.sub(lambda m: m.group(0) if _NAME_RE.fullmatch(m.group(2)) else "", text)  # keep header names
    text = " ".join(text.split()).rstrip(".")
    return text or "not an HTTP request"


def _escaped_error(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    """An error aiohttp raised before the application's middlewares could answer it, as problem details."""
    if isinstance(exc, web.HTTPExpectationFailed):
        got = request.headers.get("Expect", "")[:40]
        detail = f"the hub takes no Expect but 100-continue, got {got!r}; send the request without it"
    else:
        detail = f"the request failed: {exc.reason.lower()}"
    keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return problems.response(exc.status, detail, headers=keep)


def _api_version() -> str:
    """The hub's API version (``hub.openapi.API_VERSION``), looked up when a guard is made: hub.openapi imports the
    routes, and hub.feed's imports this module."""
    from hub.openapi import API_VERSION

    return API_VERSION


class ConnectionGuard:
    """The open connections of one hub process: the budget, who is idle, and the counts of what was refused."""

    def __init__(self, max_connections: int, header_timeout_s: float, api_version: str = "") -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.hub_id = ""  # the database's id once it is open (hub.server): the answers below the app name it too
        self.api_version = api_version or _api_version()  # … and the API version, from the start
        self._open: set[GuardedHandler] = set()
        self._idle: dict[GuardedHandler, None] = {}  # insertion order: idle the longest first
        self._parked: set[GuardedHandler] = set()  # waiting long-polls and open change streams (``parked``)
        # refused connections dropping what their client sends before they close; insertion order: the oldest first
        self._lingering: dict[GuardedHandler, None] = {}
        # what they may hold: all but a tenth of the budget (at least one), kept for everything else
        self.parked_max = max(1, max_connections - max(1, max_connections // 10))
        self.malformed = RepeatLog(log, "refused", "malformed request")
        self.slow_heads = RepeatLog(
            log,
            "closed",
            f"connection whose request head did not arrive within {header_timeout_s:g} s (header_timeout_s)"
            f"|connections whose request head did not arrive within {header_timeout_s:g} s (header_timeout_s)",
        )
        self.evicted = RepeatLog(
            log,
            "answered 503 and closed",
            f"idle connection to make room for a new one (max_connections {max_connections})"
            f"|idle connections to make room for new ones (max_connections {max_connections})",
        )
        self.linger_cut = RepeatLog(
            log,
            "closed",
            f"refused connection before its client did, to keep at most {REFUSED_LINGER_MAX} waiting for theirs"
            f"|refused connections before their clients did, to keep at most {REFUSED_LINGER_MAX} waiting for theirs",
        )
        self.parked_refused = RepeatLog(
            log,
            "refused",
            f"long-poll or change stream: {self.parked_max} were waiting, all the budget keeps for them"
            f"|long-polls or change streams: {self.parked_max} were waiting, all the budget keeps for them",
            level=logging.WARNING,
        )
        self.refused = RepeatLog(
            log,
            "refused",
            f"connection: all {max_connections} were busy (max_connections)"
            f"|connections: all {max_connections} were busy (max_connections)",
            level=logging.WARNING,
        )
        self.accept_failed = RepeatLog(log, "could not accept", "connection|connections", level=logging.WARNING)
        self.lost = RepeatLog(log, "lost", "connection before its answer|connections before their answers")

    def named_lines(self) -> str:
        """The header lines every answer of the hub carries, as hub.app's answers do: the API version
        (``API_VERSION_HEADER``) and, once the database is open, its id (``HUB_ID_HEADER``)."""
        named = f"{API_VERSION_HEADER}: {self.api_version}\r\n"
        return named + (f"{HUB_ID_HEADER}: {self.hub_id}\r\n" if self.hub_id else "")

    def name(self, response: web.StreamResponse) -> None:
        """Have ``response``, not yet sent, carry what every answer of the hub carries (``named_lines``)."""
        if API_VERSION_HEADER not in response.headers:
            response.headers[API_VERSION_HEADER] = self.api_version
        if self.hub_id and HUB_ID_HEADER not in response.headers:
            response.headers[HUB_ID_HEADER] = self.hub_id

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def lingering(self) -> int:
        return len(self._lingering)

    def opened(self, handler: GuardedHandler) -> bool:
        """Admit a new connection, closing the one idle the longest if the budget is full; False: refused."""
        self._open.add(handler)
        self._idle[handler] = None
        if len(self._open) <= self.max_connections:
            return True
        victim = next(iter(self._idle))
        if victim is handler:  # every other connection is busy
            self.closed(handler)
            self.refused.record(handler.remote)
            return False
        self.closed(victim)
        self.evicted.record(victim.remote)
        victim.give_way()
        return True

    def busy(self, handler: GuardedHandler) -> None:
        self._idle.pop(handler, None)

    def idle(self, handler: GuardedHandler) -> None:
        if handler in self._open:
            self._idle.pop(handler, None)
            self._idle[handler] = None  # to the back: idle the shortest

    def closed(self, handler: GuardedHandler) -> None:
        self._open.discard(handler)
        self._idle.pop(handler, None)
        self._parked.discard(handler)

    def park(self, handler: GuardedHandler) -> bool:
        """A request begins to wait with nothing to do; False: as many as the budget keeps for them already do."""
        if len(self._parked) >= self.parked_max:
            self.parked_refused.record(handler.remote)
            return False
        self._parked.add(handler)
        return True

    def unpark(self, handler: GuardedHandler) -> None:
        self._parked.discard(handler)

    def linger(self, handler: GuardedHandler) -> None:
        """A refused connection waits for its client to close; if ``REFUSED_LINGER_MAX`` already do, the one that
        has waited the longest closes now (its client had the most time to read its answer)."""
        if len(self._lingering) >= REFUSED_LINGER_MAX:
            oldest = next(iter(self._lingering))
            self.linger_cut.record(oldest.remote)
            oldest.end_linger()
        self._lingering[handler] = None

    def unlinger(self, handler: GuardedHandler) -> None:
        self._lingering.pop(handler, None)

    def flush(self) -> None:
        for counter in (
            self.malformed, self.slow_heads, self.evicted, self.linger_cut, self.parked_refused, self.refused,
            self.accept_failed, self.lost,
        ):  # fmt: skip
            counter.flush()

    def loop_exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Count accept() failures for want of files instead of a traceback each; pass anything else on."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS and "accept" in str(context.get("message", "")):
            self.accept_failed.record(None, os.strerror(exc.errno or 0))
            return
        loop.default_exception_handler(context)


@contextmanager
def parked(request: web.BaseRequest) -> Iterator[None]:
    """While ``request`` waits with nothing to do (a long-poll, a change stream): busy, yet not working.

    Without a cap, long-polls and streams (of one client even) could hold every connection and have every other
    request refused ``503``; they may hold all but a tenth of the budget, and one past that is refused ``503``
    with ``Retry-After`` (``web.HTTPServiceUnavailable``) before it waits."""
    handler = request.protocol
    if not isinstance(handler, GuardedHandler):  # served without the guard (tests' in-process clients)
        yield
        return
    guard = handler._guard
    if not guard.park(handler):
        handler.close()  # once answered: its place goes to another request, not to this client's next try
        raise web.HTTPServiceUnavailable(
            text=f"the hub holds as many long-polls and change streams as it keeps room for ({guard.parked_max}); "
            "try again shortly",
            headers={"Retry-After": retry_after_value(1.0)},
        )
    try:
        yield
    finally:
        guard.unpark(handler)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, kept within the guard's budget and a request-head deadline."""

    __slots__ = ("_guard", "_head_timer", "_linger_timer")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None  # set while it lingers, refused

    @property
    def remote(self) -> str | None:
        peer = self.peername
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None if peer is None else str(peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.opened(self):
            self.refuse()

    def refuse(self) -> None:
        """Answer ``503`` with ``Retry-After`` (the hub is at its limit of connections) and close, lingering."""
        self._answer_and_close(
            _raw_error(503, "Service Unavailable", "unavailable",
                       "the hub is at its limit of open connections; try again shortly",
                       self._guard.named_lines(), f"Retry-After: {retry_after_value(1.0)}\r\n"),
            linger=True,
        )  # fmt: skip

    def give_way(self) -> None:
        """Make room for a new connection: answer ``503`` with ``Retry-After`` and close, lingering. Its client may
        be sending a request now: its first, or its next one on a keep-alive connection, which closed without a word
        was cut off by an end of file or a reset (a client library sends it again on a new connection only if it is
        a GET, never a POST such as /v1/sync); the answer, written before the close, is what it reads instead. A
        client that sees the answer and the close first, idle, drops the connection and sends on a new one."""
        self.refuse()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
            self._guard.unlinger(self)
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:  # refused: what the client sends is dropped unread
            return
        was_waiting = not self._request_in_progress and not self._messages
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._cancel_head_timer()  # a whole head arrived: the body has its own deadline (body_timeout_s)
            self._guard.busy(self)
        elif data and was_waiting and self._head_timer is None and not (self._close or self._force_close):
            self._head_timer = self._loop.call_later(self._guard.header_timeout_s, self._head_timed_out)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:  # aiohttp's own, raised before the app's
            resp = _escaped_error(request, resp)  # middlewares (an Expect it does not know): problems too
        if not resp.prepared:  # every answer made below the app (handle_error's, hub.starting's) is named too
            self._guard.name(resp)
        result = await super().finish_response(request, resp, start_time)
        self._cancel_head_timer()
        if not self._messages:
            self._guard.idle(self)
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):  # the client left while aiohttp wrote to it (Expect's 100 Continue)
            self._guard.lost.record(self.remote, f"{request.method} {request.rel_url.raw_path}: {one_line(str(exc))}")
            response = problems.response(400, "the connection closed before the hub could answer")
            response.force_close()
            return response
        if status != 400 or not isinstance(exc, HttpProcessingError):  # logged by aiohttp with its cause
            super().handle_error(request, status, exc, message)
            response = problems.response(status, "the hub failed to handle this request; the cause is in the hub's log")
            response.force_close()
            return response
        reason = parse_error_reason(exc, message)
        self._guard.malformed.record(self.remote, reason)
        message = f"the request is not valid HTTP/1.1 ({reason}); fix the client"
        response = problems.response(400, message)
        response[MALFORMED_KEY] = True
        response.force_close()
        return response

    def close_when_answered(self) -> None:
        """Close the connection once the request under way is answered; now if no whole request head has come."""
        if self._request_in_progress or self._messages:
            self.close()
            return
        self._cancel_head_timer()
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return
        self._guard.slow_heads.record(self.remote)
        self._answer_and_close(
            _raw_error(408, "Request Timeout", "request_timeout",
                       f"the request head did not arrive within {self._guard.header_timeout_s:g} s "
                       "(header_timeout_s); send the request line and headers at once", self._guard.named_lines())
        )  # fmt: skip

    def _answer_and_close(self, raw: bytes, linger: bool = False) -> None:
        self._guard.closed(self)
        if self.transport is not None:
            try:
                self.transport.write(raw)
            except (OSError, RuntimeError):  # the peer is gone already
                pass
        if linger and self.transport is not None and self._linger_timer is None:
            self._linger(self.transport)
            return
        self.force_close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Closed with its client's request unread, the connection would be reset, and a client still sending would
        fail on it before it read the answer: take and drop what it sends until it closes (its end of file closes
        ours), ``REFUSED_LINGER_S`` at most, or until it is the oldest of ``REFUSED_LINGER_MAX`` lingering."""
        self._cancel_head_timer()
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

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class GuardedRunner(HandlerRunner):
    """``web.AppRunner`` whose connections the guard keeps in budget and on time."""

    __slots__ = ()

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, functools.partial(GuardedHandler, guard=guard), **kwargs)


class AccessLog(AbstractAccessLogger):
    """One line per request with no query string, header or userinfo in it (they may carry a secret)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.get(MALFORMED_KEY):  # counted by the guard; a flood must not flood the access log
            return
        self.logger.info(
            '%s "%s %s" %d %d %.3f s',
            client_of(request), request.method, request.rel_url.raw_path, response.status, response.body_length, time,
        )  # fmt: skip
