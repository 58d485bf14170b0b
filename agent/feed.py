"""The count cache follows the hub's change feed for this store's location.

Without it the cache learns the hub's counts only from the answers to this
agent's own syncs, so a reservation made by a channel order, another store's
transfer, an admin's safety stock or a catalog re-booking reaches the store
only with its own next movement of that SKU. ``CountFeed`` long-polls
``GET /v1/changes?location=<loc>&cursor=<c>&wait=<s>`` with the agent's
credential and stores each page's changes and the new cursor in one outbox
transaction (``Outbox.apply_changes``); ``agent.counts`` explains why a change
never moves a row back past what a sync answer stored.

One loop shape (docs/design.md): ask for the next page (the long-poll is the
wait), store it, go on; on failure back off exponentially with full jitter and
a cap, log the first failure as a warning and the recovery once. While it
catches up from far behind (full pages), the newest change per SKU is kept in
memory (at most ``COALESCE_MAX_KEYS``) and stored once it reaches the hub's
newest change, so a replay of the history never shows old values.

Two rules keep the local count (hub count + pending movements) exact:

- A change may include this agent's own events of a batch whose answer is not
  stored yet (the hub committed it, the answer is on its way or was lost):
  stored now, those events would count twice, as part of the hub's count and
  as still pending. So the changes are stored only when the replicator allows
  (``FeedGate``): when it has stored an answer at that feed position or later,
  or when it has nothing in flight and its last attempt succeeded.
- A cursor ahead of the hub's feed is a 400: the hub was restored from a backup
  and numbers its changes anew. The cache then follows it again from 0 (every
  row's position forgotten), with one WARNING; so does a sync answer whose
  position went back (``Outbox.apply_answer``).

A cursor names the feed history it was read in and its change
(``protocol.feed``; to the agent one opaque token, stored as the position's
history), and the hub answers a cursor in the form it was given. A cursor an agent from before
histories stored as a plain number would so have stayed one until the feed
was next read from 0, and a hub restored past it, or another hub, read on
without a word: its first read now learns the hub's history (one page from
the start, ``HISTORY_PROBE_LIMIT`` changes, none stored) and goes on from
the cursor in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from agent import huberrors
from agent.errors import AgentError, OutboxClosed, OutboxError
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    INTERCEPTED,
    AnswerTooLarge,
    HubLoop,
    broken,
    hub_answered,
    hub_lost,
    hub_unavailable,
    not_a_hubs_json,
    not_the_hubs,
    read_answer,
    redirected,
    wrong_address,
)
from agent.outbox import FeedPosition, Outbox
from protocol import ProtocolError
from protocol import feed as wire
from protocol.retry import FULL_JITTER, RETRY_AFTER_JITTER, Backoff, Streak, TurnFailed, parse_retry_after, run_turns
from protocol.routes import HUB_ID_HEADER
from protocol.values import loads_json, shown

log = logging.getLogger(__name__)

WAIT_S = 25.0  # each long-poll waits this long at the hub for a change (under proxies' usual 60 s idle cut)
PAGE_LIMIT = 1_000  # changes per page
HISTORY_PROBE_LIMIT = 1  # changes of the page read to learn the hub's feed history (_learn_history): none is kept
CHANGE_MAX_BYTES = 2_048  # a change's JSON at most: a 64-character SKU escaped, 16 event ids, the counts
COALESCE_MAX_KEYS = 10_000  # SKUs held in memory while catching up before they are stored
REQUEST_TIMEOUT_S = 30.0  # beyond the long-poll's own wait
RETRY_BASE_S = 0.5
RETRY_MAX_S = 60.0
SLOW_RETRY_S = 300.0  # credentials refused, or a hub without the change feed
PAGE_FIELDS = (wire.CHANGES_FIELD, wire.CURSOR_FIELD, wire.MORE_FIELD)  # in every page the hub answers
SLOW_KINDS = frozenset({"refused", "no_feed"})  # failures retried every slow_retry_s, not with the backoff


class FeedGate(Protocol):
    """What the replicator tells the feed (``agent.replicator.Replicator`` is one)."""

    async def feed_clear(self, change_id: int) -> None:
        """Return once changes up to ``change_id`` hold none of this agent's events that are still pending."""

    def forget_feed_position(self) -> None:
        """The hub's change numbering restarted: sync answers stored before say nothing about it."""

    def feed_pause_s(self) -> float:
        """How long to wait before reading on: while a large backlog drains, the sync answers bring the counts
        of what the store sold and every commit is a page of changes, so reading each would only load the hub."""


