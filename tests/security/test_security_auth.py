"""Who may do what: every route of the hub is checked, enumerated from its router, so new routes are covered.

- Missing, malformed, wrong and revoked credentials get 401 on every non-public route.
- A reader (bearer token or dashboard session cookie) writes nothing, anywhere.
- An agent never writes another location's stock, observations or import issues, nor speaks for another agent.
"""

from __future__ import annotations

import json
import re

import msgpack
import pytest

from protocol import (
    MSGPACK_CONTENT_TYPE,
    decode_sync_response,
    wall_ms_now,
)
from protocol.reports import (
    ImportIssueReport,
    ImportIssuesRequest,
    ObservationReport,
    ObservationsRequest,
    decode_report_answer,
    encode_import_issues,
    encode_observations,
)
from tests.security.helpers import WRITE_METHODS, Hub, event, sync_body

pytestmark = pytest.mark.timeout(120)
BAD_HEADERS = [
    {},  # missing
    {"Authorization": "Bearer"},  # no token
    {"Authorization": "Basic dXNlcjpwYXNz"},  # another scheme
    {"Authorization": "Bearer not-a-token-the-hub-issued"},
    {"Authorization": "Bearer " + "x" * 5000},  # far too long: refused unread
    {"Authorization": "Bearer tok\u00e9n"},  # not ASCII
]


MSGPACK = {"Content-Type": MSGPACK_CONTENT_TYPE}
JSON = {"Content-Type": "application/json"}


async def test_every_non_public_route_refuses_missing_wrong_and_revoked_credentials(hub: Hub) -> None:
    routes = [r for r in hub.routes if not r.public]
    assert {"sync", "ledger", "catalog_put", "changes", "observations"} <= {r.name for r in routes}
    for route in routes:
        for headers in BAD_HEADERS:
            status, answer_headers, body = await hub.request(route.method, route.path, headers=headers)
            assert status == 401, f"{route.method} {route.path} with {headers}: {status} {body[:200]!r}"
            assert answer_headers.get("WWW-Authenticate", "").startswith("Bearer"), route
            assert json.loads(body)["code"] == "unauthorized"
        status, _, body = await hub.request(route.method, route.path, hub.revoked[1])
        assert status == 401 and b"revoked" in body, f"{route.method} {route.path} with a revoked credential: {status}"


async def test_a_reader_writes_nothing_on_any_write_route(hub: Hub) -> None:
    reader_token = hub.reader[1]
    writes = [r for r in hub.routes if r.method in WRITE_METHODS and not r.public]
    assert len(writes) >= 5
    bodies = {
        "sync": (sync_body(hub.reader[0], [event(hub.reader[0], 1)]), MSGPACK),
        "observations": (b"\x80", MSGPACK),
        "import_issues": (b"\x80", MSGPACK),
    }
    for route in writes:
        data, headers = bodies.get(route.name, (b'{"qty": 1, "items": [], "events": []}', JSON))
        status, _, body = await hub.request(route.method, route.path, reader_token, data=data, headers=headers)
        assert status == 403, f"a reader got {status} from {route.method} {route.path}: {body[:200]!r}"
        assert "reader" in json.loads(body)["detail"]
    assert await hub.store.ledger() == []
    assert (await hub.store.catalog()).items == ()


async def test_a_dashboard_session_cookie_reads_but_never_writes(hub: Hub) -> None:
    origin = {"Origin": hub.url}
    status, headers, _ = await hub.request("POST", "/dashboard/sign-in", data={"token": hub.reader[1]}, headers=origin)
    assert status == 303, "signing in with a reader credential gives a session"
    cookie = re.match(r"([^=]+)=([^;]*)", headers["Set-Cookie"])
    assert cookie is not None
    jar = {"Cookie": f"{cookie.group(1)}={cookie.group(2)}"}

    status, _, _ = await hub.request("GET", "/v1/ledger", headers=jar)
    assert status == 200
    for route in [r for r in hub.routes if r.method in WRITE_METHODS and not r.public]:
        status, _, body = await hub.request(route.method, route.path, headers={**jar, **JSON}, data=b"{}")
        assert status == 401, f"a session cookie got {status} from {route.method} {route.path}: {body[:200]!r}"


