"""Serving an aiohttp application with connection handlers of one's own: the hub's and the store agent's guards.

aiohttp builds one ``RequestHandler`` per connection in its low-level ``web.Server``; the only
way to count, time and answer connections below the application is a handler subclass, and the
only way to have the server build it is a server that calls another constructor.
``HandlerRunner`` is ``web.AppRunner`` with such a server (``hub.limits.GuardedRunner`` and
``agent.localapi.guard.GuardedRunner`` pass their guarded handlers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

HandlerFactory = Callable[..., RequestHandler]  # called as RequestHandler is: (server, loop=…, **server kwargs)


class HandlerServer(web.Server):
    """aiohttp's low-level server, making each connection's handler with ``make_handler``."""

    def __init__(self, base: web.Server, make_handler: HandlerFactory) -> None:  # adopts ``base``'s state
        self.__dict__.update(base.__dict__)
        self.make_handler = make_handler

    def __call__(self) -> RequestHandler:
        return self.make_handler(self, loop=self._loop, **self._kwargs)


class HandlerRunner(web.AppRunner):
    """``web.AppRunner`` whose server makes each connection's handler with ``make_handler``."""

    __slots__ = ("_make_handler",)

    def __init__(self, app: web.Application, make_handler: HandlerFactory, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._make_handler = make_handler

    async def _make_server(self) -> web.Server:
        return HandlerServer(await super()._make_server(), self._make_handler)
