"""A fault-injecting HTTP/1.1 proxy between an agent and the hub, on 127.0.0.1 only.

It understands just enough HTTP to act on whole requests: it reads each
request head and its ``Content-Length`` body, chooses a fault for it from a
``FaultPlan``, and forwards (or does not forward) accordingly; the answer is
read the same way. Per request, one of:

- ``pass``: forward the request and its answer unchanged;
- ``drop``: reset the connection as the request arrives; nothing reaches the hub;
- ``delay``: hold the request, and then its answer, back for a random while;
- ``cut_request``: forward the head and half the body, then reset both sides
  (the hub sees a truncated body and must commit nothing);
- ``cut_response``: the hub gets the whole request and answers; the agent gets
  the head and half the answer's body, then a reset (the hub committed, the
  agent does not know: it must resend, and the hub must count nothing twice);
- and what a hostile network does besides (``FaultPlan.hostile``): the answer
  cut right after its head, held past the agent's timeout and delivered late,
  trickled a byte a second, or replaced by a 200 of random bytes, a 200 of
  JSON without a sync answer's fields, or a middlebox's 502/504 HTML page or
  a web filter's 403 one
  (the hub committed each time); the request sent to the hub twice
  (``replay``), or once more a while later, when the agent has moved on
  (``replay_late``); the answer delivered twice on its connection
  (``double_answer``); a captive portal's 200 HTML page (nothing reaches the hub).

Across requests: ``partition()`` stops every byte in both directions (new
connections are accepted and held) until ``heal()``; what was held is then
delivered late, as a healed network would, after the sender gave up waiting.
``captive_portal()`` answers every request of any path with a portal's 200
HTML page until ``heal()``.

Hooks run in the proxy's event loop the moment something happens:
``on_request_forwarded(info)`` once a whole request is on its way to the hub,
``on_response(info, status)`` when the hub's answer head arrives, before the
agent gets any of it (a true result drops the answer: the connection is reset).
Tests use them to kill a process at an exact point.

``FaultProxy`` runs in the caller's event loop; ``ProxyThread`` runs one in a
thread of its own, for tests that drive processes with blocking calls.

    async with FaultProxy(hub_port, plan=FaultPlan.mixed()) as proxy:
        ...  # point the agent at proxy.url
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Self

LOOPBACK = "127.0.0.1"
HEAD_MAX_BYTES = 256 * 1024
READ_CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
NO_BODY_STATUSES = frozenset({204, 304})


class Fault(StrEnum):
    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"
    CUT_REQUEST = "cut_request"
    CUT_RESPONSE = "cut_response"
    # A hostile network (FaultPlan.hostile): the hub gets the request and answers, unless said otherwise.
    CUT_AFTER_HEAD = "cut_after_head"  # the agent gets the answer's head, then a reset
    LATE = "late"  # the answer is held ``late_s`` (past the agent's timeout), then delivered
    REPLAY = "replay"  # the request reaches the hub twice in a row; the agent gets the second answer
    REPLAY_LATE = "replay_late"  # … and a copy again ``late_s`` later, on a connection of its own
    SLOW = "slow"  # the answer trickles at one byte a second (slow-loris), head and body
    GARBAGE_200 = "garbage_200"  # the answer replaced by a 200 whose body is random bytes
    HTML_502 = "html_502"  # … by a middlebox's 502 page in text/html
    HTML_504 = "html_504"  # … by a middlebox's 504 page in text/html
    HTML_403 = "html_403"  # … by a web filter's 403 page in text/html ("access denied", not the hub's refusal)
    JSON_200 = "json_200"  # … by a 200 of JSON that lacks every field a sync answer has
    DOUBLE_ANSWER = "double_answer"  # the answer delivered twice on the connection (the second is unasked for)
    PORTAL = "portal"  # a captive portal answers 200 HTML itself; nothing reaches the hub


# The answers a middlebox puts in the hub's place (Fault.HTML_502 …, and every answer of ``captive_portal()``).
PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Welcome to StoreWiFi</title></head>"
    b"<body><h1>Please accept the terms of use</h1><form action='/accept'><button>Accept</button></form></body></html>"
)
_NGINX = (
    b"<html><head><title>%s</title></head><body><center><h1>%s</h1></center><hr><center>nginx</center></body></html>"
)
GATEWAY_PAGES = {
    Fault.HTML_502: (502, "Bad Gateway", _NGINX % (b"502 Bad Gateway", b"502 Bad Gateway")),
    Fault.HTML_504: (504, "Gateway Time-out", _NGINX % (b"504 Gateway Time-out", b"504 Gateway Time-out")),
    Fault.HTML_403: (403, "Forbidden", _NGINX % (b"Access Denied", b"Access to this site is blocked by policy")),
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Relative odds of each fault per request, and how long a delay lasts."""

    weights: Mapping[Fault, float] = field(default_factory=lambda: {Fault.PASS: 1.0})
    delay_s: tuple[float, float] = (0.05, 0.4)
    only_path_prefix: str = "/v1/sync"  # faults hit only these requests; others pass
    late_s: float = 4.0  # how long a LATE answer is held: longer than the agent's timeout

    @classmethod
    def clean(cls) -> FaultPlan:
        return cls()

    @classmethod
    def mixed(cls, fault_share: float = 0.3, delay_s: tuple[float, float] = (0.05, 0.4)) -> FaultPlan:
        """``fault_share`` of requests get a fault, spread evenly over the four kinds."""
        each = fault_share / 4
        weights = {Fault.PASS: 1.0 - fault_share, Fault.DROP: each, Fault.DELAY: each,
                   Fault.CUT_REQUEST: each, Fault.CUT_RESPONSE: each}  # fmt: skip
        return cls(weights, delay_s)

    @classmethod
    def only(cls, fault: Fault, share: float = 1.0, **kwargs: Any) -> FaultPlan:
        return cls({fault: share, Fault.PASS: 1.0 - share} if share < 1.0 else {fault: 1.0}, **kwargs)

    @classmethod
    def hostile(cls, fault_share: float = 0.4, **kwargs: Any) -> FaultPlan:
        """``fault_share`` of requests get a fault, spread evenly over every kind."""
        kinds = [f for f in Fault if f is not Fault.PASS]
        weights = {Fault.PASS: 1.0 - fault_share, **{f: fault_share / len(kinds) for f in kinds}}
        return cls(weights, **kwargs)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One request the proxy saw."""

    number: int  # 1-based, across all connections
    method: str
    path: str
    body_bytes: int
    fault: Fault


@dataclass(frozen=True, slots=True)
class ProxyStats:
    connections: int
    requests: int
    faults: Mapping[Fault, int]
    responses: int
    bytes_up: int
    bytes_down: int
    partitions: int
    late_replays: int = 0  # REPLAY_LATE copies the hub has answered


class _Closed(Exception):
    """This connection is over (reset, cut, or the other side went away)."""


@dataclass(slots=True)
class _Head:
    raw: bytes
    first_line: str
    headers: dict[str, str]

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.strip().isdigit() else None

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Head(raw, lines[0], headers)


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """The next message head, or None at a clean end of the stream."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise _Closed("the stream ended inside a message head") from None
        return None
    except (asyncio.LimitOverrunError, ConnectionError) as err:
        raise _Closed(str(err)) from None
    return _parse_head(raw)


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError) as err:
        raise _Closed(str(err)) from None


