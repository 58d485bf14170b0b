"""Conventions API users expect, over real HTTP on 127.0.0.1 with a real SQLite store: ETag / If-None-Match on
the cacheable reads, and the rate limit's Retry-After and RateLimit-Policy / RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-10)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import HubStore, etag
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from protocol.retry import RETRY_AFTER_MAX_S, parse_retry_after, retry_after_value
from tests.harness.inprocess import ClientFactory

POLICY_RE = re.compile(r'^"writes";q=(\d+);w=(\d+)$')
STANDING_RE = re.compile(r'^"writes";r=(\d+);t=(\d+)$')


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


def sync_body(agent_id: str, seq: int, qty: int = 5) -> bytes:
    at_ms = int(time.time() * 1000) - 60_000 + seq
    event = StockEvent(new_event_id(), agent_id, 1, seq, "S001", "SKU-1", Kind.RECEIVE, qty, pack_hlc(at_ms, 0), at_ms,
                       "scanner:door")  # fmt: skip
    return encode_sync_request(SyncRequest(agent_id, 1, (event,)))


async def test_a_page_of_counts_is_answered_304_while_it_is_the_same(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client()
    agent_id, agent_token = await store.add_agent(["S001"])
    _, reader = await store.add_agent([], role="reader")
    _, admin = await store.add_agent([], role="admin")
    sent = await client.post("/v1/sync", data=sync_body(agent_id, 1), headers=bearer(agent_token, **{
        "Content-Type": MSGPACK_CONTENT_TYPE}))  # fmt: skip
    assert sent.status == 200

    first = await client.get("/v1/locations/S001/counts", headers=bearer(reader))
    assert first.status == 200
    tag = first.headers["ETag"]
    assert tag.startswith('"') and not tag.startswith("W/"), "a strong validator"
    assert tag == etag.tag_of(await first.read())
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert "Accept" in first.headers.get("Vary", "")

    same = await client.get("/v1/locations/S001/counts", headers=bearer(reader, **{"If-None-Match": tag}))
    assert same.status == 304 and await same.read() == b""
    assert same.headers["ETag"] == tag
    # RFC 9110 15.4.5: a 304 carries the Vary (and Cache-Control) its 200 would; a cache updates the answer it keeps
    # with the 304's fields, and one without Vary: Accept no longer says the answer depends on Accept (JSON or CSV).
    assert (same.headers.get("Vary"), same.headers["Cache-Control"]) == ("Accept", "private, no-cache")
    listed = await client.get("/v1/locations/S001/counts", headers=bearer(reader, **{"If-None-Match": f'"x", W/{tag}'}))
    assert listed.status == 304, "If-None-Match compares weakly and takes a list"

    set_stock = await client.put("/v1/locations/S001/skus/SKU-1/safety-stock", json={"qty": 2}, headers=bearer(admin))
    assert set_stock.status == 200
    moved = await client.get("/v1/locations/S001/counts", headers=bearer(reader, **{"If-None-Match": tag}))
    assert moved.status == 200, "the count changed: a full answer with a new tag"
    assert moved.headers["ETag"] != tag
    assert (await moved.json())["counts"][0]["safety_stock"] == 2


@pytest.mark.parametrize(
    "path", ["/v1/counts", "/v1/ledger", "/v1/exceptions", "/v1/agents", "/v1/divergence", "/v1/quarantine",
             "/v1/webhooks", "/v1/catalog"]
)
async def test_every_cacheable_read_has_an_etag(store: HubStore, make_client: ClientFactory, path: str) -> None:
    client = await make_client()
    _, reader = await store.add_agent([], role="reader")
    first = await client.get(path, headers=bearer(reader))
    assert first.status == 200, await first.text()
    again = await client.get(path, headers=bearer(reader, **{"If-None-Match": first.headers["ETag"]}))
    assert again.status == 304


async def test_a_csv_answer_is_streamed_untagged_and_never_answered_304(
    store: HubStore, make_client: ClientFactory
) -> None:
    client = await make_client()
    _, reader = await store.add_agent([], role="reader")
    as_json = await client.get("/v1/agents", headers=bearer(reader))
    tag = as_json.headers["ETag"]
    as_csv = await client.get("/v1/agents", headers=bearer(reader, Accept="text/csv", **{"If-None-Match": tag}))
    assert as_csv.status == 200 and as_csv.content_type == "text/csv"
    assert "ETag" not in as_csv.headers and as_csv.headers["Cache-Control"] == "no-store"
    assert (await as_csv.text()).startswith("agent_id,role,")


async def test_reads_that_change_by_themselves_carry_no_etag(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client()
    _, reader = await store.add_agent([], role="reader")
    status = await client.get("/v1/status", headers=bearer(reader))  # it holds the hub's clock
    changes = await client.get("/v1/changes", headers=bearer(reader))  # a long-poll: never cached
    assert status.status == changes.status == 200
    assert "ETag" not in status.headers and "ETag" not in changes.headers
    assert changes.headers["Cache-Control"] == "no-store"


async def test_an_error_is_never_tagged(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client()
    _, reader = await store.add_agent([], role="reader")
    bad = await client.get("/v1/ledger?limit=0", headers=bearer(reader))
    assert bad.status == 400 and "ETag" not in bad.headers


async def test_write_answers_say_where_the_credential_stands(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client(rate_limit_per_s=10.0, rate_limit_burst=20)
    agent_id, token = await store.add_agent(["S001"])
    sent = await client.post("/v1/sync", data=sync_body(agent_id, 1), headers=bearer(token, **{
        "Content-Type": MSGPACK_CONTENT_TYPE}))  # fmt: skip
    assert sent.status == 200
    policy = POLICY_RE.fullmatch(sent.headers["RateLimit-Policy"])
    standing = STANDING_RE.fullmatch(sent.headers["RateLimit"])
    assert policy is not None and standing is not None, dict(sent.headers)
    assert (int(policy[1]), int(policy[2])) == (20, 2), "q: the burst; w: seconds to fill it at 10 a second"
    assert int(standing[1]) == 19, "one request taken of 20"
    assert int(standing[2]) >= 1, "not full again yet"
    refused = await client.post("/v1/sync", data=b"not msgpack", headers=bearer(token, **{
        "Content-Type": MSGPACK_CONTENT_TYPE}))  # fmt: skip
    assert refused.status == 400
    assert STANDING_RE.fullmatch(refused.headers["RateLimit"]), "an error answer says it too"
    read = await client.get("/v1/counts", headers=bearer(token))
    assert "RateLimit" not in read.headers, "reads are not limited"


async def test_429_carries_retry_after_and_an_empty_quota(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client(rate_limit_per_s=0.5, rate_limit_burst=2)
    _, token = await store.add_agent(["S001"])
    headers = bearer(token, **{"Content-Type": "application/json"})
    answers = [await client.post("/v1/events", data=json.dumps({"events": []}), headers=headers) for _ in range(3)]
    assert [a.status for a in answers] == [400, 400, 429]
    limited = answers[-1]
    assert int(limited.headers["Retry-After"]) >= 1
    retry_after = limited.headers["Retry-After"]
    assert parse_retry_after(retry_after) == float(retry_after), "the agent reads it as sent"
    standing = STANDING_RE.fullmatch(limited.headers["RateLimit"])
    assert standing is not None and int(standing[1]) == 0
    assert int(standing[2]) >= int(limited.headers["Retry-After"]), "full again no sooner than the next token"
    assert POLICY_RE.fullmatch(limited.headers["RateLimit-Policy"])
    body = await limited.json()
    assert "rate_limit_per_s" in json.dumps(body)


@given(st.floats(min_value=1e-9, max_value=RETRY_AFTER_MAX_S))
def test_retry_after_is_whole_seconds_never_shorter_than_the_wait(wait_s: float) -> None:
    """The one spelling of Retry-After (protocol.retry): what the hub sends, the agent reads back, and the wait it
    asks for is never shorter than the real one."""
    value = retry_after_value(wait_s)
    assert value.isdigit() and int(value) >= 1
    read = parse_retry_after(value)
    assert read is not None and read >= wait_s, "never sooner than a token is back"
    assert read - wait_s < 1 or read == 1.0, "no more than the next whole second (at least 1 s)"
