"""Webhooks: the change feed pushed to channels (web shop, marketplaces) as signed JSON batches.

Each ``[[webhooks]]`` entry of the hub config gets one dispatcher loop: read
the changes after its cursor (optionally of one location), POST them as one
JSON batch, and advance the stored cursor only after a 2xx answer — at least
once, in change order. A failure is logged in the delivery log and retried
with exponential backoff, jitter and a cap; the first failure is a warning,
the recovery is logged once. A ``429`` or ``5xx`` answer waits as a
channel's does (``protocol.retry.peer_wait_s``, the one rule): a
``Retry-After`` asking for longer than the backoff — in seconds or as an
HTTP-date — is waited out (up to ``PEER_RETRY_AFTER_MAX_S``), and a ``429``
without a readable one waits ``PEER_RETRY_AFTER_DEFAULT_S`` (1 s): a receiver
that throttles is not asked again sooner than it said.

Each request is signed: ``X-Shelfsync-Timestamp`` is the Unix time in
seconds and ``X-Shelfsync-Signature`` is ``sha256=`` + the hex HMAC-SHA256,
keyed with the webhook's secret, of ``<timestamp>.`` followed by the raw
body. The receiver recomputes it, compares in constant time and refuses a
timestamp more than a few minutes old (``verify_signature``), so a captured
request cannot be replayed later.

On a PostgreSQL hub several hub processes share the database, and only one
delivers each webhook: the one holding the webhook's deliverer lock (a
``hub.storage.postgres.leases.Leases`` of kind ``webhook.deliverer``, as
channel pushers hold theirs, and the same loop, ``hub.leases.lead``). The others stand by, showing the saved state,
try again every ``lease_retry_s`` (3 s) and take over from the saved cursor when
the holder goes away. A SQLite hub delivers every webhook through the same
loop over leases always granted (``hub.leases.LocalLeases``), so a deliverer
whose loop ends by itself is started again after a backoff there too. The stored cursor never moves backwards
(``hub.storage.feed.save_webhook_state``), whichever hub saves it.

The cursor is kept with what it was earned against (``WebhookSpec.settings_text``: the url without credentials or
query, and the location). A deliverer started with other settings than the ones its hub first read stored puts its
own in and the cursor back to 0 (``hub.storage.feed.claim_webhook_settings``, one conditional update: of several
hubs started with the same new settings, one), with one warning: the receiver now addressed is told every current
count, not only those that change afterwards. A hub started before another stored newer settings stands aside
(``WebhookDispatcher.aside``): it says so once, gives the lock back (``hub.leases.lead``) and does not take it again
while they stand, and its saves are refused, so it can neither send to the old receiver nor move the new cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub import paging, views
from hub.auth import STORE_KEY
from hub.feed import FEED_KEY, WAIT_MAX_S, ChangeWatch, change_json, read_page
from hub.heartbeat import BEATING, DEFAULT_LEASE_RETRY_S, Heartbeat
from hub.leases import LOCKS_KEY, LeaseHolder, LocalLeases, Words, lead, share_locks
from hub.metrics import METRICS_KEY
from hub.storage import POSTGRES_SCHEMES
from hub.storage.base import ChangeRow, StoreClosed, StoreError, WebhookDelivery
from hub.storage.interfaces import FeedStore
from hub.webhook_spec import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_HEADER,
    WebhookConfigError,
    WebhookSpec,
    parse_webhooks,
    settings_changed,
    sign,
    verify_signature,
)
from protocol import wall_ms_now
from protocol.logsafety import one_line
from protocol.retry import NO_JITTER, Backoff, Streak, TurnFailed, peer_wait_s, run_turns

__all__ = [
    "WebhookConfigError",
    "WebhookDispatcher",
    "WebhookSpec",
    "parse_webhooks",
    "setup",
    "sign",
    "verify_signature",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RESPONSE_READ_MAX_BYTES = 4_096  # of a receiver's answer, kept for the delivery log
DELIVERIES_LIMIT_DEFAULT = 100
DELIVERIES_LIMIT_MAX = 1_000


# --- delivery ------------------------------------------------------------------


@dataclass(slots=True)
class WebhookStatus:
    """Where one dispatcher stands, in memory (the stored state is the store's ``webhook_state``)."""

    cursor: int = 0
    failures: int = 0
    last_error: str | None = None
    last_attempt_ms: int | None = None
    last_success_ms: int | None = None
    # The newest change id a standing-by hub read with the saved cursor: its change watch is read only while this
    # hub's own loops wait on it, so it alone would show a webhook nobody here delivers as never behind.
    latest: int = 0

    def lag(self, latest: int) -> int:
        """Changes committed after the cursor, of those this hub knows (``latest``: its change watch's)."""
        return max(0, max(latest, self.latest) - self.cursor)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    http_status: int | None
    error: str | None
    retry_after_s: float | None = None  # a throttling receiver's Retry-After


class WebhookDispatcher:
    """Delivers the change feed to one webhook, forever; ``run`` is the loop."""

    def __init__(
        self,
        spec: WebhookSpec,
        store: FeedStore,
        watch: ChangeWatch,
        session: aiohttp.ClientSession,
        deliveries: Counter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.status = WebhookStatus()
        self._store = store
        self._watch = watch
        self._session = session
        self._deliveries = deliveries
        # A failed delivery backs off with jitter (the same batch goes again); a failed read or write of the
        # store is retried on its own, without jitter, before the turn goes on.
        self._streak = Streak(Backoff(RETRY_BASE_S, spec.retry_max_s), rng or random.Random())
        self._store_backoff = Backoff(RETRY_BASE_S, spec.retry_max_s, jitter=NO_JITTER)
        self._scanned = 0  # the change id up to which the feed was read (ahead of the cursor past unmatched changes)
        self.delivering = False  # this hub process runs ``run`` (on PostgreSQL, another one may instead)
        # Whether this hub still holds the webhook's deliverer lock (``LeaseHolder.holds``), asked before each delivery.
        self.holding: Callable[[], bool] = lambda: True
        self.lease_retry_s = DEFAULT_LEASE_RETRY_S  # the hub's lease_retry_s: ``lead`` notices a lost lock within it
        # How this loop proves to ``hub.leases.lead`` that it is not stuck: every await it makes is bounded.
        self.heartbeat = Heartbeat()
        self.settings = spec.settings_text()  # what its cursor is earned against (``WebhookSpec.settings_text``)
        # The settings stored for it when this hub first read them (``first_read``): a hub started later with
        # others may store them after, and this one then leaves the webhook to it (``aside``).
        self.seen_settings: str | None = None
        self.read_settings = False  # ``first_read`` done
        self.aside: str | None = None  # why this hub leaves the webhook to other hubs, when it does

    async def first_read(self) -> None:
        """Read the settings stored for the webhook, once: what this hub's config is newer than."""
        if not self.read_settings:
            self.seen_settings = await self._store.webhook_settings(self.spec.name)
            self.read_settings = True

    async def run(self) -> None:
        """Deliver the change feed, a page a turn (``protocol.retry.run_turns``), until the feed closes."""
        spec = self.spec
        BEATING.set(self.heartbeat)  # this task's
        self.heartbeat.beat()
        try:
            await self._retrying(self.first_read)
            claim = await self._retrying(
                lambda: self._store.claim_webhook_settings(spec.name, self.settings, self.seen_settings)
            )
            if claim.outcome == "aside":
                self._stand_aside(claim.stored)
                return  # ``hub.leases.lead`` gives the lock back without a word more (``_WebhookJob.aside``)
            # The stored settings are this hub's now: other ones stored later are a hub's started after this one,
            # which this hub leaves the webhook to, not older ones to replace again when it takes the webhook back
            # (two hubs on alternating configs would each start the feed again at every handover).
            self.seen_settings = self.settings
            if claim.outcome == "reset" and claim.stored is not None:
                # its cursor was earned against another receiver or location: the counts that have not changed
                # since would never reach the receiver now told about them
                log.warning(
                    "webhook %s: its %s changed since it last ran, so its feed starts again from the first change "
                    "and the receiver is told every current count (this hub's config is the newest: hubs started "
                    "before it with the old one leave the webhook to it)",
                    spec.name, settings_changed(claim.stored, self.settings),
                )  # fmt: skip
            state = await self._retrying(lambda: self._store.webhook_state(spec.name))
            self.status.cursor, self.status.last_error, self.status.failures = state
            self._streak.resume(state.attempts, state.last_error)  # a restart goes on with the backoff it had
            self._scanned = state.cursor
            await run_turns(
                self._turn, wait=self._wait, failed=self._failed_turn, ends=(StoreClosed,),
                running=lambda: not self._watch.closed,
            )  # fmt: skip
        except StoreClosed:
            return

    def _stand_aside(self, stored: str | None) -> None:
        """Another hub, started after this one, stored other settings for the webhook: this hub's config is the
        older, and delivering under it would undo that hub's (start the feed again, to the old receiver). Said
        once, and shown as the webhook's last error here until the settings stored are this hub's again."""
        spec = self.spec
        changed = settings_changed(self.settings, stored) if stored is not None else "settings"
        self.aside = (
            f"another hub sharing the database, started after this one, delivers it with another {changed}; this "
            f"hub leaves it to the hubs started with that config (restart this one with the same [[webhooks]] "
            f"entry)"
        )
        self.status.last_error = self.aside
        log.warning("webhook %s: %s", spec.name, self.aside)

    async def stand_aside_still(self) -> bool:
        """While aside: whether the stored settings still are another hub's (False: this hub may take it again)."""
        stored = await self._store.webhook_settings(self.spec.name)
        if stored is not None and stored != self.settings and stored != self.seen_settings:
            return True
        self.aside = None
        return False

    async def _turn(self) -> float:
        """Deliver the next page; how long to wait for changes afterwards (0: go on at once)."""
        spec = self.spec
        self.heartbeat.beat()
        page = await self._retrying(
            lambda after=self._scanned: read_page(self._store, after, spec.batch_max, spec.location)  # type: ignore[misc]
        )
        if not page.rows:
            # Past changes of other locations only: nothing is left to deliver up to here, so the webhook stands
            # here (its lag counts what it still has to send). The stored cursor moves with the next delivery.
            self._scanned = self.status.cursor = page.cursor
            return WAIT_MAX_S
        if not self.holding():
            # The lock went with its connection, and another hub may be delivering from the saved cursor already:
            # nothing more goes out from here (``lead`` stops this loop at its next turn).
            self.heartbeat.beat(self.lease_retry_s)
            await asyncio.sleep(self.lease_retry_s)
            return 0.0
        self.heartbeat.beat(spec.timeout_s)  # a slow receiver within timeout_s is not a stuck deliverer
        outcome = await self._deliver(page.rows)
        if not outcome.ok:
            await self._failed(page.rows, outcome)
            first, last = page.rows[0].change_id, page.rows[-1].change_id
            raise TurnFailed(
                f"delivering changes {first}-{last} to {spec.display_url} failed ({outcome.error})",
                retry_after_s=outcome.retry_after_s,
            )
        self._scanned = page.cursor
        await self._succeeded(page.rows, page.cursor, outcome)
        return 0.0

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        self.heartbeat.beat(delay_s)  # the backoff or the wait for changes: both end within delay_s
        if after_failure:
            await asyncio.sleep(delay_s)
        elif delay_s > 0:
            await self._watch.wait_past(self._scanned, delay_s)

    async def _failed_turn(self, failure: TurnFailed) -> float:
        if self._streak.failed(failure):
            log.log(
                failure.level, "webhook %s: %s; retrying with backoff", self.spec.name, failure, exc_info=failure.cause
            )
        return self._streak.delay_s(failure.retry_after_s)  # at least the backoff, and what Retry-After asked

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` (a read or write of the store) until it works, backing off between failures."""
        streak = Streak(self._store_backoff)
        while True:
            try:
                result = await call()
            except StoreError as err:
                if streak.failed(str(err)):
                    log.warning("webhook %s cannot read the change feed (%s); retrying", self.spec.name, err)
                delay_s = streak.delay_s()
                self.heartbeat.beat(delay_s)
                await asyncio.sleep(delay_s)
                continue
            if streak.succeeded():
                log.info("webhook %s reads the change feed again", self.spec.name)
            return result

    async def _deliver(self, rows: list[ChangeRow]) -> _Outcome:
        spec = self.spec
        first, last = rows[0].change_id, rows[-1].change_id
        # the feed's history: a restored hub numbers its changes again, so a change id names a change only with it
        batch = {"webhook": spec.name, "cursor": str(last), "history": self._store.feed_history}
        body = views.dumps({**batch, "changes": [change_json(r) for r in rows]}).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "shelfsync-hub",
            WEBHOOK_HEADER: spec.name,
            DELIVERY_HEADER: f"{spec.name}:{first}-{last}",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(spec.secret, timestamp, body),
        }
        self.status.last_attempt_ms = wall_ms_now()
        try:
            async with self._session.post(
                spec.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:  # accepted: its body is not waited for (it may never come)
                    return _Outcome(True, resp.status, None)
                try:
                    answer = await resp.content.read(RESPONSE_READ_MAX_BYTES)
                except (TimeoutError, aiohttp.ClientError):
                    answer = b""  # the status says it failed; the reason is what there is
                text = one_line(" ".join(answer.decode("utf-8", "replace").split()), 200)  # control characters: ?
                wait_s = (
                    peer_wait_s(resp.status, resp.headers.get("Retry-After"))  # as the channels wait
                    if resp.status == 429 or resp.status >= 500
                    else None
                )
                return _Outcome(
                    False, resp.status, f"the receiver answered HTTP {resp.status}: {text or resp.reason}", wait_s
                )
        except TimeoutError:
            return _Outcome(False, None, f"the receiver did not answer within {spec.timeout_s:g} s (timeout_s)")
        except aiohttp.ClientError as err:
            return _Outcome(False, None, spec.redact(_client_error_text(err)))

    async def _succeeded(self, rows: list[ChangeRow], cursor: int, outcome: _Outcome) -> None:
        spec, status = self.spec, self.status
        now_ms = wall_ms_now()
        await self._retrying(
            lambda: self._store.log_webhook_delivery(
                spec.name, rows[0].change_id, rows[-1].change_id, "delivered", outcome.http_status, None, now_ms
            )
        )
        await self._retrying(lambda: self._store.save_webhook_state(spec.name, cursor, None, 0, self.settings))
        if ended := self._streak.succeeded():
            log.info("webhook %s delivers again, after %d failed attempt(s)", spec.name, ended)
        status.cursor, status.failures, status.last_error, status.last_success_ms = cursor, 0, None, now_ms
        if self._deliveries is not None:
            self._deliveries.labels(spec.name, "delivered").inc()

    async def _failed(self, rows: list[ChangeRow], outcome: _Outcome) -> None:
        """Log the failed delivery in the store; the loop logs it and backs off (``_failed_turn``)."""
        spec, status = self.spec, self.status
        status.failures += 1
        status.last_error = outcome.error
        first, last = rows[0].change_id, rows[-1].change_id
        await self._retrying(
            lambda: self._store.log_webhook_delivery(
                spec.name, first, last, "failed", outcome.http_status, outcome.error, wall_ms_now()
            )
        )
        await self._retrying(
            lambda: self._store.save_webhook_state(
                spec.name, status.cursor, outcome.error, status.failures, self.settings
            )
        )
        if self._deliveries is not None:
            self._deliveries.labels(spec.name, "failed").inc()


def _client_error_text(err: aiohttp.ClientError) -> str:
    """One sentence for a request that got no answer to read (aiohttp's own text may be a repr, or name the URL)."""
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection before its answer was complete"
    if isinstance(err, aiohttp.ClientResponseError):  # an answer aiohttp could not parse: its text names the URL
        return f"the receiver's answer is not valid HTTP ({one_line(str(err.message)) or type(err).__name__})"
    return f"cannot reach the receiver: {one_line(str(err)) or type(err).__name__}"


class _WebhookCollector(Collector):
    def __init__(self, dispatchers: Iterable[WebhookDispatcher], watch: ChangeWatch) -> None:
        self._dispatchers = list(dispatchers)
        self._watch = watch

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "shelfsync_webhook_lag_changes", "Changes committed but not yet delivered to the webhook.", labels=["name"]
        )
        failing = GaugeMetricFamily(
            "shelfsync_webhook_failures", "Failed delivery attempts since the last success.", labels=["name"]
        )
        delivering = GaugeMetricFamily(
            "shelfsync_webhook_delivering", "1: this hub delivers the webhook (one hub at a time).", labels=["name"]
        )
        aside = GaugeMetricFamily(
            "shelfsync_webhook_aside",
            "1: this hub leaves the webhook to hubs started with a newer [[webhooks]] entry, and does not deliver it.",
            labels=["name"],
        )
        for d in self._dispatchers:
            lag.add_metric([d.spec.name], d.status.lag(self._watch.latest))
            failing.add_metric([d.spec.name], d.status.failures)
            delivering.add_metric([d.spec.name], int(d.delivering and d.aside is None))
            aside.add_metric([d.spec.name], int(d.aside is not None))
        yield from (lag, failing, delivering, aside)


WEBHOOKS_KEY = web.AppKey("webhooks", dict[str, WebhookDispatcher])


def setup(app: web.Application, specs: tuple[WebhookSpec, ...], db: str = "") -> None:
    """Register the webhook routes and, if any webhook is configured, run its dispatcher while the app runs.

    ``db``: the hub's database; on a PostgreSQL URL each webhook is delivered by one hub process at a time."""
    app[WEBHOOKS_KEY] = {}
    app.router.add_get("/v1/webhooks", get_webhooks, name="webhooks")
    app.router.add_get("/v1/webhooks/{name}/deliveries", get_deliveries, name="webhook_deliveries")
    if specs:
        share_locks(app, db)  # on PostgreSQL, the webhooks' lock connection, lease_stale_s and lease_retry_s
        app.cleanup_ctx.append(lambda app: _run_dispatchers(app, specs, db))


async def _run_dispatchers(app: web.Application, specs: tuple[WebhookSpec, ...], db: str) -> AsyncIterator[None]:
    store, watch = app[STORE_KEY], app[FEED_KEY]
    metrics = app.get(METRICS_KEY)
    counter = None
    if metrics is not None:
        counter = Counter(
            "shelfsync_webhook_deliveries", "Webhook delivery attempts.", ["name", "status"], registry=metrics.registry
        )
    async with aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=len(specs) * 2)) as session:
        dispatchers = {s.name: WebhookDispatcher(s, store, watch, session, counter) for s in specs}
        app[WEBHOOKS_KEY].update(dispatchers)
        if metrics is not None:
            metrics.registry.register(_WebhookCollector(dispatchers.values(), watch))
        tasks: dict[str, asyncio.Task[None]] = {}
        words = Words("webhook", "deliverer lock", "the webhooks' deliverer locks", "delivers", "delivering")
        jobs = {name: _WebhookJob(d, tasks, store) for name, d in dispatchers.items()}
        leases: LeaseHolder
        if db.startswith(POSTGRES_SCHEMES):
            from hub.storage.postgres.leases import Leases  # the driver loads only for a PostgreSQL hub

            connection = app[LOCKS_KEY].of("webhooks") or db
            lock, locks = "the deliverer lock of webhook {name}", "the webhooks' locks"
            leases = Leases(connection, "webhook.deliverer", lock, locks)
            log.info("standing by to deliver the change feed to %d webhook(s): %s", len(specs), ", ".join(dispatchers))
        else:  # one hub per SQLite file: it delivers every webhook, and starts again one whose loop ended
            local = LocalLeases(app[LOCKS_KEY].stale_s)
            local.start_all(jobs)
            leases = local
            log.info("delivering the change feed to %d webhook(s): %s", len(tasks), ", ".join(dispatchers))
        retry_s = app[LOCKS_KEY].retry_s
        for name, d in dispatchers.items():
            d.holding = functools.partial(leases.holds, name)
            d.lease_retry_s = retry_s
        leader = asyncio.create_task(lead(leases, jobs, log, words, retry_s, lambda: watch.closed),
                                     name="webhook-leases")  # fmt: skip
        try:
            yield
        finally:
            leader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leader
            for name in list(tasks):
                await _stop(dispatchers[name], tasks)
            await leases.close()  # only now: no dispatcher of ours runs when another hub takes the webhooks


def _start(d: WebhookDispatcher, tasks: dict[str, asyncio.Task[None]]) -> None:
    d.delivering = True
    tasks[d.spec.name] = asyncio.create_task(d.run(), name=f"webhook-{d.spec.name}")


async def _stop(d: WebhookDispatcher, tasks: dict[str, asyncio.Task[None]]) -> None:
    task = tasks.pop(d.spec.name)
    if not task.done():  # one that ended by itself is not raised again (``hub.leases.lead`` says why it ended)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    d.delivering = False


class _WebhookJob:
    """A webhook as ``hub.leases.lead`` sees it: its dispatcher, run as a task in ``tasks``."""

    def __init__(self, d: WebhookDispatcher, tasks: dict[str, asyncio.Task[None]], store: FeedStore) -> None:
        self._d, self._tasks, self._store = d, tasks, store

    def here(self) -> bool:
        return self._d.spec.name in self._tasks

    def ended(self) -> tuple[str, asyncio.Task[None]] | None:
        task = self._tasks.get(self._d.spec.name)
        return ("delivering", task) if task is not None and task.done() else None

    def overdue(self) -> tuple[str, float] | None:
        task = self._tasks.get(self._d.spec.name)
        return None if task is None or task.done() else ("delivering", self._d.heartbeat.overdue_s())

    def start(self) -> None:
        _start(self._d, self._tasks)  # its run loads the cursor the last deliverer saved

    def aside(self) -> bool:
        return self._d.aside is not None

    def restartable(self, doing: str) -> bool:
        return False  # one loop: it is the whole job

    async def restart(self, doing: str) -> None:
        raise RuntimeError(f"webhook {self._d.spec.name}: its one loop restarts with the whole job")

    async def stop(self) -> None:
        await _stop(self._d, self._tasks)

    async def stand_by(self) -> None:  # what GET /v1/webhooks shows while standing by
        d = self._d
        d.status.cursor, d.status.last_error, d.status.failures = await self._store.webhook_state(d.spec.name)
        d.status.latest = await self._store.latest_change_id()
        if d.aside is not None and await d.stand_aside_still():
            d.status.last_error = d.aside  # why nobody here delivers it
        elif not d.read_settings:  # a hub that first stands by: what its config is newer than
            await d.first_read()
            if d.seen_settings is not None and d.seen_settings != d.settings:
                log.warning(
                    "webhook %s: this hub's config changes its %s from the settings it was last delivered with; "
                    "if this hub takes it over, its feed starts again from the first change",
                    d.spec.name, settings_changed(d.seen_settings, d.settings),
                )  # fmt: skip


# --- routes -------------------------------------------------------------------


def _status_json(d: WebhookDispatcher, latest: int) -> dict[str, Any]:
    s = d.status
    return {
        "name": d.spec.name,
        "url": d.spec.display_url,
        "deliverer": "this hub" if d.delivering else "another hub",  # several hubs on one PostgreSQL database
        "aside": d.aside is not None,  # this hub leaves it to hubs started with a newer entry (``_stand_aside``)
        "location": d.spec.location,
        "cursor": str(s.cursor),
        "lag": s.lag(latest),
        "failures": s.failures,
        "last_error": s.last_error,
        "last_attempt_ms": s.last_attempt_ms,
        "last_attempt": views.iso_ms(s.last_attempt_ms),
        "last_success_ms": s.last_success_ms,
        "last_success": views.iso_ms(s.last_success_ms),
    }


def delivery_json(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": d.delivery_id,
        "first_change": d.first_change,
        "last_change": d.last_change,
        "status": d.status,
        "http_status": d.http_status,
        "error": d.error,
        "at_ms": d.at_ms,
        "at": views.iso_ms(d.at_ms),
    }


def webhook_statuses(app: web.Application) -> list[dict[str, Any]]:
    latest = app[FEED_KEY].latest
    return [_status_json(d, latest) for d in app[WEBHOOKS_KEY].values()]


async def get_webhooks(request: web.Request) -> web.Response:
    """Every configured webhook: where it stands and its last error."""
    views.Query(request, set())
    return web.json_response({"webhooks": webhook_statuses(request.app)}, dumps=views.dumps)


async def get_deliveries(request: web.Request) -> web.Response:
    """One webhook's delivery log, newest first, a page at a time (``next``/``cursor``)."""
    params = views.Query(request, {"limit", "cursor"})
    name = request.match_info["name"]
    hooks = request.app[WEBHOOKS_KEY]
    if name not in hooks:
        known = ", ".join(sorted(hooks)) or "none is configured"
        raise web.HTTPNotFound(text=f"there is no webhook named {name[:64]!r}; the webhooks are: {known}")
    before_id = paging.parse(request, paging.delivery_reader(name), f"the deliveries of webhook {name}")
    limit = params.limit(DELIVERIES_LIMIT_DEFAULT, DELIVERIES_LIMIT_MAX)
    rows = await request.app[STORE_KEY].webhook_deliveries(name, limit + 1, before_id)
    more = len(rows) > limit
    rows = rows[:limit]
    body = {
        "webhook": name,
        "deliveries": [delivery_json(d) for d in rows],
        "next": paging.delivery_cursor(name, rows[-1].delivery_id) if more else None,
    }
    return web.json_response(body, dumps=views.dumps)
