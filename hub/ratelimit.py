"""A rate limit per credential on the routes agents write through: one token bucket per agent id.

Each agent id has a bucket of ``rate_limit_burst`` tokens that refills at
``rate_limit_per_s`` tokens a second; every request to a limited route takes
one. With the bucket empty the hub answers ``429 rate_limited`` with
``Retry-After`` (whole seconds until a token is back, ``protocol.retry.retry_after_value``) and does not
read the body. The agent's replicator waits that long before it tries again.

Every answer of a limited route that passed authentication also says where
the credential stands, in the fields of draft-ietf-httpapi-ratelimit-headers-10
(the IETF httpapi working group's current draft)::

    RateLimit-Policy: "writes";q=100;w=2
    RateLimit: "writes";r=97;t=1

The policy's quota ``q`` is the bucket (``rate_limit_burst`` requests) and its
window ``w`` the whole seconds an empty bucket takes to fill again (burst ÷
rate, rounded up); ``r`` is the requests left now and ``t`` the whole seconds
until the bucket is full again (0: it is full).

The change feed keeps a second set of buckets (``hub.feed``, policy ``feed-reads``) counted in changes read
from the database rather than requests: ``charge`` takes a read's rows once they are known, and ``owed_s``
says how long a credential in debt waits.

Every other read with a credential (a ``GET`` but the change feed's) is counted against a budget of its own per
credential (``READ_BUDGET_KEY``, policy ``reads``), in bytes of the answers it was given: a credential in debt is
answered ``429`` with Retry-After before anything is read (``check_reads``), and each answer is charged once made
(``answer_bytes``; a CSV download, streamed, has its own cap instead). One credential reading the biggest pages in a loop slowed every store's sync a hundredfold
before; now it waits for its budget, and the others read on.

A well-behaved agent sends one request at a time and waits for the answer,
so the default (50 a second, bursts of 100) only stops a runaway or hostile
client. Buckets live in this hub process: several hubs sharing one
PostgreSQL database each keep their own.

The public routes (a channel's order webhooks, the dashboard's sign-in form) carry no credential to count by, so
``RefusedAttempts`` keeps a third set of buckets, per client address (``client_key``), counted in refused attempts
only: a webhook with a missing or bad signature, a failed sign-in (``refused``). A request that succeeds takes
nothing, so a channel's genuine webhooks and a person signing in never meet it; an address that spent its
``refused_attempts_burst`` is answered ``429`` with Retry-After on those routes, from the request's head, before
its body is read, whatever it sends, until its bucket holds a whole attempt again (``refused_attempts_per_s``).
Those 429s are logged once a minute with a count per address (``LimitedLog``), never one line per request.
The address is the peer's, or behind a reverse proxy of ``trusted_proxies`` the client's as the proxy names it
(hub.proxies.client_of); behind a proxy the hub is not told of, every client shares the proxy's, and so one bucket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from hub.auth import IDENTITY_KEY, Handler
from hub.proxies import client_of
from hub.storage.base import AgentIdentity
from protocol.logsafety import DEFAULT_INTERVAL_S
from protocol.retry import retry_after_value

log = logging.getLogger(__name__)

RATE_LIMITED_ROUTES = frozenset({"sync", "events", "observations", "import_issues"})
POLICY = "writes"  # the name of the one quota policy in the RateLimit-Policy and RateLimit fields
HEADER_NAMES = ("RateLimit-Policy", "RateLimit")
BUCKETS_MAX = 100_000  # full buckets are forgotten beyond this many (one per credential in practice)
SWEEP_GROWTH = 2  # the next sweep waits until the table holds this many times what the last one kept
# The public routes whose refused attempts are counted per client address (RefusedAttempts), by route name.
REFUSAL_LIMITED_ROUTES = frozenset({"channel_webhooks", "dashboard_sign_in"})
REFUSALS_POLICY = "refused-attempts"
READS_POLICY = "reads"  # the read budget's name: bytes of answers to the read routes, per credential
# The reads with a budget of their own (the change feed's, counted in changes: hub.feed), left out of READS_POLICY.
OWN_BUDGET_READS = frozenset({"changes", "changes_stream"})
READ_METHODS = frozenset({"GET", "HEAD"})
IPV6_PREFIX = 64  # an IPv6 client is counted by its /64: one host (or site) is given a whole /64 and picks within it


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets by key. ``take(key)`` is 0.0 when a request may go ahead, else the seconds to wait.

    A cost known only afterwards (the rows a read returned) is ``charge``d, and may leave the bucket in debt;
    ``owed_s`` says how long until it holds a whole token again."""

    def __init__(
        self, rate_per_s: float, burst: int, clock_s: Callable[[], float] = time.monotonic, policy: str = POLICY
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs a positive rate and a burst of at least 1, got {rate_per_s}/{burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.policy = policy
        self._clock_s = clock_s
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = BUCKETS_MAX  # the table's size at which the next new key sweeps it (``_forget_full``)

    def take(self, key: str) -> float:
        bucket = self._refilled(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def owed_s(self, key: str) -> float:
        """Seconds until ``key``'s bucket holds a whole token again (0.0: it does now); takes nothing (and keeps
        no bucket for a key never taken from: a stranger's request costs no memory)."""
        if key not in self._buckets:
            return 0.0
        bucket = self._refilled(key)
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate_per_s

    def charge(self, key: str, cost: float) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, below zero if need be: ``owed_s`` then waits for them."""
        self._refilled(key).tokens -= cost

    def _refilled(self, key: str) -> _Bucket:
        now_s = self._clock_s()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= max(BUCKETS_MAX, self._sweep_at):
                self._forget_full(now_s)
                self._sweep_at = SWEEP_GROWTH * len(self._buckets)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now_s)
        else:
            elapsed_s = max(0.0, now_s - bucket.updated_s)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed_s * self.rate_per_s)
            bucket.updated_s = now_s
        return bucket

    def standing(self, key: str) -> tuple[int, int]:
        """(whole requests left, whole seconds until the bucket is full again) of ``key``, as of its last take."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst, 0
        return max(0, math.floor(bucket.tokens)), math.ceil(max(0.0, self.burst - bucket.tokens) / self.rate_per_s)

    def headers(self, key: str) -> Mapping[str, str]:
        """The RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) of ``key`` now."""
        left, full_in_s = self.standing(key)
        return {
            "RateLimit-Policy": f'"{self.policy}";q={self.burst};w={window_s(self.rate_per_s, self.burst)}',
            "RateLimit": f'"{self.policy}";r={left};t={full_in_s}',
        }

    def refusal(self, key: str, wait_s: float, why: str) -> web.HTTPTooManyRequests:
        """The 429 of ``key``, whose bucket holds a token again in ``wait_s``: ``why``, when to try again, and the
        Retry-After and RateLimit fields."""
        retry_after = retry_after_value(wait_s)
        return web.HTTPTooManyRequests(
            text=f"{why}; try again in {retry_after} s", headers={"Retry-After": retry_after, **self.headers(key)}
        )

    def _forget_full(self, now_s: float) -> None:
        """Forget every full bucket (a key that comes back starts full: the same). Asked of a new key once the table
        holds ``BUCKETS_MAX``, and then only once it holds ``SWEEP_GROWTH`` times what this sweep kept: a flood of
        new keys whose buckets are not full yet (addresses, each refused once) costs each a few buckets' share of the
        sweeps (amortised O(1)), not the whole table. A bucket not full is kept: it still restricts its key."""
        self._buckets = {
            k: b for k, b in self._buckets.items() if now_s - b.updated_s < (self.burst - b.tokens) / self.rate_per_s
        }


def window_s(rate_per_s: float, burst: int) -> int:
    """The whole seconds an empty bucket of ``burst`` takes to fill at ``rate_per_s``: the policy's window."""
    return max(1, math.ceil(burst / rate_per_s))


LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)


def setup(app: web.Application, rate_per_s: float, burst: int) -> None:
    """Limit ``app``'s write routes (``middleware`` must be among its middlewares); a rate of 0 turns it off."""
    if rate_per_s > 0:
        app[LIMITER_KEY] = RateLimiter(rate_per_s, burst)


READ_BUDGET_KEY = web.AppKey("read_budget", RateLimiter)  # bytes of read answers, per credential


def setup_reads(app: web.Application, bytes_per_s: float, burst_bytes: int) -> None:
    """Give every credential a budget of bytes of answers to its reads (``read_bytes_per_s``, ``read_burst_bytes``;
    the change feed has its own); a rate of 0 turns it off."""
    if bytes_per_s > 0:
        app[READ_BUDGET_KEY] = RateLimiter(bytes_per_s, burst_bytes, policy=READS_POLICY)


def read_budget_of(request: web.Request) -> RateLimiter | None:
    """The read budget that ``request`` is counted against, or None (no budget on this hub; not an authenticated
    read; the change feed, counted on its own)."""
    budget = request.app.get(READ_BUDGET_KEY)
    if budget is None or request.method not in READ_METHODS or IDENTITY_KEY not in request:
        return None
    return None if request.match_info.route.name in OWN_BUDGET_READS else budget


def check_reads(budget: RateLimiter, who: AgentIdentity) -> None:
    """A 429 with Retry-After, before anything is read, when ``who`` has read more than its budget allows."""
    wait_s = budget.owed_s(who.agent_id)
    if wait_s > 0:
        raise budget.refusal(
            who.agent_id, wait_s,
            f"{who.agent_id} read more from the hub than its budget allows ({budget.burst} bytes of answers at once, "
            f"{budget.rate_per_s:g} a second on average: read_burst_bytes, read_bytes_per_s); read what changed (the "
            "change feed, If-None-Match) rather than everything again",
        )  # fmt: skip


def answer_bytes(response: web.StreamResponse) -> int:
    """How many bytes of body ``response`` carries; 0 for a streamed answer (a CSV download, which has its own cap:
    hub.exportslots)."""
    if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
        return len(response.body)
    return 0


COUNTED_KEY = web.RequestKey("rate_counted", bool)  # True: the request took its token already (from its head)


def limiter_of(request: web.Request) -> RateLimiter | None:
    """The limiter of ``request``'s route, or None (no limit on this hub, or not a limited route)."""
    limiter = request.app.get(LIMITER_KEY)
    return limiter if limiter is not None and request.match_info.route.name in RATE_LIMITED_ROUTES else None


def count(request: web.Request, who: AgentIdentity) -> None:
    """Take ``request``'s token from ``who``'s bucket, once whoever asks: a 429 with Retry-After when it is empty.
    The middleware asks after authentication; a write route's Expect handler asks of the request's head
    (hub.heads.expect), and the middleware then does not count the request again."""
    limiter = limiter_of(request)
    if limiter is None or request.get(COUNTED_KEY, False):
        return
    request[COUNTED_KEY] = True
    wait_s = limiter.take(who.agent_id)
    if wait_s > 0:
        raise limiter.refusal(
            who.agent_id, wait_s,
            f"{who.agent_id} sent more than {limiter.burst} requests at once or more than "
            f"{limiter.rate_per_s:g} a second for a while (rate_limit_per_s)",
        )  # fmt: skip


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a limited route's request with 429 when its credential's bucket is empty (after authentication), a
    read's when its credential spent its read budget (and charge the read its answer's bytes), and a public route's
    when its client address spent its refused attempts (``check_refusals``), before the body."""
    if (answered := refusal_answer(request)) is not None:
        return answered
    if (reads := read_budget_of(request)) is not None:
        reader = request[IDENTITY_KEY]
        check_reads(reads, reader)
        response = await handler(request)
        reads.charge(reader.agent_id, max(1, answer_bytes(response)))
        return response
    limiter = limiter_of(request)
    who = request.get(IDENTITY_KEY)
    if limiter is None or who is None:
        return await handler(request)
    count(request, who)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # an error answer says where the credential stands too
        exc.headers.update(limiter.headers(who.agent_id))
        raise
    response.headers.update(limiter.headers(who.agent_id))
    return response


# --- the public routes: refused attempts per client address ----------------------------------------------------


def client_key(remote: str | None) -> str:
    """The address a public route's refused attempts are counted by: the peer's IP address (an IPv4 client of a
    dual-stack socket as IPv4), an IPv6 one by its /64 prefix."""
    if not remote:
        return "an unknown address"
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote  # not an IP address (a Unix socket's peer): the whole of it
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class LimitedLog:
    """The requests ``RefusedAttempts`` answered 429, logged as one line a minute with a count per address (the
    busiest ``SHOWN``), the first of a quiet spell at once: a flood of any size is a line a minute."""

    SHOWN = 5
    ADDRESSES_MAX = 10_000  # counted one by one within a minute; beyond, together

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock_s = clock_s
        self._counts: Counter[str] = Counter()
        self._others = 0  # requests of addresses beyond ADDRESSES_MAX
        self._last = ""
        self._emitted_s: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.total = 0

    def record(self, key: str, where: str) -> None:
        self.total += 1
        if key in self._counts or len(self._counts) < self.ADDRESSES_MAX:
            self._counts[key] += 1
        else:
            self._others += 1
        self._last = where
        now_s = self._clock_s()
        if self._emitted_s is None or now_s - self._emitted_s >= self.interval_s:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test with its own clock): the next record or flush() logs it
                return
            self._timer = loop.call_later(max(0.0, self._emitted_s + self.interval_s - now_s), self.flush)

    def flush(self) -> None:
        """Log what is pending now (a no-op when nothing is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        count = sum(self._counts.values()) + self._others
        if not count:
            return
        now_s = self._clock_s()
        span_s = self.interval_s if self._emitted_s is None else min(self.interval_s, now_s - self._emitted_s)
        self._emitted_s = now_s
        addresses = len(self._counts) + (1 if self._others else 0)
        busiest = ", ".join(f"{key} {n:,}" for key, n in self._counts.most_common(self.SHOWN))
        more = addresses - min(self.SHOWN, len(self._counts))
        log.warning(
            "answered 429 to %s %s on public routes from %s over %s budget of refused attempts "
            "(refused_attempts_per_s) in the last %.0f s: %s%s; the last: %s",
            f"{count:,}", "request" if count == 1 else "requests",
            "1 address" if addresses == 1 else f"{addresses:,} addresses", "its" if addresses == 1 else "their",
            max(1.0, span_s), busiest, f" and {more:,} more" if more else "", self._last,
        )  # fmt: skip
        self._counts.clear()
        self._others = 0


class RefusedAttempts:
    """A token bucket of refused attempts per client address on the public routes (``REFUSAL_LIMITED_ROUTES``)."""

    def __init__(self, rate_per_s: float, burst: int, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiter(rate_per_s, burst, clock_s, policy=REFUSALS_POLICY)
        self.limited = LimitedLog(clock_s=clock_s)

    def refused(self, request: web.Request) -> None:
        """Count one refused attempt of ``request``'s address (an empty bucket stays empty: nothing is owed)."""
        self.limiter.take(client_key(client_of(request)))

    def check(self, request: web.Request) -> None:
        """A 429 with Retry-After when ``request``'s address has no refused attempt left; asked once a request."""
        if request.get(CHECKED_KEY, False):
            return
        request[CHECKED_KEY] = True
        key = client_key(client_of(request))
        wait_s = self.limiter.owed_s(key)
        if wait_s <= 0:
            return
        self.limited.record(key, f"{request.method} {request.rel_url.raw_path}"[:120])
        limiter = self.limiter
        raise limiter.refusal(
            key, wait_s,
            f"{key} was refused more than {limiter.burst} times at once or more than {limiter.rate_per_s:g} a "
            "second for a while (a bad signature or credential; refused_attempts_per_s)",
        )  # fmt: skip


REFUSALS_KEY = web.AppKey("refused_attempts", RefusedAttempts)
# A public route's own answer to its 429 (the sign-in page for a person), by route name; None: the problem as raised
RefusalAnswer = Callable[[web.Request, web.HTTPTooManyRequests], web.StreamResponse | None]
ANSWERS_KEY = web.AppKey("refusals_answers", dict[str, RefusalAnswer])
CHECKED_KEY = web.RequestKey("refusals_checked", bool)  # True: its address was looked at already (from its head)


def setup_refusals(app: web.Application, rate_per_s: float, burst: int) -> None:
    """Count the public routes' refused attempts per client address (``middleware`` must be among ``app``'s
    middlewares); a rate of 0 turns it off."""
    if rate_per_s > 0:
        refusals = app[REFUSALS_KEY] = RefusedAttempts(rate_per_s, burst)

        async def flush(_: web.Application) -> None:
            refusals.limited.flush()

        app.on_cleanup.append(flush)


def refused(request: web.Request) -> None:
    """Count a refused attempt on a public route (a webhook with a missing or bad signature, a failed sign-in)
    against its client address, on a hub that counts them."""
    refusals = request.app.get(REFUSALS_KEY)
    if refusals is not None:
        refusals.refused(request)


def check_refusals(request: web.Request) -> None:
    """A public route's 429 when its client address spent its refused attempts; asked of the head (hub.heads) and
    by the middleware, before the body is read."""
    refusals = request.app.get(REFUSALS_KEY)
    if refusals is not None and request.match_info.route.name in REFUSAL_LIMITED_ROUTES:
        refusals.check(request)


def answer_refusals(app: web.Application, route: str, answer: RefusalAnswer) -> None:
    """Let ``route`` answer its own 429 (``refusal_answer``): ``answer`` is given the request and the refusal, with
    its Retry-After and RateLimit fields, and returns the response, or None for the problem as raised."""
    app.setdefault(ANSWERS_KEY, {})[route] = answer


def refusal_answer(request: web.Request) -> web.StreamResponse | None:
    """``check_refusals``, with the route's own answer to its 429 where it has one (``answer_refusals``)."""
    try:
        check_refusals(request)
    except web.HTTPTooManyRequests as refused:
        answer = request.app.get(ANSWERS_KEY, {}).get(request.match_info.route.name or "")
        if answer is None or (response := answer(request, refused)) is None:
            raise
        return response
    return None
