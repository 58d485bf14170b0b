"""``GET /v1/agents`` and ``GET /v1/quarantine`` as CSV, over real HTTP on 127.0.0.1 against a real SQLite hub:
the two tables the dashboard shows (Stores, Quarantine) download as spreadsheets like every other list — the
whole list, every page walked, the same rows as JSON, 63-bit epochs exact, one-sentence 400s.
"""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, csvexport
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    event_id_hex,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)

CSV_TYPE = "text/csv; charset=utf-8; header=present"
DAY_MS = 86_400_000
CENTURY_MS = 36_525 * DAY_MS
HUGE_EPOCH = (1 << 62) + 1  # past what a spreadsheet's (or JavaScript's) double holds exactly
HELD = 7  # more than the two-row pages the walk is given below


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sync(client: TestClient[Any, Any], token: str, agent_id: str, epoch: int, events: list[StockEvent]) -> Any:
    resp = await client.post(
        "/v1/sync",
        data=encode_sync_request(SyncRequest(agent_id, epoch, tuple(events), sent_ms=wall_ms_now())),
        headers=bearer(token) | {"Content-Type": MSGPACK_CONTENT_TYPE},
    )
    assert resp.status == 200, await resp.text()
    return decode_sync_response(await resp.read())


def moves(agent_id: str, epoch: int, location: str, stamps_ms: list[int], first_seq: int = 1) -> list[StockEvent]:
    seq = itertools.count(first_seq)
    return [
        StockEvent(new_event_id(), agent_id, epoch, next(seq), location, "TEE-BLK-M", Kind.SALE, -1 - i,
                   pack_hlc(at, 0), at, "scanner:till-1", f"=R-{i}")
        for i, at in enumerate(stamps_ms)
    ]  # fmt: skip


