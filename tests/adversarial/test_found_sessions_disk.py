"""Staff sessions on a full disk: the data directory (outbox, session store, scan journal) on a real 1 MiB tmpfs
filled to its last block, a handheld on the local API over 127.0.0.1 and a serial scanner on a pseudo-terminal.

Every refused write is said (the handheld's answer, an ERROR per refused scan) with what to do, nothing is
acknowledged and lost, a close is booked once, and all of it works again once there is room, without a restart.
Mounting the tmpfs needs root on Linux (skipped elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.outbox import Movement
from agent.scanning import PROBLEMS_SAID_MAX
from protocol import Kind
from tests.agent.test_agent_localapi import APPLE
from tests.agent.test_agent_localapi_held import Store, nuts_label, running
from tests.harness.small_disk import fill, sqlite_full

APPLE_SCAN = b"]E0" + APPLE.encode()


@pytest.fixture
async def store(tmp_path: Path, small_disk: Path) -> AsyncIterator[Store]:
    """The data directory on the full-able disk."""
    async with running(tmp_path, small_disk / "data") as started:
        yield started


@pytest.fixture
async def roomy_store(tmp_path: Path) -> AsyncIterator[Store]:
    """The data directory on the test's own disk: only the outbox is made full (SQLite's own SQLITE_FULL)."""
    async with running(tmp_path, tmp_path / "roomy" / "data") as started:
        yield started


def _says_disk_full(status: int, data: object) -> None:
    """507 Insufficient Storage, not 503: a 503 tells a client to come back soon, and a handheld or tool sending the
    same write again and again on a full disk gets nowhere until someone frees space."""
    assert status == 507, (status, data)
    assert data["error"]["code"] == "insufficient_storage", data  # type: ignore[index]
    message = data["error"]["message"]  # type: ignore[index]
    assert "the disk is full" in message and "free disk space" in message, message


async def test_a_full_disk_refuses_handheld_and_scanner_lines_a_confirm_and_a_close_and_all_resume_after(
    store: Store, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    api = store.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-9", "reader_id": "dock"}, 201))[
        "session"
    ]["id"]
    await store.scan(nuts_label(250_000))  # line 1: held for a person
    await api.ok(
        "POST", f"/api/v1/sessions/{sid}/scans", {"code": APPLE, "scan_id": "a" * 32, "made_ms": 1000}, 201
    )  # line 2
    other = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-8"}, 201))["session"]["id"]
    await api.ok("POST", f"/api/v1/sessions/{other}/scans", {"code": APPLE, "qty": 4, "scan_id": "c" * 32}, 201)
    ballast = fill(small_disk)

    got, data = await api.call(
        "POST", f"/api/v1/sessions/{sid}/scans", {"code": APPLE, "scan_id": "b" * 32, "made_ms": 5000}
    )
    _says_disk_full(got, data)
    refused = PROBLEMS_SAID_MAX + 2
    caplog.clear()
    await store.scan(*[APPLE_SCAN] * refused)
    said = [r for r in caplog.records if r.name.startswith("agent") and "dock" in r.getMessage()]
    not_added = [r for r in said if "was not added to receive session" in r.getMessage()]
    assert len(not_added) == refused, [r.getMessage() for r in said]  # every one, however many in a row
    assert all(r.levelno == logging.ERROR and "free disk space" in r.getMessage() for r in not_added)
    assert not any("line noise" in r.getMessage() for r in said)
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/lines/1/confirm", {})
    _says_disk_full(got, data)
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/close", {})
    # the held line keeps a close from going ahead (409) before the disk is asked; confirmed, it would be the disk
    assert got == 409 or "the disk is full" in data["error"]["message"], data
    got, data = await api.call("POST", f"/api/v1/sessions/{other}/close", {})
    _says_disk_full(got, data)
    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert [(x["no"], x["sku"], x["qty"]) for x in view["lines"]] == [(1, "SKU-NUTS", 250_000), (2, "SKU-APPLE", 1)]
    assert list(await api.outbox.pending(10)) == []

    ballast.unlink()  # room again: no restart
    await api.ok(
        "POST", f"/api/v1/sessions/{sid}/scans", {"code": APPLE, "scan_id": "b" * 32, "made_ms": 5000}, 201
    )  # line 3
    await store.scan(APPLE_SCAN)  # line 4
    await api.ok("POST", f"/api/v1/sessions/{sid}/lines/1/confirm", {})
    closed = await api.ok("POST", f"/api/v1/sessions/{sid}/close", {})
    report = {line["sku"]: line["qty"] for line in closed["session"]["report"]["lines"]}
    assert report == {"SKU-APPLE": 3, "SKU-NUTS": 250_000}
    assert (await api.ok("POST", f"/api/v1/sessions/{other}/close", {}))["session"]["status"] == "closed"
    booked = sorted((ev.source, ev.sku, ev.kind, ev.qty) for ev in await api.outbox.pending(10))
    assert booked == sorted(
        [
            (f"session:{sid}", "SKU-APPLE", Kind.RECEIVE, 3),
            (f"session:{sid}", "SKU-NUTS", Kind.RECEIVE, 250_000),
            (f"session:{other}", "SKU-APPLE", Kind.RECEIVE, 4),
        ]
    ), "each close booked once"


async def test_a_close_the_full_outbox_refuses_is_said_and_booked_once_when_sent_again_with_room(
    roomy_store: Store,
) -> None:
    api = roomy_store.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-10"}, 201))["session"]["id"]
    for i in range(5):
        await api.ok(
            "POST", f"/api/v1/sessions/{sid}/scans", {"code": APPLE, "scan_id": f"{i:032x}", "made_ms": i * 1000}, 201
        )  # a second apart
    db = api.outbox._db
    await db.outside_transaction(sqlite_full)
    with pytest.raises(OutboxError, match="the disk is full"):  # the rest of the room: the events' own pages
        while True:
            await api.outbox.record([Movement("S001", "TOTE", Kind.RECEIVE, 1, "api:filler")])
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/close", {})
    _says_disk_full(got, data)
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/close", {})
    _says_disk_full(got, data)
    assert "is open again" in data["error"]["message"], data
    # Nothing booked: the session is open again, as it was. Left closing, the page's Close and Cancel were disabled
    # and only a restart of the agent finished it.
    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert (view["session"]["status"], len(view["lines"])) == ("open", 5)
    assert [ev.sku for ev in await api.outbox.pending(1000) if ev.sku != "TOTE"] == []
    await db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    closed = await api.ok("POST", f"/api/v1/sessions/{sid}/close", {})
    assert closed["session"]["status"] == "closed"
    booked = [(ev.sku, ev.qty) for ev in await api.outbox.pending(1000) if ev.sku != "TOTE"]
    assert booked == [("SKU-APPLE", 5)]


async def test_a_bound_scanners_scans_a_full_disk_refuses_are_kept_on_the_sessions_page_and_added_once_sent_again(
    store: Store, small_disk: Path
) -> None:
    """Found by scanning a delivery at the dock into a session bound to the serial scanner while the disk was full:
    each refused scan was an ERROR in the agent's log and nothing else. The handheld showing the session said
    nothing, the scanner's status did not count them (its journal could not be written either), and once there was
    room the close booked the delivery short by every scan made meanwhile. The session now lists them (its view's
    ``unstored``, in the agent's memory) with the agent's sentence, and sending them again adds each once."""
    api = store.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-11", "reader_id": "dock"}, 201))[
        "session"
    ]["id"]
    await store.scan(APPLE_SCAN)
    ballast = fill(small_disk)
    await store.scan(APPLE_SCAN, nuts_label(12))

    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert len(view["lines"]) == 1
    unstored = view["unstored"]
    assert [(u["code"], u["source"]) for u in unstored] == [
        (APPLE_SCAN.decode(), "scanner:dock"),
        (nuts_label(12).decode(), "scanner:dock"),
    ]
    assert all("the disk is full" in u["why"] and "free disk space" in u["why"] for u in unstored), unstored
    listed = (await api.ok("GET", "/api/v1/sessions"))["sessions"]
    assert [(s["id"], s["unstored"]) for s in listed] == [(sid, 2)]  # on the home screen too
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/unstored", {})
    _says_disk_full(got, data)
    assert len((await api.ok("GET", f"/api/v1/sessions/{sid}"))["unstored"]) == 2, "still kept"

    ballast.unlink()
    sent = await api.ok("POST", f"/api/v1/sessions/{sid}/unstored", {})
    assert [(x["sku"], x["qty"], x["source"]) for x in sent["added"]] == [
        ("SKU-APPLE", 1, "scanner:dock"),
        ("SKU-NUTS", 12, "scanner:dock"),
    ]
    assert sent["unstored"] == [] and sent["refused"] == []
    again = await api.ok("POST", f"/api/v1/sessions/{sid}/unstored", {})  # a double tap: nothing more
    assert again["added"] == [] and len(again["lines"]) == 3
    closed = await api.ok("POST", f"/api/v1/sessions/{sid}/close", {})
    assert {x["sku"]: x["qty"] for x in closed["session"]["report"]["lines"]} == {"SKU-APPLE": 2, "SKU-NUTS": 12}
    assert sorted((ev.sku, ev.qty) for ev in await api.outbox.pending(10)) == [("SKU-APPLE", 2), ("SKU-NUTS", 12)]


async def test_a_close_booked_but_not_marked_closed_for_a_full_session_store_says_it_is_booked_and_closes_again_once(
    roomy_store: Store,
) -> None:
    """Found closing a delivery while the disk filled: the outbox took the close's movements, then the session store
    could not mark the session closed. The answer said "nothing of this write was recorded …; free disk space, then
    send it again" — the staff read the delivery as not booked, while its 60 movements were. It says they are booked
    now, and closing it again once there is room only marks it closed."""
    api = roomy_store.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-12"}, 201))["session"]["id"]
    for i in range(60):  # a report large enough to need pages the session store cannot have
        body = {"sku": f"SKU-{i:03d}-" + "X" * 40, "scan_id": f"{i:032x}"}
        await api.ok("POST", f"/api/v1/sessions/{sid}/scans", body, 201)
    db = api.sessions.store._db
    await db.outside_transaction(sqlite_full)  # the session store's file may grow no more (SQLITE_FULL)
    got, data = await api.call("POST", f"/api/v1/sessions/{sid}/close", {})
    _says_disk_full(got, data)
    message = data["error"]["message"]
    assert f"session {sid} is booked (60 movements are in the outbox)" in message, message
    assert "close it again once there is room: nothing is booked twice" in message, message
    assert (await api.ok("GET", f"/api/v1/sessions/{sid}"))["session"]["status"] == "closing"
    assert len(await api.outbox.pending(1000)) == 60
    await db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    closed = await api.ok("POST", f"/api/v1/sessions/{sid}/close", {})
    assert closed["session"]["status"] == "closed" and closed["session"]["report"]["events"] == 60
    assert len(await api.outbox.pending(1000)) == 60, "booked once"
