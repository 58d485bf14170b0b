"""``python -m bench.ingest_timers OUT.json serve …``: ``python -m hub serve …`` with a stopwatch per ingest stage.

Where a 1,000-event batch's time goes inside the hub process, for
``bench.bench_ingest`` (the breakdown issue 16 asks for). Wrappers around
the hub's own functions, installed before it starts, add up per batch:

* decode: ``SyncDecoder.decode`` (the body to a ``SyncRequest``: a worker
  process and back, on the event loop's side);
* plan: the shared algorithm's Python work — ``prepare_batch`` on the event
  loop plus, on the writer thread, the write's run minus its SQL;
* SQL: the write's statements on the writer thread (``InlineConnection``);
* wait: the rest of the store's ``ingest`` call — queueing for the writer,
  the group's other writes, BEGIN/COMMIT (the fsync) and the hops between
  threads; ``commit`` is the BEGIN/COMMIT part of it.

Also the writer thread's CPU seconds inside plan and SQL (wall − CPU there is
time the thread was runnable or blocked but not running: the GIL, the disk,
other processes) and the writer's busy share of the run. The figures are
written to OUT.json when the hub stops (SIGTERM). The stopwatch reads the
clocks a few dozen times per batch (µs, against tens of ms per batch).
"""

from __future__ import annotations

import atexit
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import hub.decoding
import hub.storage.sqlite.store
import hub.storage.store
from hub.storage.sqlite.writer import InlineConnection


class Stopwatch:
    """Sums per stage; the writer-thread figures are added on that thread, the others on the event loop."""

    def __init__(self) -> None:
        stages = ["decode", "prepare", "ingest_call", "run", "run_cpu", "sql", "sql_cpu", "group", "group_cpu", "commit"]
        self.s: dict[str, float] = dict.fromkeys(stages, 0.0)
        self.commit_max = 0.0
        self.commits: list[float] = []
        self.run_cpus: list[float] = []
        self.threads: dict[int | None, str] = {}
        self.main_cpu_first = 0.0
        self.main_cpu_last = 0.0
        self.batches = 0
        self.events = 0
        self.writes = 0
        self.groups = 0
        self.first: float | None = None
        self.last = 0.0
        self._local = threading.local()

    def sql_add(self, wall: float, cpu: float) -> None:
        local = self._local
        local.sql = getattr(local, "sql", 0.0) + wall
        local.sql_cpu = getattr(local, "sql_cpu", 0.0) + cpu

    def sql_taken(self) -> tuple[float, float]:
        local = self._local
        taken = getattr(local, "sql", 0.0), getattr(local, "sql_cpu", 0.0)
        local.sql = local.sql_cpu = 0.0
        return taken

    def result(self) -> dict[str, Any]:
        n = max(1, self.batches)
        s = self.s
        plan_writer = s["run"] - s["sql"]
        ms = {
            "decode": s["decode"] / n * 1e3,
            "plan": (s["prepare"] + plan_writer) / n * 1e3,
            "sql": s["sql"] / n * 1e3,
            "wait": (s["ingest_call"] - s["prepare"] - s["run"]) / n * 1e3,
            "commit": s["commit"] / n * 1e3,
            "prepare": s["prepare"] / n * 1e3,
            "plan_writer_cpu": (s["run_cpu"] - s["sql_cpu"]) / n * 1e3,
            "sql_cpu": s["sql_cpu"] / n * 1e3,
            "writer_cpu": s["group_cpu"] / n * 1e3,
            "main_cpu": (self.main_cpu_last - self.main_cpu_first) / n * 1e3,
        }
        span = (self.last - self.first) if self.first is not None else 0.0
        return {
            "batches": self.batches,
            "events": self.events,
            "writes": self.writes,
            "groups": self.groups,
            "ms_per_batch": ms,
            "writer_busy": s["group"] / span if span > 0 else 0.0,
            "commit_max_ms": self.commit_max * 1e3,
            "commits_ms": self.commits,
            "threads": self.threads,
            "span_s": span,
        }


WATCH = Stopwatch()


def _timed_sql(method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(method)
    async def timed(self: InlineConnection, *args: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return await method(self, *args)
        finally:
            WATCH.sql_add(time.perf_counter() - t0, time.thread_time() - c0)

    return timed


def install() -> None:
    """Wrap the hub's ingest stages with the stopwatch (before the hub starts)."""
    for name in ("execute", "executemany", "execute_fetchall"):
        setattr(InlineConnection, name, _timed_sql(getattr(InlineConnection, name)))

    decode = hub.decoding.SyncDecoder.decode

    async def timed_decode(self: hub.decoding.SyncDecoder, body: bytes) -> Any:
        t0 = time.perf_counter()
        try:
            return await decode(self, body)
        finally:
            WATCH.s["decode"] += time.perf_counter() - t0

    hub.decoding.SyncDecoder.decode = timed_decode  # type: ignore[method-assign]

    prepare = hub.storage.store.prepare_batch

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            WATCH.s["prepare"] += time.perf_counter() - t0

    hub.storage.store.prepare_batch = timed_prepare  # type: ignore[assignment]

    store_cls = hub.storage.sqlite.store.SqliteHubStore
    ingest = store_cls.ingest

    async def timed_ingest(self: Any, who: Any, epoch: int, events: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        if WATCH.first is None:
            WATCH.first = t0
            WATCH.main_cpu_first = time.thread_time()
        try:
            return await ingest(self, who, epoch, events, *args, **kwargs)
        finally:
            WATCH.last = time.perf_counter()
            WATCH.main_cpu_last = time.thread_time()
            WATCH.s["ingest_call"] += WATCH.last - t0
            WATCH.events += len(events)
            WATCH.batches += 1
            if WATCH.batches == 10:  # which thread is which, for a look at their CPU from outside
                WATCH.threads = {t.native_id: t.name for t in threading.enumerate()}

    store_cls.ingest = timed_ingest  # type: ignore[method-assign]

    run_inline = hub.storage.sqlite.store.run_inline

    def timed_run(coro: Any) -> Any:
        WATCH.sql_taken()
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return run_inline(coro)
        finally:
            WATCH.s["run"] += time.perf_counter() - t0
            WATCH.s["run_cpu"] += time.thread_time() - c0
            WATCH.run_cpus.append(time.thread_time() - c0)
            sql, sql_cpu = WATCH.sql_taken()
            WATCH.s["sql"] += sql
            WATCH.s["sql_cpu"] += sql_cpu
            WATCH.writes += 1

    hub.storage.sqlite.store.run_inline = timed_run

    commit_group = hub.storage.sqlite.store._commit_group

    def timed_group(conn: Any, group: Any, cache: Any) -> Any:
        run_before = WATCH.s["run"]
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return commit_group(conn, group, cache)
        finally:
            took = time.perf_counter() - t0
            WATCH.s["group_cpu"] += time.thread_time() - c0
            WATCH.s["group"] += took
            commit = took - (WATCH.s["run"] - run_before)
            WATCH.s["commit"] += commit
            WATCH.commit_max = max(WATCH.commit_max, commit)
            WATCH.commits.append(round(commit * 1e3, 1))
            WATCH.groups += 1

    hub.storage.sqlite.store._commit_group = timed_group


def main() -> None:
    out = Path(sys.argv[1])
    install()
    atexit.register(lambda: out.write_text(json.dumps(WATCH.result(), indent=2) + "\n"))
    from hub.cli import main as hub_main

    sys.argv = ["shelfsync-hub", *sys.argv[2:]]
    raise SystemExit(hub_main())


if __name__ == "__main__":
    main()
