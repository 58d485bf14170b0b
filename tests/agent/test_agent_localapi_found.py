"""Defects a black-box attack found in the agent's local API, each over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import socket
from pathlib import Path

from agent.localapi.auth import FAILURES_MAX
from agent.localapi.hosts import HostCheck
from tests.agent.test_agent_localapi import Api, api  # noqa: F401  (the fixture)
from tests.harness.agent_process import AgentProcess, local_api_section
from tests.harness.net import free_port, wait_until


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


async def test_a_request_naming_another_host_is_refused_dns_rebinding(api: Api) -> None:  # noqa: F811
    # a rebinding page's requests carry its own name: they got the agent id, and could sign in and act
    port = api.url.rsplit(":", 1)[1]
    for path, method, body in (("/healthz", "GET", None), ("/api/v1/login", "POST", {"staff": "ana", "pin": "4711"})):
        for host in ("evil.example", f"evil.example:{port}", "10.9.9.9", "rebind.127.0.0.1.nip.io"):
            status, data = await api.call(method, path, body, headers={"Host": host})
            assert status == 421, (host, data)
            assert data["error"]["code"] == "misdirected_request"
            assert "allowed_hosts in [localapi]" in data["error"]["message"]
            assert "store-a" not in str(data) and "token" not in data
    names = ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", socket.gethostname(), "LOCALHOST.")
    for host in names:
        status, data = await api.call("GET", "/healthz", headers={"Host": host})
        assert (status, data.get("agent_id")) == (200, "store-a"), host
    assert (await api.call("POST", "/api/v1/login", {"staff": "ana", "pin": "4711"}))[0] == 200


def test_listening_everywhere_answers_the_machines_addresses_only() -> None:
    looked: list[int] = []

    def addresses() -> set[str]:
        looked.append(1)
        return {"192.168.1.20", "fe80::1"}

    check = HostCheck("0.0.0.0", ("proxy.store.example",), addresses=addresses, clock=lambda: 0.0)
    assert check.allows("192.168.1.20:8471") and check.allows("[fe80::1]:8471") and check.allows("127.0.0.2")
    assert check.allows("Proxy.Store.Example:443") and check.allows(None)
    assert not check.allows("192.168.1.99") and not check.allows("evil.example")
    assert len(looked) == 1  # an unknown address asks the system again at most every ADDRESSES_REFRESH_S
    only = HostCheck("192.168.1.20", addresses=addresses)
    assert only.allows("192.168.1.20") and not only.allows("192.168.1.21")


def test_the_configured_allowed_hosts_are_answered_by_a_running_agent(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.toml"
    section = local_api_section(port).replace(
        "[localapi.staff]", 'allowed_hosts = ["proxy.store.example"]\n\n[localapi.staff]'
    )
    config.write_text(f'[agent]\nid = "store-h"\nlocation = "S001"\ndata_dir = "{tmp_path.as_posix()}"\n\n{section}')
    run = AgentProcess(config, tmp_path / "agent.log")
    try:

        def health(host: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/healthz", headers={"Host": host})
                return connection.getresponse().status
            finally:
                connection.close()

        def up() -> bool:
            try:
                return health("127.0.0.1") == 200
            except OSError:
                return False

        wait_until("the local API answers", up, 60.0)
        assert health("proxy.store.example") == 200
        assert health("evil.example") == 421
    finally:
        run.stop()
    assert "Refused a request from 127.0.0.1 for host 'evil.example'" in (tmp_path / "agent.log").read_text()
