"""The change feed: every committed change of a count, in commit order, by cursor.

``GET /v1/changes`` answers a page of changes after a cursor and long-polls
(waits up to ``wait`` seconds) when there is none yet; ``GET
/v1/changes/stream`` serves the same rows as server-sent events and resumes
from ``Last-Event-ID``. Webhooks (``hub.webhooks``) read the same rows.

A ``ChangeWatch`` knows the newest change id. The ingest path pokes it right
after each commit in this process (``poke``); while anyone waits, it also
re-reads the id every ``change_recheck_s``, so changes committed by another
hub process sharing a PostgreSQL database (or by a route that does not poke)
are seen too.

One commit wakes every open stream and waiting long-poll at once. So that it
costs one read, not one per stream, the watch reads the new changes itself,
once, when the id moves, and keeps the newest ``RECENT_MAX`` of them: a
stream or long-poll that is not behind them takes its next page from there
(``ChangeWatch.page_after``), and those of one credential that woke for the
same read share one check of that credential (``CredentialChecks``). With hundreds of streams open, each
doing its own two reads per commit queued every other request behind them on
the database (``/v1/counts`` went from a few to hundreds of milliseconds).

A stream's connection holds little unsent (``STREAM_BUFFER_BYTES`` in its transport, a kernel send buffer of
``STREAM_SOCKET_BUFFER_BYTES``), and one behind reads ``STREAM_READ_BATCH`` changes at a time, so a client that
never reads costs the hub a couple of hundred kilobytes and, once its buffers are full, no work. Before, on
loopback, the kernel took megabytes of each, and the hub read and wrote that much for it: 200 such streams slowed
12,000 changes' syncs from 0.6 s to 45 s. A stream whose client takes nothing for ``STREAM_STALL_S`` is cut (its
client resumes from its cursor), counted in the log (``FeedStream``).

When the hub stops, every long-poll is answered and every stream ends
(``end_streams``). A stream whose client stopped reading would wait on its
full send buffer for ``send_timeout`` (aiohttp-sse's, minutes) and hold the
drain, and so the stop, that long: its connection is cut after
``STREAM_STOP_GRACE_S`` instead (its client resumes from ``Last-Event-ID``).

Reads from the database cost a budget per credential (``feed_read_rows_per_s``, ``feed_read_burst``; a
token bucket of ``hub.ratelimit`` counted in changes, charged after each read of the store with its rows, at
least one): five clients reading the whole history in a loop took a store agent's ``GET /v1/counts`` from 2 to
27 ms at the median. A page taken from what the watch read for all costs nothing, so a reader following its
cursor never meets the budget. Past it a page or a new stream is answered ``429`` with ``Retry-After``; an open
stream waits for its budget before its next read of its own.

A long-poll or stream delivers only while its credential holds: before it
sends a page it waited for (and a stream at least every
``STREAM_RECHECK_S`` while idle) it asks the store again (``auth.still_valid``,
one row read per wake-up, not per change). A revoked credential or an ended
dashboard session gets a ``401`` instead of the long-poll's page, and its
stream an ``error`` event, then the end.

A cursor is the ``change_id`` of the last change read and the feed's history
(``hub.storage.feed``): ``<change_id>.<history>``. The history is new after
the database was restored from a backup (or copied, or moved), when the same
change ids are handed out again to other changes: a cursor of another
history is refused (``410``) rather than read on past changes its reader
never saw. A cursor of the older form, the decimal ``change_id`` alone (the
store agents' and other readers' from before), is still taken, and answered
in that form, as before: only a cursor ahead of the feed is refused then.
A read with no cursor starts one of the new form. With a location or SKU
filter a cursor may run ahead of the last change returned (past changes
that did not match), never past one that did.

A restore can keep the history: a directory snapshot that brings back
``hub.db`` with ``hub.db.feed-home``, or a physical copy of a PostgreSQL
cluster, keeps the home the history is tied to, and the restored hub numbers
other changes under the ids its readers already read past. So a cursor also
names its change: ``<change_id>.<history><check>``, the check a digest of that
change as the hub held it when it gave the cursor out (``change_check``). On
resume the hub reads that one change again (by id, one row: it replaces the
read of the newest id that judged whether the cursor is ahead) and answers a
cursor whose change it no longer holds as it was ``410``, as one of another
history. A cursor of the history alone (given out before) is taken as before
and answered in the new form. The check of the cursor it gives out comes from
the page's last change, or the cursor it was given, or what the watch read;
only a filtered page whose cursor ran past the changes it holds reads that
change once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse, sse_response

from hub import views
from hub.auth import BY_SESSION_KEY, STORE_KEY, Unauthorized, bearer_token, identity_of, still_valid
from hub.limits import parked
from hub.proxies import client_of
from hub.ratelimit import RateLimiter
from hub.storage.base import ChangeRow, StoreClosed, StoreError
from hub.storage.interfaces import FeedStore
from protocol import event_id_hex
from protocol import feed as wire
from protocol.feed import CHANGE_CHECK_CHARS, HISTORY_CHARS, HISTORY_MAX_CHARS, HISTORY_SEP, split_history
from protocol.logsafety import RepeatLog
from protocol.retry import FULL_JITTER, Backoff, Streak, TurnFailed, run_turns

log = logging.getLogger(__name__)

CHANGES_LIMIT_DEFAULT = 500
CHANGES_LIMIT_MAX = wire.CHANGES_LIMIT_MAX
WAIT_MAX_S = wire.WAIT_MAX_S  # the longest a long-poll waits; proxies commonly cut idle requests after 60 s or more
RECHECK_DEFAULT_S = 1.0
STREAM_PING_S = 15.0  # SSE comment lines that keep proxies from closing an idle stream
STREAM_BATCH = 500
STREAM_READ_BATCH = 100  # a stream behind what the watch keeps reads this many at a time: what it holds while it waits
STREAM_RECHECK_S = 15.0  # an idle stream re-checks its credential this often (one with changes: before each page)
REVOKED_TEXT = "the credential was revoked or the dashboard session ended; sign in again"
STREAM_RETRY_MS = 3_000  # what browsers wait before reconnecting a dropped stream
RETRY_BASE_S = 0.5
RETRY_MAX_S = 30.0
WATCH_BACKOFF = Backoff(RETRY_BASE_S, RETRY_MAX_S, jitter=FULL_JITTER)  # a failing read of the newest change id
CURSOR_MAX = (1 << 63) - 1
CLIENT_GONE_CHECK_S = 2.0  # a waiting long-poll checks this often whether its client is still connected
STREAM_STOP_GRACE_S = 1.0  # at a stop: how long a stream's unsent bytes may take to go before its connection is cut
STREAM_BUFFER_BYTES = 64 * 1024  # what a stream's transport holds unsent before its send waits for its client
STREAM_SOCKET_BUFFER_BYTES = 64 * 1024  # the kernel's send buffer of a stream's connection (Linux doubles it)
STREAM_STALL_S = 30.0  # a stream whose client takes nothing of what it was sent this long is cut
TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux's
KERNEL_STALL_MARGIN_S = 60.0  # the kernel cuts a stalled stream's connection this long after the hub would have
WAIT_TEXT_MAX_CHARS = 32  # room for any float's decimal text (1.59e-203, 2.5000000000000004); longer is refused
RECENT_MAX = 2_000  # the newest changes the watch keeps for the streams (each a few hundred bytes)
READ_POLICY = "feed-reads"  # the read budget's name in the RateLimit-Policy and RateLimit fields
BUDGET_CHECK_S = 1.0  # a stream waiting for its read budget checks this often whether it should end instead


class ChangeWatch:
    """The newest change id, kept fresh for the long-polls, streams and webhooks waiting on it.

    One loop: wait for a poke (a commit in this process) or, while someone
    waits, a tick of ``recheck_s``; read the newest id once; wake every waiter
    it concerns. A failing read backs off exponentially with jitter.
    """

    def __init__(self, store: FeedStore, recheck_s: float = RECHECK_DEFAULT_S, recent_max: int = RECENT_MAX) -> None:
        self._store = store
        self._recheck_s = recheck_s
        self._latest = 0
        self._recent: deque[ChangeRow] = deque()  # every change after ``_recent_from`` up to ``_latest``
        self._recent_from = CURSOR_MAX + 1  # nothing read yet: no page is answered from ``_recent``
        self._recent_max = recent_max
        self._reads = 0  # reads of the newest id that found it moved; a page from ``_recent`` is as of one of them
        self.streams = 0  # open streams and waiting long-polls take pages from ``_recent`` (webhooks read their own)
        self._cond = asyncio.Condition()
        self._wake = asyncio.Event()
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._streak = Streak(WATCH_BACKOFF)

    @property
    def latest(self) -> int:
        """The newest change id seen so far (it may lag the database by up to ``recheck_s``)."""
        return self._latest

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reads(self) -> int:
        """How many times the newest id was read and found moved (``page_after`` tells a page's read)."""
        return self._reads

    def page_after(self, after: int, limit: int, location: str | None, sku: str | None) -> tuple[Page, int] | None:
        """The page ``read_page`` would answer, from the changes the watch read, and the read it is as of
        (``reads``); None when ``after`` is not within them (a stream that is behind reads the store itself)."""
        if not self._recent_from <= after <= self._latest:
            return None
        rows = [
            r for r in self._recent
            if r.change_id > after and (location is None or r.location == location) and (sku is None or r.sku == sku)
        ][:limit]  # fmt: skip
        if len(rows) == limit:
            return Page(rows, rows[-1].change_id, True), self._reads
        return Page(rows, self._latest, False), self._reads  # every change up to _latest is in _recent

    def recent(self, change_id: int) -> ChangeRow | None:
        """Change ``change_id`` as the watch read it, when it keeps it."""
        if not self._recent_from < change_id <= self._latest:
            return None
        for row in reversed(self._recent):  # a cursor names the newest change, mostly
            if row.change_id <= change_id:
                return row if row.change_id == change_id else None
        return None

    @property
    def waiting(self) -> int:
        """How many long-polls, streams and webhooks are waiting for a change right now."""
        return self._waiters

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def poke(self) -> None:
        """A commit happened in this process: re-read the newest id now."""
        if not self._closed:
            self._wake.set()

    async def wait_past(self, after: int, timeout_s: float) -> int:
        """Wait until a change after ``after`` is known or ``timeout_s`` passes; return the newest id known.

        Returns at once (with whatever is known) once the watch is closed.
        """
        if self._closed:
            return self._latest
        self._start()
        self._waiters += 1
        if self._waiters == 1:
            self._wake.set()  # the loop idles while nobody waits: read once now, then tick
        try:
            async with self._cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._cond.wait_for(lambda: self._latest > after or self._closed), max(0.0, timeout_s)
                    )
        finally:
            self._waiters -= 1
        return self._latest

    async def close(self) -> None:
        """Wake every waiter and stop the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        async with self._cond:
            self._cond.notify_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="change-watch")

    async def _run(self) -> None:
        with contextlib.suppress(StoreClosed):
            await run_turns(
                self._read_latest, wait=self._wait, failed=self._failed, ends=(StoreClosed,),
                running=lambda: not self._closed,
            )  # fmt: skip

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        """Until a poke, or the backoff after a failed read; while someone waits, at most ``recheck_s``."""
        timeout_s: float | None = delay_s if after_failure else (self._recheck_s if self._waiters else None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()

    async def _read_latest(self) -> float:
        if not self._waiters:
            return 0.0  # nobody waits: the next waiter's arrival triggers a fresh read
        try:
            latest = await self._store.latest_change_id()
        except (StoreError, OSError) as err:
            raise TurnFailed(str(err)) from err
        if ended := self._streak.succeeded():
            log.info("the change feed reads the newest change id again after %d failed attempt(s)", ended)
        if latest > self._latest:
            await self._keep_recent(latest)
            self._latest = latest
            self._reads += 1
            async with self._cond:
                self._cond.notify_all()
        return 0.0

    async def _keep_recent(self, latest: int) -> None:
        """Read the changes up to ``latest`` once, for every stream; keep the newest ``recent_max``.

        With no stream open nothing is read, and what was kept is dropped (a stream's first page is its own)."""
        try:
            rows = await self._store.changes(self._latest, self._recent_max) if self.streams else []
        except (StoreError, OSError):
            rows = []  # the streams read the store themselves, as they would have anyway
        rows = [r for r in rows if r.change_id <= latest]
        if not rows or rows[-1].change_id != latest:  # not all of them (too many, or the read failed): none
            self._recent.clear()
            self._recent_from = latest
            return
        self._recent_from = min(self._recent_from, self._latest)  # the first read: from what was known before it
        self._recent.extend(rows)
        while len(self._recent) > self._recent_max:
            self._recent_from = self._recent.popleft().change_id

    async def _failed(self, failure: TurnFailed) -> float:
        if self._streak.failed(failure):
            log.log(
                failure.level, "the change feed cannot read the newest change id (%s); retrying with backoff", failure,
                exc_info=failure.cause,
            )  # fmt: skip
        return self._streak.delay_s()


FEED_KEY = web.AppKey("change_watch", ChangeWatch)
STREAMS_KEY = web.AppKey("change_streams", set[asyncio.Transport])  # the connections of the streams open now


def poke(app: web.Application) -> None:
    """Tell the feed that a commit happened (called by the ingest routes)."""
    watch = app.get(FEED_KEY)
    if watch is not None:
        watch.poke()


async def end_streams(app: web.Application) -> None:
    """Answer every long-poll and end every stream now (the hub is stopping; they hold no writes)."""
    watch = app.get(FEED_KEY)
    if watch is not None:
        await watch.close()
    streams = app.get(STREAMS_KEY)
    if not streams:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_STOP_GRACE_S
    while (stuck := _stuck_streams(streams)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for transport in stuck:
        transport.abort()  # the pending send fails at once and the stream's handler ends
    if stuck:
        log.info("cut %d change stream(s) whose client stopped reading, to stop without waiting for it", len(stuck))


def _stuck_streams(streams: set[asyncio.Transport]) -> list[asyncio.Transport]:
    """The connections of open streams that still hold bytes their client has not taken."""
    return [t for t in streams if not t.is_closing() and t.get_write_buffer_size() > 0]


class CredentialChecks:
    """One check of a credential for all the streams of it that woke for the same read of the watch.

    A stream asks again whether its credential holds before it sends what it woke for, and the check must
    begin after the read of what it sends (then nothing committed after a revocation goes out). A check of
    the same bearer token that began after that read (under way or done) answers for it too; a dashboard
    session's stream always asks for itself (signing out is per session)."""

    KEEP_MAX = 10_000  # distinct tokens remembered; more, and the memory starts over

    def __init__(self, watch: ChangeWatch) -> None:
        self._watch = watch
        self._checks: dict[str, tuple[int, asyncio.Future[bool]]] = {}  # token -> (watch read it began after, result)

    async def still_valid(self, request: web.Request, read: int | None) -> bool:
        """``auth.still_valid``, shared when ``read`` (the watch read the page is as of) allows it."""
        if read is None or request.get(BY_SESSION_KEY, False):
            return await still_valid(request)
        key = bearer_token(request)
        known = self._checks.get(key)
        if known is not None and known[0] >= read and not (known[1].done() and known[1].exception() is not None):
            return await asyncio.shield(known[1])
        if len(self._checks) >= self.KEEP_MAX:
            self._checks.clear()
        check = asyncio.ensure_future(still_valid(request))
        self._checks[key] = (self._watch.reads, check)
        return await asyncio.shield(check)


CHECKS_KEY = web.AppKey("credential_checks", CredentialChecks)
READS_KEY = web.AppKey("feed_read_budget", RateLimiter)  # rows read from the database, per credential
STALLED_KEY = web.AppKey("stalled_streams", RepeatLog)  # streams cut as their client took nothing for STREAM_STALL_S


def setup(
    app: web.Application, store: FeedStore, recheck_s: float, read_rows_per_s: float = 0.0, read_burst: int = 1
) -> None:
    """Register the feed's routes and its watch on ``app``; a ``read_rows_per_s`` of 0: no read budget."""
    app[FEED_KEY] = ChangeWatch(store, recheck_s)
    if read_rows_per_s > 0:
        app[READS_KEY] = RateLimiter(read_rows_per_s, read_burst, policy=READ_POLICY)
    app[STALLED_KEY] = RepeatLog(
        log, "cut", f"change stream whose client took nothing of what the hub sent for {STREAM_STALL_S:g} s (it "
        "resumes from its Last-Event-ID)|change streams whose client took nothing of what the hub sent for "
        f"{STREAM_STALL_S:g} s (each resumes from its Last-Event-ID)",
    )  # fmt: skip

    async def flush(app: web.Application) -> None:
        app[STALLED_KEY].flush()

    app.on_cleanup.append(flush)
    app[CHECKS_KEY] = CredentialChecks(app[FEED_KEY])
    app[STREAMS_KEY] = set()

    async def stop(app: web.Application) -> None:
        await app[FEED_KEY].close()

    app.on_shutdown.append(stop)
    app.router.add_get(wire.CHANGES_PATH, get_changes, name="changes")
    app.router.add_get("/v1/changes/stream", get_changes_stream, name="changes_stream")


# --- the read budget --------------------------------------------------------


def check_budget(request: web.Request) -> None:
    """A 429 with Retry-After when the caller's credential has read more changes from the database than its
    budget allows (``feed_read_burst`` at once, ``feed_read_rows_per_s`` on average); nothing without a budget."""
    budget = request.app.get(READS_KEY)
    if budget is None:
        return
    who = identity_of(request).agent_id
    wait_s = budget.owed_s(who)
    if wait_s > 0:
        raise budget.refusal(
            who, wait_s,
            f"{who} read more changes of the feed from the hub's database than its budget allows ({budget.burst} "
            f"at once, {budget.rate_per_s:g} a second on average: feed_read_burst, feed_read_rows_per_s); follow "
            "the feed from the cursor it gave rather than read it again from the start",
        )  # fmt: skip


def charge(request: web.Request, page: Page) -> None:
    """Count a page read from the database (not one taken from what the watch read for all) against the caller's
    budget: its rows, and at least one for the read."""
    budget = request.app.get(READS_KEY)
    if budget is not None:
        budget.charge(identity_of(request).agent_id, max(1, len(page.rows)))


async def wait_for_budget(request: web.Request, watch: ChangeWatch, gone: asyncio.Future[None]) -> None:
    """Until the caller's credential may read from the database again, or its stream ends (the client went away
    or the hub stops)."""
    budget = request.app.get(READS_KEY)
    if budget is None:
        return
    who = identity_of(request).agent_id
    while (wait_s := budget.owed_s(who)) > 0 and not gone.done() and not watch.closed:
        await asyncio.wait({gone}, timeout=min(wait_s, BUDGET_CHECK_S))


# --- reading ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[ChangeRow]
    cursor: int  # resume after this id
    more: bool  # a full page: more may be there right away


async def read_page(
    store: FeedStore, after: int, limit: int, location: str | None = None, sku: str | None = None
) -> Page:
    """Changes after ``after``; with a filter, the cursor also skips what did not match."""
    if location is None and sku is None:
        rows = await store.changes(after, limit)
        return Page(rows, rows[-1].change_id if rows else after, len(rows) == limit)
    # Every change up to ``latest`` is visible once read (ids are assigned in commit order), so a
    # short page proves no matching change up to ``latest`` was left out.
    latest = await store.latest_change_id()
    rows = await store.changes(after, limit, location, sku)
    if len(rows) == limit:
        return Page(rows, rows[-1].change_id, True)
    return Page(rows, max(after, latest, rows[-1].change_id if rows else 0), False)


def change_json(r: ChangeRow) -> dict[str, Any]:
    return {
        wire.CHANGE_ID: r.change_id,
        wire.LOCATION: r.location,
        wire.SKU: r.sku,
        wire.ON_HAND: r.on_hand,
        wire.RESERVED: r.reserved,
        wire.AVAILABLE: r.available,
        wire.IN_TRANSIT: r.in_transit,
        wire.EVENT_IDS: [event_id_hex(e) for e in r.event_ids],
        wire.AT_MS: r.at_ms,
        "at": views.iso_ms(r.at_ms),
    }


# --- parameters --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a reader resumes: after ``after``, in the feed history ``history`` (None: a cursor of the old form),
    whose change ``after`` the hub held as ``check`` (``change_check``; None: not named)."""

    after: int
    history: str | None
    check: str | None = None

    def text(self) -> str:
        """The cursor as the hub gives it out."""
        if self.history is None:
            return str(self.after)
        return f"{self.after}{HISTORY_SEP}{self.history}{self.check or ''}"

    def of(self, row: ChangeRow) -> Cursor:
        """The cursor after ``row``, in the form this one came in."""
        return Cursor(row.change_id, self.history, None if self.history is None else change_check(row))


def change_check(row: ChangeRow) -> str:
    """A digest of a change as the hub holds it (its id, location, SKU, counts and event ids), which a cursor
    carries so that a restore that kept the feed's history is noticed: ``CHANGE_CHECK_CHARS`` hex digits."""
    digest = hashlib.blake2b(digest_size=CHANGE_CHECK_CHARS // 2)
    fields = [row.change_id, row.location, row.sku, row.on_hand, row.reserved, row.available, row.in_transit]
    digest.update(json.dumps(fields).encode())
    for event_id in row.event_ids:  # 16 bytes each
        digest.update(event_id)
    return digest.hexdigest()


async def change_at(store: FeedStore, change_id: int) -> ChangeRow | None:
    """Change ``change_id`` as the store holds it (None: it holds none of that id)."""
    rows = await store.changes(change_id - 1, 1)
    return rows[0] if rows and rows[0].change_id == change_id else None


async def cursor_at(
    store: FeedStore, watch: ChangeWatch, given: Cursor, change_id: int, rows: list[ChangeRow]
) -> Cursor:
    """The cursor to give out after ``change_id`` in the form ``given`` came in, naming that change: from the
    page's ``rows``, ``given`` itself, what the watch read, or else one read of it."""
    if given.history is None or change_id == 0:
        return Cursor(change_id, given.history)
    if rows and rows[-1].change_id == change_id:
        return given.of(rows[-1])
    if change_id == given.after and given.check is not None:
        return given
    row = watch.recent(change_id) or await change_at(store, change_id)
    return Cursor(change_id, given.history) if row is None else given.of(row)


def parse_cursor(raw: str, name: str = "cursor") -> int:
    """The change id a cursor resumes after (either form; its history is ``read_cursor``'s)."""
    return read_cursor(raw, name).after


def read_cursor(raw: str, name: str = "cursor") -> Cursor:
    """``<change_id>.<history><check>``, ``<change_id>.<history>`` or the old form ``<change_id>``; a 400 for
    anything else (a change named at 0, where there is none)."""
    number, sep, token = raw.partition(HISTORY_SEP)
    history, check = split_history(token) if sep else (None, None)
    if (
        not number.isascii() or not number.isdigit() or len(number) > 19 or int(number) > CURSOR_MAX
        or (sep and not (0 < len(token) <= HISTORY_MAX_CHARS and set(token) <= HISTORY_CHARS))
        or (check is not None and int(number) == 0)
    ):  # fmt: skip
        raise web.HTTPBadRequest(
            text=f"{name} must be a cursor the hub gave out (as it gave it, or 0 for the start), got {raw[:40]!r}"
        )
    return Cursor(int(number), history, check)


def check_history(store: FeedStore, cursor: Cursor, name: str = "cursor") -> None:
    """A 410 for a cursor of another history of the feed: the changes after it are not the ones its reader saw."""
    if cursor.history is None or cursor.history == store.feed_history:
        return
    raise _gone(cursor, name)


async def check_change(store: FeedStore, cursor: Cursor, name: str = "cursor") -> bool:
    """A 410 for a cursor whose change the hub no longer holds as it gave the cursor out (a restore that kept the
    feed's history); True when the cursor names its change (which is then there: the cursor is not ahead)."""
    if cursor.check is None:
        return False
    row = await change_at(store, cursor.after)
    if row is None or change_check(row) != cursor.check:
        log.info(
            "refused a change feed cursor at change %d: this hub %s (its database was put back to an earlier state "
            "that kept the feed's history)", cursor.after,
            "holds no such change" if row is None else "holds another change of that id",
        )  # fmt: skip
        raise _gone(cursor, name)
    return True


def _gone(cursor: Cursor, name: str) -> web.HTTPGone:
    return web.HTTPGone(
        text=f"{name} {cursor.text()} is of an earlier history of this hub's change feed (its database was "
        "restored from a backup, or copied or moved, since): changes after it may differ from the ones read; read "
        "the feed again from the start (leave the cursor out), or note the newest change, then take the counts and go on "
        "from it"
    )


async def check_not_ahead(store: FeedStore, after: int, name: str = "cursor") -> None:
    """A 400 for a cursor past the newest change: this feed never gave it out, and reading on would skip changes."""
    if after == 0:
        return
    latest = await store.latest_change_id()
    if after > latest:
        raise web.HTTPBadRequest(
            text=f"{name} {after} is ahead of this hub's change feed, whose newest change is {latest} (a cursor of "
            "another hub, or this hub's database was restored from a backup); read the feed again from the start "
            "(leave the cursor out), or note the newest change, then take the counts and go on from it"
        )


def _limit(raw: str | None) -> int:
    if raw is None:
        return CHANGES_LIMIT_DEFAULT
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= CHANGES_LIMIT_MAX:
        raise web.HTTPBadRequest(text=f"limit must be a whole number from 1 to {CHANGES_LIMIT_MAX}, got {raw[:40]!r}")
    return int(raw)


def _wait_s(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw) if raw.isascii() and len(raw) <= WAIT_TEXT_MAX_CHARS else -1.0
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= WAIT_MAX_S:  # also refuses nan and inf
        raise web.HTTPBadRequest(text=f"wait must be a number of seconds from 0 to {WAIT_MAX_S:g}, got {raw[:40]!r}")
    return value


def _filters(params: views.Query) -> tuple[str | None, str | None]:
    return params.location(), params.sku()


# --- routes -----------------------------------------------------------------


async def get_changes(request: web.Request) -> web.Response:
    """A page of changes after ``cursor``; waits up to ``wait`` seconds when there is none yet."""
    params = views.Query(request, {"cursor", "limit", "wait", "location", "sku"})
    query = request.rel_url.query
    store: FeedStore = request.app[STORE_KEY]
    given = read_cursor(query["cursor"]) if "cursor" in query else Cursor(0, store.feed_history or None)
    after = given.after
    limit = _limit(query.get("limit"))
    wait_s = _wait_s(query.get("wait"))
    location, sku = _filters(params)
    check_history(store, given)  # after every parameter's own check: a malformed request is a 400 first
    watch = request.app[FEED_KEY]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    if not await check_change(store, given):
        await check_not_ahead(store, after)
    check_budget(request)  # 429 past the credential's read budget
    page = await read_page(store, after, limit, location, sku)
    charge(request, page)
    waited, read = False, None
    watch.streams += 1  # woken, it takes its page from what the watch read once for all (``page_after``)
    try:
        with parked(request) if not page.rows and wait_s > 0 else contextlib.nullcontext():
            while not page.rows and not watch.closed and (remaining := deadline - loop.time()) > 0:
                if not await _wait_past_while_connected(request, watch, page.cursor, remaining):
                    return web.Response(status=204)  # nobody reads it: the client closed its connection meanwhile
                waited = True
                shared: tuple[Page, int | None] | None = watch.page_after(page.cursor, limit, location, sku)
                if shared is None:  # behind what the watch keeps: its own read
                    shared = await read_page(store, page.cursor, limit, location, sku), None
                    charge(request, shared[0])
                page, read = shared
    finally:
        watch.streams -= 1
    # asked after the read, shared by the long-polls of one token woken by it: nothing committed later goes out
    if waited and not await request.app[CHECKS_KEY].still_valid(request, read):
        log.info("refused the long-poll answer of %s: its credential was revoked or its session ended while it "
                 "waited", identity_of(request).agent_id)  # fmt: skip
        raise Unauthorized(REVOKED_TEXT)
    body = {
        wire.CHANGES_FIELD: [change_json(r) for r in page.rows],
        wire.CURSOR_FIELD: (await cursor_at(store, watch, given, page.cursor, page.rows)).text(),
        wire.MORE_FIELD: page.more,
    }
    return web.json_response(body, dumps=views.dumps, headers={"Cache-Control": "no-store"})


async def _wait_past_while_connected(request: web.Request, watch: ChangeWatch, after: int, timeout_s: float) -> bool:
    """``watch.wait_past``, given up (False) once the client has closed its connection.

    aiohttp goes on running a handler whose client left (the hub keeps ``handler_cancellation`` off), so a
    long-poll abandoned by its client used to wait out its whole ``wait``: a client reconnecting in a loop
    piled up a waiting handler per attempt, for up to a minute each."""
    waiting = asyncio.ensure_future(watch.wait_past(after, timeout_s))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=CLIENT_GONE_CHECK_S)
            if done:
                return True
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
    finally:
        waiting.cancel()


async def get_changes_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``change`` event per change, ``id`` = its cursor; resumes from Last-Event-ID."""
    params = views.Query(request, {"cursor", "location", "sku"})
    location, sku = _filters(params)
    store: FeedStore = request.app[STORE_KEY]
    watch = request.app[FEED_KEY]
    resume = request.headers.get("Last-Event-ID")
    if resume is not None:
        given = read_cursor(resume.strip(), "Last-Event-ID")
        check_history(store, given, "Last-Event-ID")
        if not await check_change(store, given, "Last-Event-ID"):
            await check_not_ahead(store, given.after, "Last-Event-ID")
    elif "cursor" in request.rel_url.query:
        given = read_cursor(request.rel_url.query["cursor"])
        check_history(store, given)
        if not await check_change(store, given):
            await check_not_ahead(store, given.after)
    else:
        given = Cursor(await store.latest_change_id(), store.feed_history or None)  # no position given: from now on
    check_budget(request)  # 429 past the credential's read budget
    transport = request.transport
    if transport is None or transport.is_closing():  # the client left while the stream was looked up
        return web.Response(status=204)  # nobody reads it; aiohttp-sse would fail an assertion on it
    streams = request.app[STREAMS_KEY]
    streams.add(transport)
    _bound_buffers(transport)
    try:
        with parked(request):  # a 503 past the share of connections that long-polls and streams may hold
            async with sse_response(
                request, response_cls=FeedStream, ping_interval=STREAM_PING_S, send_timeout=STREAM_STALL_S,
                headers={"Cache-Control": "no-store"},
            ) as sse:  # fmt: skip
                await _stream(request, sse, store, watch, given, location, sku)
            with contextlib.suppress(ConnectionError):  # the last chunk: it too may wait on a stalled client
                await sse.write_eof()
    finally:
        streams.discard(transport)
    return sse


async def _stream(
    request: web.Request, sse: EventSourceResponse, store: FeedStore, watch: ChangeWatch, given: Cursor,
    location: str | None, sku: str | None,
) -> None:  # fmt: skip
    after = given.after
    gone = asyncio.ensure_future(sse.wait())  # ends when the client goes away (a ping fails) or we stop
    loop = asyncio.get_running_loop()
    recheck_at = loop.time() + STREAM_RECHECK_S
    checks = request.app[CHECKS_KEY]
    watch.streams += 1
    try:
        # the ready event carries its cursor as its id too: a client that lost the stream before any change
        # resumes from it (Last-Event-ID), not from the newest change, which would skip what came in between
        ready = (await cursor_at(store, watch, given, after, [])).text()
        await sse.send(views.dumps({"cursor": ready}), id=ready, event="ready", retry=STREAM_RETRY_MS)
        while not watch.closed and not gone.done():
            try:
                shared: tuple[Page, int | None] | None = watch.page_after(after, STREAM_BATCH, location, sku)
                if shared is None:  # behind what the watch read for all: its own read, within its credential's budget
                    await wait_for_budget(request, watch, gone)
                    if gone.done() or watch.closed:
                        return
                    shared = await read_page(store, after, STREAM_READ_BATCH, location, sku), None
                    charge(request, shared[0])
                page, read = shared
                # asked after the read, so a change committed after a revocation is never sent
                if page.rows or loop.time() >= recheck_at:
                    if not await checks.still_valid(request, read):
                        log.info("ended a change stream of %s: its credential was revoked or its session ended",
                                 identity_of(request).agent_id)  # fmt: skip
                        await sse.send(views.dumps({"message": REVOKED_TEXT}), event="error")
                        return
                    recheck_at = loop.time() + STREAM_RECHECK_S
            except (StoreError, StoreClosed) as err:
                log.warning("a change stream ended: the hub database failed (%s)", err)
                await sse.send(
                    views.dumps({"message": "the hub database is not available; reconnect shortly"}), event="error"
                )
                return
            for row in page.rows:
                await sse.send(views.dumps(change_json(row)), id=given.of(row).text(), event="change")
            after = page.cursor
            if page.more:
                continue
            waiting = asyncio.ensure_future(watch.wait_past(after, STREAM_RECHECK_S))
            try:
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
    except (ConnectionError, TimeoutError):
        return  # the client went away mid-send, or took nothing for STREAM_STALL_S (``FeedStream``)
    finally:
        watch.streams -= 1
        gone.cancel()


class FeedStream(EventSourceResponse):
    """aiohttp-sse's stream, which aborts the connection once a send (a change, a ping) waited ``send_timeout``
    on a client that takes nothing; here that says so in the log. The kernel's own cut of a connection whose bytes
    go unacknowledged (``TCP_USER_TIMEOUT``, which aiohttp-sse sets to ``send_timeout`` too, and which a client
    that stops reading meets as well, counted from when its window shut, before the hub's send waited) comes a
    minute later, so that a stalled client is cut by the hub, and logged."""

    def _set_tcp_user_timeout(self, request: BaseRequest) -> None:
        super()._set_tcp_user_timeout(request)
        if self._tcp_sock is not None and self._send_timeout is not None and TCP_USER_TIMEOUT is not None:
            with contextlib.suppress(OSError):
                kernel_s = self._send_timeout + KERNEL_STALL_MARGIN_S  # its clock starts when the client's window shut
                self._tcp_sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(1000 * kernel_s))

    def _abort_transport(self) -> None:
        request = self._req
        if isinstance(request, web.Request) and request.transport is not None and not request.transport.is_closing():
            request.app[STALLED_KEY].record(
                client_of(request), f"{identity_of(request).agent_id}, {request.transport.get_write_buffer_size()} bytes "
                "waiting",
            )  # fmt: skip
        super()._abort_transport()


def _bound_buffers(transport: asyncio.Transport) -> None:
    """Keep what a stream's connection holds unsent small: on loopback the kernel took megabytes of a client
    that never read, and the hub read and wrote that many changes for it before its send waited."""
    transport.set_write_buffer_limits(high=STREAM_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SOCKET_BUFFER_BYTES)