class FaultProxy:
    """A TCP listener on 127.0.0.1 that forwards HTTP to ``upstream_port`` with faults."""

    def __init__(
        self,
        upstream_port: int,
        *,
        plan: FaultPlan | None = None,
        seed: int = 0,
        listen_port: int = 0,
        on_request_forwarded: Callable[[RequestInfo], None] | None = None,
        on_response: Callable[[RequestInfo, int], bool | None] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan.clean()
        self.on_request_forwarded = on_request_forwarded
        self.on_response = on_response
        self._rng = random.Random(seed)
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._healed = asyncio.Event()
        self._healed.set()
        self._portal = False  # captive_portal(): every request is answered 200 HTML here
        self._changed = asyncio.Condition()
        self._connections = self._requests = self._responses = 0
        self._bytes_up = self._bytes_down = self._partitions = self._late_replays = 0
        self._faults: Counter[Fault] = Counter()

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, LOOPBACK, self._listen_port, limit=HEAD_MAX_BYTES, reuse_address=True
        )
        self._listen_port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and reset every connection. Safe twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._healed.set()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._listen_port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._listen_port}"

    # --- control -------------------------------------------------------------
    def partition(self) -> None:
        """Hold every byte in both directions until ``heal()``."""
        if self._healed.is_set():
            self._partitions += 1
        self._healed.clear()

    def heal(self) -> None:
        self._healed.set()
        self._portal = False

    def captive_portal(self) -> None:
        """Answer every request, of any path, with a 200 HTML login page, until ``heal()``."""
        self._portal = True

    @property
    def partitioned(self) -> bool:
        return not self._healed.is_set()

    def reset_connections(self) -> int:
        """Reset every open connection now (a NAT table flushed); returns how many."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        return len(writers) // 2

    def stats(self) -> ProxyStats:
        return ProxyStats(
            self._connections, self._requests, dict(self._faults), self._responses,
            self._bytes_up, self._bytes_down, self._partitions, self._late_replays,
        )  # fmt: skip

    async def wait_for(self, predicate: Callable[[ProxyStats], bool]) -> ProxyStats:
        """Wait until the stats satisfy ``predicate`` (bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.stats()))
            return self.stats()

    # --- forwarding ------------------------------------------------------------
    def _choose(self, path: str) -> Fault:
        if self._portal:
            return Fault.PORTAL
        if not path.startswith(self.plan.only_path_prefix):
            return Fault.PASS
        faults = list(self.plan.weights)
        return self._rng.choices(faults, weights=[self.plan.weights[f] for f in faults])[0]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        self._connections += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            await self._notify()
            await self._healed.wait()
            try:
                upstream_r, upstream_w = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, self.upstream_port, limit=HEAD_MAX_BYTES), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                return  # the hub is down: the agent sees its connection closed
            self._writers.add(upstream_w)
            pending: asyncio.Queue[RequestInfo] = asyncio.Queue()
            up = asyncio.create_task(self._requests_up(client_r, upstream_w, client_w, pending))
            down = asyncio.create_task(self._answers_down(upstream_r, client_w, upstream_w, pending))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
                if up.done() and not up.cancelled() and up.exception() is None and not down.done():
                    await down  # the agent finished sending: let the last answer through
            finally:
                for t in (up, down):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, _Closed, ConnectionError):
                        await t
        except (_Closed, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # close(): this connection task is the top of its own stack, so it ends here quietly
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)
            await self._notify()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay_later(self, request: bytes) -> None:
        """Send ``request`` to the hub again ``late_s`` from now, on a connection of its own; read and drop the
        answer (a middlebox retrying a request it had given up on, after the agent moved on)."""
        await asyncio.sleep(self.plan.late_s)
        with contextlib.suppress(OSError, TimeoutError, _Closed):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.upstream_port, limit=HEAD_MAX_BYTES), CONNECT_TIMEOUT_S
            )
            try:
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(_read_head(reader), CONNECT_TIMEOUT_S * 6)
                if head is not None and head.content_length:
                    await _read_exactly(reader, head.content_length)
                self._late_replays += 1
            finally:
                writer.transport.abort()
            await self._notify()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        await self._healed.wait()
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, RuntimeError) as err:
            raise _Closed(str(err)) from None

    async def _pump_raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        """Forward bytes unchanged until the end of the stream (chunked or close-delimited messages)."""
        while True:
            try:
                chunk = await reader.read(READ_CHUNK_BYTES)
            except ConnectionError as err:
                raise _Closed(str(err)) from None
            if not chunk:
                return
            await self._send(writer, chunk)
            if up:
                self._bytes_up += len(chunk)
            else:
                self._bytes_down += len(chunk)

    async def _requests_up(
        self,
        client_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
        client_w: asyncio.StreamWriter,
        pending: asyncio.Queue[RequestInfo],
    ) -> None:
        while True:
            head = await _read_head(client_r)
            if head is None:
                with contextlib.suppress(OSError, RuntimeError):
                    upstream_w.write_eof()
                return
            method, _, rest = head.first_line.partition(" ")
            path = rest.rpartition(" ")[0] or rest
            if head.chunked or head.content_length is None and method in ("POST", "PUT", "PATCH"):
                await self._send(upstream_w, head.raw)  # no length to cut at: pass the rest of the connection
                await pending.put(RequestInfo(self._requests + 1, method, path, -1, Fault.PASS))
                self._requests += 1
                await self._pump_raw(client_r, upstream_w, up=True)
                return
            length = head.content_length or 0
            body = await _read_exactly(client_r, length) if length else b""
            self._requests += 1
            fault = self._choose(path)
            self._faults[fault] += 1
            info = RequestInfo(self._requests, method, path, length, fault)
            await self._notify()
            if fault is Fault.DROP:
                raise _Closed("dropped")
            if fault is Fault.DELAY:
                await asyncio.sleep(self._rng.uniform(*self.plan.delay_s))
            if fault is Fault.PORTAL:
                await self._send(client_w, _page(200, "OK", PORTAL_PAGE))
                continue
            if fault is Fault.CUT_REQUEST:
                data = head.raw + body[: length // 2] if length else head.raw[: len(head.raw) // 2]
                await self._send(upstream_w, data)
                self._bytes_up += len(data)
                await asyncio.sleep(0.05)  # let the partial body reach the hub before the reset
                raise _Closed("request cut")
            await pending.put(info)
            await self._send(upstream_w, head.raw + body)
            self._bytes_up += len(head.raw) + length
            if fault is Fault.REPLAY:  # pipelined on the same connection: the first answer is swallowed
                await pending.put(replace(info, fault=Fault.PASS))
                await self._send(upstream_w, head.raw + body)
                self._bytes_up += len(head.raw) + length
            if fault is Fault.REPLAY_LATE:
                self._spawn(self._replay_later(head.raw + body))
            if self.on_request_forwarded is not None:
                self.on_request_forwarded(info)

    async def _answers_down(
        self,
        upstream_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_w: asyncio.StreamWriter,
        pending: asyncio.Queue[RequestInfo],
    ) -> None:
        while True:
            head = await _read_head(upstream_r)
            if head is None:
                raise _Closed("the hub closed the connection")
            info = pending.get_nowait() if not pending.empty() else RequestInfo(0, "", "", 0, Fault.PASS)
            parts = head.first_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self._responses += 1
            if self.on_response is not None and self.on_response(info, status):
                raise _Closed("the answer was dropped")
            if info.fault is Fault.DELAY:
                await asyncio.sleep(self._rng.uniform(*self.plan.delay_s))
            if status in NO_BODY_STATUSES or 100 <= status < 200 or info.method == "HEAD":
                await self._send(client_w, head.raw)
                self._bytes_down += len(head.raw)
                continue
            length = head.content_length
            if length is None:
                await self._send(client_w, head.raw)
                await self._pump_raw(upstream_r, client_w, up=False)
                raise _Closed("a close-delimited answer ended")
            body = await _read_exactly(upstream_r, length) if length else b""
            if info.fault is Fault.REPLAY:
                continue  # the answer to the first copy: the agent gets the second's
            if info.fault in GATEWAY_PAGES:
                await self._send(client_w, _page(*GATEWAY_PAGES[info.fault]))
                continue
            if info.fault is Fault.GARBAGE_200:
                await self._send(client_w, _page(200, "OK", self._rng.randbytes(max(1, length)), MSGPACK))
                continue
            if info.fault is Fault.JSON_200:
                await self._send(client_w, _page(200, "OK", b'{"status": "ok"}', "application/json"))
                continue
            if info.fault is Fault.CUT_AFTER_HEAD:
                await self._send(client_w, head.raw)
                await asyncio.sleep(0.05)
                raise _Closed("answer cut after its head")
            if info.fault is Fault.LATE:
                await asyncio.sleep(self.plan.late_s)
            if info.fault is Fault.SLOW:
                for byte in head.raw + body:  # until the agent gives up (its timeout) and goes away
                    await self._send(client_w, bytes([byte]))
                    await asyncio.sleep(1.0)
                continue
            if info.fault is Fault.DOUBLE_ANSWER:
                await self._send(client_w, head.raw + body + head.raw + body)
                continue
            if info.fault is Fault.CUT_RESPONSE:
                data = head.raw + body[: length // 2] if length else head.raw[: len(head.raw) // 2]
                await self._send(client_w, data)
                self._bytes_down += len(data)
                await asyncio.sleep(0.05)
                raise _Closed("answer cut")
            await self._send(client_w, head.raw + body)
            self._bytes_down += len(head.raw) + length
            await self._notify()


MSGPACK = "application/msgpack"


def _page(status: int, reason: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    """A whole HTTP/1.1 answer a middlebox sends in the hub's place."""
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


class ProxyThread:
    """A ``FaultProxy`` running in its own thread and event loop; every method is thread-safe.

    Hooks run in the proxy's thread.
    """

    def __init__(self, upstream_port: int, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy = self._call(self._make(upstream_port, kwargs))
        self._closed = False

    @staticmethod
    async def _make(upstream_port: int, kwargs: dict[str, Any]) -> FaultProxy:
        proxy = FaultProxy(upstream_port, **kwargs)
        await proxy.start()
        return proxy

    def _call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _run(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self._call(call())

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def port(self) -> int:
        return self.proxy.port

    def set_plan(self, plan: FaultPlan) -> None:
        self._run(lambda: setattr(self.proxy, "plan", plan))

    def set_delay(self, delay_s: tuple[float, float]) -> None:
        self._run(lambda: setattr(self.proxy, "plan", replace(self.proxy.plan, delay_s=delay_s)))

    def partition(self) -> None:
        self._run(self.proxy.partition)

    def heal(self) -> None:
        self._run(self.proxy.heal)

    def reset_connections(self) -> int:
        return int(self._run(self.proxy.reset_connections))

    def captive_portal(self) -> None:
        self._run(self.proxy.captive_portal)

    def stats(self) -> ProxyStats:
        stats: ProxyStats = self._run(self.proxy.stats)
        return stats

    def wait_for(self, predicate: Callable[[ProxyStats], bool], timeout_s: float) -> ProxyStats:
        stats: ProxyStats = self._call(asyncio.wait_for(self.proxy.wait_for(predicate), timeout_s), timeout_s + 5)
        return stats

    def close(self) -> None:
        """Stop the proxy and its thread. Safe twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self.proxy.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
