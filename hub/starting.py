"""What the hub answers from its start until its database is open: a migration may take minutes.

The hub listens as soon as it starts (hub.server), before it opens its database, which on an upgrade migrates it:
25-40 s for 2,000,000 events, longer on a bigger ledger, and on PostgreSQL a hub may also wait for another hub's
migration. A hub that listened only after that was refused by every probe meanwhile, and a liveness probe (a
Kubernetes one, a load balancer's health check that restarts what fails) killed it mid-step: the step was rolled
back and begun again at the next start, forever. Until the database is open the hub answers:

- ``GET /livez`` (liveness): 200, ``status`` saying what it does (``opening``, ``migrating``, ``waiting``), a
  sentence, and the step under way (``migration``). Once the database is open it answers ``{"status": "ok"}``.
- ``GET /healthz`` (readiness): 503 with ``health`` saying the same, so a load balancer sends no traffic.
- ``GET /metrics``: 200 with what a scrape can say without the database (``starting_metrics``): the hub is up and
  opening, migrating or waiting, and the step under way. A 503 there made Prometheus count the hub down, and
  ``ShelfsyncHubDown`` paged someone two minutes into a planned upgrade. No credential is asked: nothing the
  answer says is more than ``/livez`` says, and the credentials are in the database not open yet.
- anything else: 503 with Retry-After and that sentence; an agent waits and sends again, as after any 503.

Every answer closes its connection (requests pipelined behind it are not answered), so that no connection kept
alive outlasts the hand-over to the hub's application; the hand-over closes the idle ones (hub.server).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub import problems, views
from hub.storage.migrations import STARTING_PHASES, MigrationProgress
from protocol import routes
from protocol.retry import retry_after_value

LIVE_PATH = "/livez"  # GET: is the process alive and answering (public); not whether it serves yet
STARTING_RETRY_AFTER_S = 5.0  # a request to a hub still opening its database: ask again in this many seconds
PROGRESS_KEY = web.AppKey("migration_progress", MigrationProgress)
METRICS_PATH = "/metrics"
STARTING_HELP = "1 for what the hub does while it opens its database (opening, migrating, waiting); all 0: it serves."


def create_starting_app(progress: MigrationProgress) -> web.Application:
    """The application served while the store opens: ``progress`` says how far it is."""
    app = web.Application()
    app[PROGRESS_KEY] = progress
    app.router.add_route("*", "/{path:.*}", _answer, expect_handler=_answer_head)
    return app


async def _answer_head(request: web.Request) -> web.StreamResponse:
    """A request asking ``Expect: 100-continue`` is answered from its head: no body changes what a hub still
    opening its database answers, so none is asked for."""
    return await _answer(request)


def live_answer(progress: MigrationProgress) -> dict[str, object]:
    """The body of ``GET /livez`` while the database opens."""
    body: dict[str, object] = {"status": progress.phase, "detail": progress.sentence()}
    if (step := progress.answer()) is not None:
        body["migration"] = step
    return body


def starting_family(phase: str | None) -> GaugeMetricFamily:
    """``shelfsync_hub_starting{phase=…}``: 1 for ``phase``, 0 for the others (None: the hub serves)."""
    family = GaugeMetricFamily("shelfsync_hub_starting", STARTING_HELP, labels=["phase"])
    for each in STARTING_PHASES:
        family.add_metric([each], 1 if each == phase else 0)
    return family


class _StartingCollector(Collector):
    """What ``GET /metrics`` says while the database opens: the phase, and the migration step under way."""

    def __init__(self, progress: MigrationProgress) -> None:
        self.progress = progress

    def collect(self) -> list[Metric]:
        found: list[Metric] = [starting_family(self.progress.phase)]
        step = self.progress.answer()
        if step is None:
            return found
        for name, key, says in (
            ("shelfsync_hub_migration_schema_version", "schema_version", "The schema version the step makes."),
            ("shelfsync_hub_migration_step", "step", "The migration step under way, from 1, of this start's steps."),
            ("shelfsync_hub_migration_steps", "steps", "The migration steps this start makes."),
            ("shelfsync_hub_migration_step_seconds", "elapsed_s", "Seconds since the migration step under way began."),
        ):
            found.append(GaugeMetricFamily(name, says, value=float(str(step[key]))))
        return found


def starting_metrics(progress: MigrationProgress) -> bytes:
    """The Prometheus text of a hub still opening its database."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StartingCollector(progress))
    return generate_latest(registry)


async def _answer(request: web.Request) -> web.StreamResponse:
    response = _answer_of(request)
    response.force_close()  # the header alone told only the client: pipelined requests were answered, kept open
    return response


def _answer_of(request: web.Request) -> web.StreamResponse:
    progress = request.app[PROGRESS_KEY]
    reading = request.method in ("GET", "HEAD")
    closing = {"Connection": "close"}
    if reading and request.path == LIVE_PATH:
        return web.json_response(live_answer(progress), dumps=views.dumps, headers=closing)
    if reading and request.path == METRICS_PATH:
        headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store", **closing}
        return web.Response(body=starting_metrics(progress), headers=headers)
    sentence = progress.sentence()
    again = {"Retry-After": retry_after_value(STARTING_RETRY_AFTER_S), **closing}
    step = progress.answer()
    if reading and request.path == routes.HEALTH_PATH:
        extra: dict[str, Any] = {} if step is None else {"migration": step}
        return problems.response(503, sentence, health=progress.phase, db={"error": sentence}, headers=again, **extra)
    return problems.response(
        503, f"{sentence}; it serves once its database is open: try again in {STARTING_RETRY_AFTER_S:g} s",
        headers=again,
    )  # fmt: skip