async def test_an_agent_cannot_sign_in_to_the_dashboard(hub: Hub) -> None:
    status, headers, _ = await hub.request(
        "POST", "/dashboard/sign-in", data={"token": hub.agent[1]}, headers={"Origin": hub.url}
    )
    assert status == 403
    assert "Set-Cookie" not in headers or "Max-Age=0" in headers["Set-Cookie"], "no session for an agent credential"


async def test_an_agent_cannot_write_another_locations_stock(hub: Hub) -> None:
    agent_id, token = hub.agent
    mine, theirs = event(agent_id, 1, "S001"), event(agent_id, 2, "S002", qty=7)

    status, _, body = await hub.request("POST", "/v1/sync", token, data=sync_body(agent_id, [mine, theirs]), headers=MSGPACK)

    assert status == 200
    answer = decode_sync_response(body)
    assert [(r.event_id, r.code) for r in answer.rejected] == [(theirs.event_id, "forbidden_location")]
    assert answer.hwm == 2, "the refused event never blocks the mark"
    assert [(c.location, c.on_hand) for c in await hub.store.counts(location="S002")] in ([], [("S002", 0)])
    assert [c.on_hand for c in await hub.store.counts(location="S001")] == [5]
    kinds = {(row.kind, row.location) for row in await hub.store.exceptions()}
    assert ("rejected_event", "S002") in kinds


async def test_an_agent_cannot_push_json_events_to_another_location(hub: Hub) -> None:
    _, token = hub.agent
    movement = {"id": "o-1", "location": "S002", "sku": "SKU-1", "kind": "receive", "qty": 3, "occurred_at": wall_ms_now()}
    status, _, body = await hub.request("POST", "/v1/events", token, data=json.dumps({"events": [movement]}), headers=JSON)
    assert status == 200
    assert json.loads(body)["events"][0]["status"] == "rejected"
    assert json.loads(body)["events"][0]["code"] == "forbidden_location"
    assert [c.on_hand for c in await hub.store.counts(location="S002") if c.on_hand] == []


async def test_an_agent_cannot_report_observations_or_import_issues_for_another_location(hub: Hub) -> None:
    agent_id, token = hub.agent
    observations = encode_observations(
        ObservationsRequest(agent_id, (ObservationReport("o1", "S002", "SKU-1", "shopify", 4, wall_ms_now()),))
    )
    issues = encode_import_issues(
        ImportIssuesRequest(agent_id, (ImportIssueReport("i1", "S002", "x.csv", 3, "bad row"),))
    )
    for path, data in (("/v1/observations", observations), ("/v1/import-issues", issues)):
        status, _, body = await hub.request("POST", path, token, data=data, headers=MSGPACK)
        assert status == 200, body
        answer = decode_report_answer(body)
        assert answer.accepted == () and len(answer.rejected) == 1, f"{path}: {answer}"


async def test_an_agent_cannot_speak_for_another_agent(hub: Hub) -> None:
    other_id, _ = hub.other_agent
    _, token = hub.agent
    forged_sync = sync_body(other_id, [event(other_id, 1, "S002")])
    forged_obs = msgpack.packb({"v": 1, "agent_id": other_id, "observations": []})
    for path, data in (("/v1/sync", forged_sync), ("/v1/observations", forged_obs)):
        status, _, body = await hub.request("POST", path, token, data=data, headers=MSGPACK)
        assert status == 403, f"{path}: {status} {body[:200]!r}"
    assert await hub.store.ledger() == []


@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/v1/locations/S001/skus/SKU-1/safety-stock", b'{"qty": 3}'),
    ("PUT", "/v1/catalog", b'{"items": [{"barcode": "4006381333931", "sku": "SKU-1"}]}'),
])  # fmt: skip
async def test_an_agent_cannot_change_admin_settings(hub: Hub, method: str, path: str, body: bytes) -> None:
    status, _, answer = await hub.request(method, path, hub.agent[1], data=body, headers=JSON)
    assert status == 403, answer
    status, _, answer = await hub.request(method, path, hub.admin[1], data=body, headers=JSON)
    assert status == 200, answer
