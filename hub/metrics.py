"""Prometheus metrics of one hub process, served at ``GET /metrics``.

Each application has its own ``CollectorRegistry`` (tests create many apps in
one process; the global registry would refuse the second). Counters and the
ingest-latency histogram are fed by the ingest routes (``observe_ingest``);
per-agent gauges (last-sync age, high-water marks, events in the last hour)
are read from the store when Prometheus scrapes.
"""

from __future__ import annotations

import collections
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub import catchup
from hub.auth import STORE_KEY
from hub.config import ExceptionWindows
from hub.starting import starting_family
from hub.storage.base import AgentStatus, IngestResult
from protocol import wall_ms_now
from protocol.codec import DISK_STATES

DISK_UNREPORTED = "unreported"  # the disk state counted for an agent without a disk report
RECENT_WINDOW_S = 3_600
RECENT_BUCKET_S = 60
EXCEPTIONS_COUNT_MAX = 10_000  # exceptions counted per scrape at most (one bounded read)
INGEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RecentIngest:
    """Events received per agent in the last hour, in one-minute buckets (this process only)."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[str, deque[list[int]]] = defaultdict(deque)  # agent -> [[minute, events], …]

    def add(self, agent_id: str, events: int, now_s: float | None = None) -> None:
        if events <= 0:
            return
        minute = int((time.time() if now_s is None else now_s) // RECENT_BUCKET_S)
        buckets = self._buckets[agent_id]
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += events
        else:
            buckets.append([minute, events])
        self._trim(buckets, minute)

    def last_hour(self, agent_id: str, now_s: float | None = None) -> int:
        buckets = self._buckets.get(agent_id)
        if not buckets:
            return 0
        self._trim(buckets, int((time.time() if now_s is None else now_s) // RECENT_BUCKET_S))
        return sum(n for _, n in buckets)

    @staticmethod
    def _trim(buckets: deque[list[int]], minute: int) -> None:
        oldest = minute - RECENT_WINDOW_S // RECENT_BUCKET_S + 1
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    agents: tuple[AgentStatus, ...] = ()
    now_ms: int = 0
    latest_change: int = 0


class _AgentCollector(Collector):
    """Per-agent gauges from the snapshot the ``/metrics`` handler takes just before rendering."""

    def __init__(self, recent: RecentIngest) -> None:
        self.recent = recent
        self.snapshot = _Snapshot()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        age = GaugeMetricFamily(
            "shelfsync_agent_last_sync_age_seconds", "Seconds since the agent's last sync.", labels=["agent_id"]
        )
        hwm = GaugeMetricFamily(
            "shelfsync_agent_hwm",
            "The agent's high-water mark (highest seq committed) per epoch.",
            labels=["agent_id", "epoch"],
        )
        recent = GaugeMetricFamily(
            "shelfsync_agent_events_last_hour",
            "Events this hub process received from the agent in the last hour.",
            labels=["agent_id"],
        )
        skew = GaugeMetricFamily(
            "shelfsync_agent_clock_skew_seconds",
            "The hub's wall clock minus the newest event's wall clock at the agent's last sync.",
            labels=["agent_id"],
        )
        backlog = GaugeMetricFamily(
            "shelfsync_agent_backlog_events",
            "Events waiting in the agent's outbox, not yet acknowledged, as it reported at its newest sync.",
            labels=["agent_id"],
        )
        for a in snap.agents:
            if a.revoked:
                continue
            if a.last_sync_ms is not None:
                age.add_metric([a.agent_id], max(0, snap.now_ms - a.last_sync_ms) / 1000)
            for epoch, mark in sorted(a.hwm.items()):
                hwm.add_metric([a.agent_id, str(epoch)], mark)
            recent.add_metric([a.agent_id], self.recent.last_hour(a.agent_id, snap.now_ms / 1000))
            if a.clock_skew_ms is not None:
                skew.add_metric([a.agent_id], a.clock_skew_ms / 1000)
            if a.backlog is not None:
                backlog.add_metric([a.agent_id], a.backlog)
        latest = GaugeMetricFamily("shelfsync_changes_latest_id", "The newest change id of the change feed.")
        latest.add_metric([], snap.latest_change)
        yield from (age, hwm, recent, skew, backlog, latest)
        yield from _disk_families(snap.agents)


def _disk_families(agents: Iterable[AgentStatus]) -> Iterable[Metric]:
    """The store PCs' disks as their agents' newest reports say: a count per state and the least free space.

    Counts, not a series per agent and state: a few series however many thousand stores, none appearing or
    going as a disk fills and empties; which store it is, the exceptions list names (``agent_disk_full``)."""
    states = dict.fromkeys((*DISK_STATES, DISK_UNREPORTED), 0)
    free: list[int] = []
    for a in agents:
        if a.role != "agent" or a.revoked:
            continue
        states[a.disk.state if a.disk is not None else DISK_UNREPORTED] += 1
        if a.disk is not None and a.disk.free_bytes is not None:
            free.append(a.disk.free_bytes)
    by_state = GaugeMetricFamily(
        "shelfsync_agents_disk",
        "Store agents by the state of their disk at their newest report: ok, reserve_in_use (the disk is full and "
        "the agent stores scans in its disk reserve), full (scans refused), unreported (an agent from before the "
        "disk report, or one that has not synced since).",
        labels=["state"],
    )
    for state, n in states.items():
        by_state.add_metric([state], n)
    yield by_state
    if free:  # no report with free space: no value, rather than a 0 that would look like a full disk
        least = GaugeMetricFamily(
            "shelfsync_agents_disk_free_bytes_min",
            "The least free space on the disk of a store agent's outbox, of every agent's newest report.",
        )
        least.add_metric([], min(free))
        yield least


class _CatchUpCollector(Collector):
    """The catch-up slots of this hub process (hub/catchup.py) as they are when Prometheus scrapes."""

    def __init__(self, slots: catchup.CatchUpSlots) -> None:
        self.slots = slots

    def collect(self) -> Iterable[Metric]:
        slots = self.slots
        running = GaugeMetricFamily("shelfsync_catchup_running", "Catch-up batches holding a slot now.")
        running.add_metric([], slots.running)
        waiting = GaugeMetricFamily("shelfsync_catchup_waiting", "Catch-up batches waiting in line for a slot now.")
        waiting.add_metric([], slots.waiting)
        waited = CounterMetricFamily("shelfsync_catchup_waited", "Catch-up batches that waited in line for a slot.")
        waited.add_metric([], slots.waited)
        refused = CounterMetricFamily(
            "shelfsync_catchup_refused",
            "Catch-up batches answered 429 (the line full, too long, or the agent's share).",
        )
        refused.add_metric([], slots.refused)
        yield from (running, waiting, waited, refused)


class _ServingCollector(Collector):
    """``shelfsync_hub_starting`` at 0 for every phase: the hub serves (hub.starting says 1 while it opens)."""

    def collect(self) -> Iterable[Metric]:
        yield starting_family(None)


class HubMetrics:
    """The metrics of one hub application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exception_windows = ExceptionWindows()  # what the exceptions gauge passes to ReportStore.exceptions
        r = self.registry
        self.batches = Counter("shelfsync_ingest_batches", "Batches ingested.", ["route"], registry=r)
        self.ingested = Counter("shelfsync_events_ingested", "Events stored for the first time.", ["route"], registry=r)
        self.duplicates = Counter(
            "shelfsync_events_duplicate", "Events received again and ignored (resends).", ["route"], registry=r
        )
        self.rejected = Counter(
            "shelfsync_events_rejected",
            "Events refused: by ingest (forbidden_location, conflict, invalid) or as an invalid request (request_invalid).",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "shelfsync_ingest_seconds",
            "Time to handle one ingest request.",
            ["route"],
            buckets=INGEST_BUCKETS_S,
            registry=r,
        )
        self.failures = Counter(
            "shelfsync_request_failures",
            "Requests answered 503 because the database failed (cause=database) or 500 (cause=unexpected).",
            ["cause"],
            registry=r,
        )
        self.quarantine_pending = Gauge(
            "shelfsync_quarantine_pending_events",
            "Events held in the clock quarantine waiting for an operator or a release (all of them).",
            registry=r,
        )
        self.exceptions = Gauge(
            "shelfsync_exceptions_listed",
            f"Exceptions the hub lists for a person, by kind (counted up to {EXCEPTIONS_COUNT_MAX} in all).",
            ["kind"],
            registry=r,
        )
        self.recent = RecentIngest()
        self._agents = _AgentCollector(self.recent)
        r.register(self._agents)
        r.register(_ServingCollector())

    def observe(self, route: str, result: IngestResult, elapsed_s: float) -> None:
        self.batches.labels(route).inc()
        self.ingested.labels(route).inc(result.applied)
        self.duplicates.labels(route).inc(result.duplicates)
        for rejection in result.rejected:
            self.rejected.labels(route, rejection.code).inc()
        self.latency.labels(route).observe(elapsed_s)
        self.recent.add(result.agent_id, result.applied + result.duplicates + len(result.rejected))

    def observe_invalid(self, route: str, events: int) -> None:
        """A request refused whole because ``events`` of its events broke the contract (422)."""
        self.rejected.labels(route, "request_invalid").inc(events)

    def render(self, agents: Sequence[AgentStatus], latest_change: int) -> bytes:
        self._agents.snapshot = _Snapshot(tuple(agents), wall_ms_now(), latest_change)
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("metrics", HubMetrics)


