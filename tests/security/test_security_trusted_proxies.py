"""The client's address behind a reverse proxy (hub/proxies.py, ``trusted_proxies``).

Found: behind nginx or Caddy the hub saw every client as the proxy's address, so the budget of refused attempts
it keeps per client address (the dashboard's sign-in, a channel's order webhooks) was one budget for everyone: one
client flooding wrong sign-ins had every other person's sign-in answered 429, and the logs and the ``peer`` kept
with an agent's sync named the proxy. Now a hub that trusts the proxy's address reads the client from the header
the proxy appends to, and one that does not (the default) ignores that header, so a client on the internet cannot
pick its own address to dodge the budget.

A real hub on 127.0.0.1 over real HTTP; the test sends what nginx sends (``proxy_set_header X-Forwarded-For
$proxy_add_x_forwarded_for``, ``X-Forwarded-Proto $scheme``) from 127.0.0.1, the proxy's address, and a client
reaching the hub directly from 127.0.0.2 (loopback answers every 127/8 address).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from hub import proxies
from hub.config import ConfigError, HubSettings, load_settings
from hub.limits import AccessLog
from protocol.codec import MSGPACK_CONTENT_TYPE
from protocol.routes import SYNC_PATH
from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess
from tests.security.helpers import HubFactory, event, sync_body
from tests.security.test_security_public_limit import BURST, assert_429, post_from, serving_shop_hub

pytestmark = pytest.mark.timeout(120)
PROXY, DIRECT = "127.0.0.1", "127.0.0.2"  # the reverse proxy's address; a client reaching the hub directly
FLOODER, NEIGHBOUR, STORE_PC = "203.0.113.7", "198.51.100.9", "192.0.2.44"  # clients behind the proxy
WRONG = {"token": "not-a-credential-" + "x" * 20}
SLOW = 0.05  # refused attempts a second: an empty budget holds no attempt again within the test


def via_proxy(client: str, sent: str | None = None, proto: str = "https") -> dict[str, str]:
    """The headers nginx adds to a request from ``client`` that carried ``X-Forwarded-For: sent`` of its own."""
    return {"X-Forwarded-For": f"{sent}, {client}" if sent else client, "X-Forwarded-Proto": proto}


def hub_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("hub")]


async def test_clients_behind_a_trusted_proxy_have_budgets_of_their_own_and_are_named(
    make_hub: HubFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hub = await make_hub(trusted_proxies=[PROXY], refused_attempts_per_s=SLOW, refused_attempts_burst=BURST)
    sign_in = f"{hub.url}/dashboard/sign-in"
    reader = {"token": hub.reader[1]}
    for _ in range(BURST):
        assert (await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(FLOODER)))[0] == 403
    assert_429(*await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(FLOODER)), window_s=60)
    status, _, _ = await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(FLOODER), expect100=True)
    assert status == 429, "from the head (Expect: 100-continue) too"
    status, _, _ = await post_from(PROXY, sign_in, data=reader, headers=via_proxy(FLOODER, sent=NEIGHBOUR))
    assert status == 429, "what the client wrote into X-Forwarded-For itself is not taken"

    status, headers, _ = await post_from(PROXY, sign_in, data=reader, headers=via_proxy(NEIGHBOUR))
    assert status == 303, "another client behind the same proxy signs in during the flood"
    cookie = headers["Set-Cookie"]
    assert "shelfsync_session=" in cookie and "Secure" in cookie, f"the proxy says it came over HTTPS: {cookie}"
    status, headers, _ = await post_from(PROXY, sign_in, data=reader, headers=via_proxy(NEIGHBOUR, proto="http"))
    assert status == 303 and "Secure" not in headers["Set-Cookie"], headers["Set-Cookie"]
    assert (await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(NEIGHBOUR)))[0] == 403

    # A client reaching the hub directly is not a trusted proxy: the header it sends is its own, and ignored.
    for _ in range(BURST):
        status, headers, _ = await post_from(DIRECT, sign_in, data=WRONG, headers=via_proxy(NEIGHBOUR))
        assert status == 403, "not FLOODER's exhausted budget: the header is not read"
    status, _, _ = await post_from(DIRECT, sign_in, data=reader, headers=via_proxy(STORE_PC))
    assert status == 429, "a new address in the header does not give a direct client a new budget"
    status, headers, _ = await post_from(DIRECT, f"{hub.url}/dashboard/sign-in", data=reader, headers={})
    assert status == 429
    status, headers, _ = await post_from(PROXY, sign_in, data=reader, headers=via_proxy(NEIGHBOUR))
    assert status == 303, "NEIGHBOUR's budget was not spent by the direct client naming it"

    # A header that names no address is counted by the proxy's address, never a 500, and logged once a minute.
    for bad in ("not-an-address", f"{FLOODER}, unknown", f"{FLOODER},"):
        status, _, body = await post_from(PROXY, sign_in, data=WRONG, headers={"X-Forwarded-For": bad})
        assert status == 403, (bad, status, body)
    status, _, _ = await post_from(PROXY, sign_in, data=WRONG, headers={"X-Forwarded-For": "unknown"})
    assert status == 429, "the proxy's own address has spent its budget"
    status, _, _ = await post_from(PROXY, sign_in, data=reader, headers=via_proxy(NEIGHBOUR))
    assert status == 303, "and the clients it names have theirs"

    # The agent's sync: the peer kept with its mark (agent_copies names it) is the store PC's, not the proxy's.
    agent_id, token = hub.agent
    async with hub.session.post(
        hub.url + SYNC_PATH, data=sync_body(agent_id, [event(agent_id, 1)]),
        headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE, **via_proxy(STORE_PC)},
    ) as resp:  # fmt: skip
        assert resp.status == 200, await resp.text()
    with sqlite3.connect(tmp_path / "hub-0.db") as db:
        assert db.execute("SELECT peer FROM agent_hwm WHERE agent_id = ?", (agent_id,)).fetchall() == [(STORE_PC,)]

    lines = hub_lines(caplog)
    flood = [line for line in lines if "429" in line and "refused attempts" in line]
    assert flood and all(FLOODER in line and PROXY not in line for line in flood), flood
    unreadable = [line for line in lines if "names no client address" in line]
    assert len(unreadable) == 1 and PROXY in unreadable[0] and "not-an-address" in unreadable[0], unreadable


async def test_a_channels_genuine_webhooks_through_the_proxy_are_booked_while_another_sender_floods(
    tmp_path: Path,
) -> None:
    """A sender of forged order webhooks behind the proxy spends its own budget; Shopify's deliveries are booked."""
    async with serving_shop_hub(tmp_path, trusted_proxies=["127.0.0.0/8"]) as hub:
        shopify = hub.shopify
        order = shopify.create_order([(hub.variant, 1)], pickup_at=hub.pickup)
        forged = shopify.delivery("orders/create", order, secret="not-the-app-secret")
        for _ in range(BURST):
            status, _, _ = await post_from(
                PROXY, hub.hook, data=forged.body, headers={**forged.headers, **via_proxy(FLOODER)}
            )
            assert status == 401
        # a network of proxies (127.0.0.2 is one too): FLOODER through any of them is FLOODER
        assert_429(
            *await post_from(DIRECT, hub.hook, data=forged.body, headers={**forged.headers, **via_proxy(FLOODER)})
        )
        genuine = shopify.order_delivery("orders/create", order["id"])
        status, _, body = await post_from(
            PROXY, hub.hook, data=genuine.body, headers={**genuine.headers, **via_proxy(NEIGHBOUR)}
        )
        assert status == 200 and json.loads(body)["applied"] == 1, body
        assert await hub.reserved() == 1, "Shopify's delivery through the proxy is booked during the flood"


