"""Scans on a full disk with the agent's disk reserve (agent.reserve): the data directory on a real 1 MiB tmpfs filled
to its last block, a serial scanner on a pseudo-terminal, a handheld on the local API over 127.0.0.1.

Found: every scan a full disk refused lived only in memory (the agent's for a bound scanner's, the log's for a
scanner booking its mode), and a restart or a power cut lost it. With a reserve, the full disk takes the scans
into the room it gives back, durably, and refuses them only once it is spent.
Mounting the tmpfs needs root on Linux (skipped elsewhere).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.reserve import Reserve
from tests.agent.test_agent_localapi import APPLE
from tests.agent.test_agent_localapi_held import Store, running
from tests.harness.small_disk import fill

APPLE_SCAN = b"]E0" + APPLE.encode()
RESERVE_BYTES = 256 << 10  # a small disk's reserve: a few steps
STEP_BYTES = 64 << 10
SCANS_MAX = 5_000  # the reserve is spent long before: the loop is bounded


@pytest.fixture
async def store(tmp_path: Path, small_disk: Path) -> AsyncIterator[tuple[Store, Reserve]]:
    """The data directory on the full-able disk, with the running agent's reserve beside the outbox."""
    async with running(tmp_path, small_disk / "data") as started:
        reserve = Reserve(small_disk / "data" / "outbox.sqlite3", RESERVE_BYTES, step=STEP_BYTES)
        await reserve.start()
        assert reserve.state().held == RESERVE_BYTES
        started.api.outbox.reserve = reserve
        started.api.sessions.store.reserve = reserve
        yield started, reserve


def _on_disk(outbox: Path) -> list[tuple[str, str, int]]:
    """The movements the outbox file holds, read by a connection of its own (as a restarted agent reads them)."""
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT source, sku, qty FROM events ORDER BY seq").fetchall()


async def test_scans_a_full_disk_refuses_are_stored_in_the_reserve_and_refused_only_once_it_is_spent(
    store: tuple[Store, Reserve], small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    started, reserve = store
    api = started.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-20"}, 201))["session"]["id"]
    ballast = fill(small_disk)
    caplog.set_level(logging.INFO)

    await started.scan(APPLE_SCAN)  # the dock's own mode: a receipt in the outbox
    outbox = small_disk / "data" / "outbox.sqlite3"
    assert _on_disk(outbox) == [("scanner:dock", "SKU-APPLE", 1)], "durable, not only in memory"
    await api.ok("POST", f"/api/v1/sessions/{sid}/scans", {"code": APPLE, "scan_id": "d" * 32}, 201)  # a handheld's
    with sqlite3.connect(f"file:{small_disk / 'data' / 'sessions.sqlite3'}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM lines WHERE session_id = ?", (sid,)).fetchone() == (1,)
    said = [r for r in caplog.records if r.name == "agent.reserve"]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    assert "is full" in said[0].getMessage() and "disk reserve" in said[0].getMessage()
    status = await api.ok("GET", "/api/v1/status")
    assert status["disk_reserve"]["in_use"] is True and status["disk_reserve"]["spent"] is False, status
    assert not [r for r in caplog.records if "was NOT recorded" in r.getMessage()]

    recorded = 1
    caplog.clear()
    for _ in range(SCANS_MAX):  # until the reserve is spent and the disk refuses a scan
        await started.scan(APPLE_SCAN)
        if any("was NOT recorded" in r.getMessage() for r in caplog.records):
            break
        recorded += 1
    else:
        pytest.fail(f"{SCANS_MAX} scans stored on a full disk with a reserve of {RESERVE_BYTES} bytes")
    assert reserve.state().spent
    spent = [r for r in caplog.records if r.name == "agent.reserve"]
    assert [(r.levelno, "is spent" in r.getMessage()) for r in spent] == [(logging.ERROR, True)], spent
    assert (await api.ok("GET", "/api/v1/status"))["disk_reserve"]["spent"] is True
    assert len(_on_disk(outbox)) == recorded, "every scan said stored is in the file, and none more"
    assert recorded > 2

    ballast.unlink()  # room again: the reserve is kept again (the running agent looks every CHECK_S)
    caplog.clear()
    assert await reserve.keep()
    assert reserve.state().held == RESERVE_BYTES
    assert any("holds its" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert (await api.ok("GET", "/api/v1/status"))["disk_reserve"]["in_use"] is False


async def test_a_bound_scanners_scans_on_a_full_disk_are_lines_of_its_session_not_kept_in_memory(
    store: tuple[Store, Reserve], small_disk: Path
) -> None:
    started, _ = store
    api = started.api
    await api.sign_in()
    sid = (await api.ok("POST", "/api/v1/sessions", {"type": "receive", "ref": "DN-21", "reader_id": "dock"}, 201))[
        "session"
    ]["id"]
    fill(small_disk)
    await started.scan(APPLE_SCAN, APPLE_SCAN)
    view = await api.ok("GET", f"/api/v1/sessions/{sid}")
    assert view["unstored"] == [] and len(view["lines"]) == 2, view
    with sqlite3.connect(f"file:{small_disk / 'data' / 'sessions.sqlite3'}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM lines WHERE session_id = ?", (sid,)).fetchone() == (2,)


async def test_the_reserve_serves_only_files_on_its_own_disk(tmp_path: Path, small_disk: Path) -> None:
    """A session store configured on another disk (sessions_db) gets no reserve: room given back on the outbox's disk
    cures nothing there, and each scan refused would have spent the whole reserve for nothing."""
    reserve = Reserve(small_disk / "outbox.sqlite3", RESERVE_BYTES, step=STEP_BYTES)
    assert reserve.on_disk_of(small_disk / "sessions.sqlite3")
    assert not reserve.on_disk_of(tmp_path / "sessions.sqlite3")
