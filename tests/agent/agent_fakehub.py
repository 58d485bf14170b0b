"""A small hub for the agent's tests: real HTTP on 127.0.0.1, the real wire codec, failures on command.

It keeps events by id (dedupe), the agent's mark per epoch as the real hub
does (raised to the last seq of each batch), and answers the counts of the
keys a batch touched as plain sums of qty.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import msgpack
from aiohttp import web

from protocol import (
    MSGPACK_CONTENT_TYPE,
    CountSnapshot,
    DiskReport,
    Rejection,
    StockEvent,
    SyncResponse,
    decode_sync_request,
    encode_sync_response,
    event_id_hex,
    wall_ms_now,
)

WAIT_S = 15.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One sync request as the hub saw it, and how it answered."""

    token: str
    seqs: tuple[int, ...]
    status: int
    backlog: int | None = None  # what the agent reported
    form: str = "events"  # how the body carried its events: "events" (maps) or "columns"
    expect: bool = False  # sent with Expect: 100-continue (a catch-up batch)
    disk: DiskReport | None = None  # the agent's disk report (protocol.DiskReport)


class FakeHub:
    def __init__(self, token: str = "token-1") -> None:
        self.token = token
        self.events: dict[bytes, StockEvent] = {}
        self.applied: list[int] = []  # seqs in the order they were first stored
        self.marks: dict[tuple[str, int], int] = {}
        self.requests: list[Seen] = []
        self.script: deque[int] = deque()  # statuses to answer next, before anything else
        self.max_batch: int | None = None  # more events than this: 413
        self.invalid_skus: set[str] = set()  # events with these SKUs: 422 for the whole batch
        self.reject_skus: set[str] = set()  # events with these SKUs: rejected in a 200
        self.reject_also: list[Rejection] = []  # added to the next 200's rejections, whatever it was sent
        self.skew_ms = 0  # added to server_time_ms
        self.refuse_columns = False  # answer events sent as columns as a hub from before them does (400)
        self.refuse_disk = False  # answer a disk report as a hub from before it does (400)
        self.fail_batches: int | None = None  # if set: answer every request carrying events with this status
        self.gate: asyncio.Event | None = None  # if set: answer only once it is set (after committing)
        self.silent_expects = 0  # so many requests asking Expect: 100-continue get no answer (a proxy that drops it)
        self.unanswered: list[int] = []  # … the Content-Length of each of them
        self._closing = asyncio.Event()
        self.changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v1/sync", self._sync, expect_handler=self._expect)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls ---------------------------------------------------
    def fail_next(self, status: int, times: int = 1) -> None:
        self.script.extend([status] * times)

    def restore(self, agent_id: str, epoch: int, hwm: int) -> None:
        """Pretend the hub was restored from a backup taken when its mark was ``hwm``."""
        lost = [i for i, ev in self.events.items() if (ev.agent_id, ev.epoch) == (agent_id, epoch) and ev.seq > hwm]
        for event_id in lost:
            del self.events[event_id]
        self.marks[(agent_id, epoch)] = hwm

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout_s)

    def on_hand(self, location: str, sku: str) -> int:
        return sum(ev.qty for ev in self.events.values() if (ev.location, ev.sku) == (location, sku))

    def batches(self, status: int = 200) -> list[tuple[int, ...]]:
        """The seqs of every non-empty request answered with ``status``, in arrival order."""
        return [seen.seqs for seen in self.requests if seen.status == status and seen.seqs]

    # --- HTTP -------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "db": {"ok": True}})  # the hub's fields (hub.app.healthz)

    async def _expect(self, request: web.Request) -> web.Response | None:
        if self.silent_expects > 0:
            self.silent_expects -= 1
            self.unanswered.append(request.content_length or 0)
            await self._closing.wait()  # neither 100 Continue nor an answer, until the hub stops
            return web.Response(status=503)  # (to a client long gone)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0

    async def _sync(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = await request.read()
        fields = msgpack.unpackb(body)
        form = "columns" if "columns" in fields else "events"
        if self.refuse_columns and form == "columns":  # what a hub from before the columnar form answers
            self.requests.append(Seen(token, (), 400, None, form))
            return _error(400, "bad_request", "sync request: unknown field(s) columns")
        if self.refuse_disk and "disk" in fields:  # what a hub from before the disk report answers
            self.requests.append(Seen(token, (), 400, None, form))
            return _error(400, "bad_request", "sync request: unknown field(s) disk")
        sync = decode_sync_request(body)
        response = self._answer(token, sync.agent_id, sync.epoch, sync.events)
        expect = request.headers.get("Expect", "").lower() == "100-continue"
        seen = Seen(token, tuple(ev.seq for ev in sync.events), response.status, sync.backlog, form, expect, sync.disk)
        self.requests.append(seen)
        async with self.changed:
            self.changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        return response

    def _answer(self, token: str, agent_id: str, epoch: int, events: tuple[StockEvent, ...]) -> web.Response:
        if self.fail_batches is not None and events:
            return _error(self.fail_batches, "scripted_failure", f"scripted failure {self.fail_batches} for batches")
        if self.script:
            status = self.script.popleft()
            return _error(status, "scripted_failure", f"scripted failure {status}")
        if token != self.token:
            return _error(401, "unauthorized", "this token is not known to the hub")
        if self.max_batch is not None and len(events) > self.max_batch:
            return _error(413, "too_large", f"at most {self.max_batch} events per request")
        invalid = [(i, ev) for i, ev in enumerate(events) if ev.sku in self.invalid_skus]
        if invalid:
            rejected = [
                {
                    "index": i,
                    "event_id": event_id_hex(ev.event_id),
                    "seq": ev.seq,
                    "reason": f"sku {ev.sku} is not sold here",
                }
                for i, ev in invalid
            ]
            return _error(422, "invalid_events", f"{len(invalid)} event(s) are invalid", rejected=rejected)
        duplicates, rejections = 0, []
        for ev in events:
            if ev.event_id in self.events:
                duplicates += 1
            elif ev.sku in self.reject_skus:
                rejections.append(Rejection(ev.event_id, ev.seq, "forbidden_location", f"sku {ev.sku} is not yours"))
            else:
                self.events[ev.event_id] = ev
                self.applied.append(ev.seq)
        rejections += self.reject_also
        self.reject_also = []
        key = (agent_id, epoch)
        self.marks[key] = max(self.marks.get(key, 0), max((ev.seq for ev in events), default=0))
        touched = sorted({(ev.location, ev.sku) for ev in events})
        counts = tuple(
            CountSnapshot(loc, sku, self.on_hand(loc, sku), 0, max(0, self.on_hand(loc, sku))) for loc, sku in touched
        )
        answer = SyncResponse(
            agent_id, epoch, self.marks[key], tuple(rejections), duplicates, counts, wall_ms_now() + self.skew_ms
        )
        return web.Response(body=encode_sync_response(answer), content_type=MSGPACK_CONTENT_TYPE)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": {"code": code, "message": message, **extra}}),
        content_type="application/json",
    )
