"""A back-office scanner's line of a far unusual quantity, held for a person: a real serial scanner on a
pseudo-terminal feeding a session opened over the local API on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import hardware
from agent.catalog import Catalog, make_item
from agent.config import ScannerSection
from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory
from agent.outbox import Outbox
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanService
from agent.sessions import SessionManager, SessionStore
from agent.sessions.router import SessionRouter
from protocol import Kind
from tests.agent.agent_scan_helpers import PtyDevice, eventually
from tests.agent.test_agent_localapi import APPLE, STAFF, Api

NUTS = "94006381333934"  # a variable-count item (indicator digit 9): its label's (30) says how many it holds
WAIT_S = 10.0


def nuts_label(count: int) -> bytes:
    return f"]C101{NUTS}30{count}".encode()


@dataclass
class Store:
    api: Api
    device: PtyDevice
    service: ScanService

    async def scan(self, *frames: bytes) -> None:
        """Write frames as the scanner does and wait until the agent has decided each one."""
        target = self.service.outcomes + len(frames)
        self.device.write(b"".join(f + b"\r\n" for f in frames))
        await self.service.wait_decided(target, WAIT_S)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, data: Path) -> AsyncIterator[Store]:
    """A store agent's sessions, scan service and local API over files in ``data``, its serial scanner ("dock", receive
    mode) on a pseudo-terminal under ``tmp_path``."""
    device = PtyDevice(tmp_path / "usb-Honeywell_Xenon_1900-if00")
    config = hardware.SerialScannerConfig(
        reader_id="dock", port=str(device.link), idle_gap_s=None, reconnect_initial_s=0.02, reconnect_max_s=0.1
    )
    # Store.scan writes its frames in one burst, scans one right after another: each is an item all the same.
    dock = ScannerSection(id="dock", type="serial", mode="receive", device=config, same_code_s=0.0)
    catalog = Catalog([make_item(APPLE, "SKU-APPLE"), make_item(NUTS, "SKU-NUTS")])
    try:
        async with (
            Outbox.open(data / "outbox.sqlite3", agent_id="store-a", location="S001") as outbox,
            SessionStore.open(data / "sessions.sqlite3") as sessions_store,
            ScanJournal.open(data / "scans.sqlite3") as journal,
        ):
            sessions = SessionManager(sessions_store, outbox, catalog=catalog)
            router = SessionRouter(sessions, ModeRouter(outbox, catalog, [dock], location="S001", journal=journal))
            context = LocalApiContext(sessions=sessions, outbox=outbox, staff=StaffDirectory(STAFF), readers=("dock",))
            async with (
                ScanService([dock], router, journal) as service,
                LocalApiServer(context, "127.0.0.1", 0) as server,
                aiohttp.ClientSession(
                    cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=20)
                ) as http,
            ):
                await service.wait_status("dock", available=True, timeout_s=WAIT_S)
                yield Store(Api(server.url, http, outbox, sessions), device, service)
    finally:
        device.unplug()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with running(tmp_path, tmp_path) as started:
        yield started


async def test_a_scanners_line_of_a_far_unusual_quantity_is_held_until_a_person_confirms_it_on_the_page(
    store: Store,
) -> None:
    """Found: a scanner bound to a delivery took a GS1 label whose count (30) said 250,000 nuts (a misprint) without
    a word, and the close booked them. Nobody stands at a back-office scanner to ask, so the line is held now: it
    is shown with its sentence in the session (``held``), counts for nothing, keeps the session from being closed
    (409, naming it), and is booked once a person confirms it on the session's page; one rejected is kept, undone,
    and never booked."""
    api = store.api
    await api.sign_in()
    opened = await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-5", "reader_id": "dock"}, 201)
    sid = opened["session"]["id"]
    await store.scan(nuts_label(300), nuts_label(250_000), b"]E0" + APPLE.encode(), nuts_label(99_999_999))

    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert sorted((t["sku"], t["qty"]) for t in view["totals"]) == [("SKU-APPLE", 1), ("SKU-NUTS", 300)]
    assert [(h["no"], h["qty"], h["source"], h["pending"]) for h in view["held"]] == [
        (2, 250_000, "scanner:dock", True),
        (4, 99_999_999, "scanner:dock", True),
    ]
    assert view["held"][0]["held"] == (
        "receiving 250,000 units of SKU-NUTS on one line is more than one line should hold (10,000)"
    )
    listed = (await api.ok("GET", "/api/v1/sessions"))["sessions"]
    assert [(x["id"], x["held"]) for x in listed] == [(sid, 2)]  # the home screen says so too
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/close", {})
    assert got == 409 and data["error"]["code"] == "conflict", data
    assert data["error"]["message"].startswith("line 2 (250,000 × SKU-NUTS from scanner:dock) and 1 more line"), data
    assert (await api.ok("GET", f"/api/v1/sessions/{sid}"))["session"]["status"] == "open"

    lines = f"/api/v1/sessions/{sid}/lines"
    confirmed = await api.ok("POST", f"{lines}/2/confirm", {})
    assert (confirmed["line"]["pending"], confirmed["line"]["decided_by"], confirmed["line"]["undone"]) == (
        False,
        "ana",
        False,
    )
    assert [h["no"] for h in confirmed["held"]] == [4]
    rejected = await api.ok("POST", f"{lines}/4/reject", {})
    assert (rejected["line"]["undone"], rejected["held"]) == (True, [])
    assert [x["held"] for x in (await api.ok("GET", "/api/v1/sessions"))["sessions"]] == [0]
    got, data = await api.call("POST", f"{lines}/4/confirm", {})
    assert got == 409 and "was rejected by ana" in data["error"]["message"], data
    got, data = await api.call("POST", f"{lines}/3/confirm", {})  # the apple: never held
    assert got == 409 and "was not held" in data["error"]["message"], data
    got, data = await api.call("POST", f"{lines}/9/confirm", {})
    assert got == 404 and data["error"]["message"] == f"session '{sid}' has no line 9", data
    got, data = await api.call("POST", f"{lines}/x/reject", {})
    assert got == 400, data

    closed = await api.ok("POST", f"/api/v1/sessions/{sid}/close", {})
    report = {line["sku"]: line["qty"] for line in closed["session"]["report"]["lines"]}
    assert report == {"SKU-APPLE": 1, "SKU-NUTS": 250_300}
    booked = sorted((ev.sku, ev.kind, ev.qty) for ev in await api.outbox.pending(10))
    assert booked == [("SKU-APPLE", Kind.RECEIVE, 1), ("SKU-NUTS", Kind.RECEIVE, 250_300)]


async def test_typed_incoming_and_counted_quantities_far_past_the_usual_are_asked(store: Store) -> None:
    """A receiving line of 1,000,000,000 and a count of 999,999 keyed on a handheld are answered 409
    ``unlikely_quantity`` with the sentence the page asks, and added only with ``confirm``."""
    api = store.api
    await api.sign_in()
    receipt = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-6"}, 201))["session"]
    count = (await api.ok("POST", "/api/v1/sessions", {"type": "count", "scope_skus": ["SKU-APPLE"]}, 201))["session"]
    tried: list[tuple[str, dict[str, Any], str]] = [
        (receipt["id"], {"sku": "SKU-APPLE", "qty": 1_000_000_000}, "receiving 1,000,000,000 units of SKU-APPLE"),
        (count["id"], {"code": APPLE, "qty": 999_999}, "counting 999,999 units of SKU-APPLE is far more than the 0"),
    ]
    for sid, body, said in tried:
        got, data = await api.call("POST", f"/api/v1/sessions/{sid}/scans", body)
        assert got == 409 and data["error"]["code"] == "unlikely_quantity", data
        assert data["error"]["message"].startswith(said), data
        assert (await api.ok("GET", f"/api/v1/sessions/{sid}"))["lines"] == []
        added = await api.ok("POST", f"/api/v1/sessions/{sid}/scans", {**body, "confirm": True}, 201)
        assert added["units"] == body["qty"], added


async def test_a_bound_scanners_scans_its_session_did_not_take_are_listed_on_the_session_until_seen(
    store: Store,
) -> None:
    """Found, black-box: a scanner bound to a delivery sent a label with a wrong check digit (line noise) and half a
    barcode (its cable pulled); both were refused, rightly, but only the agent's log and ``status`` on the back-office
    PC said so. The scanner beeps at every read, nobody at it reads that log, and the handheld showed the session as
    if every scan was in it: the delivery was closed short. The session's view lists them now (``not_added``,
    newest first, with the agent's sentence), the home screen counts them, and a person marks them seen."""
    api = store.api
    await api.sign_in()
    opened = await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-8", "reader_id": "dock"}, 201)
    sid = opened["session"]["id"]
    misread = APPLE[:-1] + str((int(APPLE[-1]) + 1) % 10)
    await store.scan(b"]E0" + APPLE.encode(), b"]E0" + misread.encode())
    store.device.write(b"]E04006")  # half a barcode, then the cable is pulled
    reader = store.service.readers["dock"]

    def holds_half_a_barcode() -> bool:  # a pty hands written bytes to the reading side a moment later
        link: Any = reader._link
        return link is not None and bool(link._splitter.pending)

    await eventually(holds_half_a_barcode, what="half a barcode read")
    decided = store.service.outcomes
    store.device.unplug()
    await store.service.wait_decided(decided + 1, WAIT_S)

    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert [(t["sku"], t["qty"]) for t in view["totals"]] == [("SKU-APPLE", 1)]
    assert [(n["code"], n["source"]) for n in view["not_added"]] == [
        ("]E04006", "scanner:dock"),
        ("]E0" + misread, "scanner:dock"),
    ]
    assert view["not_added"][0]["why"] == "The scan ']E04006' from scanner 'dock' was cut off; scan the item again."
    assert "has a wrong check digit" in view["not_added"][1]["why"]
    assert all(isinstance(n["at_ms"], int) for n in view["not_added"])
    listed = (await api.ok("GET", "/api/v1/sessions"))["sessions"]
    assert [(x["id"], x["not_added"]) for x in listed] == [(sid, 2)]

    seen = await api.ok("POST", f"/api/v1/sessions/{sid}/not_added/dismiss", {})
    assert seen["not_added"] == [] and seen["session"]["id"] == sid
    assert [x["not_added"] for x in (await api.ok("GET", "/api/v1/sessions"))["sessions"]] == [0]
