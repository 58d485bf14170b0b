"""What a client sends can never forge a line of the hub's log: control characters in paths, tokens and
bodies are logged escaped (or not at all), and quoted input is bounded."""

from __future__ import annotations

import json
import logging

import msgpack
import pytest

from protocol import MSGPACK_CONTENT_TYPE
from tests.security.helpers import PLACEHOLDERS, Hub, event, raw_exchange, status_of

pytestmark = pytest.mark.timeout(120)
FORGED = "%0d%0a2026-01-01 00:00:00,000 WARNING hub.app: FORGED"


def assert_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    records = [r for r in caplog.records if r.name.startswith(("hub", "aiohttp"))]
    assert records, "the hub logged the refusals"
    for record in records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message, f"a client forged a log line: {message!r}"
        assert len(message) < 4_000, f"a client flooded the log: {len(message)} characters"


async def test_paths_with_line_breaks_do_not_forge_log_lines(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    routes = [r for r in hub.routes if "{" in r.template]
    assert len(routes) >= 3
    for route in routes:
        path = route.template
        for key in PLACEHOLDERS:
            path = path.replace("{" + key + "}", "x" + FORGED.replace(" ", "%20"))
        request = f"{route.method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n"
        answer = await raw_exchange(hub.url, request.encode())
        assert 400 <= status_of(answer) < 500, (route, answer[:200])
    assert_one_line_each(caplog)


async def test_bodies_with_line_breaks_do_not_forge_log_lines(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    agent_id, token = hub.agent
    wire = {"id": event(agent_id, 1).event_id, "seq": 1, "location": "S001", "sku": "A", "kind": "receive", "qty": 1,
            "occurred_at": 1 << 40, "source": "api:x", "attrs": {"\nFORGED": [1]}}  # fmt: skip
    bodies = [
        {"v": 1, "agent_id": agent_id, "epoch": 1, "events": [wire]},  # 422, the bad attr key quoted
        {"v": 1, "agent_id": agent_id, "epoch": 1, "events": [], "\r\nFORGED": 1},  # 400, an unknown field
        {"v": "\n" * 10_000, "agent_id": agent_id, "epoch": 1, "events": []},  # 400, a huge version
    ]
    for body in bodies:
        status, _, answer = await hub.request(
            "POST", "/v1/sync", token, data=msgpack.packb(body, use_bin_type=True), headers={"Content-Type": MSGPACK_CONTENT_TYPE}
        )
        assert status in (400, 422), answer
        message = json.loads(answer)["detail"]
        assert "\n" not in message and len(message) < 2_000
    movement = {"id": "a\nFORGED", "location": "S001", "sku": "A", "kind": "receive", "qty": 1, "occurred_at": "x\ny"}
    status, _, _ = await hub.request(
        "POST", "/v1/events", token, data=json.dumps({"events": [movement]}), headers={"Content-Type": "application/json"}
    )
    assert status == 422
    assert_one_line_each(caplog)