def setup(app: web.Application, exception_windows: ExceptionWindows | None = None) -> None:
    """``exception_windows``: ``HubSettings.exception_windows``, so the exceptions counted are those listed."""
    app[METRICS_KEY] = HubMetrics()
    app[METRICS_KEY].exception_windows = exception_windows or ExceptionWindows()
    if (slots := app.get(catchup.SLOTS_KEY)) is not None:
        app[METRICS_KEY].registry.register(_CatchUpCollector(slots))
    app.router.add_get("/metrics", get_metrics, name="metrics")


def observe_ingest(app: web.Application, route: str, result: IngestResult, elapsed_s: float) -> None:
    """Count one committed ingest request (called by the ingest routes after the commit)."""
    metrics = app.get(METRICS_KEY)
    if metrics is not None:
        metrics.observe(route, result, elapsed_s)


def observe_invalid(app: web.Application, route: str, events: int) -> None:
    metrics = app.get(METRICS_KEY)
    if metrics is not None:
        metrics.observe_invalid(route, events)


def observe_failure(app: web.Application, cause: str) -> None:
    """Count a request the hub failed: ``cause`` "database" (answered 503) or "unexpected" (answered 500)."""
    metrics = app.get(METRICS_KEY)
    if metrics is not None:
        metrics.failures.labels(cause).inc()


def events_last_hour(app: web.Application, agent_id: str) -> int:
    metrics = app.get(METRICS_KEY)
    return 0 if metrics is None else metrics.recent.last_hour(agent_id)


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this hub process's metrics."""
    if request.rel_url.query:
        raise web.HTTPBadRequest(text="/metrics takes no query parameters")
    store = request.app[STORE_KEY]
    agents = await store.agent_status()
    hub_clock, unattributed = await store.quarantine_totals()
    request.app[METRICS_KEY].quarantine_pending.set(hub_clock + sum(unattributed.values()))
    windows = request.app[METRICS_KEY].exception_windows
    listed = collections.Counter(row.kind for row in await store.exceptions(limit=EXCEPTIONS_COUNT_MAX, **windows))
    gauge = request.app[METRICS_KEY].exceptions
    gauge.clear()  # a kind no longer listed goes to nothing, not to its last value
    for kind, n in sorted(listed.items()):
        gauge.labels(kind).set(n)
    body = request.app[METRICS_KEY].render(agents, await store.latest_change_id())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
