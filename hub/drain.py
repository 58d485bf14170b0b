"""Graceful stop: count the requests in flight, refuse new ones, wait for the rest.

aiohttp's own shutdown stops reading from open connections, so a request
whose body is still arriving would wait out the whole timeout and be
cancelled. The hub therefore drains first: stop listening, answer new
requests on kept-alive connections with 503, and wait until every request
already inside a handler has its answer — then let aiohttp close the rest.
A request whose head waits before its handler runs (a catch-up batch in line
for its slot, hub.heads.expect) is answered 503 as the door closes
(``closing``), its body never sent. Every 503 of the gate says when to come
back (``Retry-After``): another hub, or this one restarted, answers by then.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from hub.auth import Handler
from protocol.retry import retry_after_value

RETRY_AFTER_S = 1.0  # a draining hub's 503: ask again in a second (another hub takes it, or this one restarted)


class RequestGate:
    """A middleware that knows how many requests are in flight and can close the door."""

    __slots__ = ("_active", "_closed", "_idle", "closing")

    def __init__(self) -> None:
        self._active = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = asyncio.Event()  # set once the door closes: what waits on a request's head stops waiting

    @property
    def active(self) -> int:
        return self._active

    def check(self) -> None:
        """A 503 once the door is closed. The middleware asks it of every request; a route's Expect handler asks
        it of the request's head, so the body of a request a draining hub refuses is not sent (hub.heads.expect)."""
        if self._closed:
            raise web.HTTPServiceUnavailable(
                text="the hub is shutting down; try again shortly",
                headers={"Connection": "close", "Retry-After": retry_after_value(RETRY_AFTER_S)},
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.check()
        self._active += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests; True once none is in flight, False if ``timeout_s`` passed first."""
        self._closed = True
        self.closing.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


GATE_KEY = web.AppKey("request_gate", RequestGate)
