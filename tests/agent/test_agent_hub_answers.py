"""Every answer from the hub is read within a bound (agent.hub_loop.read_answer), and the backlog the hub
hears after a drain is the true one. Real HTTP on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator
from agent.catalog import AgentCatalog, CatalogError
from agent.hub_loop import AnswerTooLarge, broken, read_answer
from agent.pos import PosStore, Quarantined
from agent.pos.source import FileScan
from agent.reports import ReportSender
from protocol import Kind
from tests.agent.agent_fakehub import FakeHub

WAIT_S = 15.0
LIMIT_BYTES = 256 << 10
BIG_BYTES = 4 << 20


class AnswerServer:
    """A server on 127.0.0.1 that answers every method and path with ``_answer``; ``url`` once entered."""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class Oversized(AnswerServer):
    """A hub whose every answer is ``BIG_BYTES`` long: with Content-Length (``declared``) or chunked."""

    def __init__(self) -> None:
        super().__init__()
        self.declared = False
        self.requests = 0

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()
        if request.path == "/small":
            return web.Response(body=b"x" * 1000)
        if self.declared:
            return web.Response(body=bytes(BIG_BYTES), content_type="application/msgpack")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(BIG_BYTES // (64 << 10)):
                await resp.write(bytes(64 << 10))
        except (ConnectionError, RuntimeError):
            pass
        return resp


@pytest.fixture
async def oversized() -> AsyncIterator[Oversized]:
    async with Oversized() as hub:
        yield hub


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_read_answer_stops_at_the_limit_with_one_sentence(oversized: Oversized, declared: bool) -> None:
    oversized.declared = declared
    async with aiohttp.ClientSession() as http:
        async with http.get(oversized.url + "/small") as resp:
            assert await read_answer(resp, LIMIT_BYTES, "test answer") == b"x" * 1000
        async with http.get(oversized.url + "/big") as resp:
            with pytest.raises(
                AnswerTooLarge, match=r"the hub's test answer \(HTTP 200\) is .*more than the 262,144 bytes"
            ):
                await read_answer(resp, LIMIT_BYTES, "test answer")
        async with http.get(oversized.url + "/small") as resp:  # the session is still usable
            assert len(await read_answer(resp, LIMIT_BYTES, "test answer")) == 1000


async def test_the_replicator_fails_an_oversized_answer_once_and_keeps_retrying(
    oversized: Oversized, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.replicator")
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location="S001") as outbox:
        await outbox.record([Movement("S001", "SKU-1", Kind.RECEIVE, 3, "api:test")])
        replicator = Replicator(
            outbox, oversized.url, "token-1", tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05,
            answer_max_bytes=LIMIT_BYTES, rng=random.Random(3),
        )  # fmt: skip
        async with replicator:
            state = await asyncio.wait_for(replicator.wait_for(lambda s: s.failures >= 3), WAIT_S)
        stats = await outbox.stats()
    assert state.sync_state == "hub_error" and "more than the 262,144 bytes" in (state.last_error or "")
    assert (stats.backlog, stats.acked_seq, stats.sync_state) == (1, 0, "hub_error")
    first = [r for r in caplog.records if r.levelno >= logging.WARNING and "262,144" in r.getMessage()]
    assert len(first) == 1 and first[0].levelno == logging.ERROR


async def test_the_catalog_and_the_reports_bound_their_answers_too(oversized: Oversized, tmp_path: Path) -> None:
    oversized.declared = True
    async with AgentCatalog(hub_url=oversized.url, token="t", answer_max_bytes=LIMIT_BYTES, refresh_s=60) as catalog:
        with pytest.raises(CatalogError, match="catalog .* more than the 262,144 bytes"):
            await catalog.refresh()
        assert len(catalog.catalog) == 0  # the current (empty) catalog stays in use
    async with PosStore.open(tmp_path / "pos.sqlite3") as store:
        import_id = await store.begin_import(_scan(), "export.csv", "generic")
        await store.add_quarantine(import_id, "export.csv", "ab" * 32, [Quarantined(2, "qty is not a number", "A,x")])
        sender = ReportSender(
            store, oversized.url, "t", agent_id="store-1", location="S001", tick_s=0.2, retry_base_s=0.01,
            retry_max_s=0.05, answer_max_bytes=LIMIT_BYTES, rng=random.Random(1),
        )  # fmt: skip
        async with sender:
            state = await asyncio.wait_for(sender.wait_for(lambda s: s.failures >= 2), WAIT_S)
        assert "more than the 262,144 bytes" in (state.last_error or "")
        assert len(await store.pending_quarantine()) == 1  # not marked sent: it goes again later


def _scan() -> FileScan:
    return FileScan(Path("export.csv"), size_bytes=3, mtime_ms=0, sha256="ab" * 32, encoding="utf-8")


async def test_the_hub_hears_a_backlog_of_0_right_after_a_drain(tmp_path: Path) -> None:
    async with FakeHub() as hub, Outbox.open(tmp_path / "o.sqlite3", agent_id="store-1", location="S001") as outbox:
        await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "api:test") for _ in range(30)])
        replicator = Replicator(
            outbox, hub.url, "token-1", batch_size=10, tick_s=0.1, heartbeat_s=3600, rng=random.Random(5)
        )
        async with replicator:
            await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            # The last batch reported the backlog with itself in it; one empty request must follow with 0.
            await hub.wait_for(
                lambda: bool(hub.requests) and not hub.requests[-1].seqs and hub.requests[-1].backlog == 0
            )
        carrying = [r for r in hub.requests if r.seqs]
        assert [r.backlog for r in carrying] == [30, 20, 10]


class Redirecting(AnswerServer):
    """A hub address whose every answer is a redirect (status ``status``) to ``to``."""

    def __init__(self, status: int, to: str) -> None:
        super().__init__()
        self.status, self.to = status, to

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=self.status, headers={"Location": self.to + request.path_qs})


@pytest.mark.parametrize("status", [301, 307])
async def test_a_redirect_is_not_followed_and_says_where_it_points(
    status: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by pointing the replicator at a hub address that redirects elsewhere: a 307 resent the outbox's
    movements to the other address, and a 301 turned the sync into a GET whose 405 was blamed on hub_url."""
    async with (
        FakeHub() as elsewhere,
        Redirecting(status, elsewhere.url) as hub,
        Outbox.open(tmp_path / "o.sqlite3", agent_id="store-1", location="S001") as outbox,
    ):
        await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "api:test") for _ in range(3)])
        replicator = Replicator(
            outbox, hub.url, "token-1", tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05, rng=random.Random(5)
        )
        async with replicator:
            state = await asyncio.wait_for(
                replicator.wait_for(lambda s: s.failures >= 2 or s.credentials_refused), WAIT_S
            )
        stats = await outbox.stats()
    assert elsewhere.requests == []  # nothing went to the address the redirect named
    assert state.sync_state == "hub_error"
    assert f"redirects to '{elsewhere.url}/v1/sync' (HTTP {status})" in (state.last_error or ""), state.last_error
    assert "set hub_url to the hub's own address" in (state.last_error or "")
    assert (stats.backlog, stats.acked_seq) == (3, 0)


