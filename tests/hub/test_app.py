"""The hub's HTTP API over real HTTP on 127.0.0.1 and a real SQLite store in tmp_path."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from hub import HubStore
from hub.storage.base import AgentIdentity
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    SyncResponse,
    decode_sync_response,
    encode_sync_request,
    event_id_hex,
    event_to_wire,
    new_event_id,
    pack_hlc,
)
from protocol.routes import SYNC_PIPELINE_HEADER
from tests.harness.clock import RECENT_MS
from tests.harness.inprocess import ClientFactory

WALL_MS = RECENT_MS  # inside the hub's clock window (tests/harness/clock.py)
HOUR = time.strftime("%Y-%m-%dT%H", time.gmtime(WALL_MS // 1000))  # WALL_MS is the start of an hour


@pytest.fixture
async def agent(store: HubStore) -> tuple[str, str]:
    return await store.add_agent(["S001"])


def event(
    agent_id: str,
    seq: int,
    *,
    kind: str = "receive",
    qty: int = 5,
    location: str = "S001",
    sku: str = "SKU-1",
    event_id: bytes | None = None,
    ref: str | None = None,
    epoch: int = 1,
    at_ms: int | None = None,
) -> StockEvent:
    wall_ms = WALL_MS + (seq if at_ms is None else at_ms)
    return StockEvent(
        event_id=event_id or new_event_id(),
        agent_id=agent_id,
        epoch=epoch,
        seq=seq,
        location=location,
        sku=sku,
        kind=Kind(kind),
        qty=qty,
        occurred_at=pack_hlc(wall_ms, 0),
        wall_ms=wall_ms,
        source="scanner:door-1",
        ref=ref,
    )


def body_of(agent_id: str, events: list[StockEvent], epoch: int = 1) -> bytes:
    return encode_sync_request(SyncRequest(agent_id=agent_id, epoch=epoch, events=tuple(events)))


def raw_body(agent_id: str, wire_events: list[dict[str, Any]], **envelope: Any) -> bytes:
    msg = {"v": 1, "agent_id": agent_id, "epoch": 1, "acked_seq": 0, "events": wire_events, **envelope}
    packed: bytes = msgpack.packb(msg, use_bin_type=True)
    return packed


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}


async def post_sync(client: TestClient[Any, Any], token: str, body: bytes) -> aiohttp.ClientResponse:
    return await client.post("/v1/sync", data=body, headers=auth(token))


async def sync_ok(client: TestClient[Any, Any], token: str, body: bytes) -> SyncResponse:
    resp = await post_sync(client, token, body)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == MSGPACK_CONTENT_TYPE
    return decode_sync_response(await resp.read())


async def error_of(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"  # RFC 9457 problem details (hub.problems)
    err: dict[str, Any] = json.loads(await resp.read())
    assert err["code"] == code and err["status"] == status and err["type"] == f"urn:shelfsync:problem:{code}"
    assert isinstance(err["detail"], str) and len(err["detail"]) > 10
    return err


async def counts_at(client: TestClient[Any, Any], token: str, location: str = "S001") -> dict[str, int]:
    resp = await client.get(f"/v1/locations/{location}/counts", headers=auth(token))
    assert resp.status == 200
    return {row["sku"]: row["on_hand"] for row in (await resp.json())["counts"]}


# --- sync: the happy path ------------------------------------------------


async def test_sync_commits_events_and_answers_mark_and_counts(
    client: TestClient[Any, Any], agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    events = [
        event(agent_id, 1, qty=10),
        event(agent_id, 2, kind="sale", qty=-3),
        event(agent_id, 3, sku="SKU-2", qty=4),
    ]

    answer = await sync_ok(client, token, body_of(agent_id, events))

    assert (answer.agent_id, answer.epoch, answer.hwm) == (agent_id, 1, 3)
    assert answer.rejected == () and answer.duplicates == 0
    by_sku = {c.sku: c for c in answer.counts}
    assert (by_sku["SKU-1"].location, by_sku["SKU-1"].on_hand, by_sku["SKU-1"].available) == ("S001", 7, 7)
    assert by_sku["SKU-2"].on_hand == 4
    assert answer.server_time_ms > WALL_MS
    assert await counts_at(client, token) == {"SKU-1": 7, "SKU-2": 4}


async def test_resent_batch_is_counted_once(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    body = body_of(agent_id, [event(agent_id, 1, qty=10), event(agent_id, 2, kind="sale", qty=-1)])
    await sync_ok(client, token, body)

    again = await sync_ok(client, token, body)

    assert again.hwm == 2 and again.duplicates == 2 and again.rejected == ()
    assert await counts_at(client, token) == {"SKU-1": 9}


async def test_a_batch_sent_ahead_and_met_first_is_stored_but_not_acknowledged_and_no_restore_is_feared(
    client: TestClient[Any, Any], agent: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """An agent with two batches in flight: the hub says it reads ``after_seq``; the second batch, met first,
    keeps the mark below the first's seqs (they are not committed), and this is no restored database."""
    agent_id, token = agent
    ahead = [event(agent_id, seq, qty=1) for seq in (3, 4)]
    body = encode_sync_request(SyncRequest(agent_id, 1, tuple(ahead), acked_seq=0, after_seq=2))
    with caplog.at_level(logging.WARNING, logger="hub.app"):
        resp = await post_sync(client, token, body)
        assert resp.status == 200, await resp.text()
        assert resp.headers[SYNC_PIPELINE_HEADER] == "1"
        answer = decode_sync_response(await resp.read())
    assert answer.hwm == 0 and answer.duplicates == 0
    assert "restored" not in caplog.text
    first = await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1, qty=1), event(agent_id, 2, qty=1)]))
    assert first.hwm == 2
    again = await sync_ok(
        client, token, encode_sync_request(SyncRequest(agent_id, 1, tuple(ahead), acked_seq=2, after_seq=2))
    )
    assert (again.hwm, again.duplicates) == (4, 2)
    assert await counts_at(client, token) == {"SKU-1": 4}


