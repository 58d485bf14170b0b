"""The per-credential rate limit: the hub answers 429 with Retry-After before reading the body, other
credentials and reads are unaffected, and the agent's replicator waits as it is told."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator
from hub import HubSettings, create_app, open_store
from hub.auth import Handler
from hub.ratelimit import RateLimiter
from protocol import MSGPACK_CONTENT_TYPE, Kind
from tests.harness.inprocess import serve_app
from tests.security.helpers import HubFactory, event, raw_exchange, status_of, sync_body

pytestmark = pytest.mark.timeout(120)
MSGPACK = {"Content-Type": MSGPACK_CONTENT_TYPE}
WAIT_S = 30.0


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock_s=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5), "empty: one token comes back in 1 / rate seconds"
    assert limiter.take("b") == 0.0, "another key has its own bucket"
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    now[0] += 60.0
    assert [limiter.take("a") for _ in range(4)][-1] > 0, "a long pause refills only up to the burst"
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0.0, burst=1)


async def test_the_hub_answers_429_with_retry_after_per_credential(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_limit_per_s=0.2, rate_limit_burst=3)
    agent_id, token = hub.agent
    statuses = []
    for seq in range(1, 5):
        status, headers, body = await hub.request("POST", "/v1/sync", token, data=sync_body(agent_id, [event(agent_id, seq)]), headers=MSGPACK)
        statuses.append(status)
    assert statuses == [200, 200, 200, 429]
    assert int(headers["Retry-After"]) >= 1
    error = json.loads(body)  # problem details
    assert error["code"] == "rate_limited" and "rate_limit_per_s" in error["detail"]
    assert len(await hub.store.ledger()) == 3, "the refused batch was not committed"

    other_id, other_token = hub.other_agent
    status, _, _ = await hub.request("POST", "/v1/sync", other_token, data=sync_body(other_id, [event(other_id, 1, "S002")]), headers=MSGPACK)
    assert status == 200, "another credential has its own bucket"
    for _ in range(5):
        status, _, _ = await hub.request("GET", "/v1/ledger", token)
        assert status == 200, "reads are not limited"

    # Refused before the body is read: the answer comes though the body never does.
    head = (
        f"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {MSGPACK_CONTENT_TYPE}\r\nContent-Length: 50000\r\n\r\n"
    )
    assert status_of(await raw_exchange(hub.url, head.encode())) == 429


async def test_a_rate_of_zero_turns_the_limit_off(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_limit_per_s=0.0, rate_limit_burst=1)
    agent_id, token = hub.agent
    for seq in range(1, 21):
        status, _, _ = await hub.request("POST", "/v1/sync", token, data=sync_body(agent_id, [event(agent_id, seq)]), headers=MSGPACK)
        assert status == 200


@pytest.fixture
async def limited_hub(tmp_path: Path) -> AsyncIterator[tuple[str, str, str, Counter[int]]]:
    """A hub allowing one sync a second per credential (bursts of 1), counting its answers by status."""
    statuses: Counter[int] = Counter()

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path == "/v1/sync":
            statuses[response.status] += 1
        return response

    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent(["S001"])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db"), rate_limit_per_s=1.0, rate_limit_burst=1))
        app.middlewares.insert(0, count)
        async with serve_app(app) as served:
            yield served.url, agent_id, token, statuses


async def test_the_replicator_waits_for_retry_after_and_then_delivers_everything(
    tmp_path: Path, limited_hub: tuple[str, str, str, Counter[int]]
) -> None:
    url, agent_id, token, statuses = limited_hub
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S001") as outbox:
        await outbox.record([Movement("S001", f"SKU-{i}", Kind.RECEIVE, 1, "api:test") for i in range(3)])
        replicator = Replicator(outbox, url, token, batch_size=1, tick_s=3600, retry_base_s=0.01, retry_max_s=0.05)
        seen_states: set[str] = set()
        async with replicator:
            async def watch() -> None:
                await replicator.wait_for(lambda s: seen_states.add(s.sync_state) or (s.sent_events >= 3 and s.backlog == 0))

            await asyncio.wait_for(watch(), WAIT_S)
        assert (await outbox.stats()).acked_seq == 3
    assert "rate_limited" in seen_states
    # A replicator that ignored Retry-After would retry every 10-50 ms and collect dozens of 429s.
    assert 1 <= statuses[429] <= 6, statuses
    assert statuses[200] == 4, "one handshake and three batches, nothing sent twice"
