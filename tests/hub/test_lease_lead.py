"""``hub.leases.lead`` on a real PostgreSQL database: a job whose work ends by itself gives its lock back.

Each "hub" is a ``lead`` loop with a ``Leases`` of its own (its own lock connection), as each hub process has;
the jobs are webhooks (``hub.webhooks._WebhookJob``) whose dispatcher's ``run`` stands in for the delivery loop. A job whose work ends while its hub runs on
(its loop died or returned) must not keep the lock: another hub takes it over, or this hub after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from hub.channels.config import parse_channels
from hub.channels.runner import NotDone, _ChannelJob, reconcile_asked, refresh_asked
from hub.config import DEFAULT_LEASE_STALE_S, HubSettings
from hub.heartbeat import Heartbeat
from hub.leases import LeaseHolder, LocalLeases, Words, lead
from hub.storage.base import StoreError, WebhookState
from hub.storage.postgres.leases import LEASE_STALE_S, Leases, LockConnection
from hub.storage.postgres.store import application_name
from hub.webhook_spec import WebhookSpec
from hub.webhooks import WebhookStatus, _WebhookJob
from protocol.retry import Backoff
from tests.harness.pg_server import ThrowawayPostgres
from tests.hub.feed_helpers import running_hub_at

BOUND_S = 30.0  # a hub takes a free job within a retry; this hub takes its own back after a few seconds' backoff
RETRY_S = 0.05
RAN_WELL_S = 0.05  # a job that ran this long since it was taken ends afresh (in the test that says so)
WORDS = Words("webhook", "deliverer lock", "the webhooks' deliverer locks", "delivers", "delivering")
log = logging.getLogger("tests.lease_lead")


class FakeDispatcher:
    """Stands in for a ``WebhookDispatcher`` of webhook ``shop`` (``hub.webhooks._WebhookJob`` runs it): its
    ``run`` is ``works[i]()`` on its i-th start (the last one for every later start); each start's heartbeat
    says its work ends within ``bound_s`` (an hour: never taken for stuck unless a test says less)."""

    def __init__(self, *works: Callable[[], Awaitable[None]], name: str = "shop", bound_s: float = 3600.0) -> None:
        self.spec = WebhookSpec(name=name, url="http://127.0.0.1:9/hook", secret="s3cret-for-the-web-shop")
        self.status = WebhookStatus()
        self.delivering = False
        self._works = works
        self.starts = 0
        self.heartbeat = Heartbeat()
        self.bound_s = bound_s
        self.aside: str | None = None  # never: its settings are the stored ones
        self.read_settings = True

    def run(self) -> Awaitable[None]:
        work = self._works[min(self.starts, len(self._works) - 1)]
        self.starts += 1
        self.heartbeat.beat(self.bound_s)
        return work()


class SavedState:
    async def webhook_state(self, name: str) -> WebhookState:
        return WebhookState(0, None, 0)

    async def latest_change_id(self) -> int:
        return 0


async def _dies() -> None:
    raise RuntimeError("the feed answered nonsense")


async def _returns() -> None:
    return None


async def _forever() -> None:
    await asyncio.Event().wait()


async def _dies_after_a_few_checks() -> None:
    await asyncio.sleep(RETRY_S * 5)
    raise RuntimeError("the feed answered nonsense")


async def _dies_after_running_well() -> None:
    await asyncio.sleep(RAN_WELL_S * 20)
    raise RuntimeError("the feed answered nonsense")


@dataclass(frozen=True)
class CountingBackoff(Backoff):
    """A backoff that notes after how many ends in a row it was asked, and waits next to nothing."""

    asked: list[int] = field(default_factory=list)

    def delay_s(self, failures: int, rng: object = None, *, retry_after_s: float | None = None) -> float:
        self.asked.append(failures)
        return 0.01


@contextlib.asynccontextmanager
async def _hub(
    url: str, *ds: FakeDispatcher, leases: LeaseHolder | None = None, **lead_kw: Any
) -> AsyncIterator[None]:
    """One hub: its lock connection and its ``lead`` loop over its webhooks, until the block ends."""
    leases = leases or Leases(url, "test.job", "the deliverer lock of webhook {name}", "the webhooks' locks")
    tasks: dict[str, asyncio.Task[None]] = {}
    jobs = {d.spec.name: _WebhookJob(d, tasks, SavedState()) for d in ds}  # type: ignore[arg-type]
    task = asyncio.create_task(lead(leases, jobs, log, WORDS, RETRY_S, lambda: False, **lead_kw))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for job in jobs.values():
            if job.here():
                await job.stop()
        await leases.close()


async def _until(what: str, check: Callable[[], bool]) -> None:
    try:
        async with asyncio.timeout(BOUND_S):
            while not check():
                await asyncio.sleep(RETRY_S)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {BOUND_S:.0f} s") from None


async def test_a_job_whose_work_dies_gives_its_lock_to_another_hub(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    first, second = FakeDispatcher(_dies), FakeDispatcher(_forever)
    async with _hub(pg_url, first):
        await _until("the first hub takes the webhook", lambda: first.starts >= 1)
        async with _hub(pg_url, second):
            await _until("the second hub takes the webhook over", lambda: second.delivering)
            assert not first.delivering
    ended = [r.getMessage() for r in caplog.records if "ended by itself" in r.getMessage()]
    assert ended, caplog.text
    assert ended[0].startswith(
        "webhook shop: delivering ended by itself (RuntimeError: the feed answered nonsense) while this hub runs; "
        "it gave its deliverer lock back for another hub (or this one, in "
    )


async def test_a_job_whose_loop_returns_is_taken_again_by_its_own_hub_after_a_backoff(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    d = FakeDispatcher(_returns, _forever)
    async with _hub(pg_url, d):
        await _until("the hub takes the webhook again", lambda: d.starts >= 2 and d.delivering)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("webhook shop: this hub delivers it now") == 2
    assert any("delivering ended by itself (its loop returned)" in m for m in messages), messages


class FailingTake(Leases):
    """Taking webhook ``later``'s lock fails as a broken query does (``Leases.take``): the connection is dropped,
    and with it every lock this hub held — while webhook ``shop`` is still being delivered."""

    async def take(self, name: str) -> bool:
        if name == "later":
            await self._drop()
            raise StoreError("taking the deliverer lock of webhook later failed (connection reset)")
        return await super().take(name)


async def test_a_failed_take_that_drops_the_lock_connection_stops_the_webhooks_it_held(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop used to stop its jobs only when ``held`` was non-empty and the connection dead; a take that
    failed emptied ``held`` itself, so webhook ``shop`` went on being delivered here without its lock while
    another hub took it: two deliverers."""
    caplog.set_level(logging.INFO, logger=log.name)
    shop, later = FakeDispatcher(_forever), FakeDispatcher(_forever, name="later")
    failing = FailingTake(pg_url, "test.job", "the deliverer lock of webhook {name}", "the webhooks' locks")
    other = FakeDispatcher(_forever)
    async with _hub(pg_url, shop, later, leases=failing):
        await _until("the first hub takes webhook shop", lambda: shop.starts >= 1)
        async with _hub(pg_url, other):
            await _until("the second hub alone delivers webhook shop", lambda: other.delivering and not shop.delivering)
    assert "webhook shop: this hub lost its deliverer lock and stopped delivering it" in caplog.text


