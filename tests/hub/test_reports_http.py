"""Observations, import issues and divergence over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, reports
from hub.resolver import diverges
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from protocol.reports import (
    ImportIssueReport,
    ImportIssuesRequest,
    ObservationReport,
    ObservationsRequest,
    ReportAnswer,
    decode_report_answer,
    encode_import_issues,
    encode_observations,
)
from tests.harness.clock import RECENT_MS

WALL_MS = RECENT_MS  # inside the hub's clock window (tests/harness/clock.py)
HOUR = time.strftime("%Y-%m-%dT%H", time.gmtime(WALL_MS // 1000))  # WALL_MS is the start of an hour


@pytest.fixture
async def agent(store: HubStore) -> tuple[str, dict[str, str]]:
    agent_id, token = await store.add_agent(["S001"])
    return agent_id, {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}


async def post(client: TestClient[Any, Any], path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with client.post(path, data=body, headers=headers) as resp:
        raw = await resp.read()
        if resp.status == 200:
            assert resp.content_type == MSGPACK_CONTENT_TYPE
            return resp.status, decode_report_answer(raw)
        return resp.status, json.loads(await resp.read())  # problem details


def obs(i: str, on_hand: int, *, at_ms: int, sku: str = "SKU-1", location: str = "S001") -> ObservationReport:
    return ObservationReport(i, location, sku, "shopify", on_hand, WALL_MS + at_ms, "inventory.csv")


@pytest.mark.parametrize(
    ("observed", "hub", "reported"),
    [
        (5, 5, False),  # they agree
        (0, 0, False),
        (1, 0, True),  # the hub has none: any difference counts
        (39, 40, False),  # 1 off 40: under 2 and under 5 %
        (38, 40, True),  # 2 off: always
        (9, 10, True),  # 1 off 10 is 10 %
        (19, 20, True),  # 1 off 20 is exactly 5 %
        (20, 21, False),  # 1 off 21 is under 5 %
        (-3, -2, True),  # on_hand may be negative
    ],
)
def test_the_divergence_threshold(observed: int, hub: int, reported: bool) -> None:
    assert diverges(observed, hub) is reported


async def test_observations_are_accepted_deduplicated_and_compared(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, dict[str, str]]
) -> None:
    agent_id, headers = agent
    events = [
        StockEvent(
            new_event_id(),
            agent_id,
            1,
            1,
            "S001",
            "SKU-1",
            Kind.COUNT,
            10,
            pack_hlc(WALL_MS + 10, 0),
            WALL_MS + 10,
            "api:test",
        ),
        StockEvent(
            new_event_id(),
            agent_id,
            1,
            2,
            "S001",
            "SKU-1",
            Kind.SALE,
            -3,
            pack_hlc(WALL_MS + 30, 0),
            WALL_MS + 30,
            "api:test",
        ),
    ]
    async with client.post(
        "/v1/sync", data=encode_sync_request(SyncRequest(agent_id, 1, tuple(events))), headers=headers
    ) as resp:
        assert resp.status == 200
    request = ObservationsRequest(
        agent_id,
        (obs("o1", 10, at_ms=20), obs("o2", 10, at_ms=40, sku="SKU-2"), obs("o3", 4, at_ms=20, location="S009")),
    )
    status, answer = await post(client, "/v1/observations", encode_observations(request), headers)
    assert status == 200
    assert answer.accepted == ("o1", "o2")
    assert [r.id for r in answer.rejected] == ["o3"] and "S009" in answer.rejected[0].reason
    status, again = await post(client, "/v1/observations", encode_observations(request), headers)
    assert again == answer  # a resend: the same answer, nothing stored twice

    reader = {"Authorization": f"Bearer {(await store.add_agent([], role='reader'))[1]}"}
    async with client.get("/v1/divergence", headers=reader) as resp:
        assert resp.status == 200
        rows = (await resp.json())["divergence"]
    # o1 agrees with the hub as of its time (10, before the sale); SKU-2 the hub never had
    assert [(r["sku"], r["observed"], r["hub_on_hand"], r["difference"], r["id"]) for r in rows] == [
        ("SKU-2", 10, 0, 10, "o2"),
    ]
    assert rows[0]["observed_at"] == f"{HOUR}:00:00.040Z" and rows[0]["agent_id"] == agent_id
    newer = ObservationsRequest(agent_id, (obs("o4", 10, at_ms=50),))  # after the sale: the hub had 7
    await post(client, "/v1/observations", encode_observations(newer), headers)
    async with client.get("/v1/divergence?system=shopify&location=S001&limit=5", headers=reader) as resp:
        rows = (await resp.json())["divergence"]
    assert [(r["sku"], r["hub_on_hand"], r["difference"]) for r in rows] == [("SKU-1", 7, 3), ("SKU-2", 0, 10)]
    async with client.get("/v1/exceptions?location=S001", headers=reader) as resp:
        kinds = sorted((e["kind"], e["sku"]) for e in (await resp.json())["exceptions"])
    assert kinds == [("divergence", "SKU-1"), ("divergence", "SKU-2")]
    async with client.get("/v1/divergence?colour=red", headers=reader) as resp:
        assert resp.status == 400
    async with client.get("/v1/divergence?system=" + "s" * 33, headers=reader) as resp:
        assert resp.status == 400 and "system" in (await resp.json())["detail"]


async def test_import_issues_become_exceptions(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, dict[str, str]]
) -> None:
    agent_id, headers = agent
    issue = ImportIssueReport("i1", "S001", "sales-2025-11-25.csv", 17, "qty 'abc' is not a number", "d;SKU-1;abc")
    status, answer = await post(
        client, "/v1/import-issues", encode_import_issues(ImportIssuesRequest(agent_id, (issue,))), headers
    )
    assert (status, answer) == (200, ReportAnswer(("i1",), ()))
    reader = {"Authorization": f"Bearer {(await store.add_agent([], role='reader'))[1]}"}
    async with client.get("/v1/exceptions", headers=reader) as resp:
        (exc,) = (await resp.json())["exceptions"]
    assert exc["kind"] == "import_quarantine" and exc["location"] == "S001"
    assert exc["data"] | {"agent_id": None} == {
        "agent_id": None,
        "id": "i1",
        "file": "sales-2025-11-25.csv",
        "line": 17,
        "reason": "qty 'abc' is not a number",
        "raw": "d;SKU-1;abc",
    }


async def test_bad_requests_are_clear_errors(
    client: TestClient[Any, Any], store: HubStore, agent: tuple[str, dict[str, str]]
) -> None:
    agent_id, headers = agent
    good = encode_observations(ObservationsRequest(agent_id, (obs("o1", 1, at_ms=0),)))
    status, error = await post(client, "/v1/observations", good, headers | {"Content-Type": "application/json"})
    assert status == 415 and "msgpack" in error["detail"]
    broken = msgpack.packb({"v": 1, "agent_id": agent_id, "observations": [{"id": "o1"}]})
    status, error = await post(client, "/v1/observations", broken, headers)
    assert status == 400 and "observations[0]: is missing" in error["detail"]
    other = encode_observations(ObservationsRequest("agent-00000000", (obs("o1", 1, at_ms=0),)))
    status, error = await post(client, "/v1/observations", other, headers)
    assert status == 403 and "belongs to agent" in error["detail"]
    _, reader_token = await store.add_agent([], role="reader")
    reader = {"Authorization": f"Bearer {reader_token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    status, error = await post(client, "/v1/import-issues", good, reader)
    assert status == 403 and "cannot send import issues" in error["detail"]
    status, error = await post(client, "/v1/import-issues", good, headers)
    assert status == 400 and "unknown field" in error["detail"]


async def test_a_big_report_body_is_decoded_off_the_event_loop(
    client: TestClient[Any, Any], agent: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report body past 64 KiB (hub.decoding.read_body) is decoded in a worker thread, not on the event loop that
    answers every other client; a small one in place. Its refusals are a small body's."""
    agent_id, headers = agent
    threads: dict[str, set[int]] = {"observations": set(), "issues": set()}
    for name, attr in (("observations", "decode_observations"), ("issues", "decode_import_issues")):
        real = getattr(reports, attr)

        def recorded(body: bytes, real: Any = real, name: str = name) -> Any:
            threads[name].add(threading.get_ident())
            return real(body)

        monkeypatch.setattr(reports, attr, recorded)
    loop_thread = threading.get_ident()
    many = tuple(obs(f"o{i}", 5, at_ms=i, sku=f"SKU-{i:05d}") for i in range(1_200))
    body = encode_observations(ObservationsRequest(agent_id, many))
    assert len(body) > 64 * 1024
    status, answer = await post(client, "/v1/observations", body, headers)
    assert status == 200 and len(answer.accepted) == 1_200
    assert threads["observations"] and loop_thread not in threads["observations"]
    issues = tuple(ImportIssueReport(f"i{i}", "S001", "sales.csv", i, "qty 'x' is not a number", "x" * 40)
                   for i in range(1_000))  # fmt: skip
    body = encode_import_issues(ImportIssuesRequest(agent_id, issues))
    assert len(body) > 64 * 1024
    status, answer = await post(client, "/v1/import-issues", body, headers)
    assert status == 200 and len(answer.accepted) == 1_000
    assert threads["issues"] and loop_thread not in threads["issues"]
    threads["observations"].clear()
    small = encode_observations(ObservationsRequest(agent_id, many[:3]))
    assert (await post(client, "/v1/observations", small, headers))[0] == 200
    assert threads["observations"] == {loop_thread}
    broken = msgpack.packb({"v": 1, "agent_id": agent_id, "observations": [{"id": "o1", "pad": "p" * 70_000}]})
    status, error = await post(client, "/v1/observations", broken, headers)
    assert status == 400 and "observations[0]:" in error["detail"], error