async def test_large_batch_is_decoded_and_committed(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    events = [event(agent_id, seq, qty=1, sku=f"SKU-{seq % 7}") for seq in range(1, 2001)]
    body = body_of(agent_id, events)
    assert len(body) > 64 * 1024  # decoded off the event loop

    answer = await sync_ok(client, token, body)

    assert answer.hwm == 2000
    assert sum(c.on_hand for c in answer.counts) == 2000


# --- sync: bad input, and the hub keeps serving ---------------------------


async def _good_request_still_works(client: TestClient[Any, Any], agent_id: str, token: str, seq: int) -> None:
    answer = await sync_ok(client, token, body_of(agent_id, [event(agent_id, seq, sku="SKU-AFTER", qty=2)]))
    assert answer.hwm == seq and answer.rejected == ()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated", "truncated"),
        ("garbage", "not valid msgpack"),
        ("empty", "empty"),
        ("epoch_is_text", "epoch"),
        ("events_not_a_list", "events"),
        ("bad_version", "unsupported wire version"),
        ("not_a_map", "must be a msgpack map"),
    ],
)
async def test_broken_envelope_is_400_with_the_codec_sentence(
    client: TestClient[Any, Any], agent: tuple[str, str], case: str, expected: str
) -> None:
    agent_id, token = agent
    good = body_of(agent_id, [event(agent_id, 1)])
    body = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\xc1\xc1 this is not msgpack",
        "empty": b"",
        "epoch_is_text": raw_body(agent_id, [], epoch="1"),
        "events_not_a_list": raw_body(agent_id, [], events="many"),
        "bad_version": raw_body(agent_id, [], v=99),
        "not_a_map": msgpack.packb([1, 2, 3]),
    }[case]

    err = await error_of(await post_sync(client, token, body), 400, "bad_request")

    assert expected in err["detail"]
    assert await counts_at(client, token) == {}
    await _good_request_still_works(client, agent_id, token, 1)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("kind", "teleport", "unknown kind 'teleport'"),
        ("qty", "3", "qty: must be an integer, got str"),
        ("qty", 10**12, "qty: must be between"),
        ("sku", "..", "'..' is not a SKU: browsers and HTTP clients remove it from a URL path"),
        ("sku", ".", "'.' is not a SKU: browsers and HTTP clients remove it from a URL path"),
    ],
)
async def test_invalid_events_are_422_listed_and_nothing_is_committed(
    client: TestClient[Any, Any], agent: tuple[str, str], field: str, value: Any, expected: str
) -> None:
    agent_id, token = agent
    good = [event(agent_id, 1, qty=10), event(agent_id, 2, qty=1), event(agent_id, 3, qty=2)]
    wire = [event_to_wire(ev) for ev in good]
    wire[1][field] = value

    err = await error_of(await post_sync(client, token, raw_body(agent_id, wire)), 422, "invalid_events")

    assert err["rejected"] == [
        {"index": 1, "event_id": event_id_hex(good[1].event_id), "seq": 2, "reason": err["rejected"][0]["reason"]}
    ]
    assert expected in err["rejected"][0]["reason"] and "events[1]" in err["rejected"][0]["reason"]
    assert await counts_at(client, token) == {}
    # The agent sets exactly the listed event aside and resends the rest.
    answer = await sync_ok(client, token, body_of(agent_id, [good[0], good[2]]))
    assert answer.hwm == 3 and answer.rejected == ()
    assert await counts_at(client, token) == {"SKU-1": 12}