async def test_a_job_that_keeps_dying_after_each_takeover_waits_longer_each_time() -> None:
    """The count of ends in a row started over whenever a check saw the job running, so a job dying a few
    seconds after each takeover was taken again after the first backoff (1.5-3 s) every time, forever."""
    backoff = CountingBackoff()
    d = FakeDispatcher(_dies_after_a_few_checks, _dies_after_a_few_checks, _dies_after_a_few_checks, _forever)
    async with _hub("", d, leases=LocalLeases(), ended_backoff=backoff):
        await _until("the hub takes the webhook a fourth time", lambda: d.starts >= 4 and d.delivering)
    assert backoff.asked == [1, 2, 3]


async def test_a_job_that_ran_well_before_it_died_backs_off_from_the_start_again() -> None:
    backoff = CountingBackoff()
    d = FakeDispatcher(_dies, _dies, _dies_after_running_well, _forever)
    async with _hub("", d, leases=LocalLeases(), ended_backoff=backoff, ran_well_s=RAN_WELL_S):
        await _until("the hub takes the webhook a fourth time", lambda: d.starts >= 4 and d.delivering)
    assert backoff.asked == [1, 2, 1]


async def test_a_job_whose_work_died_is_logged_with_the_errors_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The sentence named the error but not where it was raised: the bug behind it could not be found."""
    caplog.set_level(logging.INFO, logger=log.name)
    d = FakeDispatcher(_dies, _forever)
    async with _hub("", d, leases=LocalLeases(), ended_backoff=CountingBackoff()):
        await _until("the hub takes the webhook again", lambda: d.starts >= 2 and d.delivering)
    (ended,) = [r for r in caplog.records if "ended by itself" in r.getMessage()]
    assert ended.getMessage() == (
        "webhook shop: delivering ended by itself (RuntimeError: the feed answered nonsense) while this hub runs; "
        "this hub starts delivering it again in 0 s"
    )
    assert ended.exc_info is not None and ended.exc_info[0] is RuntimeError
    assert 'raise RuntimeError("the feed answered nonsense")' in caplog.text  # the line that raised, in its frame


async def test_a_job_whose_work_is_stuck_past_its_bound_is_stopped_and_given_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job's loop hanging on an await that never ends (it said it would be done within 0.1 s) while its hub's
    lead loop runs on kept its lease for ever, doing nothing. Silent ``lease_stale_s`` past its bound, it is
    stopped and its lease given back, with one sentence; the hub takes it again after the backoff."""
    caplog.set_level(logging.INFO, logger=log.name)
    d = FakeDispatcher(_forever, bound_s=0.1)
    async with _hub("", d, leases=LocalLeases(stale_s=0.2), ended_backoff=CountingBackoff()):
        await _until("the hub takes the stuck webhook again", lambda: d.starts >= 2 and d.delivering)
    stuck = [r.getMessage() for r in caplog.records if "has been stuck for" in r.getMessage()]
    assert stuck and stuck[0].startswith("webhook shop: delivering has been stuck for ")
    assert stuck[0].endswith(
        "past its own time limits, over lease_stale_s (0 s), so this hub stopped it and gave its deliverer lock "
        "back for this hub, in 0 s, to take over"
    )
    assert "ended by itself" not in caplog.text  # it was stopped, not ended: no traceback to show


