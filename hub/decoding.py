"""Decoding big sync bodies in a worker process.

In the hub's own process a body's decoding takes the GIL from the SQLite
writer, which needs it back after every row it writes (see
``hub.storage.sqlite.writer``); in a worker process it runs on another core,
but the events then come back pickled through a pipe and the pool's thread,
which costs the hub's process CPU and the writer the GIL too. Agents send
their events as columns, which decode in ~1 ms per 1,000 (~69 KB), and
bodies up to ``DECODE_INLINE_MAX_BYTES`` are decoded in place: a worker's
round trip cost more than that, for a 1,000-event batch (bench_ingest.py,
alternating runs: 27–33k events/s through the worker against 32–39k in
place) and for a catching-up agent's 5,000 (bench_catchup.py, 300,000
events, alternating: 9.5 s through the worker against 7.5 s in place) and
10,000, ~690 KiB, the batch it sends now (bench/catchup_cpu.py, 200,000
events, alternating: the hub's main thread and writer 6.6–6.7 CPU-s in place;
6.3–6.6 through the worker, plus the worker's 1.9, whose decoding the writer
waits for all the same). The limit was 64 KiB when bodies were maps that took
~3 ms per 1,000 events, and 512 KiB while a catching-up agent sent 5,000.
A store without a writer thread (PostgreSQL: its writes are the event
loop's awaits) decodes bodies up to ``DECODE_INLINE_ALONE_MAX_BYTES`` in place
(handing a 1,000-event body to a worker and its events back cost more CPU
than decoding it: 0.0218 → 0.0177 CPU-s per 1,000 events in the hub,
bench_pg_scaling.py, with maps), the loop held ~10 ms at most. Bigger bodies
(maps of thousands of events from older agents) still go to the worker. The
worker starts with the first big body, and a worker that dies is replaced on
the next one, the body meanwhile decoded in a thread: a decode never fails
because of the pool.

Workers are started with ``spawn`` (never ``fork``: the hub has threads) and
watch their parent: if the hub is killed, they exit within
``PARENT_CHECK_S`` instead of lingering.

The other bodies the hub reads whole and checks (a connector's ``POST
/v1/events``, an agent's observations and import issues) are read by
``read_body``: in place up to ``THREAD_PAST_BYTES``, past it in a worker
thread, one at a time when the route gives it a lock to take.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from protocol import BadEvents, ProtocolError, SyncRequest, decode_sync_request
from protocol.codec import BadEvent
from protocol.runtime import tune_gc_for_serving

log = logging.getLogger(__name__)

DECODE_INLINE_MAX_BYTES = 768 * 1024  # beside a writer thread: a catch-up's 10,000 scans as columns (~6,600 as maps)
DECODE_INLINE_ALONE_MAX_BYTES = 1024 * 1024  # no writer thread: any 10,000 scans as columns, ~10 ms of the loop
DECODE_WORKERS_MAX = 2
PARENT_CHECK_S = 1.0
# ``read_body``: a body past this is read and checked in a worker thread. A connector's 1,000-event body of 7 MiB
# (attrs at their limits) takes ~0.4 s of Python to read and check, which on the event loop held every other
# client's answer that long (a 1,000-event body of plain movements, 120 KB, ~50 ms).
THREAD_PAST_BYTES = 64 * 1024

T = TypeVar("T")


def default_workers() -> int:
    """One core for the hub's own process, the rest (at most ``DECODE_WORKERS_MAX``) for decoding."""
    return max(0, min(DECODE_WORKERS_MAX, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True, slots=True)
class _Refused:
    """A decode error, as plain data: exceptions with their own constructors do not cross processes whole."""

    message: str
    field: str | None
    bad: tuple[BadEvent, ...] | None
    agent_id: str
    epoch: int

    @classmethod
    def of(cls, err: ProtocolError) -> _Refused:
        if isinstance(err, BadEvents):
            return cls(str(err), err.field, err.bad, err.agent_id, err.epoch)
        return cls(err.reason, err.field, None, "", 0)

    def error(self) -> ProtocolError:
        if self.bad is not None:
            return BadEvents(list(self.bad), self.agent_id, self.epoch)
        return ProtocolError(self.message, field=self.field)


def _decode_in_worker(body: bytes) -> SyncRequest | _Refused:
    try:
        return decode_sync_request(body)
    except ProtocolError as err:
        return _Refused.of(err)


def _start_worker(parent_pid: int) -> None:
    """In a worker: collect garbage as the hub does while serving (protocol/runtime.py), and exit once the hub
    that started it is gone."""
    tune_gc_for_serving()
    _watch_parent(parent_pid)


def _watch_parent(parent_pid: int) -> None:
    """In a worker: exit once the hub that started it is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class SyncDecoder:
    """``await decode(body)``: a ``SyncRequest``, or the ``ProtocolError``/``BadEvents`` the body deserves."""

    def __init__(self, workers: int | None = None, *, inline_max_bytes: int = DECODE_INLINE_MAX_BYTES) -> None:
        self.workers = default_workers() if workers is None else workers
        self.inline_max_bytes = inline_max_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    async def decode(self, body: bytes) -> SyncRequest:
        if len(body) <= self.inline_max_bytes:
            return decode_sync_request(body)
        pool = self._pool_or_none()
        if pool is None:
            return await asyncio.to_thread(decode_sync_request, body)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(pool, _decode_in_worker, body)
        except BrokenProcessPool:
            if self._pool is pool:  # not a pool started since by another body that met the same death
                log.warning("A sync decoding worker died; starting another for the next batch, decoding this one here.")
                self._pool = None
                pool.shutdown(wait=False)
            return await asyncio.to_thread(decode_sync_request, body)
        if isinstance(outcome, _Refused):
            raise outcome.error()
        return outcome

    def _pool_or_none(self) -> ProcessPoolExecutor | None:
        if self._closed or self.workers == 0:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    def close(self) -> None:
        """Let the workers finish the bodies already handed to them, then stop; later bodies are decoded
        in a thread."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def pids(decoder: SyncDecoder) -> list[int]:
    """The worker processes' ids (for tests and /healthz-style checks)."""
    pool: Any = decoder._pool
    return [] if pool is None else [p.pid for p in pool._processes.values()]


async def read_body(request: web.Request, decode: Callable[[bytes], T], turn: asyncio.Lock | None = None) -> T:
    """``decode`` of the request's body, read whole (the app's client_max_size, max_body_bytes, bounds it): in place
    up to ``THREAD_PAST_BYTES``, past it in a worker thread, holding ``turn`` when given (one body at a time: each
    thread takes the GIL from the event loop too). ``decode``'s errors are the caller's to answer."""
    body = await request.read()
    if len(body) <= THREAD_PAST_BYTES:
        return decode(body)
    if turn is None:
        return await asyncio.to_thread(decode, body)
    async with turn:
        return await asyncio.to_thread(decode, body)