async def test_a_hub_that_trusts_no_proxy_ignores_the_header(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The default: an attacker sending a new X-Forwarded-For with each attempt still spends one budget, its own."""
    caplog.set_level(logging.INFO)
    hub = await make_hub(refused_attempts_per_s=SLOW, refused_attempts_burst=BURST)
    sign_in = f"{hub.url}/dashboard/sign-in"
    for i in range(BURST):
        assert (await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(f"203.0.113.{i}")))[0] == 403
    for i in range(3):
        status, _, _ = await post_from(PROXY, sign_in, data=WRONG, headers=via_proxy(f"198.51.100.{i}"))
        assert status == 429
    status, _, _ = await post_from(PROXY, sign_in, data=WRONG, headers={"Forwarded": f"for={NEIGHBOUR}"})
    assert status == 429
    status, headers, _ = await post_from(DIRECT, sign_in, data={"token": hub.reader[1]}, headers=via_proxy(FLOODER))
    assert status == 303 and "Secure" not in headers["Set-Cookie"], "X-Forwarded-Proto is not read either"
    assert not any("203.0.113." in line or "198.51.100." in line for line in hub_lines(caplog))


async def test_a_hub_process_told_its_proxy_by_the_environment_logs_each_client(tmp_path: Path) -> None:
    """``python -m hub serve`` with ``SHELFSYNC_HUB_TRUSTED_PROXIES``: the start-up log names the proxies, and the
    access log (hub/limits.py, written below the app) names the client behind the proxy, a direct client by its own
    address whatever it sends."""
    env = hub_env(SHELFSYNC_HUB_TRUSTED_PROXIES="127.0.0.1", SHELFSYNC_HUB_ACCESS_LOG="true")
    with HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=0, env=env) as hub:
        for source, headers in ((PROXY, via_proxy(FLOODER)), (DIRECT, via_proxy(NEIGHBOUR))):
            connector = aiohttp.TCPConnector(local_addr=(source, 0))
            async with (
                aiohttp.ClientSession(connector=connector, trust_env=False) as session,
                session.get(f"{hub.url}/healthz", headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp,
            ):
                assert resp.status == 200
        deadline = asyncio.get_running_loop().time() + 10.0
        while f'{DIRECT} "GET /healthz" 200' not in hub.log:
            assert asyncio.get_running_loop().time() < deadline, hub.log[-2000:]
            await asyncio.sleep(0.05)
        log = hub.log
    assert "client address from its X-Forwarded-For header when it comes from 127.0.0.1/32" in log, log[-2000:]
    assert f'{FLOODER} "GET /healthz" 200' in log and NEIGHBOUR not in log, log[-2000:]


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() -> None:
    trusted = proxies.TrustedProxies(proxies.parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1"]))
    forwarded = proxies.TrustedProxies(trusted.networks, "forwarded")

    def request_from(peer: str, *headers: tuple[str, str], app: web.Application | None = None) -> web.Request:
        transport = mock.Mock()
        transport.get_extra_info.return_value = (peer, 4711)
        return make_mocked_request("POST", "/", headers=CIMultiDict(headers), transport=transport, app=app)

    def resolved(by: proxies.TrustedProxies, peer: str, *headers: tuple[str, str]) -> tuple[str | None, str | None]:
        found = by.resolve(request_from(peer, *headers))
        return found.address, found.scheme

    xff, xfp, fwd = "X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"
    assert resolved(trusted, "10.1.2.3", (xff, "203.0.113.7")) == ("203.0.113.7", None)
    assert resolved(trusted, "10.1.2.3", (xff, "1.1.1.1, 203.0.113.7, 10.9.9.9"), (xfp, "https")) == (
        "203.0.113.7", "https",
    ), "past a chain of trusted proxies; X-Forwarded-Proto as the nearest proxy set it"  # fmt: skip
    assert resolved(trusted, "10.1.2.3", (xff, "1.1.1.1"), (xff, "203.0.113.7")) == ("203.0.113.7", None)
    assert resolved(trusted, "10.1.2.3", (xff, "203.0.113.7, 10.0.0.2"), (xfp, "http, https")) == (
        "203.0.113.7", "http",
    ), "one proto per hop: the client's"  # fmt: skip
    assert resolved(trusted, "10.1.2.3", (xff, "10.0.0.9, 10.0.0.2")) == ("10.0.0.9", None), "all trusted: leftmost"
    assert resolved(trusted, "::ffff:10.1.2.3", (xff, "[2001:db8::7]:443")) == ("2001:db8::7", None)
    assert resolved(trusted, "2001:db8:ffff::1", (xff, "198.51.100.9:5555")) == ("198.51.100.9", None)
    assert resolved(trusted, "10.1.2.3", (xff, "::ffff:198.51.100.9")) == ("198.51.100.9", None)
    assert resolved(trusted, "10.1.2.3", (xff, " "), (xfp, "https")) == ("10.1.2.3", None), "an empty header"
    assert resolved(trusted, "10.1.2.3", (xff, "203.0.113.7"), (xfp, "gopher")) == ("203.0.113.7", None)
    assert resolved(trusted, "10.1.2.3", (xff, "junk, 203.0.113.7")) == ("203.0.113.7", None), "left of it: unread"
    for junk in ("unknown", "203.0.113.7, _hidden", "[2001:db8::7", "[2001:db8::7]x", "1.2.3.4:http", "a" * 9000):
        assert resolved(trusted, "10.1.2.3", (xff, junk)) == ("10.1.2.3", None), junk
    assert resolved(trusted, "192.0.2.1", (xff, "203.0.113.7"), (xfp, "https")) == ("192.0.2.1", None), "untrusted"
    assert resolved(trusted, "10.1.2.3", (fwd, "for=203.0.113.7")) == ("10.1.2.3", None), "not the header it reads"

    assert resolved(forwarded, "10.1.2.3", (fwd, 'for=203.0.113.7;proto=https, for="[2001:db8:ffff::2]:80"')) == (
        "203.0.113.7", "https",
    )  # fmt: skip
    assert resolved(forwarded, "10.1.2.3", (fwd, 'for="[2001:db8::7]:4711";proto=http')) == ("2001:db8::7", "http")
    assert resolved(forwarded, "10.1.2.3", (fwd, "for=1.1.1.1"), (fwd, "for=203.0.113.7;by=10.0.0.1")) == (
        "203.0.113.7", None,
    )  # fmt: skip
    assert resolved(forwarded, "10.1.2.3", (xff, "203.0.113.7")) == ("10.1.2.3", None), "X-Forwarded-For not read"
    for junk in ("for=unknown", "for=_hidden", "proto=https", "garbage", "for=1.1.1.1, ;;"):
        assert resolved(forwarded, "10.1.2.3", (fwd, junk)) == ("10.1.2.3", None), junk
    assert resolved(forwarded, "10.1.2.3", (fwd, "garbage, for=203.0.113.7")) == ("203.0.113.7", None)

    app = web.Application()  # a hub's app: the access log names the client too (worked out once a request)
    proxies.setup(app, ["10.0.0.0/8"])
    logger = mock.Mock()
    request = request_from("10.1.2.3", (xff, "203.0.113.7"), app=app)
    AccessLog(logger, "").log(request, web.Response(), 0.001)
    assert logger.info.call_args.args[1] == "203.0.113.7" and request[proxies.CLIENT_KEY].address == "203.0.113.7"
    assert proxies.client_of(request_from("10.1.2.3", (xff, "203.0.113.7"))) == "10.1.2.3", "an app trusting none"


def test_the_settings_take_addresses_and_networks_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert HubSettings().trusted_proxies == () and HubSettings().trusted_proxy_header == "X-Forwarded-For"
    settings = HubSettings(trusted_proxies=["127.0.0.1", "10.0.0.0/8", "fd00::/8"], trusted_proxy_header="forwarded")
    assert settings.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "fd00::/8")
    assert settings.trusted_proxy_header == "Forwarded"
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "hub.db"\ntrusted_proxies = ["192.0.2.10", "2001:db8::/32"]\n')
    assert load_settings(config).trusted_proxies == ("192.0.2.10/32", "2001:db8::/32")
    environ = {
        "SHELFSYNC_HUB_TRUSTED_PROXIES": "10.0.0.1, 10.0.1.0/24  ::1",
        "SHELFSYNC_HUB_TRUSTED_PROXY_HEADER": "Forwarded",
    }
    from_env = load_settings(config, environ=environ)
    assert from_env.trusted_proxies == ("10.0.0.1/32", "10.0.1.0/24", "::1/128")
    assert from_env.trusted_proxy_header == "Forwarded"
    for bad, said in (
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or a CIDR network"),
        (["nginx.local"], "'nginx.local' is not an IP address"),
        ([7], "a list of strings"),
        ("10.0.0.1", "a list of strings"),
    ):
        with pytest.raises(ConfigError, match=f"trusted_proxies .*{said}"):
            HubSettings(trusted_proxies=bad)
    with pytest.raises(ConfigError, match="trusted_proxy_header must be X-Forwarded-For or Forwarded, got 'X-Real-IP'"):
        HubSettings(trusted_proxy_header="X-Real-IP")


def test_the_hub_asks_whom_a_request_comes_from_only_of_client_of() -> None:
    """A ``request.remote`` left in the hub would name the proxy again (a log line, a budget, the sync's peer)."""
    package = Path(proxies.__file__).parent
    found = [
        f"{path.relative_to(package.parent)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "proxies.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "request.remote" in line
    ]
    assert found == [], "use hub.proxies.client_of(request)"