async def test_a_job_waiting_within_its_bound_is_not_taken_for_stuck(caplog: pytest.LogCaptureFixture) -> None:
    """A loop whose await takes longer than ``lease_stale_s`` but less than the bound it gave (a slow request
    within its timeout) is alive: it keeps its lease."""
    caplog.set_level(logging.INFO, logger=log.name)
    d = FakeDispatcher(_forever, bound_s=3600.0)
    async with _hub("", d, leases=LocalLeases(stale_s=0.2), ended_backoff=CountingBackoff()):
        await _until("the hub delivers the webhook", lambda: d.delivering)
        await asyncio.sleep(1.0)  # five times lease_stale_s, far within the bound
        assert d.starts == 1 and d.delivering
    assert "has been stuck" not in caplog.text


async def test_a_job_of_a_hub_whose_event_loop_was_blocked_past_lease_stale_s_is_not_taken_for_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hub whose whole event loop was blocked (a long synchronous call; SIGSTOP does the same) past
    ``lease_stale_s``: when it ran again, its lead loop's turn came before the job's loop had run again, saw that
    loop silent since before the block, and stopped the job as stuck. The job's loop, which could not run either,
    is not stuck: it runs on, and its lease stays."""
    caplog.set_level(logging.INFO, logger=log.name)
    d = FakeDispatcher(bound_s=0.05)

    async def beats_every_50_ms() -> None:  # within its bound, as a live loop does; it beats a step after waking
        while True:
            d.heartbeat.beat(0.05)
            await asyncio.sleep(0.05)
            await asyncio.sleep(0)

    d._works = (beats_every_50_ms,)
    async with _hub("", d, leases=LocalLeases(stale_s=0.2), ended_backoff=CountingBackoff()):
        await _until("the hub delivers the webhook", lambda: d.delivering)
        for _ in range(3):
            time.sleep(1.0)  # noqa: ASYNC251 -- the event loop blocked, five times lease_stale_s: nothing runs
            await asyncio.sleep(10 * RETRY_S)  # ten turns of the lead loop after it
        assert d.starts == 1 and d.delivering
    assert "has been stuck" not in caplog.text


# The backend holding a lease's advisory lock (kind, name) in the connection's schema; None while nobody holds it.
HOLDER_SQL = """
WITH k AS (SELECT hashtextextended('shelfsync.' || $1 || '.' || current_schema() || '.' || $2, 0) AS key)
SELECT l.pid FROM pg_locks l, k
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295
"""


async def test_a_postgresql_hub_holds_its_channel_and_webhook_locks_on_a_connection_per_kind(pg_url: str) -> None:
    """One lock connection for both kinds let the webhooks' lead loop, checking its locks, keep the connection
    fresh while the channels' lead loop was stuck: nobody took the channels over. Each kind's checks now prove
    only that kind's loop alive, on its own connection (two per hub with channels and webhooks)."""
    hook = WebhookSpec(name="shop", url="http://127.0.0.1:9/hook", secret="s3cret-for-the-web-shop")
    (channel,) = parse_channels(
        [{"name": "feed", "kind": "webhook", "url": "http://127.0.0.1:9/levels", "pool": {"S1": "web"},
          "secret_env": "FEED_SECRET"}],
        environ={"FEED_SECRET": "s3cret-for-the-levels-feed-of-the-shop"},
    )  # fmt: skip
    conn = await asyncpg.connect(pg_url)
    try:
        async with running_hub_at(pg_url, webhooks=(hook,), channels=(channel,)):
            holders: list[int | None] = [None, None]

            async def both_held() -> bool:
                holders[:] = [await conn.fetchval(HOLDER_SQL, "webhook.deliverer", "shop"),
                              await conn.fetchval(HOLDER_SQL, "channel.pusher", "feed")]  # fmt: skip
                return None not in holders

            async with asyncio.timeout(BOUND_S):
                while not await both_held():
                    await asyncio.sleep(RETRY_S)
            assert holders[0] != holders[1]
    finally:
        await conn.close()