async def get_csv(client: TestClient[Any, Any], path: str, headers: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
    async with client.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == CSV_TYPE
        disposition = resp.headers["Content-Disposition"]
        text = (await resp.read()).decode("utf-8")
    assert text.endswith("\r\n")
    return disposition, list(csv.DictReader(io.StringIO(text, newline="")))


async def test_the_agents_list_as_csv_is_one_row_per_credential_with_its_epoch_exact(
    client: TestClient[Any, Any], store: HubStore
) -> None:
    _, reader = await store.add_agent([], role="reader")
    two_stores, token = await store.add_agent(["S001", "S002"])
    quiet, _ = await store.add_agent(["S003"])
    gone, _ = await store.add_agent(["S004"])
    await store.revoke_agent(gone)
    now = wall_ms_now() - 60_000
    answer = await sync(client, token, two_stores, 1, moves(two_stores, 1, "S001", [now, now + 1]))
    assert not answer.rejected
    answer = await sync(client, token, two_stores, HUGE_EPOCH, moves(two_stores, HUGE_EPOCH, "S002", [now + 2] * 3))
    assert not answer.rejected  # a second epoch: the outbox was restored (its mark starts again)

    disposition, rows = await get_csv(client, "/v1/agents", bearer(reader) | {"Accept": "text/csv"})
    assert disposition.startswith('attachment; filename="agents-') and disposition.endswith('.csv"')
    async with client.get("/v1/agents", headers=bearer(reader)) as resp:
        listed = (await resp.json())["agents"]
    assert [r["agent_id"] for r in rows] == [a["agent_id"] for a in listed]  # the JSON list's rows, in its order
    assert list(rows[0]) == list(csvexport.AGENT_HEADER)
    by_id = {r["agent_id"]: r for r in rows}
    busy = by_id[two_stores]
    assert (busy["role"], busy["revoked"], busy["locations"]) == ("agent", "false", "S001 S002")
    assert (busy["epoch"], busy["hwm"], busy["epochs"]) == (str(HUGE_EPOCH), "3", "2")  # the current epoch, exact
    assert busy["last_sync"].endswith("Z") and busy["clock_skew_ms"].lstrip("-").isdigit()
    assert (by_id[quiet]["last_sync"], by_id[quiet]["epoch"], by_id[quiet]["epochs"]) == ("", "", "0")
    assert by_id[gone]["revoked"] == "true"
    assert {r["role"] for r in rows} == {"agent", "reader"}

    _, same = await get_csv(client, "/v1/agents?format=csv", bearer(reader))
    assert [r["agent_id"] for r in same] == [r["agent_id"] for r in rows]
    async with client.get("/v1/agents?format=csv&limit=2", headers=bearer(reader)) as resp:
        assert resp.status == 400
        assert "unknown query parameter(s) limit" in (await resp.json())["detail"]
    async with client.get("/v1/agents?format=xlsx", headers=bearer(reader)) as resp:
        assert resp.status == 400
        assert "format takes only csv" in (await resp.json())["detail"]


async def test_the_quarantine_as_csv_walks_every_page_of_a_status_and_location(
    client: TestClient[Any, Any], store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reader = await store.add_agent([], role="reader")
    admin_id, admin = await store.add_agent([], role="admin")
    agent_id, token = await store.add_agent(["S001", "S002"])
    _, store_token = await store.add_agent(["S009"])
    ahead = wall_ms_now() + CENTURY_MS  # a dead CMOS battery: every one of these is held
    events = moves(agent_id, 1, "S001", [ahead + i for i in range(HELD - 2)])
    events += moves(agent_id, 1, "S002", [ahead + 100, ahead + 101], first_seq=HELD - 1)
    answer = await sync(client, token, agent_id, 1, events)
    assert [r.code for r in answer.rejected] == ["quarantined"] * HELD
    held = await store.quarantine(status="pending")
    assert len(held) == HELD
    resolved = await client.post(f"/v1/quarantine/{held[-1].quarantine_id}", json={"action": "discard"},
                                 headers=bearer(admin))  # fmt: skip
    assert resolved.status == 200, await resolved.text()
    monkeypatch.setattr(csvexport, "PAGE_ROWS", 2)  # so the walk takes several pages

    disposition, pending = await get_csv(client, "/v1/quarantine", bearer(reader) | {"Accept": "text/csv"})
    assert 'filename="quarantine-pending-' in disposition
    assert list(pending[0]) == list(csvexport.QUARANTINE_HEADER)
    async with client.get(f"/v1/quarantine?limit={HELD}", headers=bearer(reader)) as resp:
        as_json = (await resp.json())["quarantine"]
    assert [int(r["id"]) for r in pending] == [q["id"] for q in as_json]  # newest first, each once
    assert len(pending) == HELD - 1
    first = pending[0]
    assert first["event_id"] == event_id_hex(next(e.event_id for e in events if e.seq == int(first["seq"])))
    assert (first["status"], first["agent_id"], first["kind"]) == ("pending", agent_id, "sale")
    assert int(first["skew_ms"]) > CENTURY_MS - DAY_MS  # how far ahead it was, a number
    assert first["ref"].startswith("'=R-")  # guarded: no spreadsheet runs it as a formula
    assert first["occurred"][:2] == "21" and first["received"].endswith("Z")

    _, everything = await get_csv(client, "/v1/quarantine?status=all&format=csv", bearer(reader))
    assert len(everything) == HELD
    [discarded] = [r for r in everything if r["status"] == "discarded"]
    assert (discarded["resolved_by"], int(discarded["id"])) == (admin_id, held[-1].quarantine_id)
    _, s002 = await get_csv(client, "/v1/quarantine?location=S002&format=csv", bearer(reader))
    assert [r["location"] for r in s002] == ["S002", "S002"]
    async with client.get("/v1/quarantine?limit=2", headers=bearer(reader)) as resp:
        cursor = (await resp.json())["next"]
    _, rest = await get_csv(client, f"/v1/quarantine?format=csv&cursor={cursor}&limit=3", bearer(reader))
    assert [r["id"] for r in rest] == [r["id"] for r in pending[2:5]]

    for query, words in (
        ("format=csv&status=lost", "status must be one of"),
        ("format=csv&limit=0", "limit must be a whole number"),
        ("format=csv&cursor=AAAA", "cursor is not one this hub gave out"),
        ("format=csv&colour=red", "unknown query parameter(s) colour"),
    ):
        async with client.get(f"/v1/quarantine?{query}", headers=bearer(reader)) as resp:
            assert resp.status == 400, query
            assert words in (await resp.json())["detail"], query
    async with client.get("/v1/quarantine?format=csv", headers=bearer(store_token)) as resp:
        assert resp.status == 403  # a store agent's credential reads no quarantine, in no format


def as_cell(value: Any) -> str:
    """A JSON value as ``csvexport.cell`` writes it, as ``csv`` reads it back: numbers as digits, text guarded
    against formulas, None and empty attrs an empty cell."""
    written = csvexport.cell(value or None if isinstance(value, dict) else value)
    return written if isinstance(written, str) else str(written)


async def test_every_field_of_a_held_event_as_json_is_a_column_of_its_csv_row_with_the_same_value(
    client: TestClient[Any, Any], store: HubStore
) -> None:
    """Found: the CSV lacked ``hub_clock_off_ms`` (how far the hub's own clock was off when it held the event), and
    the times in milliseconds, that the JSON rows carry. Now every JSON field is a column, after the ones before
    (existing readers keep their columns), with the same value: one held because of the hub's clock, one the other
    stores vouched for the hub's clock, one resolved."""
    _, reader = await store.add_agent([], role="reader")
    _, admin = await store.add_agent([], role="admin")
    agent_id, token = await store.add_agent(["S001"])
    who = await store.authenticate(token)
    assert who is not None
    now = wall_ms_now()
    ahead = now + 2 * DAY_MS
    for i, (off, vouched) in enumerate(((2 * DAY_MS, None), (None, 3), (None, None))):
        [event] = moves(agent_id, 1, "S001", [ahead + i], first_seq=i + 1)
        result = await store.ingest(who, 1, [event], clock_window_ms=60_000, sent_ms=now,
                                    hub_clock_off_ms=off, hub_clock_vouched=vouched)  # fmt: skip
        assert [r.code for r in result.rejected] == ["quarantined"]
    oldest = min(q.quarantine_id for q in await store.quarantine())
    resolved = await client.post(f"/v1/quarantine/{oldest}", json={"action": "discard"}, headers=bearer(admin))
    assert resolved.status == 200, await resolved.text()

    async with client.get("/v1/quarantine?status=all", headers=bearer(reader)) as resp:
        as_json = (await resp.json())["quarantine"]
    _, as_csv = await get_csv(client, "/v1/quarantine?status=all&format=csv", bearer(reader))
    assert list(as_csv[0])[: len(OLD_QUARANTINE_COLUMNS)] == list(OLD_QUARANTINE_COLUMNS), "the old columns first"
    assert [q["hub_clock_off_ms"] is not None for q in as_json].count(True) == 1
    assert [q["resolved_at_ms"] is not None for q in as_json].count(True) == 1
    assert len(as_csv) == len(as_json) == 3
    for row, q in zip(as_csv, as_json, strict=True):
        missing = set(q) - set(row)
        assert not missing, f"JSON fields missing from the CSV: {sorted(missing)}"
        assert {k: row[k] for k in q} == {k: as_cell(v) for k, v in q.items()}


# The columns of GET /v1/quarantine as CSV in 1.12: a reader of them finds them where they were.
OLD_QUARANTINE_COLUMNS = (
    "id", "status", "received", "occurred", "skew_ms", "agent_id", "epoch", "seq", "location", "sku", "name", "kind",
    "qty", "ref", "reason", "source", "attempts", "detail", "resolved_by", "resolved_at", "event_id", "occurred_at",
    "attrs", "hub_clock_vouched",
)  # fmt: skip
