"""Hostile bodies: too big, too deep, too slow, not HTTP at all. The hub answers each with a clear
error in bounded time, and serves the next good request.

Write routes are enumerated from the router, so a new one is checked too.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from hub.quarantine import BODY_MAX_BYTES as QUARANTINE_BODY_MAX_BYTES
from protocol import MSGPACK_CONTENT_TYPE
from tests.security.helpers import WRITE_METHODS, Hub, HubFactory, raw_exchange, status_of

pytestmark = pytest.mark.timeout(120)
LIMIT_BYTES = 4096
BODY_TIMEOUT_S = 1.0
LINGER_S = 10.0  # the most the hub reads what a cut-off client still sends, then closes (hub/server.py LINGER_MAX_S)
CLOSE_BOUND_S = BODY_TIMEOUT_S + LINGER_S + 10.0  # generous: a loaded machine is slow, a hang is forever


def token_for(hub: Hub, method: str, path: str) -> str:
    """A credential allowed on the route: the admin (bound to S001) may use every write route."""
    return hub.admin[1]


def content_type_for(name: str) -> str:
    return MSGPACK_CONTENT_TYPE if name in ("sync", "observations", "import_issues") else "application/json"


def head(method: str, path: str, token: str, content_type: str, extra: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\n{extra}\r\n"
    ).encode()


async def still_serves(hub: Hub) -> None:
    status, _, _ = await hub.request("GET", "/v1/ledger", hub.reader[1])
    assert status == 200


def write_routes(hub: Hub) -> list[tuple[str, str, str]]:
    routes = [(r.method, r.path, r.name) for r in hub.routes if r.method in WRITE_METHODS and not r.public]
    assert {"sync", "catalog_put", "events", "observations", "import_issues"} <= {name for _, _, name in routes}
    return routes


async def test_a_declared_oversized_body_is_refused_413_before_it_is_sent(make_hub: HubFactory) -> None:
    hub = await make_hub(max_body_bytes=LIMIT_BYTES)
    for method, path, name in write_routes(hub):
        request = head(method, path, token_for(hub, method, path), content_type_for(name), "Content-Length: 1000000000\r\n")
        answer = await raw_exchange(hub.url, request)  # the body never comes: the answer must not wait for it
        assert status_of(answer) == 413, f"{method} {path}: {answer[:300]!r}"
        assert f"{LIMIT_BYTES} bytes".encode() in answer
    await still_serves(hub)


async def test_a_chunked_body_over_the_limit_is_refused_413(make_hub: HubFactory) -> None:
    hub = await make_hub(max_body_bytes=LIMIT_BYTES)
    chunk = b"x" * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    for method, path, name in write_routes(hub):
        request = head(method, path, token_for(hub, method, path), content_type_for(name), "Transfer-Encoding: chunked\r\n")
        answer = await raw_exchange(hub.url, request + body)
        assert status_of(answer) == 413, f"{method} {path}: {answer[:300]!r}"
    await still_serves(hub)


def nested_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\x90"  # [[[…[]…]]]


def nested_json(depth: int) -> bytes:
    return b'{"items": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [100, 100_000])
async def test_deeply_nested_bodies_are_a_4xx_on_every_write_route(hub: Hub, depth: int) -> None:
    """Refused with one sentence, never a 500: 400 for the nesting, or 413 from a route whose own body
    limit the deep body is over (POST /v1/quarantine/{id} and POST /v1/quarantine/release take at most 1 KiB)."""
    for method, path, name in write_routes(hub):
        kind = content_type_for(name)
        data = nested_msgpack(depth) if kind == MSGPACK_CONTENT_TYPE else nested_json(depth)
        status, _, body = await hub.request(method, path, hub.admin[1], data=data, headers={"Content-Type": kind})
        assert status in (400, 413), f"{method} {path} with nesting {depth}: {status} {body[:300]!r}"
        message = json.loads(body)["detail"]
        assert message and "\n" not in message and message.count(". ") == 0, message
        if status == 413:
            small = name in ("quarantine_resolve", "quarantine_release")
            assert small and len(data) > QUARANTINE_BODY_MAX_BYTES, f"{method} {path}: {message}"
    await still_serves(hub)


async def trickle(hub: Hub, request_head: bytes, started: float) -> tuple[bytes, float]:
    """Send the head, then one body byte every 0.2 s; return what the hub answered and when it closed."""
    host, port = hub.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_head)
    await writer.drain()
    received = bytearray()

    async def send_slowly() -> None:
        while True:
            await asyncio.sleep(0.2)
            writer.write(b"x")
            await writer.drain()

    sender = asyncio.create_task(send_slowly())
    try:
        async with asyncio.timeout(CLOSE_BOUND_S):
            while chunk := await reader.read(65536):
                received += chunk
    except (ConnectionError, TimeoutError):
        pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    return bytes(received), time.monotonic() - started


async def test_bodies_trickled_in_are_cut_off_and_their_connections_closed(make_hub: HubFactory) -> None:
    hub = await make_hub(body_timeout_s=BODY_TIMEOUT_S)
    started = time.monotonic()
    authenticated = head("POST", "/v1/sync", hub.agent[1], MSGPACK_CONTENT_TYPE, "Content-Length: 100000\r\n")
    anonymous = b"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    (answer, closed_after_s), (refused, refused_closed_after_s) = await asyncio.gather(
        trickle(hub, authenticated, started), trickle(hub, anonymous, started)
    )
    assert status_of(answer) == 408, answer[:300]
    assert b"body_timeout_s" in answer
    assert closed_after_s < CLOSE_BOUND_S, "the hub must close the connection, not wait for the body forever"
    assert status_of(refused) == 401, "no credential: refused without reading the body"
    assert refused_closed_after_s < CLOSE_BOUND_S
    await still_serves(hub)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line past the parser's limit
        b"GET /v1/ledger HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",  # a header past the limit
        b"POST /v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_bytes_that_are_not_a_sane_request_get_a_4xx_and_the_hub_keeps_serving(hub: Hub, garbage: bytes) -> None:
    answer = await raw_exchange(hub.url, garbage)
    assert answer == b"" or 400 <= status_of(answer) < 500, answer[:300]
    await still_serves(hub)