async def test_kinds_sharing_a_lock_connection_give_back_only_their_own_locks(pg_url: str) -> None:
    shared = LockConnection(pg_url)
    hooks = Leases(shared, "webhook.deliverer", "the deliverer lock of webhook {name}", "the webhooks' locks")
    pushers = Leases(shared, "channel.pusher", "the pusher lock of channel {name}", "the channels' locks")
    other_hooks = Leases(pg_url, "webhook.deliverer", "the deliverer lock of webhook {name}", "the webhooks' locks")
    other_pushers = Leases(pg_url, "channel.pusher", "the pusher lock of channel {name}", "the channels' locks")
    try:
        assert await hooks.take("shop") and await pushers.take("feed")
        assert not await other_hooks.take("shop") and not await other_pushers.take("feed")
        await hooks.close()  # this hub's webhooks stop: their locks go, its channels keep theirs
        assert await other_hooks.take("shop")
        assert not await other_pushers.take("feed")
        assert await pushers.alive() and pushers.held == {"feed"}
        await pushers.close()  # the last kind closes the connection
        assert shared.current() is None
        assert await other_pushers.take("feed")
    finally:
        for leases in (hooks, pushers, other_hooks, other_pushers):
            await leases.close()


async def test_a_lock_connection_dropped_by_one_kind_takes_every_kinds_locks(pg_url: str) -> None:
    """A kind that reconnected must not leave another kind believing it still holds its locks."""
    shared = LockConnection(pg_url)
    hooks = Leases(shared, "webhook.deliverer", "the deliverer lock of webhook {name}", "the webhooks' locks")
    pushers = Leases(shared, "channel.pusher", "the pusher lock of channel {name}", "the channels' locks")
    try:
        assert await pushers.take("feed")
        await hooks._drop()  # as a take that failed does: the connection is cut
        assert await hooks.take("shop")  # on a connection made anew
        assert not await pushers.alive()
        assert pushers.held == set()
        assert await pushers.take("feed")  # free again, and taken on the new connection
    finally:
        await hooks.close()
        await pushers.close()