async def test_unreadable_event_id_is_listed_as_null(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    wire = [event_to_wire(event(agent_id, 1))]
    wire[0]["id"] = "not-bytes"

    err = await error_of(await post_sync(client, token, raw_body(agent_id, wire)), 422, "invalid_events")

    assert err["rejected"][0]["event_id"] is None and err["rejected"][0]["seq"] == 1


async def test_body_over_the_limit_is_413(make_client: ClientFactory, agent: tuple[str, str]) -> None:
    client = await make_client(max_body_bytes=4096)
    agent_id, token = agent
    big = body_of(agent_id, [event(agent_id, seq) for seq in range(1, 200)])
    assert len(big) > 4096

    err = await error_of(await post_sync(client, token, big), 413, "payload_too_large")

    assert "4096 bytes" in err["detail"] and "fewer events" in err["detail"]
    await _good_request_still_works(client, agent_id, token, 1)


async def test_chunked_body_over_the_limit_is_413(make_client: ClientFactory, agent: tuple[str, str]) -> None:
    client = await make_client(max_body_bytes=4096)
    agent_id, token = agent
    big = body_of(agent_id, [event(agent_id, seq) for seq in range(1, 200)])

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    resp = await client.post("/v1/sync", data=chunks(), headers=auth(token))

    err = await error_of(resp, 413, "payload_too_large")
    assert "4096 bytes" in err["detail"]
    await _good_request_still_works(client, agent_id, token, 1)


async def test_wrong_content_type_is_415(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    resp = await client.post(
        "/v1/sync",
        data=body_of(agent_id, [event(agent_id, 1)]),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    err = await error_of(resp, 415, "unsupported_media_type")
    assert "application/msgpack" in err["detail"]


# --- sync: credentials -------------------------------------------------------


async def test_missing_credential_is_401(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    resp = await client.post(
        "/v1/sync", data=body_of(agent_id, [event(agent_id, 1)]), headers={"Content-Type": MSGPACK_CONTENT_TYPE}
    )
    err = await error_of(resp, 401, "unauthorized")
    assert "Authorization: Bearer" in err["detail"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await _good_request_still_works(client, agent_id, token, 1)


@pytest.mark.parametrize("header", ["Bearer not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer " + "x" * 5000])
async def test_wrong_credential_is_401(client: TestClient[Any, Any], agent: tuple[str, str], header: str) -> None:
    agent_id, token = agent
    resp = await client.post(
        "/v1/sync",
        data=body_of(agent_id, [event(agent_id, 1)]),
        headers={"Authorization": header, "Content-Type": MSGPACK_CONTENT_TYPE},
    )
    await error_of(resp, 401, "unauthorized")
    assert await counts_at(client, token) == {}
    await _good_request_still_works(client, agent_id, token, 1)


async def test_revoked_credential_is_401(client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]) -> None:
    agent_id, token = agent
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1)]))
    assert await store.revoke_agent(agent_id)

    err = await error_of(await post_sync(client, token, body_of(agent_id, [event(agent_id, 2)])), 401, "unauthorized")

    assert "revoked" in err["detail"]


async def test_request_for_another_agent_is_403(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    other_id, other_token = await store.add_agent(["S001"])

    resp = await post_sync(client, other_token, body_of(agent_id, [event(agent_id, 1)]))

    err = await error_of(resp, 403, "forbidden")
    assert other_id in err["detail"] and agent_id in err["detail"]
    assert await counts_at(client, token) == {}
    await _good_request_still_works(client, agent_id, token, 1)


async def test_bad_events_for_another_agent_are_403_not_422(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]
) -> None:
    agent_id, _ = agent
    _, other_token = await store.add_agent(["S001"])
    wire = [event_to_wire(event(agent_id, 1)) | {"kind": "teleport"}]

    await error_of(await post_sync(client, other_token, raw_body(agent_id, wire)), 403, "forbidden")


