"""Defects a black-box attack found in the agent's local API, each over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio

from agent.localapi.auth import FAILURES_MAX
from tests.agent.test_agent_localapi import Api, api  # noqa: F401  (the fixture)


async def test_a_body_naming_a_key_twice_is_refused_not_read_last_wins(api: Api) -> None:  # noqa: F811
    token = await api.sign_in()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    raw = b'{"type":"receive","type":"count"}'
    status, data = await api.call("POST", "/api/v1/sessions", data=raw, headers=auth)
    assert status == 400, data
    assert "'type' twice" in data["error"]["message"]
    assert data["error"]["message"].count(". ") == 0
    nested = b'{"staff":"ana","pin":"4711","pin":"0000"}'
    status, data = await api.call("POST", "/api/v1/login", data=nested, headers={"Content-Type": "application/json"})
    assert status == 400 and "'pin' twice" in data["error"]["message"], data
    assert await api.sessions.list(active=True, limit=10) == []  # no count session was opened instead


async def test_an_oversized_body_is_refused_in_the_apis_own_words(api: Api) -> None:  # noqa: F811
    raw = b'{"staff":"ana","pin":"' + b"1" * (2 << 20) + b'"}'
    status, data = await api.call("POST", "/api/v1/login", data=raw, headers={"Content-Type": "application/json"})
    assert status == 413, data
    assert data["error"]["code"] == "payload_too_large"
    message = data["error"]["message"]
    assert "Maximum request body size" not in message
    assert message[0].islower() and not message.endswith(".") and "1 MiB" in message, message


async def test_parallel_right_pins_from_one_device_all_sign_in(api: Api) -> None:  # noqa: F811
    # each attempt counted as wrong until checked: 150 parallel right PINs gave 10 sign-ins and 140 "429 locked_out"
    body = {"staff": "ana", "pin": "4711"}
    answers = await asyncio.gather(*(api.call("POST", "/api/v1/login", body) for _ in range(40)))
    assert [status for status, _ in answers] == [200] * 40, [data for status, data in answers if status != 200][:1]


async def test_parallel_wrong_pins_from_one_device_are_still_braked(api: Api) -> None:  # noqa: F811
    body = {"staff": "ana", "pin": "0000"}
    answers = await asyncio.gather(*(api.call("POST", "/api/v1/login", body) for _ in range(30)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [401] * FAILURES_MAX + [429] * (30 - FAILURES_MAX)  # no more checked than were free
    status, data = await api.call("POST", "/api/v1/login", {"staff": "ana", "pin": "4711"})
    assert status == 429 and data["error"]["code"] == "locked_out", data