async def test_the_lock_connection_is_noticed_gone_as_the_hub_stores_sessions_are(pg_url: str) -> None:
    """A hub whose host vanished (powered off, cut off: nothing answers, not even a reset) holds its webhooks' and
    channels' locks until the server ends its lock connection. The hub store's sessions tell the server to notice
    such a peer within about a minute (``SESSION_DEFAULTS``: TCP keepalives, ``tcp_user_timeout``); the lock
    connection was opened without them, so the server kept it, and every lock on it, for TCP's two hours: no hub
    delivered those webhooks or pushed those channels meanwhile. A setting the URL gives wins, as for the store."""
    leases = Leases(pg_url + "&tcp_keepalives_count=5", "test.job", "the lock of {name}", "the locks")
    try:
        assert await leases.take("shop")
        conn = leases._shared.current()
        assert conn is not None
        shown = {
            name: await conn.fetchval(f"SELECT current_setting('{name}')")
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
        }
        assert shown == {
            "tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "5",
            "tcp_user_timeout": "60000",
        }  # fmt: skip
        assert await conn.fetchval("SELECT current_setting('application_name')") == application_name("locks")
    finally:
        await leases.close()


async def test_a_servers_short_idle_session_timeout_does_not_end_the_lock_connection_between_checks() -> None:
    """A DBA's ``idle_session_timeout`` (PostgreSQL 14+) ends sessions idle that long. The lock connection idles
    between lock checks by design, so one shorter than their interval ended it, and the locks with it, between two
    checks: the webhooks and channels it led went from hub to hub every few seconds, a batch delivered twice at
    each move. The lock connection sets it to 0 for itself."""
    with ThrowawayPostgres() as pg:
        pg.psql("ALTER SYSTEM SET idle_session_timeout = '500ms'")
        pg.psql("SELECT pg_reload_conf()")
        leases = Leases(pg.url, "test.job", "the lock of {name}", "the locks")
        try:
            assert await leases.take("shop")
            conn = leases._shared.current()
            assert conn is not None
            await asyncio.sleep(1.5)  # three times the server's limit, idle
            assert not conn.is_closed() and await conn.fetchval("SELECT 1") == 1
            assert await leases.take("shop"), "still held on the same connection"
            assert leases._shared.current() is conn
        finally:
            await leases.close()


def _leases(url: str, stale_s: float) -> Leases:
    """One hub's leases of kind ``test.job``, on a lock connection of its own that ends a holder silent ``stale_s``."""
    return Leases(LockConnection(url, stale_s=stale_s), "test.job", "the lock of {name}", "the locks")


async def _tries(leases: Leases, name: str, for_s: float) -> bool:
    """``leases`` tries to take ``name`` every ``RETRY_S`` for ``for_s`` (as a standing-by ``lead`` does): taken?"""
    try:
        async with asyncio.timeout(for_s):
            while not await leases.take(name):
                await asyncio.sleep(RETRY_S)
    except TimeoutError:
        return False
    return True


