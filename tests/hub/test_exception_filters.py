"""The exceptions of one store, one kind, the last hour: ``GET /v1/exceptions?location=&kind=&since=`` over real
HTTP, on both backends.

A filtered walk, followed through its cursors in small pages, must list exactly the rows of the whole list that
the filter keeps, in the same order: the filter is each source's SQL, and a source read short would skip rows
unseen. Bad filters are a 400 with one sentence; a cursor goes with the filter it was given out for.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, open_store, paging, views
from hub.channels import Divergence, LevelKey, Refusal
from hub.channels.runner import open_channel_state
from hub.storage import exceptions
from hub.storage.findings import ORDER_REFUSALS_KEPT_MS
from protocol import BOOK_OUT_REASON, DiskReport, Kind, LostReport, StockEvent
from tests.harness.inprocess import serve_hub
from tests.harness.pg import fresh_schema
from tests.hub.test_paging import NOW_MS, agent, exception_burst, move, walk

EXCEPTION_KINDS = (  # docs/hub-api.md, GET /v1/exceptions: every kind, in the hub's order
    "negative_on_hand", "unknown_barcode", "transfer_short", "transfer_over", "transfer_unmatched",
    "transfer_shared_ref", "transfer_misdirected", "transfer_overdue", "transfer_unknown_destination",
    "clock_quarantine", "rejected_event", "import_quarantine", "divergence", "channel_divergence", "channel_refused",
    "channel_mapping", "channel_order_refused", "agent_copies", "agent_disk_full", "agent_movements_lost",
    "book_out_without_ref",
)  # fmt: skip
PAGE = 9  # small pages: a walk crosses the bursts of rows sharing one at_ms
TRANSFER_ENDS = ("from", "to")
FOUND_NO_MORE = {"transfer_misdirected"}  # schema 20: a receipt is the transfer to its own location's


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


@pytest.fixture
async def ops_client(store: HubStore) -> AsyncIterator[TestClient[Any, Any]]:
    """A hub whose transfers are overdue after an hour."""
    async with serve_hub(store, transfer_open_max_s=3_600) as served:
        yield served.client


async def every_kind(store: HubStore) -> str:
    """The paging burst (hundreds of exceptions on one at_ms), then every kind of transfer difference, in
    batches of their own so the list holds several at_ms."""
    token = await exception_burst(store)
    a, _ = await agent(store, ["S001", "S002", "S003"])
    batches: list[list[StockEvent]] = [[], [], []]

    def add(n: int, kind: Kind, qty: int, **kw: Any) -> None:
        seq = sum(len(b) for b in batches) + 1
        batches[n].append(move(a, seq, NOW_MS, kind, qty, **kw))

    for i in range(6):  # shipped 1, received 3: over
        add(0, Kind.TRANSFER_OUT, -1, sku=f"SKU-V{i}", ref=f"V{i}", attrs={"to": "S002"})
        add(0, Kind.TRANSFER_IN, 3, sku=f"SKU-V{i}", location="S002", ref=f"V{i}")
    for i in range(5):  # received at S003, never shipped: unmatched
        add(1, Kind.TRANSFER_IN, 2, sku=f"SKU-U{i}", location="S003", ref=f"U{i}", attrs={"from": "S002"})
    for i in range(12):  # S003 books them out naming no transfer (more than a page, one at_ms): book_out_without_ref
        add(1, Kind.ADJUST, -1, sku=f"SKU-U{i % 5}", location="S003", reason=BOOK_OUT_REASON)
    for i in range(7):  # shipped to S003 by S001 and by S002 under one ref: shared
        add(1, Kind.TRANSFER_OUT, -2, sku=f"SKU-M{i}", ref=f"M{i}", attrs={"to": "S003"})
        add(1, Kind.TRANSFER_OUT, -1, sku=f"SKU-M{i}", location="S002", ref=f"M{i}", attrs={"to": "S003"})
    for i in range(4):  # shipped to a location the hub does not know
        add(2, Kind.TRANSFER_OUT, -1, sku=f"SKU-X{i}", location="S003", ref=f"X{i}", attrs={"to": "S777"})
    for i in range(8):  # shipped 4, received 1, still open: short
        add(2, Kind.TRANSFER_OUT, -4, sku=f"SKU-S{i}", location="S002", ref=f"S{i}", attrs={"to": "S001"})
        add(2, Kind.TRANSFER_IN, 1, sku=f"SKU-S{i}", ref=f"S{i}")
    for batch in batches:
        result = await store.ingest(a, 1, batch)
        assert not result.rejected, result.rejected
    await copies(store)
    await disks(store)
    await losses(store)
    return token


async def copies(store: HubStore) -> None:
    """Agents of one store or two, each syncing from two or three copies of itself (epochs) in turn (more than a
    page of ``agent_copies`` rows); one whose outbox forked once and synced in its new epoch only, and one that
    also sends through POST /v1/events (epoch 0): neither listed."""
    for i in range(12):
        who, _ = await agent(store, [("S001", "S003")[i % 2], *(["S002"] if i % 3 == 0 else [])])
        for _ in range(3):  # each copy syncs three times, each time after the others did
            for epoch in range(10, 12 + i % 2):
                assert (await store.ingest(who, epoch, [])).hwm == 0
                await asyncio.sleep(0.002)  # the hub tells the syncs apart by their milliseconds
    restored, _ = await agent(store, ["S001"])
    for epoch in (10, 11, 11, 11):
        await store.ingest(restored, epoch, [])
        await asyncio.sleep(0.002)
    connector, _ = await agent(store, ["S002"])  # its outbox's epoch, and POST /v1/events' epoch 0: one sender
    for epoch in (10, 0, 10, 0, 10, 0):
        await store.ingest(connector, epoch, [])
        await asyncio.sleep(0.002)


async def disks(store: HubStore) -> None:
    """Store agents reporting their disks (more than a page of ``agent_disk_full`` rows): full, the reserve in use,
    and room (not listed); one whose credential was revoked (not listed)."""
    states = (DiskReport(8 << 20, 0, 0), DiskReport(8 << 20, 1 << 20, 0), DiskReport(8 << 20, 8 << 20, 1 << 30))
    for i in range(15):
        who, _ = await agent(store, [("S001", "S003")[i % 2], *(["S002"] if i % 4 == 0 else [])])
        await store.ingest(who, 10, [], disk=states[i % 3])
        await asyncio.sleep(0.002)  # the hub tells the reports apart by their milliseconds
    revoked, _ = await agent(store, ["S001"])
    await store.ingest(revoked, 10, [], disk=states[0])
    assert await store.revoke_agent(revoked.agent_id)


async def losses(store: HubStore) -> None:
    """Store agents reporting movements the hub lacks for good (more than a page of ``agent_movements_lost`` rows):
    several reports of one agent arriving in one sync's millisecond and in later ones, a report sent again (listed
    once), and an agent whose reports were dismissed (not listed)."""
    for i in range(6):
        who, _ = await agent(store, [("S001", "S003")[i % 2], *(["S002"] if i % 3 == 0 else [])])
        for n in range(3):
            lost = LostReport(10 * n + 1, 10 * n + 4, 4 - n, found_ms=NOW_MS, epoch=(1 << 62) + n, at_least=n == 2,
                              of_agent="agent-before" if n == 2 else None)  # fmt: skip
            await store.ingest(who, 10, [], lost=lost)
            if n == 0:
                await store.ingest(who, 10, [], lost=lost)  # sent again: changes nothing
            await asyncio.sleep(0.002 * (i % 2))  # some in one millisecond, some apart
    counted, _ = await agent(store, ["S001"])
    await store.ingest(counted, 10, [], lost=LostReport(5, 5, 1, found_ms=NOW_MS, epoch=10))
    assert await store.dismiss_lost(counted.agent_id, "admin-1", NOW_MS) == [(5, 5, 1, False)]
    await store.ingest(counted, 10, [], lost=LostReport(5, 5, 1, found_ms=NOW_MS, epoch=10))  # told again: dismissed


def concerns(row: dict[str, Any], location: str) -> bool:
    """The documented meaning of ``location=``: the row's location, and for a transfer either end and the
    location it was shipped to (a transfer to an unknown location: its sender)."""
    if row["location"] == location:
        return True
    if row["kind"].startswith("transfer_") and row["kind"] != "transfer_unknown_destination":
        return location in (row["data"].get(end) for end in TRANSFER_ENDS) or location in row["data"].get(
            "shippers", ()
        )
    if row["kind"] in ("agent_copies", "agent_disk_full", "agent_movements_lost"):  # any of the agent's credential
        return location in row["data"]["locations"]
    return False


def kept(rows: list[dict[str, Any]], *, location: str | None = None, kind: str | None = None,
         since_ms: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    return [
        r for r in rows
        if (location is None or concerns(r, location)) and (kind is None or r["kind"] == kind)
        and (since_ms is None or r["at_ms"] >= since_ms)
    ]  # fmt: skip


def identity(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


async def test_filtered_walks_list_exactly_the_whole_list_filtered(
    store: HubStore,
    ops_client: TestClient[Any, Any],
) -> None:
    token = await every_kind(store)
    whole = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=10_000)
    kinds = {r["kind"] for r in whole}
    assert kinds >= set(EXCEPTION_KINDS) - FOUND_NO_MORE - {"channel_divergence", "channel_refused",
                                                            "channel_mapping", "channel_order_refused"}, kinds  # fmt: skip
    times = sorted({r["at_ms"] for r in whole if not r["kind"].startswith("agent_")})  # those are the newest, one each
    assert len(times) >= 4, f"the list holds too few distinct times to filter by: {times}"
    middle = times[len(times) // 2]
    cases: list[dict[str, Any]] = [
        *({"location": loc} for loc in ("S001", "S002", "S003", "S009", "S777", "S404")),
        *({"kind": k} for k in EXCEPTION_KINDS),
        {"since_ms": middle},
        {"since_ms": times[-1]},
        {"since_ms": times[-1] + 1},
        {"location": "S002", "kind": "transfer_short"},
        {"location": "S003", "kind": "transfer_shared_ref"},
        {"location": "S001", "kind": "negative_on_hand", "since_ms": times[0]},
        {"location": "S003", "since_ms": middle},
        {"kind": "transfer_over", "since_ms": middle},
        {"location": "S002", "kind": "agent_copies"},
        {"location": "S003", "kind": "agent_copies", "since_ms": middle},
        {"location": "S002", "kind": "agent_movements_lost"},
    ]
    for case in cases:
        query = {k: v for k, v in case.items() if k != "since_ms"}
        if "since_ms" in case:
            query["since"] = views.iso_ms(case["since_ms"])
        got = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=PAGE, **query)
        want = kept(whole, **case)
        assert [identity(r) for r in got] == [identity(r) for r in want], (case, len(got), len(want))
    assert kept(whole, location="S003", kind="transfer_shared_ref")  # the cases are not all empty
    assert kept(whole, kind="transfer_over", since_ms=middle)
    assert len(kept(whole, location="S002", kind="agent_copies")) == 4  # an agent of two stores listed under either
    assert len(kept(whole, kind="agent_copies")) == 12  # not the outbox that forked once, nor epoch 0's sender
    assert len(kept(whole, kind="agent_movements_lost")) == 18  # each report once, none of the agent counted again
    assert len(kept(whole, location="S002", kind="agent_movements_lost")) == 6


async def test_the_csv_of_a_filter_holds_its_rows(store: HubStore, ops_client: TestClient[Any, Any]) -> None:
    token = await every_kind(store)
    auth = {"Authorization": f"Bearer {token}"}
    query = {"location": "S003", "kind": "transfer_shared_ref", "format": "csv"}
    resp = await ops_client.get("/v1/exceptions", params=query, headers=auth)
    assert resp.status == 200, await resp.text()
    lines = (await resp.text()).strip().splitlines()[1:]
    assert len(lines) == 7 and all(",transfer_shared_ref,S003," in line for line in lines), lines


async def test_bad_filters_are_400_with_one_sentence(store: HubStore, ops_client: TestClient[Any, Any]) -> None:
    token = await exception_burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    for query, says in (
        (
            {"kind": "negative"},
            "kind 'negative' is not a kind of exception; it is one of " + ", ".join(EXCEPTION_KINDS),
        ),
        ({"kind": ""}, "is not a kind of exception"),
        ({"location": "S 042"}, "location"),
        ({"location": "S042/../S001"}, "location"),
        ({"location": "x" * 33}, "location"),
        ({"since": "yesterday"}, "since must be an RFC 3339 time with its zone, such as 2026-01-31T18:00:00Z"),
        ({"since": "2026-01-31T18:00:00"}, "since must be an RFC 3339 time with its zone"),
        ({"since": "2026-01-31"}, "since must be an RFC 3339 time with its zone"),
        ({"since": "2026-02-30T10:00:00Z"}, "is not a time on the calendar"),
    ):
        for fmt in ({}, {"format": "csv"}):
            resp = await ops_client.get("/v1/exceptions", params=query | fmt, headers=auth)
            body = await resp.json()
            assert resp.status == 400, (query, body)
            message = body["detail"]
            assert says in message, (query, message)
            assert message.count(". ") == 0 and "\n" not in message, message


async def test_a_cursor_goes_with_the_filter_it_was_given_for(
    store: HubStore,
    ops_client: TestClient[Any, Any],
) -> None:
    token = await exception_burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    of_one = await (
        await ops_client.get("/v1/exceptions", params={"location": "S001", "limit": "3"}, headers=auth)
    ).json()
    for other in ({"location": "S002"}, {}):  # it went on in another list, skipping or repeating its rows unseen
        resp = await ops_client.get("/v1/exceptions", params=other | {"cursor": of_one["next"]}, headers=auth)
        assert resp.status == 400, (other, await resp.text())
    since = views.iso_ms(NOW_MS - 3_600_000)
    given = {"location": "S001", "kind": "negative_on_hand", "since": since}
    first = await (await ops_client.get("/v1/exceptions", params=given | {"limit": "3"}, headers=auth)).json()
    assert first["next"], first
    for other in (
        {},
        {"location": "S002", "kind": "negative_on_hand", "since": since},
        {"location": "S001", "since": since},
        {"location": "S001", "kind": "negative_on_hand"},
        {"location": "S001", "kind": "negative_on_hand", "since": views.iso_ms(NOW_MS)},
    ):
        for fmt in ({}, {"format": "csv"}):
            resp = await ops_client.get("/v1/exceptions", params=other | fmt | {"cursor": first["next"]}, headers=auth)
            body = await resp.json()
            assert resp.status == 400, (other, body)
            message = body["detail"]
            assert "cursor was given out for another filter (location 'S001', negative_on_hand, since " in message
            assert message.count(". ") == 0 and "\n" not in message, message
    again = await ops_client.get("/v1/exceptions", params=given | {"cursor": first["next"]}, headers=auth)
    assert again.status == 200
    rows = (await again.json())["exceptions"]
    assert rows and all(r["location"] == "S001" and r["kind"] == "negative_on_hand" for r in rows)
    # a cursor given out before cursors named their filter names none: taken with any, as it was then
    key, _ = paging.exception_key(first["next"])
    legacy = paging.encode("exceptions", [key.at_ms, key.source, list(key.ident)])
    resp = await ops_client.get("/v1/exceptions", params={"location": "S002", "cursor": legacy}, headers=auth)
    assert resp.status == 200, await resp.text()


STORES = tuple(f"S{i:03d}" for i in range(1, 7))
TRANSFER_STATES = (
    "received", "over", "unmatched", "misdirected", "misdirected_short", "closed_short", "open_short", "overdue",
    "in_transit", "nowhere", "came_back", "shared", "shared_closed",
)  # fmt: skip


async def many_transfers(store: HubStore) -> str:
    """240 transfers between six stores in every state a transfer can be in (most received in full, with no
    finding; one received back by its sender concerns that store at both ends), shipped and received over eight batches, so a transfer's row moves in the list as it is received
    and the list holds many times and many rows sharing one."""
    a, token = await agent(store, list(STORES))
    rng = random.Random(11)
    batches: list[list[StockEvent]] = [[] for _ in range(8)]
    seq = 0

    def add(n: int, kind: Kind, qty: int, at_ms: int = NOW_MS, **kw: Any) -> None:
        nonlocal seq
        seq += 1
        batches[n].append(move(a, seq, at_ms, kind, qty, **kw))

    for i in range(240):
        state = TRANSFER_STATES[i % len(TRANSFER_STATES)] if i % 3 else "received"
        src, dst, elsewhere = rng.sample(STORES, 3)
        ref, sku, ship, take = f"R{i:03d}", f"SKU-{rng.randrange(40):02d}", rng.randrange(4), rng.randrange(4, 8)
        out = {"sku": sku, "location": src, "ref": ref, "attrs": {"to": dst}}
        if state == "unmatched":
            add(take, Kind.TRANSFER_IN, 2, sku=sku, location=dst, ref=ref, attrs={"from": src})
            continue
        add(ship, Kind.TRANSFER_OUT, -3, NOW_MS - 2 * 3_600_000 if state == "overdue" else NOW_MS, **out)
        if state in ("shared", "shared_closed"):  # another store ships to the same destination under the same ref
            add(take, Kind.TRANSFER_OUT, -1, **out | {"location": elsewhere})
        if state == "nowhere":
            batches[ship][-1] = move(a, seq, NOW_MS, Kind.TRANSFER_OUT, -3, **out | {"attrs": {"to": f"S7{i:02d}"}})
        received = {"received": 3, "over": 5, "misdirected": 3, "misdirected_short": 1, "closed_short": 1,
                    "open_short": 2, "came_back": 3, "shared_closed": 2}.get(state)  # fmt: skip
        if received is not None:
            at = {"misdirected": elsewhere, "misdirected_short": elsewhere, "came_back": src}.get(state, dst)
            closing = state in ("closed_short", "misdirected_short", "shared_closed")
            final = {"attrs": {"final": True}} if closing else {}
            add(take, Kind.TRANSFER_IN, received, sku=sku, location=at, ref=ref, **final)
    for batch in batches:
        result = await store.ingest(a, 1, batch)
        assert not result.rejected, result.rejected
    return token


async def test_many_transfers_walk_the_same_list_through_every_filter(
    store: HubStore,
    ops_client: TestClient[Any, Any],
) -> None:
    """The transfer source reads one store's transfers once per end and merges them (schema 11's indexes): a
    transfer concerning a store at both ends, or shipped to it and received elsewhere, is listed once, in its
    place, and a walk in small pages holds every row the whole list holds for that store, kind and time."""
    token = await many_transfers(store)
    whole = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=10_000)
    transfer_kinds = [k for k in EXCEPTION_KINDS if k.startswith("transfer_") and k not in FOUND_NO_MORE]
    assert {r["kind"] for r in whole} >= set(transfer_kinds), {r["kind"] for r in whole}  # and negative stock
    assert len(whole) >= 150 and len({identity(r) for r in whole}) == len(whole)
    times = sorted({r["at_ms"] for r in whole})
    assert len(times) >= 4, times
    cases: list[dict[str, Any]] = [
        {},
        *({"location": loc} for loc in (*STORES, "S701", "S404")),
        *({"kind": k} for k in transfer_kinds),
        *({"location": loc, "kind": k} for loc in STORES[:2] for k in transfer_kinds),
        *({"location": loc, "since_ms": times[len(times) // 2]} for loc in STORES[2:4]),
        {"since_ms": times[-2]},
        {"kind": "transfer_misdirected", "since_ms": times[1]},
    ]
    for case in cases:
        query = {k: v for k, v in case.items() if k != "since_ms"}
        if "since_ms" in case:
            query["since"] = views.iso_ms(case["since_ms"])
        got = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=PAGE, **query)
        want = kept(whole, **case)
        assert [identity(r) for r in got] == [identity(r) for r in want], (case, len(got), len(want))
    for loc in STORES:  # each store sees its transfers of every kind, and some at both of its roles
        assert {r["kind"] for r in kept(whole, location=loc)} >= set(transfer_kinds) - {"transfer_unknown_destination"}


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    async with fresh_schema() as url:
        yield url


OPEN_KINDS = ("transfer_overdue", "transfer_unknown_destination", "clock_quarantine", "channel_refused",
              "channel_divergence", "channel_order_refused")  # fmt: skip


@pytest.mark.parametrize("destinations", ["each walked", "all walked at once"])
async def test_open_transfers_held_events_and_channel_levels_walk_every_filter(
    db_url: str, destinations: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overdue and unknown-destination sources walk the open transfers in the list's order (one store's once
    per end, one unknown destination's at a time, or all of theirs at once when there are many), held events and a
    channel's levels walk indexes of their own: a walk in small pages through any filter lists every row of the
    whole list it keeps, once, in order, and the whole list holds every one seeded."""
    if destinations == "all walked at once":
        monkeypatch.setattr(exceptions, "UNKNOWN_WALKS_MAX", 0, raising=False)
    async with open_store(db_url) as store, serve_hub(store, transfer_open_max_s=3_600) as served:
        client = served.client
        token = await many_transfers(store)
        states = [TRANSFER_STATES[i % len(TRANSFER_STATES)] for i in range(240) if i % 3]  # as many_transfers
        b, _ = await agent(store, list(STORES))
        seq = 0

        def add(kind: Kind, qty: int, at_ms: int = NOW_MS, **kw: Any) -> StockEvent:
            nonlocal seq
            seq += 1
            return move(b, seq, at_ms, kind, qty, **kw)

        for n in range(3):  # several transfers to one unknown location, from two stores, in three batches
            shipped = [add(Kind.TRANSFER_OUT, -1, sku=f"SKU-Y{n}{i}", location=STORES[i % 2], ref=f"Y{n}{i}",
                           attrs={"to": "S799"}) for i in range(4)]  # fmt: skip
            assert not (await store.ingest(b, 1, shipped)).rejected
        for n in range(2):  # three days ahead of the hub's clock: held, at three stores
            ahead = [add(Kind.RECEIVE, 1, NOW_MS + 72 * 3_600_000, sku=f"SKU-H{n}{i}", location=STORES[i % 3])
                     for i in range(9)]  # fmt: skip
            assert {r.code for r in (await store.ingest(b, 1, ahead, clock_window_ms=86_400_000)).rejected} == {
                "quarantined"
            }
        async with open_channel_state(db_url) as state:
            for n in range(3):
                await state.refuse("web", {LevelKey(f"i{n}{i}", "L1"): Refusal(
                    f"SKU-{i:02d}", STORES[i % 4] if i % 5 else None, i, "no.", NOW_MS + n) for i in range(8)})  # fmt: skip
                await state.add_divergences("web", [Divergence(
                    LevelKey(f"i{n}{i}", "L2"), f"SKU-{i:02d}", STORES[i % 4] if i % 5 else None, 5, 4, 3, NOW_MS + n)
                    for i in range(8)])  # fmt: skip
                for i in range(8):  # Square orders refused, in one burst with the levels, one of each channel
                    order = f"O{n}{i}"
                    await state.refuse_order(("pos", "web")[i % 2], order, f"Square order {order}: no.", NOW_MS + n,
                                             location=STORES[i % 4] if i % 5 else None, channel_location="L3")  # fmt: skip
            await state.refuse_order("pos", "O-old", "…", NOW_MS - ORDER_REFUSALS_KEPT_MS - 1)  # kept, no longer listed
            await state.refuse_order("pos", "O-hand", "…", NOW_MS, location=STORES[0])  # booked by hand: not listed
            assert await state.dismiss_order("pos", "O-hand", "admin-1", NOW_MS) is not None
        whole = await walk(client, token, "/v1/exceptions", "exceptions", limit=10_000)
        assert len({identity(r) for r in whole}) == len(whole)
        counted = {k: sum(1 for r in whole if r["kind"] == k) for k in OPEN_KINDS}
        assert counted == {"transfer_overdue": states.count("overdue"),
                           "transfer_unknown_destination": states.count("nowhere") + 12,
                           "clock_quarantine": 18, "channel_refused": 24, "channel_divergence": 24,
                           "channel_order_refused": 24}, counted  # fmt: skip
        times = sorted({r["at_ms"] for r in whole})
        cases: list[dict[str, Any]] = [
            {},
            *({"location": loc} for loc in (*STORES, "S799", "S404")),
            *({"kind": k} for k in OPEN_KINDS),
            *({"location": loc, "kind": k} for loc in STORES[:3] for k in OPEN_KINDS),
            *({"kind": k, "since_ms": times[len(times) // 2]} for k in OPEN_KINDS),
            {"location": STORES[1], "since_ms": times[-3]},
        ]
        for case in cases:
            query = {k: v for k, v in case.items() if k != "since_ms"}
            if "since_ms" in case:
                query["since"] = views.iso_ms(case["since_ms"])
            got = await walk(client, token, "/v1/exceptions", "exceptions", limit=PAGE, **query)
            want = kept(whole, **case)
            assert [identity(r) for r in got] == [identity(r) for r in want], (case, len(got), len(want))
        for k in OPEN_KINDS:  # each kind is a case of one store's too
            assert kept(whole, location=STORES[0], kind=k), k


async def test_a_receipt_at_the_wrong_store_and_the_shipment_it_missed_name_each_other_over_http(
    store: HubStore, ops_client: TestClient[Any, Any]
) -> None:
    """S001 ships T-1 (5 of A) to S002 two hours ago; the truck drops it at S003, which receives T-1. Over HTTP,
    S003's ``transfer_unmatched`` names the shipment to S002 (``data.shipped_elsewhere``) and S002's
    ``transfer_overdue`` names S003's receipt (``data.received_elsewhere``), each store's list and the chain's."""
    a, token = await agent(store, ["S001", "S002", "S003"])
    sent = [
        move(a, 1, NOW_MS - 7_200_000, Kind.TRANSFER_OUT, -5, sku="A", ref="T-1", attrs={"to": "S002"}),
        move(a, 2, NOW_MS, Kind.TRANSFER_IN, 5, sku="A", location="S003", ref="T-1", attrs={"from": "S001"}),
    ]
    assert (await store.ingest(a, 1, sent, clock_window_ms=24 * 3_600_000)).rejected == ()
    auth = {"Authorization": f"Bearer {token}"}
    for location in ("S003", None):
        query = {"kind": "transfer_unmatched"} | ({"location": location} if location else {})
        body = await (await ops_client.get("/v1/exceptions", params=query, headers=auth)).json()
        [unmatched] = body["exceptions"]
        assert unmatched["location"] == "S003" and unmatched["data"]["shipped_elsewhere"] == [
            {"to": "S002", "from": "S001", "shipped": 5, "received": 0, "closed": False}
        ], body
        assert "T-1 was shipped to S002 by S001 (5 units, not received there)" in unmatched["detail"]
    for location in ("S002", None):
        query = {"kind": "transfer_overdue"} | ({"location": location} if location else {})
        body = await (await ops_client.get("/v1/exceptions", params=query, headers=auth)).json()
        [late] = body["exceptions"]
        assert late["location"] == "S002", body
        assert late["data"]["received_elsewhere"] == [{"at": "S003", "received": 5}], body
        assert "S003 received 5 of A as T-1" in late["detail"]