class OpenGate:
    """A gate for a cache no replicator writes to (tests, tools): always clear."""

    async def feed_clear(self, change_id: int) -> None:
        return None

    def forget_feed_position(self) -> None:
        return None

    def feed_pause_s(self) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the feed follower knows after its last attempt."""

    cursor: int | None  # stored (None: not read yet)
    changes_stored: int  # changes stored by this follower (after coalescing)
    restarts: int  # times it followed the feed from 0 again (hub restored)
    failures: int  # consecutive failed attempts
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Ahead:
    """The hub answered 400 to the cursor: it is ahead of its feed (the hub was restored from a backup); or
    410 (``gone``): the cursor is of another history of the feed (restored, copied, or another hub)."""

    message: str
    gone: bool = False


class CountFeed(HubLoop):
    """Follows the hub's change feed for ``outbox.location`` into the count cache. ``async with`` or start()/stop()."""

    def __init__(
        self,
        outbox: Outbox,
        hub_url: str,
        token: str,
        *,
        gate: FeedGate | None = None,
        wait_s: float = WAIT_S,
        page_limit: int = PAGE_LIMIT,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        slow_retry_s: float = SLOW_RETRY_S,
        timeout_s: float = REQUEST_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= page_limit <= wire.CHANGES_LIMIT_MAX:
            raise ValueError(f"page_limit must be from 1 to {wire.CHANGES_LIMIT_MAX}, got {page_limit}")
        if not 0 <= wait_s <= wire.WAIT_MAX_S:
            raise ValueError(f"wait_s must be from 0 to {wire.WAIT_MAX_S:g}, got {wait_s}")
        HubLoop.__init__(self)
        self._outbox = outbox
        self._base = hub_url.rstrip("/")
        self._token = token
        self._gate: FeedGate = gate or OpenGate()
        self._wait_s = wait_s
        self._limit = page_limit
        # Failure kinds: "unreachable", "intercepted", "bad_answer", "refused", "no_feed", "rate_limited",
        # "hub_error", "outbox", "bug"; a new kind in a streak is logged again. The n-th failure in a row waits up to retry_base_s × 2^n.
        self._streak_said = False  # a failure of the streak was logged above DEBUG
        self._streak = Streak(
            Backoff(
                2 * retry_base_s, retry_max_s, jitter=FULL_JITTER, exact_retry_after=True,
                retry_after_jitter=RETRY_AFTER_JITTER,
            ),
            rng or random.Random(),
        )  # fmt: skip
        self._slow_retry_s = slow_retry_s
        self.timeout_s = wait_s + timeout_s
        self.answer_max_bytes = page_limit * CHANGE_MAX_BYTES + 4_096  # a longer answer is a failed attempt
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self._stored: FeedPosition | None = None  # as in the outbox
        self._read_to = 0  # the cursor after the pages read (ahead of ``_stored`` while catching up)
        self._read_history: str | None = None  # the feed history of ``_read_to`` (None: unknown, or an older hub)
        self._pending: dict[tuple[str, str], wire.FeedChange] = {}  # read, not stored yet: the newest per SKU
        self._state = FeedState(None, 0, 0, 0, None)

    # --- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        if self._stopped:
            raise AgentError("this feed follower was stopped; make a new one")
        if self._task is not None:
            return
        self._http()
        self._launch(self._run(), "shelfsync-count-feed")

    @property
    def state(self) -> FeedState:
        return self._state

    def update_credentials(self, token: str, hub_url: str | None = None) -> None:
        """New token (and address) from a config reload: try again now."""
        self._token = token
        if hub_url is not None:
            self._base = hub_url.rstrip("/")
        self._kick.set()

    async def wait_for(self, predicate: Any) -> FeedState:
        """Wait until the state after some attempt satisfies ``predicate`` (bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._state))
            return self._state

    # --- the loop --------------------------------------------------------
    async def _run(self) -> None:
        with contextlib.suppress(OutboxClosed):
            await run_turns(
                self._turn, wait=self._pause, failed=self._failed, ends=(OutboxClosed,), unexpected=_unexpected
            )

    async def _turn(self) -> float:
        await self._step()
        if self._streak.succeeded():
            said, self._streak_said = self._streak_said, False  # a 503 alone was said once for the agent
            log.log(logging.INFO if said else logging.DEBUG, "The count cache reads the hub's change feed again.")
            await self._update(failures=0, last_error=None)
        return 0.0  # the next long-poll is the wait

    async def _pause(self, delay_s: float, after_failure: bool) -> None:
        self._kick.clear()
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay_s)
        self._kick.clear()

    async def _step(self) -> None:
        """Read one page; store what was read once it reaches the hub's newest change (or memory is full)."""
        if self._stored is None:
            self._stored = await self._outbox.feed_position()
            self._read_to, self._read_history = self._stored.cursor, self._stored.history
            self._pending.clear()
            await self._update(cursor=self._stored.cursor)
            if self._read_to > 0 and self._read_history is None:
                await self._learn_history()
        page = await self._get(self._read_to, self._read_history, 0.0 if self._pending else self._wait_s)
        if isinstance(page, _Ahead):  # the hub's feed restarted under this position, or is not the one it was read in
            if await self._outbox.feed_position() == self._stored:
                await self._restart(self._read_to, page)
            self._stored = None  # else a sync answer restarted it already: read it again from the outbox
            self._pending.clear()
            return
        location = self._outbox.location
        for change in page.changes:
            if change.location == location:  # the filter says so; anything else is not this store's
                self._pending[(change.location, change.sku)] = change
        self._read_to, self._read_history = page.cursor, page.history
        if page.more and len(self._pending) < COALESCE_MAX_KEYS:
            return
        if not self._pending and (self._read_to, self._read_history) == (self._stored.cursor, self._stored.history):
            return
        changes = sorted(self._pending.values(), key=lambda c: c.change_id)
        if changes:
            await self._gate.feed_clear(changes[-1].change_id)
        stored = await self._outbox.apply_changes(
            changes, after=self._stored, cursor=self._read_to, history=self._read_history
        )
        if not stored:
            self._stored = None  # restarted meanwhile (a sync answer saw the hub restored): read it again
            return
        self._stored = dataclasses.replace(self._stored, cursor=self._read_to, history=self._read_history)
        self._pending.clear()
        await self._update(cursor=self._read_to, changes_stored=self._state.changes_stored + len(changes))
        if (pause_s := self._gate.feed_pause_s()) > 0:
            await asyncio.sleep(pause_s)

    async def _learn_history(self) -> None:
        """The stored cursor is a plain number (stored by an agent from before feed histories): read in the hub's
        history from now on, which a page from the start names (an older hub names none: the old form stays).
        The next read then checks the cursor against the hub's feed as any, stored with it."""
        probe = await self._get(0, None, 0.0, limit=HISTORY_PROBE_LIMIT)
        if isinstance(probe, wire.FeedPage) and probe.history is not None:
            self._read_history = wire.feed_history(probe.history)  # the probe's cursor names another change
            log.info(
                "The count cache's feed position %d was stored in the older form, without the hub's feed history;"
                " it goes on from there in history %s, so a hub restored or replaced from now on is noticed.",
                self._read_to,
                self._read_history,
            )

    async def _get(
        self, after: int, history: str | None, wait_s: float, *, limit: int | None = None
    ) -> wire.FeedPage | _Ahead:
        limit = self._limit if limit is None else limit
        session = self._http()
        params = {
            wire.LOCATION_PARAM: self._outbox.location,
            wire.LIMIT_PARAM: str(limit),
            wire.WAIT_PARAM: f"{wait_s:g}",
        }
        if after == 0 and history is not None:
            # From the start again (the location moved): the history alone, since a check names a change and there
            # is none at 0 (the hub refuses such a cursor as not one it gave out).
            history = wire.feed_history(history)
        if after > 0 or history is not None:  # none at the start: the hub answers a cursor that names its history
            params[wire.CURSOR_PARAM] = wire.cursor_text(after, history)
        url = self._base + wire.CHANGES_PATH
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with session.get(url, params=params, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as http:
                body = await read_answer(http, self.answer_max_bytes, "change feed page")
                status, retry_after = http.status, http.headers.get("Retry-After", "")
                location = http.headers.get("Location")
                content_type = http.headers.get("Content-Type", "")
                hub_id = huberrors.hub_id_of(http.headers.get(HUB_ID_HEADER))
        except AnswerTooLarge as err:
            raise TurnFailed(str(err), kind="bad_answer") from err
        except TimeoutError:
            raise TurnFailed(
                f"the hub at {self._base} did not answer the change feed within {self.timeout_s:g} s",
                kind="unreachable",
            ) from None
        except aiohttp.ClientError as err:
            if isinstance(err, aiohttp.ClientConnectorError):
                hub_lost(url)
            wrong = await wrong_address(self._base, err)
            raise TurnFailed(
                wrong or f"the change feed at {self._base} could not be read ({broken(err)})", kind="unreachable"
            ) from err
        if (foreign := not_the_hubs(url, status, content_type, body, "application/json")) is not None:
            raise TurnFailed(foreign, kind=INTERCEPTED)
        if status == 503:  # the hub migrating its database, or otherwise unavailable: said once for the agent
            message = _error_message(body)
            raise TurnFailed(
                f"the hub answered HTTP 503 to the change feed ({message})",
                kind="hub_error",
                level=hub_unavailable(url, message),
                retry_after_s=parse_retry_after(retry_after),
            )
        hub_answered(url)
        if status == 200:
            try:
                data = loads_json(body)
                if (foreign := not_a_hubs_json(url, data, PAGE_FIELDS)) is not None:
                    raise TurnFailed(foreign, kind=INTERCEPTED)
                return wire.decode_page(data, after, limit)
            except (ValueError, ProtocolError) as err:
                raise TurnFailed(
                    f"the hub's change feed page could not be read ({err})", kind="bad_answer", level=logging.ERROR
                ) from err
        if status == 400 and after > 0:  # the cursor is ahead of the hub's feed (see check_not_ahead in hub.feed)
            return _Ahead(_error_message(body))
        if status == 410 and history is not None:  # the cursor is of another history (see check_history in hub.feed)
            return _Ahead(_error_message(body), gone=True)
        if status in (401, 403):  # said as the sync says it (the hub serving another database, say)
            refused, fix = await huberrors.refusal(
                self._outbox, huberrors.sync_url(self._base), url, status, body, self._outbox.agent_id, hub_id
            )
            raise TurnFailed(
                f"{refused}; the count cache learns counts from sync answers only until {fix}", kind="refused"
            )
        if status == 404:
            raise TurnFailed(
                f"the hub at {self._base} has no change feed (HTTP 404); the count cache learns counts from sync"
                " answers only",
                kind="no_feed",
            )
        if status == 429:
            raise TurnFailed(
                "the hub asks this agent to read its change feed less often (HTTP 429)",
                kind="rate_limited",
                retry_after_s=parse_retry_after(retry_after),
            )
        if 300 <= status < 400:
            raise TurnFailed(redirected(url, status, location), kind="hub_error", level=logging.ERROR)
        raise TurnFailed(
            f"the hub answered HTTP {status} to the change feed ({_error_message(body)})", kind="hub_error"
        )

    async def _restart(self, cursor: int, refused: _Ahead) -> None:
        if refused.gone:
            log.warning(
                "The hub's change feed is not the one this agent's position %d was read in (its database was"
                " restored, copied or moved, or this is another hub: %s); the count cache follows it again from"
                " the start.",
                cursor,
                shown(refused.message),
            )
        else:
            log.warning(
                "The hub's change feed is behind this agent's position %d (its database was restored from a"
                " backup?: %s); the count cache follows it again from the start.",
                cursor,
                shown(refused.message),
            )
        self._gate.forget_feed_position()
        await self._outbox.restart_feed()
        await self._update(restarts=self._state.restarts + 1)

    async def _failed(self, failure: TurnFailed) -> float:
        """Count and log a failed attempt; how long to wait before the next."""
        news, loud = self._streak.failed(failure), failure.level > logging.DEBUG
        news = news or (loud and not self._streak_said)  # the first said after the hub's 503s (hub_unavailable)
        self._streak_said = self._streak_said or (news and loud)
        if news:  # a streak's first, or a new kind
            log.log(
                failure.level,
                "The count cache cannot follow the hub's change feed for now (it tries again): %s.",
                failure.reason,
                exc_info=failure.cause,  # an unexpected error is a bug: its traceback once
            )
        else:
            log.debug("The change feed failed again: %s.", failure.reason)
        await self._update(failures=self._streak.failures, last_error=failure.reason)
        if failure.kind in SLOW_KINDS:
            return self._slow_retry_s
        return self._streak.delay_s(failure.retry_after_s)

    async def _update(self, **changes: Any) -> None:
        self._state = dataclasses.replace(self._state, **changes)
        async with self._changed:
            self._changed.notify_all()


def _unexpected(err: Exception) -> TurnFailed:
    if isinstance(err, OutboxError):
        return TurnFailed(f"the outbox failed: {err}", kind="outbox", level=logging.ERROR)
    return TurnFailed.unexpected(err)


def _error_message(body: bytes) -> str:
    return huberrors.error_message(body)  # a problem details answer, or an older hub's {"error": …}
