"""Serving the local API: bind, serve until stopped, close cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Self

from aiohttp import web

from agent.errors import AgentError
from agent.localapi.app import LocalApiContext, create_app
from agent.localapi.guard import Guard, GuardedRunner
from agent.localapi.hosts import HostCheck, dns_names

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0


class LocalApiServer:
    """``async with LocalApiServer(context, host, port) as server:`` serves until the block ends.

    ``port`` 0 picks a free port; ``server.port`` and ``server.url`` say which.
    """

    def __init__(self, context: LocalApiContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self.context = context
        self.host = host
        self.port = port
        self.hosts = HostCheck(host, context.allowed_hosts, names_in_dns=dns_names)
        self.app = create_app(context, self.hosts)
        self._runner: web.AppRunner | None = None
        self.guard = Guard()  # connections in number, on time and quiet (agent.localapi.guard)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = GuardedRunner(
            self.app, self.guard, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as err:
            await runner.cleanup()
            why = os.strerror(err.errno).lower() if err.errno else str(err)
            raise AgentError(f"the local API cannot listen on {self.host}:{self.port}: {why}") from err
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.hosts.look_up()  # this PC's full and reverse DNS names, in the background (agent.localapi.hosts)
        self.guard.install(asyncio.get_running_loop())
        log.info(
            "Local API and handheld page at http://%s:%d/ (at most %d connections open).",
            self.host, self.port, self.guard.limit,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop serving. Safe twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.guard.uninstall()
        self.guard.flush()  # the counts still pending, on the way out

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
