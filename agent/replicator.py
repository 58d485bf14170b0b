"""The replicator: sends the outbox to the hub, in seq order, and stores the hub's answers.

One loop shape (docs/design.md): wait for new data or a tick, send one batch, store
the answer; on failure back off exponentially with full jitter and a cap, log
the first failure as a warning and the recovery once. The acknowledged mark
moves only after a 200 answer is fully decoded and stored, so stopping (or
crashing) anywhere loses nothing: unacknowledged events are simply sent again
and the hub drops the duplicates.

The first request after starting and after every failure is a handshake
with no events: the hub answers its mark for this agent's epoch unchanged,
and if that is below the acknowledged mark (the hub was restored from an
older backup) the mark is rewound and the lost events are sent again.

Hub answers and what they mean here:

- 200: store the answer (mark, rejected events set aside, counts, clock skew);
  go on at once while a backlog remains.
- 422: nothing was committed; set aside exactly the events named, resend the rest at once.
- 413: the batch was too big; halve the batch size and resend at once.
- 400 naming ``columns``: the hub is older than the columnar form; send the
  events as maps from now on (one warning), and the batch at once.
- 401/403: credentials refused; stop sending, log one ERROR, retry only every
  ``auth_retry_s`` or when ``update_credentials`` is called (config reload).
- 429: the hub asks this agent to slow down; wait its Retry-After (seconds, at
  most ``protocol.retry.RETRY_AFTER_MAX_S``) plus a random part of it (a quarter,
  at least up to a second: agents refused together come back apart) instead of
  the backoff, then send again.
- 400 and other 4xx: a bug or a wrong hub_url; log an ERROR, back off.
- 5xx, connection errors, timeouts: back off.
- An HTML page of any status, or a 200 that is not msgpack: not the hub's answer (a captive portal or a
  proxy answers in its place, ``agent.hub_loop.not_the_hubs``); said in one sentence, also after a
  failure of another kind (sync state "intercepted", the hub unreachable), back off.

With ``feed=True`` the replicator also runs the count cache's change-feed
follower (``agent.feed``) with the same hub address and credential, asks the hub
to answer each sync with its change-feed position (``follows_feed``), and is the
follower's ``FeedGate``: the follower stores changes only when they cannot hold
this agent's own events whose answer is not stored yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import aiohttp

from agent import huberrors
from agent.count_refresh import HubForms, RefreshFailed, refresh_due
from agent.counts import HeldCounts
from agent.errors import AgentError, OutboxClosed, OutboxError, disk_full
from agent.feed import WAIT_S as FEED_WAIT_S
from agent.feed import CountFeed
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    INTERCEPTED,
    SYNC_ANSWER_MAX_BYTES,
    AnswerTooLarge,
    HubLoop,
    broken,
    hub_answered,
    hub_lost,
    hub_unavailable,
    not_found,
    not_the_hubs,
    read_answer,
    redirected,
    wrong_address,
)
from agent.huberrors import hub_clock_agreed_of, hub_clock_off_of, hub_clock_words, hub_id_of, refusal, sync_url
from agent.outbox import Outbox
from protocol import (
    MAX_BATCH_EVENTS,
    MSGPACK_CONTENT_TYPE,
    EventsPacker,
    LostReport,
    ProtocolError,
    Rejection,
    SyncRequest,
    SyncResponse,
    answers,
    decode_sync_response,
    encode_sync_request,
    event_id_hex,
)
from protocol.ids import EVENT_ID_BYTES
from protocol.retry import (
    FULL_JITTER,
    RETRY_AFTER_JITTER,
    RETRY_BASE_S,
    RETRY_MAX_S,
    Backoff,
    Streak,
    TurnFailed,
    parse_retry_after,
    run_turns,
    wait_for_any,
)
from protocol.routes import (
    HUB_CLOCK_AGREED_HEADER,
    HUB_CLOCK_HEADER,
    HUB_ID_HEADER,
    SYNC_CATCHUP_BYTES,
    SYNC_PIPELINE_HEADER,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
TICK_S = 5.0
TIMEOUT_S = 30.0
AUTH_RETRY_S = 300.0
HEARTBEAT_S = 60.0  # an idle agent still tells the hub it is alive (and its backlog) this often
# A hub catching a region up asks batch after batch to come back (429, hub/catchup.py), each between good answers:
# said at INFO at most this often, the rest at DEBUG, and the good answer after one is not news.
SLOW_DOWN_SAID_S = 60.0
HUB_CLOCK_SAID_AGAIN_MS = 60_000  # the hub's clock said off by this much more or less than before is said again
# What a hub from before the columnar form (protocol.event.events_to_columns) answers a request that has them: 400
# naming the field (protocol.codec's envelope check, unchanged since the first wire version).
COLUMNS_REFUSED = "unknown field(s) columns"
# … and what one from before the disk report (protocol.DiskReport) answers a request carrying it.
DISK_REFUSED = "unknown field(s) disk"
# … and one from before the report of movements it lacks for good (protocol.LostReport, API 1.13).
LOST_REFUSED = "unknown field(s) lost"

# Catching up: while at least CATCHUP_BACKLOG events wait, batches are CATCHUP_BATCH_FACTOR times batch_size
# (at most the hub's 10,000): the hub commits each batch in one transaction, so fewer, larger batches drain a
# backlog faster (docs/agent.md "How delivery works"). Each batch costs the hub and the agent a share that does not
# grow with its events (~500 stock and change rows for 500 SKUs, a commit, the answer's counts): 10,000 instead
# of 5,000 took 13 % less CPU in the hub's main and writer threads and in the agent (bench/catchup_cpu.py).
CATCHUP_BACKLOG = 10_000
CATCHUP_BATCH_FACTOR = 10
# Meanwhile, with a hub whose answers say it reads ``after_seq`` (protocol.routes.SYNC_PIPELINE_HEADER), the next
# batch is sent before the one before it is answered: the hub receives and decodes one while its writer commits
# the other. The hub moves its mark over such a batch only once it holds the one before (hub.storage.ingest), and
# an answer that does not acknowledge the batch sent ahead is not stored: the batch is sent again.
FEED_CATCHUP_PAUSE_S = 1.0  # meanwhile the count cache reads the change feed at most this often (agent.feed)
# Memory (docs/agent.md "Memory"): a batch is read from the outbox READ_CHUNK events at a time and packed as it is
# read, and ends once its packed events reach about BATCH_MAX_BYTES. What is kept of a batch read ahead or on its
# way is its packed events and each event's id and seq (to match the answer's rejections), never the decoded
# events: at most three batches (two in flight, one read ahead), each a few MiB, whatever the backlog and however
# slowly the hub answers. Decoded, a movement takes ~1-2 KiB here against its ~150 bytes packed.
# A hub too slow to answer a batch within timeout_s (a large catch-up batch on a slow or busy hub) would get the same
# batch again and again: a batch of more than SLOW_HUB_FLOOR events whose answer timed out halves the events per
# batch (not below the floor), and each batch acknowledged at that size raises it by a quarter until it is back to
# normal (as TCP's congestion window does). Nothing is acknowledged that the hub did not answer: the
# batch is sent again, the hub dropping whatever of it it committed late.
SLOW_HUB_FLOOR = 100
READ_CHUNK = 1_000
BATCH_MAX_BYTES = 2 * 1024 * 1024  # 10,000 movements of a POS export pack into ~1.4 MiB: such batches stay whole


@dataclass(frozen=True, slots=True)
class ReplicatorState:
    """What the replicator knows after its last attempt."""

    attempts: int  # sync attempts so far (each batch sent is one)
    sent_events: int  # events the hub has acknowledged to this replicator
    # "never", "ok", "unreachable", "intercepted", "credentials_refused", "rate_limited", "hub_error", "outbox_error"
    sync_state: str
    last_error: str | None
    hub_reachable: bool | None
    credentials_refused: bool
    failures: int  # consecutive failed attempts
    batch_size: int
    backlog: int | None  # pending events after the last attempt, if known


class _Sent(NamedTuple):
    """An event of a batch, as the hub's answer names it (protocol.answers.Sent)."""

    event_id: bytes
    seq: int