async def test_a_holder_that_stopped_checking_its_locks_has_its_lock_connection_ended_and_the_lock_taken(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub paused (SIGSTOP) or stuck in a blocking call keeps its lock connection open (its kernel answers the
    keepalives), so the server kept its locks for as long as it stayed so, and the other hubs stood by for ever.
    Its lock connection, silent past the bound, is ended by a hub that wants one of its locks."""
    caplog.set_level(logging.INFO)
    assert LEASE_STALE_S == DEFAULT_LEASE_STALE_S == HubSettings().lease_stale_s  # the hub's default, either way
    silent, other = _leases(pg_url, 30.0), _leases(pg_url, 0.5)
    try:
        assert await silent.take("shop")  # and never checks it again
        assert await _tries(other, "shop", BOUND_S), "the lock of a silent holder was never taken"
        await _until("the silent hub sees its connection ended", lambda: not silent.holds("shop"))
        (said,) = [r for r in caplog.records if "has been silent for" in r.getMessage()]
        assert said.levelno == logging.WARNING
        assert said.getMessage().startswith("The lock of shop is held by a hub whose lock connection (PostgreSQL pid ")
        assert "past lease_stale_s (0 s): that hub is paused or stuck" in said.getMessage()
        assert not await silent.alive() and silent.held == set()  # resumed: it finds the lock gone, without a word
        assert not await silent.take("shop")
    finally:
        await silent.close()
        await other.close()


async def test_a_holder_that_checks_its_locks_keeps_them_however_long_it_holds_them(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Checking its locks (``lead``, every turn) is what proves a hub alive: a holder doing so for longer than the
    bound keeps them, while another hub tries to take them all along."""
    caplog.set_level(logging.INFO)
    holding = FakeDispatcher(_forever)
    other = _leases(pg_url, 2.0)
    try:
        async with _hub(pg_url, holding):
            await _until("the hub takes the webhook", lambda: holding.delivering)
            assert not await _tries(other, "shop", 4.0)
            assert holding.delivering
    finally:
        await other.close()
    assert "has been silent" not in caplog.text


async def test_a_silent_holder_of_a_hub_of_the_earlier_version_is_ended_too(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Hubs before the sessions named their host and pool called each session ``shelfsync-hub`` alone: while hubs
    are upgraded one at a time, a paused one of those is still a hub, and its lock is taken over."""
    caplog.set_level(logging.INFO)
    earlier = await asyncpg.connect(pg_url, server_settings={"application_name": "shelfsync-hub"})
    other = _leases(pg_url, 0.5)
    try:
        await earlier.execute(
            "SELECT pg_advisory_lock(hashtextextended('shelfsync.test.job.' || current_schema() || '.shop', 0))"
        )
        assert await _tries(other, "shop", BOUND_S), "the lock of a silent hub of the earlier version was never taken"
        assert "has been silent for" in caplog.text
    finally:
        await other.close()
        earlier.terminate()


async def test_a_session_not_a_hubs_holding_a_lock_is_never_ended(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's psql holding the key (to keep a webhook from being delivered, say) is not a paused hub."""
    caplog.set_level(logging.INFO)
    operator = await asyncpg.connect(pg_url)  # search_path from the URL; no application_name of a hub
    other = _leases(pg_url, 0.5)
    try:
        await operator.execute(
            "SELECT pg_advisory_lock(hashtextextended('shelfsync.test.job.' || current_schema() || '.shop', 0))"
        )
        assert not await _tries(other, "shop", 2.0)
        assert not operator.is_closed() and await operator.fetchval("SELECT 1") == 1
    finally:
        await other.close()
        await operator.close()
    assert "has been silent" not in caplog.text


class StuckReading:
    """A channel's stored state whose read of the last reconciliation never ends (a hung database read)."""

    async def reconciled(self, name: str) -> None:
        await asyncio.Event().wait()

    async def cursor(self, name: str) -> int:
        return 0


class FakePusher:
    """Stands in for a ``ChannelPusher`` of channel ``web`` (``hub.channels.runner._ChannelJob`` runs it): its
    loop waits within the hour it says, alive; the real ``Reconciler`` the job starts beside it reads its state."""

    def __init__(self, spec: Any, starts: list[FakePusher]) -> None:
        self.spec, self.heartbeat, self.reconciler, self.task = spec, Heartbeat(), None, None
        self.connector = SimpleNamespace(readable=True)
        self.state = StuckReading()
        self.status = SimpleNamespace(cursor=0)
        starts.append(self)

    def start(self) -> None:
        self.heartbeat.beat(3600.0)
        self.task = asyncio.create_task(_forever())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


CHANNEL_WORDS = Words("channel", "pusher lock", "the channels' pusher locks", "pushes", "pushing")


def _web_channel(reconcile_s: int) -> Any:
    """Channel ``web``: a webhook channel of location S1, reconciled every ``reconcile_s`` (0: never by itself)."""
    (spec,) = parse_channels(
        [{"name": "web", "kind": "webhook", "url": "http://127.0.0.1:9/levels", "pool": {"S1": "web"},
          "secret_env": "FEED_SECRET", "reconcile_s": reconcile_s}],
        environ={"FEED_SECRET": "s3cret-for-the-levels-feed-of-the-shop"},
    )  # fmt: skip
    return spec


async def test_a_channels_reconciler_stuck_beside_a_live_pusher_is_stopped_and_given_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A channel's reconciler runs in the same lead job as its pusher, but only the pusher had a heartbeat: a
    reconciler hanging on an await that never ends hid behind the live pusher, and the channel was never read
    back again. Silent ``lease_stale_s`` past its bound, the job is stopped and its lease given back."""
    caplog.set_level(logging.INFO, logger=log.name)
    spec = _web_channel(reconcile_s=60)
    starts: list[FakePusher] = []
    pushers: dict[str, Any] = {"web": FakePusher(spec, starts)}
    jobs = {"web": _ChannelJob("web", pushers, lambda s: FakePusher(s, starts), StuckReading())}  # type: ignore[arg-type]
    words = CHANNEL_WORDS
    leases = LocalLeases(stale_s=0.2)
    task = asyncio.create_task(lead(leases, jobs, log, words, RETRY_S, lambda: False, ended_backoff=CountingBackoff()))
    try:
        await _until("the hub stops the stuck reconciler's channel", lambda: "has been stuck for" in caplog.text)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if jobs["web"].here():
            await jobs["web"].stop()
        await leases.close()
    stuck = [r.getMessage() for r in caplog.records if "has been stuck for" in r.getMessage()]
    assert stuck[0].startswith("channel web: reconciling has been stuck for "), stuck
    assert starts[0].task is not None and starts[0].task.cancelled()  # the live pusher was stopped with it


class ReadHangs(FakePusher):
    """A ``FakePusher`` whose mapping is loaded and whose read of the hub's levels never ends (a hung read)."""

    def __init__(self, spec: Any, starts: list[FakePusher]) -> None:
        super().__init__(spec, starts)
        self.items = {"A": "item-a"}
        self.push_seq = 0
        self.holding = lambda: True

    async def ready(self) -> None:
        return None

    async def remap_if_moved(self) -> bool:
        return False

    async def levels_now(self, moved: Any, also: Any = ()) -> dict[Any, Any]:
        await asyncio.Event().wait()
        return {}

    async def refresh_mapping(self) -> None:  # its read of the channel's listing never ends either
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("asked", "doing", "not_done"),
    [
        (reconcile_asked, "reconciling as asked", "channel web was not reconciled"),
        (refresh_asked, "refreshing the mapping as asked", "the mapping of channel web was not refreshed"),
    ],
)
async def test_work_asked_over_the_api_stuck_past_its_bound_is_stopped_with_its_job(
    caplog: pytest.LogCaptureFixture, asked: Callable[[Any], Awaitable[Any]], doing: str, not_done: str
) -> None:
    """A reconciliation (or mapping refresh) asked for over the API ran in the request's task with no heartbeat:
    hanging on an await that never ends, it hung the request for ever, and nothing gave the channel up. It is work
    of the channel's job now (``run_asked``), watched like the reconciler's loop: silent ``lease_stale_s`` past its
    bound, the job is stopped and its lease given back, and the request is told it was not done."""
    caplog.set_level(logging.INFO, logger=log.name)
    spec = _web_channel(reconcile_s=0)
    starts: list[FakePusher] = []
    pushers: dict[str, Any] = {"web": ReadHangs(spec, starts)}
    jobs = {"web": _ChannelJob("web", pushers, lambda s: ReadHangs(s, starts), StuckReading())}  # type: ignore[arg-type]
    words = CHANNEL_WORDS
    leases = LocalLeases(stale_s=0.2)
    task = asyncio.create_task(
        lead(leases, jobs, log, words, RETRY_S, lambda: False, ended_backoff=Backoff(600.0, 600.0))
    )
    try:
        await _until("the hub runs the channel", lambda: jobs["web"].here())
        with pytest.raises(NotDone, match=f"^{not_done}: this hub stopped running the channel"):
            async with asyncio.timeout(BOUND_S):
                await asked(starts[0])
        await _until("the hub says why", lambda: "has been stuck for" in caplog.text)  # said once it stopped
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if jobs["web"].here():
            await jobs["web"].stop()
        await leases.close()
    stuck = [r.getMessage() for r in caplog.records if "has been stuck for" in r.getMessage()]
    assert stuck and stuck[0].startswith(f"channel web: {doing} has been stuck for "), caplog.text
    assert starts[0].task is not None and starts[0].task.cancelled()  # its pusher was stopped with it
