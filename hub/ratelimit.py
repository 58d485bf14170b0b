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

A well-behaved agent sends one request at a time and waits for the answer,
so the default (50 a second, bursts of 100) only stops a runaway or hostile
client. Buckets live in this hub process: several hubs sharing one
PostgreSQL database each keep their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from hub.auth import IDENTITY_KEY, Handler
from hub.storage.base import AgentIdentity
from protocol.retry import retry_after_value

RATE_LIMITED_ROUTES = frozenset({"sync", "events", "observations", "import_issues"})
POLICY = "writes"  # the name of the one quota policy in the RateLimit-Policy and RateLimit fields
HEADER_NAMES = ("RateLimit-Policy", "RateLimit")
BUCKETS_MAX = 100_000  # full buckets are forgotten beyond this many (one per credential in practice)


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

    def take(self, key: str) -> float:
        bucket = self._refilled(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def owed_s(self, key: str) -> float:
        """Seconds until ``key``'s bucket holds a whole token again (0.0: it does now); takes nothing."""
        bucket = self._refilled(key)
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate_per_s

    def charge(self, key: str, cost: float) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, below zero if need be: ``owed_s`` then waits for them."""
        self._refilled(key).tokens -= cost

    def _refilled(self, key: str) -> _Bucket:
        now_s = self._clock_s()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= BUCKETS_MAX:
                self._forget_full(now_s)
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

    def _forget_full(self, now_s: float) -> None:
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
        retry_after = retry_after_value(wait_s)
        raise web.HTTPTooManyRequests(
            text=f"{who.agent_id} sent more than {limiter.burst} requests at once or more than "
            f"{limiter.rate_per_s:g} a second for a while (rate_limit_per_s); try again in {retry_after} s",
            headers={"Retry-After": retry_after, **limiter.headers(who.agent_id)},
        )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a limited route's request with 429 when its credential's bucket is empty (after authentication)."""
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