async def test_reader_sending_events_is_403(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    reader_id, reader_token = await store.add_agent([], role="reader")

    resp = await post_sync(client, reader_token, body_of(reader_id, [event(reader_id, 1)]))

    err = await error_of(resp, 403, "forbidden")
    assert "a reader credential cannot send events" in err["detail"]
    assert await counts_at(client, token) == {}
    await _good_request_still_works(client, agent_id, token, 1)


async def test_admin_writes_only_the_locations_it_is_bound_to(client: TestClient[Any, Any], store: HubStore) -> None:
    admin_id, admin_token = await store.add_agent(["S001"], role="admin")
    elsewhere = event(admin_id, 2, location="S002")

    answer = await sync_ok(client, admin_token, body_of(admin_id, [event(admin_id, 1, qty=6), elsewhere]))

    assert [(r.seq, r.code) for r in answer.rejected] == [(2, "forbidden_location")]
    assert await counts_at(client, admin_token) == {"SKU-1": 6}


async def test_event_for_another_location_is_rejected_and_the_rest_applied(
    client: TestClient[Any, Any], agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    foreign = event(agent_id, 2, location="S999", qty=50)

    answer = await sync_ok(
        client, token, body_of(agent_id, [event(agent_id, 1, qty=3), foreign, event(agent_id, 3, qty=4)])
    )

    assert answer.hwm == 3
    assert [(r.event_id, r.seq, r.code) for r in answer.rejected] == [(foreign.event_id, 2, "forbidden_location")]
    assert await counts_at(client, token) == {"SKU-1": 7}
    assert await counts_at(client, token, "S999") == {}


async def test_same_event_id_with_other_content_is_a_conflict(
    client: TestClient[Any, Any], agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    original = event(agent_id, 1, qty=5)
    await sync_ok(client, token, body_of(agent_id, [original]))

    forged = event(agent_id, 2, qty=500, event_id=original.event_id)
    answer = await sync_ok(client, token, body_of(agent_id, [forged]))

    assert [(r.event_id, r.code) for r in answer.rejected] == [(original.event_id, "conflict")]
    assert await counts_at(client, token) == {"SKU-1": 5}


# --- reads ------------------------------------------------------------------


async def test_read_routes_after_a_sync(client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]) -> None:
    agent_id, token = agent
    other_id, other_token = await store.add_agent(["S001"])  # a second till, offline for a while
    _, reader_token = await store.add_agent([], role="reader")
    count = event(agent_id, 2, kind="count", qty=8, at_ms=3)
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1, qty=10, at_ms=1), count]))
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 3, sku="SKU-2", kind="sale", qty=-2, at_ms=4)]))
    # The offline till's sale happened before the count but arrives after it: superseded.
    late_sale = body_of(other_id, [event(other_id, 1, kind="sale", qty=-1, at_ms=2)])
    await sync_ok(client, other_token, late_sale)
    await sync_ok(client, other_token, late_sale)  # a resend

    resp = await client.get("/v1/locations/S001/counts", headers=auth(reader_token))
    assert resp.status == 200
    body = await resp.json()
    assert body["location"] == "S001"
    rows = {r["sku"]: r for r in body["counts"]}
    assert rows["SKU-1"]["on_hand"] == 8 and rows["SKU-1"]["available"] == 8
    assert rows["SKU-1"]["last_count_at"] == count.occurred_at
    assert rows["SKU-1"]["last_count_time"] == f"{HOUR}:00:00.003Z"
    assert rows["SKU-2"]["on_hand"] == -2 and rows["SKU-2"]["available"] == 0

    resp = await client.get("/v1/skus/SKU-1/counts", headers=auth(reader_token))
    assert resp.status == 200
    body = await resp.json()
    assert body["sku"] == "SKU-1" and [(r["location"], r["on_hand"]) for r in body["counts"]] == [("S001", 8)]

    resp = await client.get("/v1/ledger", params={"location": "S001", "sku": "SKU-1"}, headers=auth(reader_token))
    assert resp.status == 200
    ledger = (await resp.json())["events"]
    assert [(e["agent_id"], e["seq"], e["kind"], e["effect"]) for e in ledger] == [
        (agent_id, 2, "count", "applied"),
        (other_id, 1, "sale", "superseded"),
        (agent_id, 1, "receive", "superseded"),  # every delta before the last count is in the count
    ]
    counted, sold, received = ledger
    assert counted["variance"] == -1  # expected 9 once the late sale is known; counted 8
    assert counted["event_id"] == event_id_hex(count.event_id)
    assert counted["occurred_at"] == count.occurred_at
    assert counted["occurred_at_time"] == f"{HOUR}:00:00.003Z"
    assert sold["duplicates"] == 1 and sold["qty"] == -1
    assert received["variance"] is None and received["qty"] == 10 and received["source"] == "scanner:door-1"

    resp = await client.get("/v1/ledger", params={"limit": "1"}, headers=auth(token))
    assert resp.status == 200 and len((await resp.json())["events"]) == 1

    resp = await client.get("/v1/exceptions", headers=auth(reader_token))
    assert resp.status == 200
    exceptions = (await resp.json())["exceptions"]
    assert any(x["kind"] == "negative_on_hand" and x["sku"] == "SKU-2" and x["location"] == "S001" for x in exceptions)
    assert all(isinstance(x["detail"], str) and x["detail"] for x in exceptions)

    resp = await client.get("/v1/agents", headers=auth(reader_token))
    assert resp.status == 200
    agents = {a["agent_id"]: a for a in (await resp.json())["agents"]}
    assert agents[agent_id]["locations"] == ["S001"]
    assert agents[agent_id]["epochs"] == [{"epoch": 1, "epoch_text": "1", "hwm": 3}]
    assert agents[other_id]["epochs"] == [{"epoch": 1, "epoch_text": "1", "hwm": 1}]
    assert agents[agent_id]["last_sync_ms"] is not None and agents[agent_id]["last_sync"].endswith("Z")


