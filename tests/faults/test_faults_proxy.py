"""The fault proxy itself: each fault does what the fault tests rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.faults.proxy import Fault, FaultPlan, FaultProxy, RequestInfo

pytestmark = pytest.mark.timeout(60)
BODY = b"0123456789" * 1000
WAIT_S = 10.0


class Echo:
    """A tiny upstream that records every body it read completely."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.broken = 0

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionError:
            self.broken += 1
            raise
        self.bodies.append(body)
        return web.Response(body=body[::-1])


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Echo, int]]:
    echo = Echo()
    app = web.Application()
    app.router.add_post("/v1/sync", echo.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield echo, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def post(url: str) -> bytes:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(url + "/v1/sync", data=BODY) as resp,
    ):
        return await resp.read()


async def test_pass_and_delay_deliver_both_ways(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    for fault in (Fault.PASS, Fault.DELAY):
        async with FaultProxy(port, plan=FaultPlan.only(fault)) as proxy:
            assert await post(proxy.url) == BODY[::-1]
            assert proxy.stats().faults == {fault: 1}
    assert echo.bodies == [BODY, BODY]


async def test_drop_delivers_nothing(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    async with FaultProxy(port, plan=FaultPlan.only(Fault.DROP)) as proxy:
        with pytest.raises(aiohttp.ClientError):
            await post(proxy.url)
    assert echo.bodies == [] and proxy.stats().bytes_up == 0


async def test_cut_request_delivers_half_a_body_and_cut_response_half_an_answer(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    async with FaultProxy(port, plan=FaultPlan.only(Fault.CUT_REQUEST)) as proxy:
        with pytest.raises(aiohttp.ClientError):
            await post(proxy.url)
    assert echo.bodies == []
    async with FaultProxy(port, plan=FaultPlan.only(Fault.CUT_RESPONSE)) as proxy:
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(proxy.url)
    assert echo.bodies == [BODY], "the upstream got the whole request and answered"


async def test_a_partition_holds_requests_until_it_heals_and_hooks_fire(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    forwarded: list[RequestInfo] = []
    answered: list[int] = []
    proxy = FaultProxy(port, on_request_forwarded=forwarded.append, on_response=lambda info, status: answered.append(status))
    async with proxy:
        proxy.partition()
        pending = asyncio.create_task(post(proxy.url))
        await proxy.wait_for(lambda s: s.connections >= 1)
        assert not pending.done() and echo.bodies == []
        proxy.heal()
        assert await asyncio.wait_for(pending, WAIT_S) == BODY[::-1]
    assert [(i.method, i.path, i.body_bytes) for i in forwarded] == [("POST", "/v1/sync", len(BODY))]
    assert answered == [200] and proxy.stats().partitions == 1