class Healthy(AnswerServer):
    """Another server, healthy: every GET /healthz is answered 200 and counted."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.probes += 1
        return web.json_response({"status": "ok"})


async def _status(config: Path, *extra: str) -> tuple[int, str, str]:
    """``python -m agent status`` as a real process (this loop serves the stand-ins meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", "--config", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("status", [301, 307])
async def test_status_does_not_follow_a_redirect_and_says_where_it_points(status: int, tmp_path: Path) -> None:
    """Found by pointing hub_url at an address that redirects to another, healthy server: `status` followed the
    redirect and reported the hub reachable, from a server the agent never syncs with."""
    async with Healthy() as elsewhere, Redirecting(status, elsewhere.url) as hub:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\nhub_url = "{hub.url}"\ntoken = "t-1"\n',
            encoding="utf-8",
        )
        async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id="store-1", location="S001"):
            pass
        code, out, err = await _status(config, "--json")
        report = json.loads(out)
        _, text, _ = await _status(config)
    assert elsewhere.probes == 0  # nothing asked the other server
    assert (code, report["hub_reachable_now"]) == (3, False), err  # 3: no agent runs, which comes before 4
    said = f"the hub at {hub.url}/healthz redirects to '{elsewhere.url}/healthz' (HTTP {status})"
    assert report["hub_probe"].startswith(said), report["hub_probe"]
    assert report["hub_probe"].endswith("which this agent does not follow; set hub_url to the hub's own address")
    assert f"NOT reachable: {said}" in text, text


@pytest.mark.parametrize(
    ("err", "said"),
    [
        (aiohttp.ClientPayloadError("Response payload is not completed: <ContentLengthError: 400, …>"),
         "it broke before the whole answer arrived"),
        (aiohttp.ServerDisconnectedError(), "it was closed before an answer came"),
        (aiohttp.ClientOSError(None, "Can not write request body for http://hub"),
         "it broke while the request was being sent"),
        (aiohttp.ClientOSError(32, "Can not write request body for http://hub"),
         "it broke while the request was being sent (Broken pipe)"),
    ],
)  # fmt: skip
def test_a_broken_connection_is_said_in_the_agents_words(err: aiohttp.ClientError, said: str) -> None:
    assert broken(err) == said


