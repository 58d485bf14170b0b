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


async def answer_of(url: str) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(url + "/v1/sync", data=BODY) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_hostile_answers_replace_the_upstreams_after_it_read_the_request(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    expected = {
        Fault.HTML_502: (502, "text/html"),
        Fault.HTML_504: (504, "text/html"),
        Fault.GARBAGE_200: (200, "application/msgpack"),
        Fault.JSON_200: (200, "application/json"),
    }
    for fault, (status, content_type) in expected.items():
        async with FaultProxy(port, plan=FaultPlan.only(fault)) as proxy:
            got, got_type, body = await answer_of(proxy.url)
        assert (got, got_type.split(";")[0]) == (status, content_type) and body != BODY[::-1], fault
    assert echo.bodies == [BODY] * len(expected)


async def test_replays_reach_the_upstream_twice_and_a_portal_not_at_all(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    async with FaultProxy(port, plan=FaultPlan.only(Fault.REPLAY)) as proxy:
        assert await post(proxy.url) == BODY[::-1]
    assert echo.bodies == [BODY, BODY]
    async with FaultProxy(port, plan=FaultPlan.only(Fault.REPLAY_LATE, late_s=0.1)) as proxy:
        assert await post(proxy.url) == BODY[::-1]
        for _ in range(100):  # the late copy: 0.1 s later, on a connection of its own
            if len(echo.bodies) == 4:
                break
            await asyncio.sleep(0.05)
    assert echo.bodies == [BODY] * 4
    async with FaultProxy(port) as proxy:
        proxy.captive_portal()
        status, content_type, body = await answer_of(proxy.url)
    assert (status, content_type.split(";")[0]) == (200, "text/html") and b"StoreWiFi" in body
    assert len(echo.bodies) == 4, "nothing reached the upstream through the portal"


async def test_answers_cut_after_the_head_held_late_or_trickled_fail_the_client(upstream: tuple[Echo, int]) -> None:
    echo, port = upstream
    async with FaultProxy(port, plan=FaultPlan.only(Fault.CUT_AFTER_HEAD)) as proxy:
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(proxy.url)
    for fault in (Fault.LATE, Fault.SLOW):
        async with (
            FaultProxy(port, plan=FaultPlan.only(fault, late_s=2.0)) as proxy,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session,
        ):
            with pytest.raises(TimeoutError):
                async with session.post(proxy.url + "/v1/sync", data=BODY) as resp:
                    await resp.read()
    assert echo.bodies == [BODY] * 3, "the upstream read every request whole"