class _Batch(Sequence[_Sent]):
    """The events of a batch as an answer names them: each one's id and seq, packed (24 bytes an event; the
    events themselves are not kept once packed)."""

    __slots__ = ("_ids", "_seqs", "first_wall_ms")

    def __init__(self, ids: bytes = b"", seqs: array[int] | None = None, first_wall_ms: int | None = None) -> None:
        self._ids = ids  # the event ids, one after another
        self._seqs = array("q") if seqs is None else seqs
        self.first_wall_ms = first_wall_ms  # the first event's wall ms (the oldest pending, read ahead)

    def __len__(self) -> int:
        return len(self._seqs)

    @overload
    def __getitem__(self, index: int) -> _Sent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[_Sent]: ...

    def __getitem__(self, index: int | slice) -> _Sent | Sequence[_Sent]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # an IndexError, as from a tuple
        return _Sent(self._ids[i * EVENT_ID_BYTES : (i + 1) * EVENT_ID_BYTES], self._seqs[i])

    def ids(self) -> set[bytes]:
        return {self._ids[i : i + EVENT_ID_BYTES] for i in range(0, len(self._ids), EVENT_ID_BYTES)}


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A batch read from the outbox and packed, ready to send once the mark is ``after``, and the lineage its
    request reports (agent.outbox.Outgoing)."""

    batch: _Batch
    packed_events: bytes  # protocol.EventsPacker's, as columns if as_columns; b"" once the request is made
    chain: bytes | None  # at the last event's seq (at the acknowledged mark when there is none)
    epoch_base: int
    base_chain: bytes | None
    backlog: int  # events waiting above the acknowledged mark when read (these included)
    oldest_pending_ms: int | None
    after: int  # read above this seq: the end of the batch on its way then (0: above the acknowledged mark)
    epoch: int  # the outbox's epoch when read
    in_flight: int  # events of the batch on its way then (counted in backlog)
    as_columns: bool  # packed as columns (else as maps, for a hub older than columns)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the hub sent back to one request: status, body, and the headers this loop reads."""

    status: int
    body: bytes
    sent_ms: int  # the agent's clock when the request was sent, and when the answer came
    received_ms: int
    retry_after: str | None
    location: str | None
    content_type: str
    pipelines: bool  # the answer carries SYNC_PIPELINE_HEADER: the hub reads a request's after_seq
    hub_id: str | None = None  # the id of the database the hub serves (HUB_ID_HEADER; None: an older hub)
    hub_clock_off_ms: int | None = None  # the hub says its own clock is this far off its stores' (HUB_CLOCK_HEADER)
    hub_clock_agreed: int | None = None  # … that this many other stores agree with its clock (HUB_CLOCK_AGREED_HEADER)
    lost: LostReport | None = None  # the report of movements the hub lacks that the request carried (None: none)


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A batch sent before the one before it was answered (``prepared.after``: that batch's end)."""

    prepared: _Prepared
    reply: asyncio.Task[_Reply]


class Replicator(HubLoop):
    """Long-running sender of one outbox to one hub. ``async with Replicator(...)`` or start()/stop()."""

    def __init__(
        self,
        outbox: Outbox,
        hub_url: str,
        token: str,
        *,
        batch_size: int = BATCH_SIZE,
        tick_s: float = TICK_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        timeout_s: float = TIMEOUT_S,
        auth_retry_s: float = AUTH_RETRY_S,
        heartbeat_s: float = HEARTBEAT_S,
        answer_max_bytes: int = SYNC_ANSWER_MAX_BYTES,
        rng: random.Random | None = None,
        feed: bool = False,
        feed_wait_s: float = FEED_WAIT_S,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._outbox = outbox
        self._url = sync_url(hub_url)
        self._hub_url = hub_url.rstrip("/")
        self._token = token
        self._batch_size = batch_size
        self._catchup_size = max(batch_size, min(MAX_BATCH_EVENTS, batch_size * CATCHUP_BATCH_FACTOR))
        self._waiting = 0  # events waiting, as last read or answered
        self._slow_cap: int | None = None  # events per batch while the hub is slow to answer (SLOW_HUB_FLOOR)
        self._as_columns = True  # events sent as columns until a hub refuses them (a hub older than columns)
        self._expect_continue = True  # catch-up batches ask Expect: 100-continue until one is not answered in time
        self._tick_s = tick_s
        # A failed attempt's kind is the sync state it reports ("unreachable", "credentials_refused", …); a 429's
        # Retry-After is the wait (the hub says when the next request is let through), plus a random part of it:
        # the agents one full catch-up line refused come back spread out, not together.
        self._rng = rng or random.Random()
        self._streak = Streak(
            Backoff(
                retry_base_s, retry_max_s, jitter=FULL_JITTER, exact_retry_after=True,
                retry_after_jitter=RETRY_AFTER_JITTER,
            ),
            self._rng,
        )  # fmt: skip
        self.timeout_s = timeout_s
        self._auth_retry_s = auth_retry_s
        self._heartbeat_s = heartbeat_s
        self.answer_max_bytes = answer_max_bytes  # a longer answer is a failed attempt (agent.hub_loop)
        self._last_answer_s = -math.inf  # monotonic time of the last 200 from the hub
        HubLoop.__init__(self)
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self._acked_seq = 0
        # The first request after (re)connecting carries no events: the hub answers its mark as it is,
        # so a hub restored from an older backup shows a mark below ours and we resend what it lost.
        # (A batch would hide that: the hub raises its mark to the batch's last seq.)
        self._handshake_due = True
        self._retry_after: str | None = None  # the Retry-After header of the last answer
        self._slow_down_said_s = -math.inf  # monotonic time a 429 was last logged at its level
        self._streak_said = False  # a failure of this streak other than a 429 was logged: its end is news too
        self._location: str | None = None  # … and its Location (a redirect, not followed)
        self._content_type = ""  # … and its Content-Type (agent.hub_loop.not_the_hubs)
        self._state = ReplicatorState(0, 0, "never", None, None, False, 0, batch_size, None)
        self._prefetch: asyncio.Task[_Prepared] | None = None  # the next batch, read while one is on its way
        self._ahead: _Ahead | None = None  # the batch sent while the one before it is on its way (catching up)
        self._keep_ahead = False  # the last answer acknowledged its batch: the batch sent ahead follows on from it
        self._pipelines = False  # the hub's last answer said it reads after_seq (SYNC_PIPELINE_HEADER)
        self._sends_disk = True  # requests carry the disk report, until a hub from before it refuses one
        # Requests carry the outbox's report of movements the hub lacks for good (``Outbox.lost``) until a hub
        # answers one carrying it (``_lost_told``: that report), or a hub from before it refuses it.
        self._sends_lost = True
        self._lost_told: LostReport | None = None
        # The hub's mark past the outbox's acknowledged one, whose answer a full disk refused to store: sent on from
        # while the disk is full (with a hub that reads after_seq), until an answer is stored. None: none.
        self._unstored: int | None = None
        self._unstored_chain: bytes | None = None  # the lineage digest there, as the hub answered it
        # … and the counts those answers carried, stored with the first answer stored (agent.counts.HeldCounts)
        self._held = HeldCounts()
        # The count cache holds keys whose acknowledged movements no answer's counts brought (agent.counts, "due"):
        # their counts are read from the hub after the turn that found them (agent.count_refresh), and again after a
        # backoff if that failed. True at the start: a run before this one may have left some.
        self._refresh_due = True
        self._refresh_backoff = Backoff(retry_base_s, retry_max_s, jitter=FULL_JITTER)
        self._refresh_failures = 0
        self._refresh_at_s = 0.0  # monotonic time of the next try after a failure
        self._hub_forms = HubForms()  # … and what the hub's GET /v1/counts reads, learned across reads
        self._keep_going = False  # the turn that failed so goes on at once, without a handshake
        self._hub_clock_off_ms: int | None = None  # the hub's last answer said its own clock is off (HUB_CLOCK_HEADER)
        # The count cache's change feed (agent.feed), gated by this replicator: ``_busy`` counts attempts under
        # way (from reading the batch to storing its answer), ``_feed_position`` is the change-feed position of
        # the newest answer stored (None: none in this run, or the hub's numbering restarted since).
        self._busy = 0
        self._feed_position: int | None = None
        self._gate_moved = asyncio.Event()
        self.feed: CountFeed | None = None
        if feed:
            self.feed = CountFeed(
                outbox, hub_url, token, gate=self, wait_s=feed_wait_s, retry_base_s=retry_base_s,
                retry_max_s=retry_max_s, slow_retry_s=auth_retry_s, timeout_s=timeout_s,
            )  # fmt: skip

    # --- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        if self._stopped:
            raise AgentError("this replicator was stopped; make a new one")
        if self._task is not None:
            return
        self._acked_seq = (await self._outbox.stats()).acked_seq
        self._http()
        self._launch(self._run(), "shelfsync-replicator")
        if self.feed is not None:
            await self.feed.start()

    async def stop(self) -> None:
        """Stop sending (an answer not yet stored is simply not acknowledged, and is sent again) and the feed.
        Each part is stopped even if one before it fails, and a failure is raised once all are stopped."""
        async with contextlib.AsyncExitStack() as parts:  # unwound last first: the batch read ahead goes last
            parts.push_async_callback(self._stop_prefetch)
            parts.push_async_callback(self._stop_ahead)
            parts.push_async_callback(HubLoop.stop, self)
            if self.feed is not None:
                await self.feed.stop()

    async def _stop_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None:  # a batch read ahead: dropped, and its failure, if any, is not news
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _stop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:  # its answer is not stored: the batch is sent again by the next replicator
            ahead.reply.cancel()
            await asyncio.gather(ahead.reply, return_exceptions=True)

    @property
    def state(self) -> ReplicatorState:
        return self._state

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def update_credentials(self, token: str, hub_url: str | None = None) -> None:
        """New token (and address) from a config reload: try again now, even if credentials were refused."""
        self._token = token
        if hub_url is not None:
            self._url = sync_url(hub_url)
            self._hub_url = hub_url.rstrip("/")
        self._kick.set()
        if self.feed is not None:
            self.feed.update_credentials(token, hub_url)

    async def wait_for(self, predicate: Callable[[ReplicatorState], bool]) -> ReplicatorState:
        """Wait until the state after some attempt satisfies ``predicate`` (bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._state))
            return self._state

    async def wait_synced(self) -> ReplicatorState:
        """Wait until every event recorded before this call is acknowledged and the last attempt succeeded.

        The state alone is not enough: it is the last attempt's, and an event recorded since is in no attempt yet.
        """
        while True:
            state = await self.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0)
            if (await self._outbox.stats()).backlog == 0:
                return state
            seen = state.attempts
            await self.wait_for(lambda s: s.attempts > seen)  # noqa: B023 (awaited here, before seen changes)

    # --- the count cache's change feed (agent.feed.FeedGate) ---------------------
    async def feed_clear(self, change_id: int) -> None:
        """Return once changes up to ``change_id`` cannot hold this agent's events whose answer is not stored:
        an answer at that position or later is stored, or nothing is under way and the last attempt succeeded
        (every batch the hub committed before that change was answered and stored)."""
        while not (
            (self._feed_position is not None and self._feed_position >= change_id)
            or (self._busy == 0 and self._ahead is None and not self._handshake_due and self._state.sync_state == "ok")
        ):
            self._gate_moved.clear()
            await self._gate_moved.wait()

    def forget_feed_position(self) -> None:
        self._feed_position = None

    def feed_pause_s(self) -> float:
        return FEED_CATCHUP_PAUSE_S if self._waiting >= CATCHUP_BACKLOG else 0.0

    # --- the loop --------------------------------------------------------
    async def _run(self) -> None:
        try:
            await run_turns(
                self._turn, wait=self._wait, failed=self._failed, ends=(OutboxClosed,), unexpected=self._unexpected
            )
        except OutboxClosed:
            log.info("The outbox was closed; the replicator stops.")

    async def _turn(self) -> float:
        more = await self._step()
        if self._refresh_due and time.monotonic() >= self._refresh_at_s:
            await self._refresh_counts()
        return 0.0 if more else self._tick_s

    async def _refresh_counts(self) -> None:
        """Read from the hub the counts of the keys whose acknowledged movements the cache's counts lack. Never fails
        the turn: a failure is said once (the local count adds the movements meanwhile, and says so) and tried again
        after a backoff."""
        try:
            done = await refresh_due(self._outbox, self._http(), self._hub_url, self._token, self._hub_forms)
        except (RefreshFailed, OutboxError) as err:
            if isinstance(err, OutboxClosed):
                raise
            self._refresh_failures += 1
            wait_s = self._refresh_backoff.delay_s(self._refresh_failures, self._rng)
            self._refresh_at_s = time.monotonic() + wait_s
            log.log(
                logging.WARNING if self._refresh_failures == 1 else logging.DEBUG,
                "The hub's counts of SKUs whose sync answers were lost could not be read (%s); their local counts"
                " add this store's movements to the hub's count as last heard, as for pending ones, and they are"
                " read again in %.1f s.",
                err,
                wait_s,
            )
            return
        if done:
            self._refresh_due = False
        if self._refresh_failures:
            log.info("The hub's counts of SKUs whose sync answers were lost were read again.")
        self._refresh_failures = 0

    def _unexpected(self, err: Exception) -> TurnFailed:
        """A bug must not end replication: it is reported once, backed off from and retried."""
        return TurnFailed.unexpected(err, kind="agent_error", reachable=bool(self._state.hub_reachable))

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        """Up to ``delay_s``; new data cuts it short, except a backoff; new credentials always do."""
        if after_failure:
            await wait_for_any(delay_s, self._kick)
        else:
            await wait_for_any(delay_s, self._kick, self._outbox.new_data)
        if delay_s > 0:
            self._kick.clear()

    async def _step(self) -> bool:
        """Send one batch and store the answer. True if there is more to send right away."""
        self._busy += 1
        try:
            return await self._attempt()
        finally:
            self._busy -= 1
            self._gate_moved.set()

    async def _attempt(self) -> bool:
        self._outbox.new_data.clear()  # before reading: a record() after this wakes us again
        try:
            return await self._exchange()
        except OutboxClosed:
            raise
        except OutboxError as err:
            raise TurnFailed(
                f"the outbox failed: {err}", kind="outbox_error", reachable=True, level=logging.ERROR
            ) from err
        finally:
            if not self._keep_ahead:  # anything but an answer acknowledging its batch: the batch ahead is dropped
                self._drop_ahead()

    async def _exchange(self) -> bool:
        """Send a batch (or take the one sent ahead last time), maybe send the next ahead, and handle the answer."""
        self._keep_ahead = False
        ahead = self._take_ahead()
        if ahead is not None:
            batch, reply, chain = ahead.prepared.batch, ahead.reply, ahead.prepared.chain
        else:
            prepared = await self._next_batch()
            batch = prepared.batch
            if not self._handshake_due and not batch and self._lost_to_tell() is None:
                await self._update(backlog=0)
                if time.monotonic() - self._last_answer_s < self._heartbeat_s:
                    return False
                # idle for a while: an empty request tells the hub we are alive (and re-checks its mark)
            self._waiting = max(0, prepared.backlog - prepared.in_flight)
            if batch and not self._handshake_due:  # read and pack the next batch while this one is on its way
                self._prefetch = asyncio.create_task(self._prepare(self._limit(), batch))
            reply = asyncio.create_task(self._send(*self._request(prepared), events=len(batch)))
            chain = prepared.chain
            del prepared  # its packed events are in the request now
        try:
            if batch and not self._handshake_due:
                await self._send_ahead(batch)
            answer = await reply
        finally:
            if not reply.done():  # cancelled or failed meanwhile: not waited for (its answer would not be stored)
                self._drop_reply(reply)
        self._retry_after, self._location, self._content_type = answer.retry_after, answer.location, answer.content_type
        status, body = answer.status, answer.body
        foreign = not_the_hubs(self._url, status, self._content_type, body, MSGPACK_CONTENT_TYPE)
        if foreign is not None:
            raise TurnFailed(foreign, kind=INTERCEPTED, reachable=False)
        if status != 503:
            hub_answered(self._url)
        if status == 429:
            raise self._slow_down(body)
        if status == 200:
            if answer.lost is not None:  # the hub stored it with the request: not sent again
                self._lost_told = answer.lost
            self._last_answer_s = time.monotonic()
            self._pipelines = answer.pipelines
            return await self._accepted(
                batch, body, answer.sent_ms, answer.received_ms, sent_ahead=ahead is not None, hub_id=answer.hub_id,
                chain=chain, hub_clock_off_ms=answer.hub_clock_off_ms, hub_clock_agreed=answer.hub_clock_agreed,
            )  # fmt: skip
        if status == 422 and batch:
            return await self._invalid(batch, body)
        if status == 413 and batch:
            return await self._too_big(batch)
        if status == 400 and batch and self._as_columns and COLUMNS_REFUSED in _error_message(body):
            return self._columns_refused()
        if status == 400 and self._sends_disk and DISK_REFUSED in _error_message(body):
            return self._disk_refused()
        if status == 400 and answer.lost is not None and LOST_REFUSED in _error_message(body):
            return self._lost_refused()
        if status == 400 and ahead is not None and "after_seq" in _error_message(body):
            return self._after_seq_refused()
        raise await self._refused(status, body, answer.hub_id)

    # --- two batches in flight while catching up ---------------------------------------
    def _take_ahead(self) -> _Ahead | None:
        """The batch sent ahead last time, if it still follows on from the acknowledged mark (its batch before
        was acknowledged, nothing failed, rewound or forked); else None, and it is dropped."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        prepared = ahead.prepared
        if (
            self._handshake_due
            or prepared.after != self._sent_from()
            or prepared.epoch != self._outbox.epoch
            or prepared.as_columns != self._as_columns
        ):
            self._drop_reply(ahead.reply)
            return None
        return ahead

    async def _send_ahead(self, batch: _Batch) -> None:
        """While catching up with a hub that reads ``after_seq``: send the batch read ahead now, before ``batch``
        is answered, saying it follows on from ``batch``'s end (the hub keeps its mark below it until it holds
        ``batch``), and read the one after it."""
        task = self._prefetch
        if not (self._pipelines and self._waiting >= CATCHUP_BACKLOG and task is not None and self._unstored is None):
            return
        self._prefetch = None
        try:
            nxt = await task
        except OutboxError:
            return  # read again, and its failure said, when it is this loop's turn
        sent = nxt.batch
        if not (
            sent
            and nxt.after == batch[-1].seq
            and nxt.epoch == self._outbox.epoch
            and nxt.as_columns == self._as_columns
        ):
            return
        reply = asyncio.create_task(self._send(*self._request(nxt, after_seq=nxt.after), events=len(sent)))
        self._ahead = _Ahead(dataclasses.replace(nxt, packed_events=b""), reply)  # its packed events: in the request
        self._prefetch = asyncio.create_task(self._prepare(self._limit(), sent, len(batch) + len(sent)))

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._drop_reply(ahead.reply)

    @staticmethod
    def _drop_reply(task: asyncio.Task[_Reply]) -> None:
        """A request whose answer is not stored: the hub may commit its events, which are then sent again."""
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its failure, if any, is not news

    def _disk_refused(self) -> bool:
        """400 naming ``disk``: a hub from before the disk report. Requests go without it from now on, at once."""
        self._sends_disk = False
        log.info(
            "The hub at %s does not read the agent's disk report (it is older); its agent list will not show this"
            " agent's disk. Sending without it.",
            self._url,
        )
        return True

    def _lost_to_tell(self) -> LostReport | None:
        """The outbox's report of movements the hub lacks for good, while no hub answered one carrying it (and the
        hub reads it); else None. An idle agent sends one at once rather than at its next heartbeat."""
        lost = self._outbox.lost
        return lost if self._sends_lost and lost is not None and lost != self._lost_told else None

    def _lost_refused(self) -> bool:
        """400 naming ``lost``: a hub from before the report of movements it lacks (API 1.13). Requests go without
        it from now on, at once; the agent's log and status still say what is lost."""
        self._sends_lost = False
        log.warning(
            "The hub at %s does not read the agent's report of movements it lacks (it is older than API 1.13); its"
            " exceptions list will not show them: count this store's stock again as the agent's error said. Sending"
            " without it.",
            self._url,
        )
        return True

    def _after_seq_refused(self) -> bool:
        """400 naming ``after_seq``: a hub older than two batches in flight answered (another hub behind the
        same address); send one batch at a time until a hub's answer says it reads it again."""
        self._pipelines = False
        log.info("The hub at %s does not read after_seq; sending one batch at a time.", self._url)
        return True

    # --- batches: read and packed ahead ---------------------------------------------
    async def _prepare(self, limit: int, before: _Batch | None = None, in_flight: int | None = None) -> _Prepared:
        """The next pending events (after ``before``, the batch on its way), at most ``limit`` and about
        ``BATCH_MAX_BYTES`` packed: read ``READ_CHUNK`` at a time and packed as they are read, so no more than
        one chunk is ever held as events. ``in_flight``: the events on their way then (default: ``before``'s)."""
        after = before[-1].seq if before else (self._unstored or 0)
        epoch, as_columns = self._outbox.epoch, self._as_columns  # a fork meanwhile: the batch is not sent
        packer = EventsPacker(as_columns=as_columns)
        ids, seqs, first_wall_ms = bytearray(), array("q"), None
        asked = min(limit, READ_CHUNK)
        first = outgoing = await self._outbox.outgoing(asked, after=after)
        chain = first.chain
        while True:
            events = outgoing.events
            if events:
                packer.add(events)
                ids += b"".join(ev.event_id for ev in events)
                seqs.extend(ev.seq for ev in events)
                chain = outgoing.chain
                first_wall_ms = events[0].wall_ms if first_wall_ms is None else first_wall_ms
            # as many more as fit in the batch's bytes at its bytes per event so far
            room = (BATCH_MAX_BYTES - packer.nbytes) * packer.events // packer.nbytes if packer.nbytes else READ_CHUNK
            want = min(READ_CHUNK, limit - len(seqs), room)
            if len(events) < asked or want <= 0:  # the outbox has no more, or the batch is full
                break
            asked = want
            outgoing = await self._outbox.outgoing(asked, after=seqs[-1])
        flying = len(before or ()) if in_flight is None else in_flight
        return _Prepared(
            _Batch(bytes(ids), seqs, first_wall_ms), packer.finish(), chain, first.epoch_base, first.base_chain,
            first.backlog, first.oldest_pending_ms, after, epoch, flying, as_columns,
        )  # fmt: skip

    async def _next_batch(self) -> _Prepared:
        """The batch read ahead while the last one was on its way, if it still follows the acknowledged mark
        (nothing failed, rewound or forked meanwhile); else the pending events read now."""
        task, self._prefetch = self._prefetch, None
        limit = 0 if self._handshake_due else self._limit()
        if task is not None and limit:
            with contextlib.suppress(OutboxError):
                ahead = await task
                if (
                    ahead.after == self._sent_from()
                    and ahead.epoch == self._outbox.epoch
                    and ahead.as_columns == self._as_columns
                    and 0 < len(ahead.batch) <= limit
                ):
                    return ahead
        elif task is not None:
            self._drop(task)
        return await self._prepare(limit)

    def _limit(self) -> int:
        """Events per batch: larger while a large backlog waits, fewer while the hub is slow to answer."""
        limit = self._catchup_size if self._waiting >= CATCHUP_BACKLOG else self._batch_size
        return limit if self._slow_cap is None else min(limit, self._slow_cap)

    def _timed_out(self, events: int) -> None:
        """A batch of ``events`` had no answer within timeout_s: send at most half as many per batch (not fewer
        than SLOW_HUB_FLOOR), so a slow hub gets batches it answers in time."""
        half = max(min(SLOW_HUB_FLOOR, self._batch_size), events // 2)
        if events <= half or (self._slow_cap is not None and self._slow_cap <= half):
            return
        self._slow_cap = half
        log.warning(
            "The hub at %s did not answer a batch of %s events within %g s; sending at most %s per batch until it"
            " answers in time.",
            self._url,
            f"{events:,}",
            self.timeout_s,
            f"{half:,}",
        )

    def _answered_in_time(self, events: int) -> None:
        """A batch of ``events`` acknowledged: one that filled the slow hub's cap raises it by a quarter."""
        cap = self._slow_cap
        if cap is None or events < cap:
            return
        cap += max(1, cap // 4)
        if cap < (self._catchup_size if self._waiting >= CATCHUP_BACKLOG else self._batch_size):
            self._slow_cap = cap
            return
        self._slow_cap = None
        log.info("The hub at %s answers batches in time again; sending batches of the usual size.", self._url)

    def _drop_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            self._drop(task)

    @staticmethod
    def _drop(task: asyncio.Task[_Prepared]) -> None:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its failure, if any, is not news

    def _request(
        self, prepared: _Prepared, after_seq: int | None = None
    ) -> tuple[bytes, int, LostReport | None]:
        """The request's body, with the acknowledged mark as it is now, the clock when it is sent, and the report of
        movements the hub lacks it carries (None: none)."""
        batch = prepared.batch
        # Read ahead, the backlog counted the batch before this one, which is acknowledged now.
        backlog = max(len(batch), prepared.backlog - prepared.in_flight)
        oldest_ms = batch.first_wall_ms if prepared.in_flight and batch else prepared.oldest_pending_ms
        # Skew is measured from the request (NTP style), on the clock that stamps this outbox's events.
        sent_ms = self._outbox.wall_ms()
        if after_seq is None and self._unstored is not None and batch:
            after_seq = self._unstored  # the hub raises its mark over it only if it still holds what it acknowledged
        request = SyncRequest(
            self._outbox.agent_id, self._outbox.epoch, (), acked_seq=self._sent_from(),
            backlog=backlog, oldest_pending_ms=oldest_ms,
            chain=prepared.chain if batch or self._unstored is None else self._unstored_chain,
            epoch_base=prepared.epoch_base or None, base_chain=prepared.base_chain,
            sent_ms=sent_ms, follows_feed=self.feed is not None, after_seq=after_seq,
            disk=self._outbox.disk_report() if self._sends_disk else None, lost=self._lost_to_tell(),
        )  # fmt: skip
        body = encode_sync_request(request, prepared.packed_events, as_columns=prepared.as_columns)
        return body, sent_ms, request.lost

    async def _send(self, body: bytes, sent_ms: int, lost: LostReport | None = None, *, events: int = 0) -> _Reply:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": MSGPACK_CONTENT_TYPE}
        # A catch-up batch asks the hub first: one it makes wait or refuses is not uploaded meanwhile (hub/catchup.py).
        expect = self._expect_continue and len(body) > SYNC_CATCHUP_BYTES
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=FOLLOW_REDIRECTS, expect100=expect
            ) as http:
                answer = await read_answer(http, self.answer_max_bytes, "sync answer")
                return _Reply(
                    http.status, answer, sent_ms, self._outbox.wall_ms(), http.headers.get("Retry-After"),
                    http.headers.get("Location"), http.headers.get("Content-Type", ""),
                    http.headers.get(SYNC_PIPELINE_HEADER) == "1", hub_id_of(http.headers.get(HUB_ID_HEADER)),
                    hub_clock_off_of(http.headers.get(HUB_CLOCK_HEADER)),
                    hub_clock_agreed_of(http.headers.get(HUB_CLOCK_AGREED_HEADER)), lost,
                )  # fmt: skip
        except AnswerTooLarge as err:
            raise TurnFailed(str(err), kind="hub_error", reachable=True, level=logging.ERROR) from err
        except TimeoutError:
            if not expect:  # one that asked Expect: 100-continue is sent again without it first (at its size)
                self._timed_out(events)
            if expect:
                self._expect_continue = False
                log.warning(
                    "A catch-up batch sent to the hub at %s with Expect: 100-continue had no answer within %g s; "
                    "sending batches without it from now on, in case something between this agent and the hub "
                    "does not pass it on.",
                    self._url,
                    self.timeout_s,
                )
            raise TurnFailed(
                f"the hub at {self._url} did not answer within {self.timeout_s:g} s",
                kind="unreachable",
                reachable=False,
            ) from None
        except aiohttp.ClientConnectorError as err:
            hub_lost(self._url)
            reason = err.os_error.strerror or str(err.os_error)
            wrong = await wrong_address(self._hub_url, err) or f"could not connect to the hub at {self._url} ({reason})"
            raise TurnFailed(wrong, kind="unreachable", reachable=False) from err
        except aiohttp.ClientError as err:
            why = await wrong_address(self._hub_url, err)
            raise TurnFailed(
                why or f"the connection to the hub at {self._url} failed ({broken(err)})",
                kind="unreachable",
                reachable=False,
            ) from err

    async def _accepted(
        self, batch: _Batch, body: bytes, sent_ms: int, received_ms: int, *, sent_ahead: bool = False,
        hub_id: str | None = None, chain: bytes | None = None, hub_clock_off_ms: int | None = None,
        hub_clock_agreed: int | None = None,
    ) -> bool:  # fmt: skip
        try:
            resp = decode_sync_response(body)
        except ProtocolError as err:
            raise TurnFailed(
                f"the hub's answer could not be decoded ({err})", kind="hub_error", reachable=True, level=logging.ERROR
            ) from err
        if (resp.agent_id, resp.epoch) != (self._outbox.agent_id, self._outbox.epoch):
            raise TurnFailed(
                f"the hub answered for agent {resp.agent_id!r} epoch {resp.epoch},"
                f" not for this agent's epoch {self._outbox.epoch}",
                kind="hub_error",
                reachable=True,
                level=logging.ERROR,
            )
        if sent_ahead and resp.hwm < batch[-1].seq:
            # The hub met it before the batch it follows on from (or that one failed): it holds the events but
            # not the mark, and storing the answer would rewind ours. Not stored; the batch is sent again.
            log.debug("The hub kept its mark at seq %d below a batch sent ahead; sending it again.", resp.hwm)
            await self._update(attempts=self._state.attempts + 1)
            return True
        sent = batch.ids() if resp.rejected else set()
        if any(r.event_id not in sent for r in resp.rejected):  # only the events of this request are its to judge
            for r in resp.rejected:
                if r.event_id not in sent:
                    log.warning(
                        "The hub's answer rejects event %s (seq %d), which is not in the batch sent; it is not set aside.",
                        r.event_id.hex(),
                        r.seq,
                    )
            resp = dataclasses.replace(resp, rejected=tuple(r for r in resp.rejected if r.event_id in sent))
        skew_ms = resp.server_time_ms - (sent_ms + received_ms) // 2 if resp.server_time_ms else None
        try:
            result = await self._outbox.apply_answer(
                resp, clock_skew_ms=skew_ms, hub_id=hub_id, hub_url=self._url, hub_clock_off_ms=hub_clock_off_ms,
                held=self._held if self._unstored is not None else None,
                counted=(batch[0].seq, batch[-1].seq) if batch else None,
                hub_clock_agreed=hub_clock_agreed,
            )  # fmt: skip
        except OutboxError as err:
            if disk_full(err):
                raise self._unstorable(batch, resp, chain, err) from err
            raise
        if self._unstored is not None and result.acked_seq >= self._unstored or result.rewound:
            self._unstored = self._unstored_chain = None
            self._held.clear()
        self._say_the_hubs_clock(hub_clock_off_ms)
        if result.hub_id_before is not None:
            log.warning(
                "The hub at %s now serves another database (id %s; this agent last synced with %s): it was replaced"
                " or restored from another hub's backup; this agent syncs with it from now on.",
                self._url,
                hub_id,
                result.hub_id_before,
            )
        self._acked_seq = result.acked_seq
        self._waiting = result.backlog
        if result.due or result.due_settled:
            self._refresh_due, self._refresh_at_s = True, 0.0
        if result.feed_restarted:
            log.warning(
                "The hub's change feed numbering went back (its database was restored from a backup?); the count"
                " cache follows it again from the start."
            )
        if result.change_id is not None:
            self._feed_position = result.change_id
        if result.set_aside:
            first = resp.rejected[0]
            log.warning(
                "The hub rejected %d event(s) and they were set aside (first: seq %d, %s: %s).",
                result.set_aside,
                first.seq,
                first.code,
                first.reason,
            )
        log.debug(
            "The hub acknowledged up to seq %d (%d events sent, %d duplicates); %d waiting.",
            result.acked_seq,
            len(batch),
            resp.duplicates,
            result.backlog,
        )
        if not batch:
            self._handshake_due = False
        elif not (
            result.acked_seq >= batch[-1].seq
            or result.rewound
            or result.set_aside > 0
            or result.forked_from_epoch is not None  # the outbox logged it; it resends in its new epoch
        ):
            raise TurnFailed(
                f"the hub acknowledged only up to seq {result.acked_seq} of a batch ending at seq {batch[-1].seq}",
                kind="hub_error",
                reachable=True,
            )
        if result.backlog == 0 and (batch or result.acked_seq > result.previous_acked_seq):
            # The backlog this request reported counted events it acknowledged: the batch itself, or (a
            # handshake after a batch whose answer was lost) the batch the hub had committed. The hub (and its
            # dashboard) would show it until the next heartbeat. Send that heartbeat at the next tick: it
            # reports the true 0.
            self._last_answer_s = -math.inf
        await self._answered(waiting=len(batch) + result.backlog, sent=len(batch), backlog=result.backlog)
        if batch and result.acked_seq >= batch[-1].seq:
            self._answered_in_time(len(batch))
        # The batch sent ahead follows on from this one: kept while this one is acknowledged in this epoch.
        self._keep_ahead = (
            bool(batch)
            and result.acked_seq >= batch[-1].seq
            and not result.rewound
            and result.forked_from_epoch is None
        )
        return result.backlog > 0

    def _sent_from(self) -> int:
        """The mark the next batch follows on from: the outbox's acknowledged one, or the hub's mark past it that a
        full disk refused to store."""
        return self._acked_seq if self._unstored is None else max(self._acked_seq, self._unstored)

    def _unstorable(self, batch: _Batch, resp: SyncResponse, chain: bytes | None, err: OutboxError) -> TurnFailed:
        """A full disk refused to store the hub's answer (``resp``), so the acknowledged mark stays where it was.
        The events are safe in the outbox and at the hub; going back to the stored mark sent the same batch (or a
        handshake) again and again, and nothing after it reached the hub until the disk had room. So, with a hub that
        reads ``after_seq``, an answer acknowledging its whole batch with this outbox's lineage (the chain at its
        last seq) is kept in memory, and the next batch follows on from it (``after_seq``: a hub that no longer
        holds it keeps its mark, and this stops). Once an answer is stored, the outbox's mark takes over."""
        if batch:  # the answer acknowledges the whole batch, with this outbox's lineage at its end
            held = chain is not None and resp.chain == chain and resp.hwm == batch[-1].seq
        elif self._unstored is not None:  # a handshake: the hub holds the mark kept in memory
            held = resp.hwm == self._unstored and resp.chain == self._unstored_chain
        else:  # … or the stored one: nothing moves
            held = resp.hwm == self._acked_seq
        going_on = self._pipelines and not resp.rejected and held
        if going_on and resp.hwm > self._acked_seq:
            self._unstored, self._unstored_chain = resp.hwm, resp.chain
            # Its movements stay pending in the count cache until an answer is stored; that one moves the mark past
            # them, so these counts are stored with it (an answer carries only its own batch's).
            self._held.add(resp.hwm, resp.counts, resp.server_time_ms or None, resp.change_id)
        else:
            self._unstored = self._unstored_chain = None
            self._held.clear()  # the batches are sent again from the stored mark, and answered again
        if going_on:
            self._handshake_due = False
            self._keep_going = True
        then = f"; the events after seq {resp.hwm} are sent meanwhile" if going_on else ""
        return TurnFailed(
            f"the outbox failed: {err} (the hub's acknowledgement up to seq {resp.hwm} is not stored{then})",
            kind="outbox_full",
            reachable=True,
            level=logging.ERROR,
        )

    async def _invalid(self, batch: _Batch, body: bytes) -> bool:
        rejections = _rejections_from_422(batch, body)
        if not rejections:
            raise TurnFailed(
                "the hub answered 422 without naming any event of the batch",
                kind="hub_error",
                reachable=True,
                level=logging.ERROR,
            )
        count = await self._outbox.set_aside(rejections)
        # A due key waiting for one of them (agent.counts, "due") has nothing pending now: its count can be read.
        self._refresh_due = self._refresh_due or count > 0
        log.warning(
            "The hub refused %d event(s) of a batch of %d as invalid and committed none; they were set aside"
            " (first: seq %d: %s) and the rest is sent again.",
            count,
            len(batch),
            rejections[0].seq,
            rejections[0].reason,
        )
        await self._answered(waiting=len(batch))
        return True

    async def _too_big(self, batch: _Batch) -> bool:
        if len(batch) <= 1:
            raise TurnFailed(
                "the hub refused a single event as too large", kind="hub_error", reachable=True, level=logging.ERROR
            )
        half = max(1, len(batch) // 2)
        self._batch_size, self._catchup_size = min(self._batch_size, half), min(self._catchup_size, half)
        log.warning(
            "The hub refused a batch of %s events as too large; sending at most %s per batch from now on.",
            f"{len(batch):,}",
            f"{half:,}",
        )
        await self._answered(waiting=len(batch))
        return True

    def _columns_refused(self) -> bool:
        """400 naming ``columns``: a hub from before the columnar form. Send maps from now on, the batch at once."""
        self._as_columns = False
        self._drop_prefetch()
        log.warning(
            "The hub at %s does not read events as columns (it is older than this agent); sending them as maps "
            "from now on. Upgrade the hub: it decodes columns in half the time.",
            self._url,
        )
        return True

    def _slow_down(self, body: bytes) -> TurnFailed:
        """429: wait what the hub's Retry-After says (seconds; backoff if it is missing or unreadable)."""
        wait_s = parse_retry_after(self._retry_after)
        if wait_s is None:
            wait_s = self._streak.backoff.delay_s(self._streak.failures + 1, self._rng)  # as for this failure
        return TurnFailed(
            f"the hub at {self._url} asks this agent to send less often (HTTP 429: {_error_message(body)});"
            f" waiting {wait_s:g} s or a little longer",
            kind="rate_limited",
            reachable=True,
            level=logging.INFO,  # flow control, not a failure
            retry_after_s=wait_s,
        )

    def _say_the_hubs_clock(self, off_ms: int | None) -> None:
        """Say once when the hub's answers start saying its own clock is off (this machine's is right), and once
        when they stop."""
        before, self._hub_clock_off_ms = self._hub_clock_off_ms, off_ms
        if off_ms is not None and (before is None or abs(off_ms - before) > HUB_CLOCK_SAID_AGAIN_MS):
            log.warning("%s", hub_clock_words(off_ms))
        elif off_ms is None and before is not None:
            log.info("The hub at %s no longer says its own clock is off.", self._url)

    async def _refused(self, status: int, body: bytes, hub_id: str | None = None) -> TurnFailed:
        message = _error_message(body)
        if status in (401, 403):
            refused, fix = await refusal(
                self._outbox, self._url, self._url, status, body, self._outbox.agent_id, hub_id
            )
            return TurnFailed(
                f"{refused}; nothing is sent until {fix} (next try in {self._auth_retry_s:g} s or on config reload)",
                kind="credentials_refused",
                reachable=True,
                level=logging.ERROR,
            )
        if status >= 500:
            # A hub migrating its database at its start answers 503 with Retry-After and its sentence ("the hub is
            # migrating its database to schema version 12 (…): try again in 5 s"): said once for the agent
            # (hub_unavailable), sent again as it asks.
            wait_s = parse_retry_after(self._retry_after) if status == 503 else None
            level = hub_unavailable(self._url, message) if status == 503 else logging.WARNING
            return TurnFailed(
                f"the hub answered HTTP {status} ({message})",
                kind="hub_error",
                reachable=status not in (502, 503, 504),
                level=level,
                retry_after_s=wait_s,
            )
        if 300 <= status < 400:
            return TurnFailed(
                redirected(self._url, status, self._location), kind="hub_error", reachable=True, level=logging.ERROR
            )
        if status == 404:
            return TurnFailed(
                not_found(self._hub_url, self._url, message), kind="hub_error", reachable=True, level=logging.ERROR
            )
        what = (
            "rejected the request as malformed, which is a bug"
            if status == 400
            else "answered unexpectedly; is hub_url right?"
        )
        return TurnFailed(
            f"the hub at {self._url} {what} (HTTP {status}: {message})",
            kind="hub_error",
            reachable=True,
            level=logging.ERROR,
        )

    # --- bookkeeping -------------------------------------------------------
    async def _answered(self, *, waiting: int, sent: int = 0, backlog: int | None = None) -> None:
        """The hub answered an attempt usefully (200, 413 or 422)."""
        if sent == 0 and waiting > 0 and self._streak.failures:
            # Only the handshake after a failure went through: whether the hub takes our events again is
            # not known yet, so neither the recovery is logged nor the failure forgotten (a batch that
            # keeps failing after each good handshake is then logged once, not on every cycle).
            await self._update(attempts=self._state.attempts + 1, hub_reachable=True)
            return
        said, self._streak_said = self._streak_said, False
        if (ended := self._streak.succeeded()) and said:
            log.info("hub reachable again; %s events waiting, sending", f"{waiting:,}")
        elif ended:  # only asked to come back (429): flow control, not an outage
            log.debug("The hub took a batch again after %d 429 answer(s); %s events waiting.", ended, f"{waiting:,}")
        await self._update(
            attempts=self._state.attempts + 1,
            sent_events=self._state.sent_events + sent,
            sync_state="ok",
            last_error=None,
            hub_reachable=True,
            credentials_refused=False,
            failures=0,
            backlog=self._state.backlog if backlog is None else backlog,
        )

    async def _failed(self, failure: TurnFailed) -> float:
        """Report and log a failed attempt; how long to wait before the next."""
        self._drop_prefetch()
        previous = self._state
        # After a failure the next request is a handshake, except after a 429: the hub answered and nothing
        # changed, and one more request would only spend the token the batch needs.
        going_on, self._keep_going = self._keep_going, False  # a full disk refused the answer: sent on from it
        self._handshake_due = (self._handshake_due or failure.kind != "rate_limited") and not going_on
        first = self._streak.failed(failure)  # a streak's first, or a new sync state
        say = first
        if failure.kind == "rate_limited" and first:  # at most once a SLOW_DOWN_SAID_S, however many streaks
            say = time.monotonic() - self._slow_down_said_s >= SLOW_DOWN_SAID_S
            if say:
                self._slow_down_said_s = time.monotonic()
        elif failure.kind != "rate_limited":
            # A 503 is said once for the agent (hub_unavailable); the first other failure after it is news.
            say = (first or not self._streak_said) and failure.level > logging.DEBUG
            self._streak_said = self._streak_said or say
        reachable = bool(failure.reachable)
        backlog = previous.backlog
        with contextlib.suppress(OutboxError):
            backlog = (await self._outbox.stats()).backlog
            if first or previous.last_error != failure.reason:
                await self._outbox.note_sync_failure(failure.kind, failure.reason, hub_reachable=reachable)
        if say:
            then = "" if failure.kind == "credentials_refused" else ", retrying with backoff"
            log.log(
                failure.level,
                "Sync failed: %s; %s events waiting%s.",
                failure.reason,
                f"{backlog or 0:,}",
                then,
                exc_info=failure.cause,
            )
        else:
            log.debug("Sync failed again: %s.", failure.reason)
        await self._update(
            attempts=previous.attempts + 1,
            sync_state=failure.kind,
            last_error=failure.reason,
            hub_reachable=reachable,
            credentials_refused=failure.kind == "credentials_refused",
            failures=self._streak.failures,
            backlog=backlog,
        )
        if failure.kind == "credentials_refused":
            return self._auth_retry_s  # or sooner, on update_credentials
        if going_on:
            return 0.0 if (backlog or 0) > self._sent_from() - self._acked_seq else self._tick_s
        return self._streak.delay_s(failure.retry_after_s)  # new data does not cut it short (_wait)

    async def _update(self, **changes: Any) -> None:
        self._state = dataclasses.replace(self._state, batch_size=self._batch_size, **changes)
        async with self._changed:
            self._changed.notify_all()


def _error_message(body: bytes) -> str:
    """The sentence of a hub's error answer (either shape), or a short excerpt of whatever came back."""
    return huberrors.error_message(body)


def _rejections_from_422(batch: _Batch, body: bytes) -> list[Rejection]:
    """The events of the batch the 422 answer's ``rejected`` names (protocol.answers reads it, either shape)."""
    rejections, strangers = answers.rejections_in_batch(batch, answers.read_rejected(body))
    for event_id in strangers:
        log.warning("The hub's 422 names event %s, which is not in the batch sent.", event_id_hex(event_id))
    return rejections
