"""A hub_url that is wrong in one of the ways found in stores: an API path after the address, https:// to a hub
serving plain HTTP, http:// to a hub serving HTTPS, a port nothing listens on. Each is said in one sentence that
names what to write instead: at config load, in the sync's last error (status, the local API) and once in the log,
and in ``shelfsync-agent status``'s probe. The real agent code against a real hub on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator, ReplicatorState
from agent.catalog import AgentCatalog, CatalogError
from agent.cli import _probe
from agent.config import ConfigError, load_config
from agent.feed import CountFeed
from agent.hub_loop import wrong_address
from hub import HubSettings, create_app, open_store
from hub.server import tls_context
from protocol import Kind
from tests.harness.inprocess import ServedHub, hub_in_process

AGENT = "store-1"
LOC = "S001"
WAIT_S = 15.0
OPENSSL_TIMEOUT_S = 30.0
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS record carrying a hello
MINIMAL = '[agent]\nid = "store-1"\nlocation = "S001"\ntoken = "t"\n'


@pytest.mark.parametrize(
    ("given", "write"),
    [
        ("http://127.0.0.1:8470/v1/sync", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/v1", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/v1/", "http://127.0.0.1:8470"),
        ("https://hub.example/v1/catalog", "https://hub.example"),
        ("https://hub.example/shelfsync/v1/sync", "https://hub.example/shelfsync"),
        ("http://127.0.0.1:8470/healthz", "http://127.0.0.1:8470"),
    ],
)
def test_an_api_path_in_hub_url_is_refused_naming_the_address_to_write(tmp_path: Path, given: str, write: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + f'hub_url = "{given}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    said = str(caught.value)
    assert f"write the hub's address without it: {write}" in said, said


def test_a_path_prefix_of_a_reverse_proxy_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + 'hub_url = "https://hub.example/shelfsync/"\n')
    assert load_config(path).agent.hub_url == "https://hub.example/shelfsync"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[ServedHub]:
    async with hub_in_process(tmp_path / "hub.sqlite3") as served:
        yield served


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=AGENT, location=LOC) as opened:
        await opened.record([Movement(LOC, "SKU-1", Kind.SALE, -1, "pos:acme")])
        yield opened


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    cert, key = tmp_path / "hub.pem", tmp_path / "hub.key"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
        capture_output=True, check=False, text=True, timeout=OPENSSL_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return cert, key


@pytest.fixture
async def tls_hub(tmp_path: Path, certificate: tuple[Path, Path]) -> AsyncIterator[str]:
    """The hub serving HTTPS itself (tls_cert, tls_key) on 127.0.0.1, as hub/server.py serves it: its host:port."""
    cert, key = certificate
    settings = HubSettings(db=str(tmp_path / "tls-hub.sqlite3"), tls_cert=str(cert), tls_key=str(key))
    async with open_store(settings.db) as store:
        runner = web.AppRunner(create_app(store, settings))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(settings)).start()
            host, port = runner.addresses[0][:2]
            yield f"{host}:{port}"
        finally:
            await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def last_error_of(outbox: Outbox, hub_url: str, caplog: pytest.LogCaptureFixture) -> str:
    """Run the replicator against ``hub_url`` until it has failed three times: its last error, said once in the log."""
    replicator = Replicator(
        outbox, hub_url, "t", retry_base_s=0.01, retry_max_s=0.05, timeout_s=5.0, rng=random.Random(7)
    )
    with caplog.at_level(logging.INFO, logger="agent"):
        async with replicator:
            state: ReplicatorState = await asyncio.wait_for(replicator.wait_for(lambda s: s.failures >= 3), WAIT_S)
    stats = await outbox.stats()
    assert stats.last_error == state.last_error and stats.last_error is not None
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sync failed")]
    assert len(said) == 1 and stats.last_error in said[0], said
    return stats.last_error


async def test_https_to_a_plain_http_hub_says_to_write_http(
    hub: ServedHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = hub.url.replace("http://", "https://")
    fix = f"answers plain HTTP, not HTTPS: write {hub.url} in hub_url (or turn on TLS at the hub)"
    assert fix in await last_error_of(outbox, wrong, caplog)
    probe, _ = await _probe(wrong)
    assert probe is not None and fix in probe, probe


async def test_http_to_an_https_hub_says_to_write_https(
    tls_hub: str, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"http://{tls_hub}"
    fix = f"answers HTTPS, not plain HTTP: write https://{tls_hub} in hub_url"
    assert fix in await last_error_of(outbox, wrong, caplog)
    probe, _ = await _probe(wrong)
    assert probe is not None and fix in probe, probe


async def test_a_port_nothing_listens_on_says_the_hub_is_not_there(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    fix = (
        f"nothing listens at 127.0.0.1:{port} (connection refused): the hub is not running there, or the port in"
        " hub_url is not the one it serves on"
    )
    assert fix in await last_error_of(outbox, f"http://127.0.0.1:{port}", caplog)
    probe, _ = await _probe(f"http://127.0.0.1:{port}")
    assert probe is not None and fix in probe, probe


async def test_a_path_the_hub_does_not_serve_says_to_write_its_address_without_it(
    hub: ServedHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = hub.url + "/shelfsync"  # a reverse proxy's prefix, where no proxy is
    fix = f"no shelfsync hub answers under /shelfsync there (HTTP 404): write the hub's address without the path: {hub.url}"
    assert fix in await last_error_of(outbox, wrong, caplog)
    probe, _ = await _probe(wrong)
    assert probe is not None and fix in probe, probe


async def test_the_catalog_and_the_change_feed_say_the_same_sentence(hub: ServedHub, outbox: Outbox) -> None:
    """Each loop of the agent logs its own failure once: every one names what to write, not an SSL code."""
    wrong = hub.url.replace("http://", "https://")
    fix = f"answers plain HTTP, not HTTPS: write {hub.url} in hub_url"
    catalog = AgentCatalog(file=None, hub_url=wrong, token="t", timeout_s=5.0)
    try:
        with pytest.raises(CatalogError) as caught:
            await catalog.refresh()
    finally:
        await catalog.stop()
    assert fix in str(caught.value), caught.value
    feed = CountFeed(outbox, wrong, "t", retry_base_s=0.01, retry_max_s=0.05)
    async with feed:
        state = await asyncio.wait_for(feed.wait_for(lambda s: s.last_error is not None), WAIT_S)
    assert state.last_error is not None and fix in state.last_error, state


class Listener:
    """A server on 127.0.0.1 that keeps the first bytes of every connection it accepts. ``answers``: reply to a
    plain HTTP request (read to the end of its head) with a 200; else close each connection unanswered. Either way
    a TLS hello is read as the start of an HTTP head that never ends, as a forwarding proxy or middlebox does."""

    def __init__(self, *, answers: bool) -> None:
        self.answers = answers
        self.first_bytes: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            first = await reader.read(1)
            self.first_bytes.append(first)
            if not self.answers:
                return
            await reader.readuntil(b"\r\n\r\n")  # a TLS hello waits here until the other end gives up
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()


async def test_a_connection_cut_on_the_way_is_not_taken_for_a_tls_port() -> None:
    """A NAT table flushed or a proxy restarted closes the request in flight, and the loop must retry at once: the
    address still answers plain HTTP, so no TLS handshake is tried (at a middlebox that reads it as the start of a
    request, it held each loop's retry for the probe's whole timeout)."""
    listener = Listener(answers=True)
    async with listener as url:
        assert await wrong_address(url, aiohttp.ServerDisconnectedError()) is None
    assert listener.first_bytes and TLS_HANDSHAKE not in listener.first_bytes, listener.first_bytes


async def test_the_loops_meeting_one_closed_connection_probe_the_address_once() -> None:
    """The replicator, the catalog, the change feed and the reports fail together when the hub's connection drops:
    one probe of the address for all four (a plain request, then a TLS handshake), its verdict kept for the next
    failed turns a few seconds on, not a probe per loop per turn."""
    listener = Listener(answers=False)
    async with listener as url:
        err = aiohttp.ServerDisconnectedError()
        said = await asyncio.gather(*(wrong_address(url, err) for _ in range(4)))
        assert said == [None] * 4
        assert len(listener.first_bytes) == 2, listener.first_bytes
        assert listener.first_bytes[0] != TLS_HANDSHAKE  # the plain request first: a TLS port closes it unanswered
        assert await wrong_address(url, err) is None
        assert len(listener.first_bytes) == 2, "a second failed turn right after probed again"


async def test_an_https_hub_is_found_once_for_every_loop(tls_hub: str) -> None:
    err = aiohttp.ServerDisconnectedError()
    said = await asyncio.gather(*(wrong_address(f"http://{tls_hub}", err) for _ in range(3)))
    assert said == [f"the hub at {tls_hub} answers HTTPS, not plain HTTP: write https://{tls_hub} in hub_url"] * 3