async def agent_json(client: TestClient[Any, Any], token: str, path: str, agent_id: str) -> dict[str, Any]:
    """The entry of ``agent_id`` in the ``agents`` list of GET ``path``."""
    resp = await client.get(path, headers=auth(token))
    assert resp.status == 200
    (entry,) = [a for a in (await resp.json())["agents"] if a["agent_id"] == agent_id]
    return entry


async def test_a_reported_backlog_shows_in_agents_status_and_metrics(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    _, reader = await store.add_agent([], role="reader")
    report = SyncRequest(agent_id, 1, (event(agent_id, 1),), backlog=1234, oldest_pending_ms=WALL_MS + 1)
    assert (await sync_ok(client, token, encode_sync_request(report))).hwm == 1

    listed = await agent_json(client, reader, "/v1/agents", agent_id)
    assert (listed["backlog"], listed["oldest_pending_ms"]) == (1234, WALL_MS + 1)
    assert listed["oldest_pending"] == f"{HOUR}:00:00.001Z"
    assert listed["backlog_at_ms"] == listed["last_sync_ms"] and listed["backlog_at"].endswith("Z")
    shown = await agent_json(client, reader, "/v1/status", agent_id)
    assert (shown["backlog"], shown["oldest_pending_ms"], shown["backlog_at_ms"]) == (
        1234,
        WALL_MS + 1,
        listed["backlog_at_ms"],
    )
    metrics = (await (await client.get("/metrics", headers=auth(reader))).text()).splitlines()
    assert f'shelfsync_agent_backlog_events{{agent_id="{agent_id}"}} 1234.0' in metrics

    heartbeat = SyncRequest(agent_id, 1, (), acked_seq=1, backlog=0)  # idle: an empty request with the report
    assert (await sync_ok(client, token, encode_sync_request(heartbeat))).hwm == 1
    idle = await agent_json(client, reader, "/v1/agents", agent_id)
    assert (idle["backlog"], idle["oldest_pending_ms"], idle["oldest_pending"]) == (0, None, None)
    metrics = (await (await client.get("/metrics", headers=auth(reader))).text()).splitlines()
    assert f'shelfsync_agent_backlog_events{{agent_id="{agent_id}"}} 0.0' in metrics


async def test_healthz_needs_no_credential(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and isinstance(body["db"], dict)


async def test_reads_need_a_credential(client: TestClient[Any, Any]) -> None:
    for path in ("/v1/locations/S001/counts", "/v1/skus/SKU-1/counts", "/v1/ledger", "/v1/exceptions", "/v1/agents"):
        await error_of(await client.get(path), 401, "unauthorized")


async def test_sku_with_a_slash_is_percent_encoded(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    agent_id, token = agent
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1, sku="AB/12", qty=3)]))
    url = client.make_url("/").with_path("/v1/skus/AB%2F12/counts", encoded=True)
    resp = await client.session.get(url, headers=auth(token))
    assert resp.status == 200
    assert [(r["sku"], r["on_hand"]) for r in (await resp.json())["counts"]] == [("AB/12", 3)]


