"""The one shape of a loop that retries (STYLE.md rule 5), and the retry schedule agent and hub agree on.

Every long-running loop of the tree — the agent's replicator, change feed,
reports, catalog and POS folder watcher, the hub's change watch, webhooks and
channel pushers, the serial reader — has one shape (``run_turns``): wait for
new data or a tick, do one unit of work (a *turn*), and when it fails back
off exponentially with jitter and a cap, log the first failure of a streak
and the recovery once, and go on. A turn that fails raises ``TurnFailed``:
one sentence saying why, and when the far side asked for it, how long to wait
(``Retry-After``).

``Backoff`` is the schedule, a frozen value: after the n-th failure in a row
the wait is drawn from [ceiling × (1 − jitter), ceiling], ceiling =
min(max_s, base_s × 2^(n−1)) — ``FULL_JITTER`` spreads many retrying agents
evenly over [0, ceiling], ``EQUAL_JITTER`` keeps at least half of it.

The hub's 429 answers carry ``Retry-After`` in whole seconds (hub.ratelimit,
hub.catchup); an agent waits that long (``parse_retry_after``, at most
``RETRY_AFTER_MAX_S``) instead of its backoff, plus a random part of it
(``retry_after_jitter``: up to a quarter of it, at least up to a second): the
hub says when the next request is let through, and agents it refused at the
same moment must not all come back at the same moment. Another party's ``Retry-After`` — a channel's
API, a webhook receiver — is read by ``read_retry_after`` alone (delay-seconds
or an HTTP-date, RFC 9110 10.2.3, capped by the caller) and may say anything,
0 too: a ``Backoff`` with ``exact_retry_after=False`` waits at least its
Retry-After and at least the backoff. How long such a peer's ``429`` or ``5xx``
asks to wait is one rule for the hub's channel connectors and its webhooks
alike (``peer_wait_s``): a 429 without a readable Retry-After waits
``PEER_RETRY_AFTER_DEFAULT_S``, and any ask is capped at
``PEER_RETRY_AFTER_MAX_S`` (shorter than the agent's ``RETRY_AFTER_MAX_S`` for
its own hub, which it trusts further).

``TurnFailed`` is not a ``ProtocolError``: it never reaches a user as an error
of its own; it is how a turn tells its loop that it failed.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC

FULL_JITTER = 1.0  # the wait anywhere in [0, ceiling]: retrying agents spread evenly
EQUAL_JITTER = 0.5  # the wait in [ceiling / 2, ceiling]: never much shorter than the schedule says
NO_JITTER = 0.0
RETRY_BASE_S = 0.5
RETRY_MAX_S = 60.0
RETRY_AFTER_MAX_S = 600.0  # the longest a hub's Retry-After is honoured
# A hub's Retry-After R is waited as R plus a random part of up to max(R × RETRY_AFTER_JITTER, RETRY_AFTER_JITTER_MIN_S):
# agents refused together (a hub's catch-up line full, its restart) come back spread over a second or more.
RETRY_AFTER_JITTER = 0.25
RETRY_AFTER_JITTER_MIN_S = 1.0
PEER_RETRY_AFTER_DEFAULT_S = 1.0  # a peer's 429 without a readable Retry-After waits this long
PEER_RETRY_AFTER_MAX_S = 300.0  # the longest a peer's (a channel's, a webhook receiver's) Retry-After is honoured
RETRY_AFTER_TEXT_MAX = 64  # longer than any delay-seconds or HTTP-date a server sends: not read
EXPONENT_MAX = 30  # 2^30 × any sensible base is past any sensible cap; the power stays a small number


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a loop waits after failures in a row: exponential, with jitter, capped at ``max_s``."""

    base_s: float = RETRY_BASE_S
    max_s: float = RETRY_MAX_S
    jitter: float = EQUAL_JITTER  # the share of the ceiling drawn at random (FULL_JITTER, EQUAL_JITTER, NO_JITTER)
    exact_retry_after: bool = False  # True: a Retry-After is the wait; False: the least (the backoff may be longer)
    # With exact_retry_after: the share of a Retry-After added at random (at least up to RETRY_AFTER_JITTER_MIN_S
    # when above 0), so the many agents one answer refused do not come back together (RETRY_AFTER_JITTER, NO_JITTER).
    retry_after_jitter: float = NO_JITTER

    def __post_init__(self) -> None:
        for name, value in (("base_s", self.base_s), ("max_s", self.max_s)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Backoff.{name} must be a number of seconds of 0 or more, got {value!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"Backoff.jitter must be from 0 to 1, got {self.jitter!r}")
        if not 0.0 <= self.retry_after_jitter <= 1.0:
            raise ValueError(f"Backoff.retry_after_jitter must be from 0 to 1, got {self.retry_after_jitter!r}")

    def ceiling_s(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row (0 after none)."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.base_s * float(2 ** min(failures - 1, EXPONENT_MAX)))

    def delay_s(self, failures: int, rng: random.Random | None = None, *, retry_after_s: float | None = None) -> float:
        """How long to wait after ``failures`` failures in a row (0 after none), with jitter; when the far side
        said ``Retry-After``, that long (``exact_retry_after``; plus a random part of it by ``retry_after_jitter``,
        drawn from ``rng``) or at least that long."""
        if retry_after_s is not None and self.exact_retry_after:
            wait_s = max(0.0, retry_after_s)
            if self.retry_after_jitter > 0:
                spread_s = max(RETRY_AFTER_JITTER_MIN_S, wait_s * self.retry_after_jitter)
                wait_s += spread_s * (rng or random).random()  # in [wait, wait + spread): never sooner than asked
            return wait_s
        ceiling_s = self.ceiling_s(failures)
        delay_s = (rng or random).uniform(ceiling_s * (1.0 - self.jitter), ceiling_s) if ceiling_s > 0 else 0.0
        return delay_s if retry_after_s is None else max(retry_after_s, delay_s)


class TurnFailed(Exception):
    """One turn of a loop failed and is tried again after a backoff; the message is one sentence saying why.

    ``kind`` names the failure ("unreachable", "credentials_refused", …): a failure of a new kind in the middle
    of a streak is news and is logged again. ``level`` is how loud its first report is — WARNING, ERROR when a
    person must act, INFO for flow control. ``retry_after_s``: the far side asked to wait that long.
    ``reachable``: whether the far side answered (None: not known). ``cause``: an unexpected error, logged
    once with its traceback (a bug).
    """

    def __init__(
        self,
        reason: str,
        *,
        kind: str = "failed",
        retry_after_s: float | None = None,
        level: int = logging.WARNING,
        reachable: bool | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.level = level
        self.reachable = reachable
        self.cause = cause

    @classmethod
    def unexpected(cls, err: BaseException, *, kind: str = "bug", reachable: bool | None = None) -> TurnFailed:
        """An error nobody expected is a bug: a failed turn all the same (the loop goes on), logged at ERROR
        with its traceback."""
        return cls(
            f"unexpected {type(err).__name__}: {err}", kind=kind, level=logging.ERROR, reachable=reachable, cause=err
        )


class Streak:
    """Failures in a row of one loop: how long to back off after them, and which of them to say.

    ``failed`` counts a failed turn and answers whether it is news — the first of a streak, or the first of a
    new kind — which the loop logs at the failure's level, the others at DEBUG; ``succeeded`` ends the streak
    and answers how many failures it had (0: none), which the loop logs once.
    """

    def __init__(self, backoff: Backoff, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.failures = 0
        self.last_error: str | None = None
        self.kind: str | None = None
        self._rng = rng

    def failed(self, failure: TurnFailed | str) -> bool:
        """Count one failed turn; True when it is news (log it), False when it repeats the streak's failure."""
        if isinstance(failure, str):
            failure = TurnFailed(failure)
        news = self.failures == 0 or failure.kind != self.kind
        self.failures += 1
        self.last_error, self.kind = failure.reason, failure.kind
        return news

    def resume(self, failures: int, last_error: str | None = None, kind: str = "failed") -> None:
        """Go on with a streak an earlier run left (its failures as stored): the next failure is not news."""
        self.failures, self.last_error, self.kind = max(0, failures), last_error, kind if failures > 0 else None

    def succeeded(self) -> int:
        """End the streak; how many failures it had (0: there was none, nothing to say)."""
        ended, self.failures, self.last_error, self.kind = self.failures, 0, None, None
        return ended

    def delay_s(self, retry_after_s: float | None = None) -> float:
        """How long to wait after the failures so far (``Backoff.delay_s``)."""
        return self.backoff.delay_s(self.failures, self._rng, retry_after_s=retry_after_s)


class Health(Streak):
    """A streak that says itself: ``<what> failed (<reason>); retrying with backoff`` when it starts, and
    ``<what> works again after <n> failed attempt(s)`` when it ends."""

    def __init__(
        self, log: logging.Logger, what: str, backoff: Backoff | None = None, rng: random.Random | None = None
    ) -> None:
        super().__init__(backoff or Backoff(), rng)
        self._log = log
        self._what = what

    def failed(self, failure: TurnFailed | str) -> bool:
        news = super().failed(failure)
        if news:
            level = failure.level if isinstance(failure, TurnFailed) else logging.WARNING
            self._log.log(level, "%s failed (%s); retrying with backoff", self._what, self.last_error)
        return news

    def succeeded(self) -> int:
        ended = super().succeeded()
        if ended:
            self._log.info("%s works again after %d failed attempt(s)", self._what, ended)
        return ended


async def run_turns(
    turn: Callable[[], Awaitable[float]],
    *,
    wait: Callable[[float, bool], Awaitable[None]],
    failed: Callable[[TurnFailed], Awaitable[float]],
    ends: tuple[type[BaseException], ...] = (),
    unexpected: Callable[[Exception], TurnFailed] = TurnFailed.unexpected,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """The one shape of a long-running loop, until ``running()`` is False or an exception of ``ends`` is raised.

    ``turn()`` does one unit of work and answers how long to wait before the next (0: at once, more is
    waiting); it raises ``TurnFailed`` when the work failed and is to be tried again. ``failed(failure)``
    counts and logs it and answers how long to back off. ``wait(delay_s, after_failure)`` waits that long or
    until new data arrives (a backoff need not be cut short by new data); it is called before the first turn
    too, with 0. Any other exception is a bug: ``unexpected`` makes it a failed turn, so the loop backs off
    and goes on instead of dying silently.
    """
    delay_s, after_failure = 0.0, False
    while running():
        await wait(delay_s, after_failure)
        if not running():
            return
        try:
            delay_s, after_failure = await turn(), False
        except ends:
            raise
        except TurnFailed as failure:
            delay_s, after_failure = await failed(failure), True
        except Exception as err:  # noqa: BLE001 - a bug must not end the loop: it is logged, backed off from, retried
            delay_s, after_failure = await failed(unexpected(err)), True


async def wait_for_any(delay_s: float | None, *events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set or ``delay_s`` passes (None: no time limit; 0 or less: yield once)."""
    if delay_s is not None and delay_s <= 0:
        await asyncio.sleep(0)
        return
    if not events:
        events = (asyncio.Event(),)  # nothing to wake on: only the time
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


def read_retry_after(raw: str | None, *, max_s: float) -> float | None:
    """The seconds a far side's ``Retry-After`` asks for, per RFC 9110 10.2.3: delay-seconds (decimals too, as
    some services send them) or an HTTP-date counted from this machine's clock (0 once past), at most ``max_s``.
    None when the header is missing, negative, not a finite number, longer than any real one, or neither form:
    the caller's backoff alone applies then. The one reader of another party's Retry-After (the hub's webhooks
    and channel connectors); the agent reads the hub's own whole seconds with ``parse_retry_after``."""
    if raw is None or len(raw) > RETRY_AFTER_TEXT_MAX:
        return None
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # an HTTP-date is always GMT
        value = max(0.0, when.timestamp() - time.time())
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, max_s)


def peer_retry_after_s(raw: str | None) -> float:
    """The seconds a peer's (a channel's, a webhook receiver's) ``Retry-After`` on a 429 asks for
    (``read_retry_after``): ``PEER_RETRY_AFTER_DEFAULT_S`` when it is missing or unreadable, at most
    ``PEER_RETRY_AFTER_MAX_S``. The caller waits at least this long and at least its backoff (``Backoff``), so a
    peer that says 0 is not asked again at once."""
    value = read_retry_after(raw, max_s=PEER_RETRY_AFTER_MAX_S)
    return PEER_RETRY_AFTER_DEFAULT_S if value is None else value


def peer_wait_s(status: int, raw: str | None) -> float | None:
    """How long a peer's 429 or 5xx answer asks to wait, the same for every channel connector and webhook: a 429
    means wait, so without a readable ``Retry-After`` it waits ``PEER_RETRY_AFTER_DEFAULT_S``
    (``peer_retry_after_s``); a 5xx waits what its ``Retry-After`` says, or only the backoff (None) without one.
    Either is at most ``PEER_RETRY_AFTER_MAX_S``: a longer ask is capped, not ignored, so a peer asking for an
    hour is not asked again after a second."""
    return peer_retry_after_s(raw) if status == 429 else read_retry_after(raw, max_s=PEER_RETRY_AFTER_MAX_S)


def retry_after_value(wait_s: float) -> str:
    """``Retry-After`` as a hub sends it for a wait of ``wait_s``: whole seconds, rounded up, at least 1 (what
    ``parse_retry_after`` reads back)."""
    return str(max(1, math.ceil(wait_s)))


def parse_retry_after(raw: str | None) -> float | None:
    """The seconds of a hub's ``Retry-After`` (whole seconds), at most ``RETRY_AFTER_MAX_S``; None when the
    header is missing or is not a number of seconds (the loop backs off as after any failure then)."""
    text = (raw or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return min(float(text), RETRY_AFTER_MAX_S)