class CaptivePortal(AnswerServer):
    """A captive portal in the hub's place: every address is answered 200 with its login page."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        page = "<!DOCTYPE html><html><head><title>Welcome to StoreWiFi</title></head><body>Accept</body></html>"
        return web.Response(text=page, content_type="text/html")


async def test_status_does_not_count_a_captive_portal_as_the_hub(tmp_path: Path) -> None:
    """Found by putting a captive portal in front of the hub: `status` reported the hub reachable (exit 0 with an
    agent running) from the portal's 200, while every sync met the portal's page."""
    async with CaptivePortal() as portal:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\nhub_url = "{portal.url}"\ntoken = "t-1"\n',
            encoding="utf-8",
        )
        async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id="store-1", location="S001"):
            pass
        code, out, err = await _status(config, "--json")
        report = json.loads(out)
    assert (code, report["hub_reachable_now"]) == (3, False), err  # 3: no agent runs, which comes before 4
    said = f"{portal.url}/healthz was answered by an HTML page titled 'Welcome to StoreWiFi' (HTTP 200), not by the hub"
    assert report["hub_probe"].startswith(said), report["hub_probe"]


FILTER_PAGE = b"<html><head><title>Access Denied</title></head><body><h1>Blocked by policy</h1></body></html>"
PORTAL_PAGE = b"<!DOCTYPE html><html><head><title>Welcome to StoreWiFi</title></head><body>Accept</body></html>"


class Middlebox(AnswerServer):
    """What answers in the hub's place: an HTML page (``status``, ``page``), or (``cut``) an answer whose head
    promises more than is sent before the connection closes."""

    def __init__(self, status: int = 200, page: bytes = b"", *, cut: bool = False) -> None:
        super().__init__()
        self.status, self.page, self.cut = status, page, cut

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if not self.cut:
            return web.Response(status=self.status, body=self.page, content_type="text/html")
        resp = web.StreamResponse(headers={"Content-Type": "application/msgpack", "Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"\x82")
        assert request.transport is not None
        request.transport.close()
        return resp


@pytest.mark.parametrize(
    ("box", "said", "level"),
    [
        (lambda: Middlebox(403, FILTER_PAGE), "answered by an HTML page titled 'Access Denied' (HTTP 403), not by the hub",
         logging.WARNING),
        (lambda: Middlebox(200, PORTAL_PAGE),
         "answered by an HTML page titled 'Welcome to StoreWiFi' (HTTP 200), not by the hub", logging.WARNING),
        (lambda: Middlebox(cut=True), "failed (it broke before the whole answer arrived)", logging.WARNING),
    ],
    ids=["web-filter-403", "portal-200", "cut-answer"],
)  # fmt: skip
async def test_the_reports_say_what_answered_in_the_hubs_place(
    box: Any, said: str, level: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by sending reports through a web filter and a captive portal: the filter's 403 page was logged at
    ERROR as the hub refusing this agent's credentials (and retried only every auth_retry_s), the portal's 200
    as an answer that 'could not be decoded', a cut answer in aiohttp's words."""
    caplog.set_level(logging.DEBUG, logger="agent.reports")
    async with box() as middlebox, PosStore.open(tmp_path / "pos.sqlite3") as store:
        import_id = await store.begin_import(_scan(), "export.csv", "generic")
        await store.add_quarantine(import_id, "export.csv", "ab" * 32, [Quarantined(2, "qty is not a number", "A,x")])
        sender = ReportSender(
            store, middlebox.url, "t", agent_id="store-1", location="S001", tick_s=0.2, retry_base_s=0.01,
            retry_max_s=0.05, auth_retry_s=60, rng=random.Random(1),
        )  # fmt: skip
        async with sender:
            state = await asyncio.wait_for(sender.wait_for(lambda s: s.failures >= 2), WAIT_S)
        assert len(await store.pending_quarantine()) == 1  # nothing marked sent: it goes again later
    assert said in (state.last_error or ""), state.last_error
    assert "credentials" not in (state.last_error or "") and "<" not in (state.last_error or "")
    first = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in first] == [level], [r.getMessage() for r in first]


GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


