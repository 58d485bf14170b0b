"""Defects a black-box attack found in the agent's local API, each over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory
from agent.localapi.auth import FAILURES_MAX
from agent.localapi.hosts import HostCheck, dns_names
from agent.outbox import Outbox
from agent.sessions import SessionManager, SessionStore
from tests.agent.test_agent_localapi import STAFF, Api, api  # noqa: F401  (the fixture)
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


async def test_this_pcs_full_dns_name_is_answered_without_allowed_hosts_and_a_rebinding_name_still_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found opening the handheld page as http://backoffice-3.store.example.com:8471/: every request was a 421
    until the PC's own full name was typed into allowed_hosts; only its short name and addresses were known. The
    full name (socket.getfqdn()) is now answered by default; a name its owner points at 127.0.0.1 still is not."""
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "BackOffice-3.Store.Example.COM.")
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.attacker.example":  # the attacker's DNS, after the rebinding
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with (
        Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-a", location="S001") as outbox,
        SessionStore.open(tmp_path / "sessions.sqlite3") as store,
    ):
        context = LocalApiContext(sessions=SessionManager(store, outbox), outbox=outbox, staff=StaffDirectory(STAFF))
        async with (
            LocalApiServer(context, "127.0.0.1", 0) as server,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        ):
            api = Api(server.url, http, outbox, context.sessions)
            port = server.port
            for host in (f"backoffice-3.store.example.com:{port}", "BACKOFFICE-3.store.example.com."):
                status, data = await api.call("GET", "/healthz", headers={"Host": host})
                assert (status, data.get("agent_id")) == (200, "store-a"), (host, data)
            for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "store.example.com"):
                status, data = await api.call("GET", "/healthz", headers={"Host": host})
                assert (status, data["error"]["code"]) == (421, "misdirected_request"), (host, data)


async def test_a_reverse_dns_name_of_the_pc_is_answered_only_when_it_resolves_back_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listening on every interface, the names the network's reverse DNS gives the PC's addresses are answered
    when they resolve back to that address (forward-confirmed); a name that merely resolves to the PC — what a
    rebinding page's name does — is not, nor a stale reverse name, nor one of a loopback or link-local address."""
    reverse = {
        "192.0.2.20": ("backoffice-3.store.example.com", ["bo3.store.example.com", "old-till.store.example.com"]),
        "127.0.0.1": ("evil-loopback.example", []),
        "fe80::1": ("evil-link-local.example", []),
    }
    forward = {
        "backoffice-3.store.example.com": ["192.0.2.20"],
        "bo3.store.example.com": ["192.0.2.20"],
        "old-till.store.example.com": ["192.0.2.99"],  # the reverse zone is stale: not this PC's name any more
        "rebind.attacker.example": ["192.0.2.20", "127.0.0.1"],
        "evil-loopback.example": ["127.0.0.1"],
        "evil-link-local.example": ["fe80::1"],
    }
    asked: list[str] = []

    def gethostbyaddr(address: str) -> tuple[str, list[str], list[str]]:
        asked.append(address)
        if address not in reverse:
            raise socket.herror(1, "Unknown host")
        name, aliases = reverse[address]
        return name, aliases, [address]

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in forward:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in forward[host]]

    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "vm")
    check = HostCheck(
        "0.0.0.0", addresses=lambda: {"192.0.2.20", "127.0.0.1", "fe80::1"}, clock=lambda: 0.0,
        names_in_dns=dns_names,
    )  # fmt: skip
    assert await check.answers("backoffice-3.store.example.com:8471")  # the first look-up is waited for
    assert await check.answers("BO3.store.example.com")
    for host in ("old-till.store.example.com", "rebind.attacker.example", "evil-loopback.example",
                 "evil-link-local.example", "store.example.com"):  # fmt: skip
        assert not await check.answers(host), host
    assert asked == ["192.0.2.20"]  # once, and never a loopback or link-local address
