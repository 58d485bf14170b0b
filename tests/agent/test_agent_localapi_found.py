"""Defects a black-box attack found in the agent's local API, each over real HTTP on 127.0.0.1."""

from __future__ import annotations

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