class BundlesThenMiddlebox(AnswerServer):
    """A hub whose catalog is empty and whose bundle list is GIFT-SET, until ``page`` (status, body) answers
    GET /v1/bundles in its place."""

    def __init__(self) -> None:
        super().__init__()
        self.page: tuple[int, bytes] | None = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/bundles":
            if self.page is not None:
                return web.Response(status=self.page[0], body=self.page[1], content_type="text/html")
            return web.json_response({"bundles": [{"sku": "GIFT-SET"}], "next": None})
        return web.json_response({"version": 1, "items": []})


@pytest.mark.parametrize(
    ("page", "said"),
    [
        ((502, GATEWAY_PAGE), "answered by an HTML page titled '502 Bad Gateway' (HTTP 502), not by the hub"),
        ((200, PORTAL_PAGE), "answered by an HTML page titled 'Welcome to StoreWiFi' (HTTP 200), not by the hub"),
        ((404, PORTAL_PAGE), "answered by an HTML page titled 'Welcome to StoreWiFi' (HTTP 404), not by the hub"),
    ],
    ids=["gateway-502", "portal-200", "portal-404"],
)
async def test_the_bundle_list_says_what_answered_in_the_hubs_place(page: tuple[int, bytes], said: str) -> None:
    """Found by refreshing the catalog through a proxy's 502 page and a portal: the bundle list was said as 'the
    hub's bundle list could not be read (Expecting value: line 1 column 1 (char 0))' or quoted the page's markup,
    and a portal's 404 page was taken for a hub without bundles, forgetting the bundle SKUs the agent knew."""
    async with BundlesThenMiddlebox() as hub, AgentCatalog(hub_url=hub.url, token="t", refresh_s=60) as catalog:
        await catalog.refresh()
        assert catalog.is_bundle("GIFT-SET") is True
        hub.page = page
        with pytest.raises(CatalogError) as raised:
            await catalog.refresh()
        assert catalog.is_bundle("GIFT-SET") is True  # what was known is kept
    assert f"{hub.url}/v1/bundles was {said}" in str(raised.value), raised.value
    assert "<" not in str(raised.value) and "Expecting value" not in str(raised.value)


async def test_status_says_a_cut_health_answer_in_the_agents_words(tmp_path: Path) -> None:
    """An answer whose head promises 1,000 bytes and whose connection closes after one: `status` quoted aiohttp's
    ``<ContentLengthError: 400, …>`` (a 400 nobody sent) where the replicator says what happened."""
    async with Middlebox(cut=True) as box:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\nhub_url = "{box.url}"\ntoken = "t-1"\n',
            encoding="utf-8",
        )
        async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id="store-1", location="S001"):
            pass
        code, out, err = await _status(config, "--json")
    report = json.loads(out)
    assert (code, report["hub_reachable_now"]) == (3, False), err
    assert "it broke before the whole answer arrived" in report["hub_probe"], report["hub_probe"]
    assert "ContentLengthError" not in report["hub_probe"] and "400" not in report["hub_probe"]