async def test_a_dot_segment_sku_in_a_path_is_400_and_one_stored_before_the_rule_is_read_by_query(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]
) -> None:
    agent_id, token = agent
    _, admin = await store.add_agent(["S001"], role="admin")
    for dots in ("%2E", "%2E%2E"):  # as a client that keeps them sends them; most remove them (RFC 3986 5.2.4)
        for path in (f"/v1/skus/{dots}/counts", f"/v1/locations/S001/skus/{dots}/safety-stock"):
            url = client.make_url("/").with_path(path, encoded=True)
            method = "GET" if path.endswith("counts") else "PUT"
            resp = await client.session.request(method, url, json={"qty": 1}, headers=auth(admin))
            err = await error_of(resp, 400, "bad_request")
            assert "remove it from a URL path" in err["detail"]
    # A SKU an older hub took: StockEvent checks it now, so the stored row is made as that hub made it.
    legacy = event(agent_id, 1, sku="SKU-1", qty=7)._replace(sku="..")
    await store.ingest(AgentIdentity(agent_id, frozenset({"S001"})), 1, [legacy])
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 2, sku="SKU-1", qty=2)]))
    resp = await client.get("/v1/counts", params={"sku": ".."}, headers=auth(token))
    assert resp.status == 200
    assert [(r["sku"], r["on_hand"]) for r in (await resp.json())["counts"]] == [("..", 7)]


@pytest.mark.parametrize(
    "path",
    ["/v1/skus/%ff%fe/counts", "/v1/skus/%ED%A0%80/counts", "/v1/locations/S001/skus/A%C3/safety-stock"],
)
async def test_a_path_parameter_that_is_not_utf8_is_400(
    client: TestClient[Any, Any], agent: tuple[str, str], path: str
) -> None:
    _, token = agent
    url = client.make_url("/").with_path(path, encoded=True)
    resp = await client.session.request("GET" if path.endswith("counts") else "PUT", url, headers=auth(token))
    err = await error_of(resp, 400, "bad_request")
    assert "does not percent-decode to UTF-8 text" in err["detail"] and "\n" not in err["detail"]
    # the literal characters, percent-encoded, are text: a SKU of its own
    literal = client.make_url("/").with_path("/v1/skus/%25ff%25fe/counts", encoded=True)
    resp = await client.session.get(literal, headers=auth(token))
    assert resp.status == 200 and (await resp.json())["sku"] == "%ff%fe"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/ledger?limit=0", "limit must be a whole number from 1 to 10000"),
        ("/v1/ledger?limit=10001", "limit must be a whole number from 1 to 10000"),
        ("/v1/ledger?limit=ten", "limit must be a whole number"),
        ("/v1/ledger?limit=-5", "limit must be a whole number"),
        ("/v1/ledger?limit=1&limit=2", "more than once"),
        ("/v1/ledger?sku_id=X", "unknown query parameter(s) sku_id"),
        ("/v1/ledger?before=soon", "before must be a whole number"),
        ("/v1/ledger?location=no%20spaces", "is not a location code"),
        ("/v1/agents?limit=5", "it takes none"),
        ("/v1/locations/S%20001/counts", "is not a location code"),
    ],
)
async def test_bad_query_is_400(client: TestClient[Any, Any], agent: tuple[str, str], path: str, expected: str) -> None:
    _, token = agent
    url = client.make_url("/").with_path(path.partition("?")[0], encoded=True).with_query(path.partition("?")[2])
    resp = await client.session.get(url, headers=auth(token))
    err = await error_of(resp, 400, "bad_request")
    assert expected in err["detail"]


