"""A rate limit per credential on the routes agents write through: one token bucket per agent id.

Each agent id has a bucket of ``rate_limit_burst`` tokens that refills at
``rate_limit_per_s`` tokens a second; every request to a limited route takes
one. With the bucket empty the hub answers ``429 rate_limited`` with
``Retry-After`` (whole seconds until a token is back) and does not read the
body. The agent's replicator waits that long before it tries again.

A well-behaved agent sends one request at a time and waits for the answer,
so the default (50 a second, bursts of 100) only stops a runaway or hostile
client. Buckets live in this hub process: several hubs sharing one
PostgreSQL database each keep their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from hub.auth import IDENTITY_KEY, Handler

RATE_LIMITED_ROUTES = frozenset({"sync", "events", "observations", "import_issues"})
BUCKETS_MAX = 100_000  # full buckets are forgotten beyond this many (one per credential in practice)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets by key. ``take(key)`` is 0.0 when a request may go ahead, else the seconds to wait."""

    def __init__(self, rate_per_s: float, burst: int, clock_s: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs a positive rate and a burst of at least 1, got {rate_per_s}/{burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock_s = clock_s
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
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
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _forget_full(self, now_s: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        self._buckets = {k: b for k, b in self._buckets.items() if now_s - b.updated_s < full_after_s}


LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)


def setup(app: web.Application, rate_per_s: float, burst: int) -> None:
    """Limit ``app``'s write routes (``middleware`` must be among its middlewares); a rate of 0 turns it off."""
    if rate_per_s > 0:
        app[LIMITER_KEY] = RateLimiter(rate_per_s, burst)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a limited route's request with 429 when its credential's bucket is empty (after authentication)."""
    limiter = request.app.get(LIMITER_KEY)
    who = request.get(IDENTITY_KEY)
    if limiter is None or who is None or request.match_info.route.name not in RATE_LIMITED_ROUTES:
        return await handler(request)
    wait_s = limiter.take(who.agent_id)
    if wait_s > 0:
        retry_after_s = max(1, math.ceil(wait_s))
        raise web.HTTPTooManyRequests(
            text=f"{who.agent_id} sent more than {limiter.burst} requests at once or more than "
            f"{limiter.rate_per_s:g} a second for a while (rate_limit_per_s); try again in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
    return await handler(request)