class OtherJsonService(AnswerServer):
    """Another web service's JSON where the hub was expected (hub_url one port off, or a proxy's JSON answer),
    except ``GET /v1/catalog`` and ``GET /v1/bundles`` while ``hub_for_catalog`` is set (then the hub's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.hub_for_catalog = False

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.hub_for_catalog and request.path == "/v1/catalog":
            return web.json_response({"version": 1, "items": []})
        if self.hub_for_catalog and request.path == "/v1/bundles":
            return web.json_response({"bundles": [{"sku": "GIFT-SET"}], "next": None})
        return web.json_response({"status": "ok", "service": "metrics-exporter"})


FOREIGN_JSON = "answered JSON that is not a shelfsync hub's"


async def test_json_that_is_not_the_hubs_is_said_as_that_by_every_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by pointing hub_url at another JSON service: the change feed logged at ERROR 'the hub's change feed
    page could not be read (changes: must be a list …)', the catalog 'the hub's catalog could not be read …', the
    bundle list "the hub's bundle list could not be read ('bundles')", all blaming a hub that never answered.
    Each now says, in one sentence naming the URL, that the address answered JSON that is not a shelfsync hub's."""
    from agent.feed import CountFeed

    caplog.set_level(logging.DEBUG, logger="agent")
    async with OtherJsonService() as other:
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location="S001") as outbox:
            async with CountFeed(outbox, other.url, "t", wait_s=0.0, retry_base_s=0.01, retry_max_s=0.02) as feed:
                state = await asyncio.wait_for(feed.wait_for(lambda s: s.failures >= 2), WAIT_S)
            assert (await outbox.feed_position()).cursor == 0  # nothing stored from it
            await outbox.record([Movement("S001", "SKU-1", Kind.RECEIVE, 3, "api:test")])
            replicator = Replicator(outbox, other.url, "t", tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05)
            async with replicator:
                synced = await asyncio.wait_for(replicator.wait_for(lambda s: s.failures >= 1), WAIT_S)
            assert (await outbox.stats()).backlog == 1
        said = f"{other.url}/v1/changes {FOREIGN_JSON}"
        assert (state.last_error or "").startswith(said) and FOREIGN_JSON in (state.last_error or ""), state
        assert "(it has no changes, cursor or more)" in (state.last_error or "")
        feed_lines = [r for r in caplog.records if r.name == "agent.feed" and r.levelno >= logging.WARNING]
        assert [r.levelno for r in feed_lines] == [logging.WARNING], [r.getMessage() for r in feed_lines]
        assert synced.sync_state == "intercepted" and FOREIGN_JSON in (synced.last_error or ""), synced
        assert (synced.last_error or "").startswith(f"{other.url}/v1/sync answered JSON")

        catalog = AgentCatalog(hub_url=other.url, token="t", refresh_s=60)
        try:
            with pytest.raises(CatalogError) as raised:
                await catalog.refresh()
            assert f"{other.url}/v1/catalog {FOREIGN_JSON} (it has no version or items)" in str(raised.value)
            other.hub_for_catalog = True
            await catalog.refresh()
            assert catalog.is_bundle("GIFT-SET") is True
            other.hub_for_catalog = False
            with pytest.raises(CatalogError) as raised:
                await catalog.refresh()
            assert catalog.is_bundle("GIFT-SET") is True  # what was known is kept
        finally:
            await catalog.stop()
        assert f"{other.url}/v1/catalog {FOREIGN_JSON}" in str(raised.value)

        async with PosStore.open(tmp_path / "pos.sqlite3") as store:
            import_id = await store.begin_import(_scan(), "export.csv", "generic")
            await store.add_quarantine(import_id, "export.csv", "ab" * 32, [Quarantined(2, "bad qty", "A,x")])
            sender = ReportSender(
                store, other.url, "t", agent_id="store-1", location="S001", tick_s=0.2, retry_base_s=0.01,
                retry_max_s=0.05, rng=random.Random(1),
            )  # fmt: skip
            async with sender:
                reported = await asyncio.wait_for(sender.wait_for(lambda s: s.failures >= 1), WAIT_S)
            assert len(await store.pending_quarantine()) == 1
        assert (reported.last_error or "").startswith(f"{other.url}/v1/import-issues {FOREIGN_JSON}"), reported
    for record in caplog.records:
        assert "the hub's" not in record.getMessage() or FOREIGN_JSON in record.getMessage(), record.getMessage()


async def test_the_bundle_list_names_json_that_is_not_the_hubs() -> None:
    """The bundle list alone (the catalog answered by the hub): its foreign JSON is said, and nothing forgotten."""
    async with BundlesThenJson() as hub, AgentCatalog(hub_url=hub.url, token="t", refresh_s=60) as catalog:
        await catalog.refresh()
        hub.foreign = True
        with pytest.raises(CatalogError) as raised:
            await catalog.refresh()
        assert catalog.is_bundle("GIFT-SET") is True
    assert str(raised.value) == (
        f"{hub.url}/v1/bundles {FOREIGN_JSON} (it is a list, not an object): hub_url names another service,"
        " or a proxy answers in the hub's place"
    )


class BundlesThenJson(AnswerServer):
    """The hub's catalog and bundle list, until ``foreign``: then a JSON list answers GET /v1/bundles."""

    def __init__(self) -> None:
        super().__init__()
        self.foreign = False

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/bundles":
            if self.foreign:
                return web.json_response([{"id": 1}])
            return web.json_response({"bundles": [{"sku": "GIFT-SET"}], "next": None})
        return web.json_response({"version": 1, "items": []})


async def test_status_does_not_count_another_services_health_json_as_the_hub(tmp_path: Path) -> None:
    """Found with hub_url one port off, at a metrics exporter: `status` called the hub reachable from the
    exporter's {"status": "ok"} at /healthz while every sync met JSON that is not a hub's."""
    async with OtherJsonService() as other:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\nhub_url = "{other.url}"\ntoken = "t-1"\n',
            encoding="utf-8",
        )
        async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id="store-1", location="S001"):
            pass
        code, out, err = await _status(config, "--json")
        report = json.loads(out)
    assert (code, report["hub_reachable_now"]) == (3, False), err
    assert report["hub_probe"] == (
        f"{other.url}/healthz {FOREIGN_JSON} (it has no db): hub_url names another service, or a proxy answers in"
        " the hub's place"
    )