async def test_unknown_route_and_wrong_method_are_json(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    _, token = agent
    err = await error_of(await client.get("/v2/nothing", headers=auth(token)), 404, "not_found")
    assert "/v2/nothing" in err["detail"]
    resp = await client.get("/v1/sync", headers=auth(token))
    err = await error_of(resp, 405, "method_not_allowed")
    assert "POST" in err["detail"] and resp.headers["Allow"] == "POST"


async def test_unexpected_failure_is_500_and_the_hub_keeps_serving(
    client: TestClient[Any, Any],
    store: HubStore,
    agent: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent_id, token = agent

    async def broken(**_: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "ledger", broken)
    with caplog.at_level(logging.ERROR, logger="hub.app"):
        err = await error_of(await client.get("/v1/ledger", headers=auth(token)), 500, "internal_error")
    assert "disk on fire" not in err["detail"]
    assert any(r.exc_info and "disk on fire" in str(r.exc_info[1]) for r in caplog.records)
    await _good_request_still_works(client, agent_id, token, 1)


async def test_closed_store_is_503(client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]) -> None:
    _, token = agent
    await store.close()
    await error_of(await client.get("/v1/agents", headers=auth(token)), 503, "unavailable")
    resp = await client.get("/healthz")
    health = await error_of(resp, 503, "unavailable")  # problem details, with the health report beside
    assert health["health"] == "unavailable" and health["db"]["error"]
    assert resp.headers.get("Retry-After") == "1", resp.headers  # as every other 503 of the hub


# --- admin ------------------------------------------------------------------


async def test_admin_sets_safety_stock(client: TestClient[Any, Any], store: HubStore, agent: tuple[str, str]) -> None:
    agent_id, token = agent
    _, admin_token = await store.add_agent([], role="admin")
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1, qty=10)]))

    resp = await client.put("/v1/locations/S001/skus/SKU-1/safety-stock", json={"qty": 4}, headers=auth(admin_token))

    assert resp.status == 200, await resp.text()
    row = (await resp.json())["count"]
    assert (row["safety_stock"], row["on_hand"], row["available"]) == (4, 10, 6)
    answer = await sync_ok(client, token, body_of(agent_id, [event(agent_id, 2, kind="sale", qty=-1)]))
    assert [(c.on_hand, c.available) for c in answer.counts] == [(9, 5)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"qty": -1}', "qty must be a whole number of units from 0"),
        (b'{"qty": "4"}', "qty must be a whole number"),
        (b'{"qty": true}', "qty must be a whole number"),
        (b'{"qty": 4, "extra": 1}', "one field"),
        (b"[4]", "one field"),
        (b"{qty: 4", "not valid JSON"),
    ],
)
async def test_bad_safety_stock_body_is_400(
    client: TestClient[Any, Any], store: HubStore, body: bytes, expected: str
) -> None:
    _, admin_token = await store.add_agent([], role="admin")
    resp = await client.put(
        "/v1/locations/S001/skus/SKU-1/safety-stock",
        data=body,
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    err = await error_of(resp, 400, "bad_request")
    assert expected in err["detail"]


async def test_agent_cannot_set_safety_stock(client: TestClient[Any, Any], agent: tuple[str, str]) -> None:
    _, token = agent
    resp = await client.put("/v1/locations/S001/skus/SKU-1/safety-stock", json={"qty": 4}, headers=auth(token))
    err = await error_of(resp, 403, "forbidden")
    assert "agent credential cannot change safety stock" in err["detail"]


def test_public_api_names_resolve() -> None:
    import hub

    assert sorted(hub.__all__) == sorted(hub._EXPORTS)
    for name in hub.__all__:
        assert getattr(hub, name) is not None
    with pytest.raises(AttributeError):
        _ = hub.no_such_name


@pytest.mark.parametrize(
    "target",
    [
        "/v1/counts?sku=caf%E9",  # café in Latin-1: read as 'caf\ufffd', another SKU, and answered 200
        "/v1/changes?sku=%ff%fe",
        "/v1/changes?location=S001&sku=%ED%A0%80",  # a lone surrogate
        "/v1/ledger?sku=A%C3",
    ],
)
async def test_a_query_parameter_that_is_not_utf8_is_400(
    client: TestClient[Any, Any], agent: tuple[str, str], target: str
) -> None:
    agent_id, token = agent
    # A SKU the query would otherwise have been read as: the client must hear of its bad escape, not get that SKU.
    await sync_ok(client, token, body_of(agent_id, [event(agent_id, 1, sku="caf\ufffd", qty=3)]))
    url = URL(f"http://{client.host}:{client.port}{target}", encoded=True)  # sent as written, escapes kept
    resp = await client.session.get(url, headers=auth(token))
    err = await error_of(resp, 400, "bad_request")
    assert "does not percent-decode to UTF-8 text" in err["detail"] and "\n" not in err["detail"]
