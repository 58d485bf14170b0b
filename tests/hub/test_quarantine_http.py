"""``GET /v1/quarantine`` and ``POST /v1/quarantine/{id}`` over real HTTP on 127.0.0.1.

Events are held the way an agent's are: a ``POST /v1/sync`` of a count stamped a century ahead, and of
sales from a machine whose clock was set back six months. Every refusal is one sentence saying what to do.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from tests.harness.inprocess import hub_in_process

DAY_MS = 86_400_000
CENTURY_MS = 36_525 * DAY_MS
HALF_YEAR_MS = 182 * DAY_MS


@dataclass
class Hub:
    client: TestClient[Any, Any]
    store: HubStore
    agent_id: str
    agent: str
    reader: str
    admin: str
    admin_id: str
    seq: itertools.count[int]

    async def sync(self, *moves: tuple[Kind, int, int], sent_ms: int | None = None, location: str = "S1") -> Any:
        """POST /v1/sync (kind, qty, wall ms) moves as this hub's agent; the decoded answer."""
        events = tuple(
            StockEvent(new_event_id(), self.agent_id, 1, next(self.seq), location, "SKU-1", kind, qty,
                       pack_hlc(at_ms, 0), at_ms, "api:test")
            for kind, qty, at_ms in moves
        )  # fmt: skip
        body = encode_sync_request(SyncRequest(self.agent_id, 1, events, sent_ms=sent_ms))
        headers = {"Authorization": f"Bearer {self.agent}", "Content-Type": MSGPACK_CONTENT_TYPE}
        async with self.client.post("/v1/sync", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return decode_sync_response(await resp.read())

    async def get(self, path: str, token: str) -> tuple[int, Any]:
        async with self.client.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, token: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with self.client.post(path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def held(self) -> list[dict[str, Any]]:
        status, body = await self.get("/v1/quarantine", self.reader)
        assert status == 200, body
        rows: list[dict[str, Any]] = body["quarantine"]
        return rows

    async def on_hand(self) -> int:
        status, body = await self.get("/v1/locations/S1/counts", self.reader)
        assert status == 200, body
        return next((r["on_hand"] for r in body["counts"] if r["sku"] == "SKU-1"), 0)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with hub_in_process(tmp_path / "hub.db") as served:
        store = served.store
        agent_id, agent = await store.add_agent(["S1", "S2"])
        _, reader = await store.add_agent([], role="reader")
        admin_id, admin = await store.add_agent([], role="admin")
        yield Hub(served.client, store, agent_id, agent, reader, admin, admin_id, itertools.count(1))


async def held_count(hub: Hub) -> dict[str, Any]:
    """A receipt of 10, then a count of 50 stamped a century ahead: held. Returns the held row."""
    now = wall_ms_now()
    answer = await hub.sync((Kind.RECEIVE, 10, now - 60_000), (Kind.COUNT, 50, now + CENTURY_MS), sent_ms=now)
    assert answer.hwm == 2 and [r.code for r in answer.rejected] == ["quarantined"]
    [row] = await hub.held()
    return row


def one_sentence(error: dict[str, Any]) -> str:
    message: str = error["detail"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 300, message
    return message


async def test_a_reader_lists_what_is_held_and_an_admin_applies_it_once(hub: Hub) -> None:
    row = await held_count(hub)
    assert (row["kind"], row["qty"], row["status"], row["attempts"]) == ("count", 50, "pending", 1)
    assert row["skew_ms"] > CENTURY_MS - DAY_MS and row["occurred"].startswith("21")
    assert await hub.on_hand() == 10
    status, body = await hub.post(f"/v1/quarantine/{row['id']}", hub.admin, {"action": "apply_at_receipt"})
    assert status == 200, body
    assert (body["quarantine"]["status"], body["quarantine"]["resolved_by"]) == ("applied", hub.admin_id)
    assert await hub.on_hand() == 50

    status, again = await hub.post(f"/v1/quarantine/{row['id']}", hub.admin, {"action": "apply_at_receipt"})
    assert status == 409 and "already applied" in one_sentence(again) and "nothing was changed" in one_sentence(again)
    status, again = await hub.post(f"/v1/quarantine/{row['id']}", hub.admin, {"action": "discard"})
    assert status == 409, again
    assert await hub.on_hand() == 50, "applied once, whatever came after"
    status, ledger = await hub.get("/v1/ledger?location=S1", hub.reader)
    assert [e["kind"] for e in ledger["events"] if e["effect"] != "rejected"].count("count") == 1

    assert await hub.held() == []
    status, applied = await hub.get("/v1/quarantine?status=applied", hub.reader)
    assert [r["id"] for r in applied["quarantine"]] == [row["id"]]


async def test_a_sender_whose_clock_is_set_back_six_months_is_held_by_its_sent_clock(hub: Hub) -> None:
    now = wall_ms_now()
    set_back = now - HALF_YEAR_MS
    # A credential made just now: the stamps two days back are before it, so held by that rule already; a
    # stamp from an hour ago from this machine is applied (inside the window), one from a right clock too.
    answer = await hub.sync((Kind.SALE, -1, now - 3_600_000), (Kind.SALE, -2, now - 2 * DAY_MS), sent_ms=set_back)
    assert [r.code for r in answer.rejected] == ["quarantined"]
    _status, body = await hub.get("/v1/agents", hub.reader)
    [me] = [a for a in body["agents"] if a["agent_id"] == hub.agent_id]
    assert abs(me["clock_skew_ms"] - HALF_YEAR_MS) < 60_000, "the hub sees this machine six months behind"


async def test_refusals_of_post_say_what_to_do(hub: Hub) -> None:
    row = await held_count(hub)
    path = f"/v1/quarantine/{row['id']}"
    apply = {"action": "apply_at_receipt"}

    status, err = await hub.post("/v1/quarantine/999999", hub.admin, apply)
    assert status == 404 and "there is no held event 999999; GET /v1/quarantine lists them" == one_sentence(err)
    for bad_id in ("abc", "0", "-1", "1e3", "9" * 19):
        status, err = await hub.post(f"/v1/quarantine/{bad_id}", hub.admin, apply)
        assert status == 400 and "is not a quarantine id" in one_sentence(err), (bad_id, err)
    for body in (
        {"action": "apply"},
        {"action": "APPLY_AT_RECEIPT"},
        {"action": None},
        {"action": "discard", "why": "typo"},
        {},
        [],
        "discard",
    ):
        status, err = await hub.post(path, hub.admin, body)  # type: ignore[arg-type]
        assert status == 400, (body, err)
        assert 'the body must be {"action": "apply_at_receipt"} or {"action": "discard"}' == one_sentence(err)
    for raw in (b"", b"{", b'{"action": "discard"', b"\xff\xfe", b"NaN"):
        status, err = await hub.post(path, hub.admin, raw)
        assert status == 400 and "not valid JSON" in one_sentence(err), (raw, err)
    status, err = await hub.post(path, hub.admin, b'{"action": "discard", "pad": "' + b"x" * 2_000 + b'"}')
    assert status == 413 and "under 1024 bytes" in one_sentence(err)

    for token, role in ((hub.reader, "reader"), (hub.agent, "agent")):
        status, err = await hub.post(path, token, apply)
        assert status == 403 and f"{role} credential cannot resolve held events" in one_sentence(err)
    async with hub.client.post(path, json=apply) as resp:  # no credential (a dashboard cookie never writes here)
        assert resp.status == 401
    status, err = await hub.post(path, "not-a-token", apply)
    assert status == 401, err

    [still] = await hub.held()
    assert (still["status"], still["attempts"]) == ("pending", 1), "no refused request changed anything"
    assert await hub.on_hand() == 10


async def test_discard_keeps_it_out_of_the_counts_and_in_the_ledger(hub: Hub) -> None:
    row = await held_count(hub)
    status, body = await hub.post(f"/v1/quarantine/{row['id']}", hub.admin, {"action": "discard"})
    assert status == 200 and body["quarantine"]["status"] == "discarded"
    assert await hub.on_hand() == 10
    status, again = await hub.post(f"/v1/quarantine/{row['id']}", hub.admin, {"action": "apply_at_receipt"})
    assert status == 409 and "already discarded" in one_sentence(again)
    assert await hub.on_hand() == 10
    status, ledger = await hub.get("/v1/ledger?location=S1", hub.reader)
    assert [e["rejection_code"] for e in ledger["events"] if e["effect"] == "rejected"] == ["discarded"]


async def test_get_filters_and_limits(hub: Hub) -> None:
    now = wall_ms_now()
    for i in range(5):
        await hub.sync((Kind.SALE, -1, now + CENTURY_MS + i), sent_ms=now)
    await hub.sync((Kind.SALE, -1, now + CENTURY_MS), sent_ms=now, location="S2")
    newest_first = [r["id"] for r in (await hub.held())]
    assert newest_first == sorted(newest_first, reverse=True) and len(newest_first) == 6
    pages: list[list[int]] = []
    query = "limit=4"
    while True:  # the ledger's cursor convention: send next back unchanged until it is null
        status, body = await hub.get(f"/v1/quarantine?{query}", hub.admin)
        assert status == 200, body
        pages.append([r["id"] for r in body["quarantine"]])
        if body["next"] is None:
            break
        query = f"limit=4&cursor={body['next']}"
    assert pages == [newest_first[:4], newest_first[4:]], "every held event once, in order"
    # Resolved during the walk: the pending list's next page neither skips nor repeats what is left.
    status, first = await hub.get("/v1/quarantine?limit=3", hub.admin)
    await hub.post(f"/v1/quarantine/{newest_first[1]}", hub.admin, {"action": "discard"})
    status, second = await hub.get(f"/v1/quarantine?limit=3&cursor={first['next']}", hub.admin)
    assert [r["id"] for r in first["quarantine"] + second["quarantine"]] == newest_first
    assert second["next"] is None
    status, body = await hub.get("/v1/quarantine?location=S2", hub.reader)
    assert [r["location"] for r in body["quarantine"]] == ["S2"]
    status, body = await hub.get("/v1/quarantine?status=all&limit=1000", hub.reader)
    assert status == 200 and len(body["quarantine"]) == 6 and body["next"] is None
    assert len(await hub.held()) == 5, "the discarded one left the pending list"
    await hub.sync((Kind.RECEIVE, 1, now), (Kind.RECEIVE, 1, now), sent_ms=now)
    status, ledger = await hub.get("/v1/ledger?limit=1", hub.reader)
    assert ledger["next"] is not None

    for query, needle in (
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=x", "limit must be a whole number"),
        ("status=held", "status must be one of pending, applied, discarded or all"),
        ("location=a%20b", "location"),
        ("before=3", "unknown query parameter(s) before"),
        ("limit=1&limit=2", "given more than once"),
        ("cursor=abc", "cursor is not one this hub gave out for the quarantine"),
        (f"cursor={first['next'][:-2]}", "cursor is not one this hub gave out"),
        (f"cursor={ledger['next']}", "cursor is not one this hub gave out"),  # another route's
    ):
        status, err = await hub.get(f"/v1/quarantine?{query}", hub.reader)
        assert status == 400 and needle in one_sentence(err), (query, err)
    status, err = await hub.get("/v1/quarantine", hub.agent)
    assert status == 403 and "agent credential cannot read the quarantine" in one_sentence(err)


async def test_release_takes_only_what_the_hubs_own_clock_held_and_refuses_others_than_admins(hub: Hub) -> None:
    """A count held for the store's own clock (a century ahead) has no ``hub_clock_off_ms`` and is never released
    by ``POST /v1/quarantine/release``; nothing else is held, so it releases nothing. Readers and agents are refused,
    and a body other than none or ``{}`` too."""
    row = await held_count(hub)
    assert row["hub_clock_off_ms"] is None
    for token, role in ((hub.reader, "reader"), (hub.agent, "agent")):
        status, err = await hub.post("/v1/quarantine/release", token, b"")
        assert status == 403 and f"{role} credential cannot release held events" in one_sentence(err)
    status, err = await hub.post("/v1/quarantine/release", hub.admin, {"action": "discard"})
    assert status == 400 and "the body must be empty or {}" in one_sentence(err)
    for body in (b"", b"{}"):
        status, answer = await hub.post("/v1/quarantine/release", hub.admin, body)
        assert (status, answer) == (200, {"released": 0, "left": 0})
    [still] = await hub.held()
    assert (still["id"], still["status"]) == (row["id"], "pending")
    assert await hub.on_hand() == 10
