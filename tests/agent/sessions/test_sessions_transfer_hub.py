"""A transfer shipped by store A and received short by store B: in transit at the hub, then closed short:
the missing units written off in the ledger and an exception."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.catalog import AgentCatalog
from agent.outbox import Outbox
from agent.sessions import InvalidSessionInput, SessionManager, SessionSpec, SessionStore, SessionType
from hub import HubStore
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, catalog
from tests.agent.sessions.sessions_hub import running_hub, sync


async def at(store: HubStore, location: str, sku: str) -> tuple[int, int]:
    """(on_hand, in_transit) of one key at the hub."""
    rows = await store.counts(location=location, sku=sku)
    return (rows[0].on_hand, rows[0].in_transit) if rows else (0, 0)


async def test_transfer_shipped_by_a_and_received_short_by_b(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        b_id, b_token = await hub.add_agent(["S002"])
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            Outbox.open(tmp_path / "b.sqlite3", agent_id=b_id, location="S002") as b_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
            SessionStore.open(tmp_path / "b-sessions.sqlite3") as b_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=catalog())
            store_b = SessionManager(b_store, b_outbox, catalog=catalog())

            ship = await store_a.open(
                SessionSpec(SessionType.TRANSFER_OUT, ref="TR-1001", to_location="S002"), by="ana"
            )
            await store_a.scan(ship.id, APPLE, by="ana", qty=10)
            await store_a.scan(ship.id, PEAR, by="ana", qty=4)
            await store_a.close(ship.id, by="ana")
            await sync(a_outbox, url, a_token)

            assert await at(hub, "S001", "SKU-APPLE") == (-10, 0)
            assert await at(hub, "S002", "SKU-APPLE") == (0, 10)  # on its way to B
            assert await at(hub, "S002", "SKU-PEAR") == (0, 4)
            assert [e for e in await hub.exceptions() if e.kind.startswith("transfer")] == []

            receive = await store_b.open(
                SessionSpec(SessionType.TRANSFER_IN, ref="TR-1001", from_location="S001"), by="bo"
            )
            await store_b.scan(receive.id, APPLE, by="bo", qty=8)  # two apples never arrived
            await store_b.scan(receive.id, PEAR, by="bo", qty=4)
            await store_b.close(receive.id, by="bo")
            await sync(b_outbox, url, b_token)

            assert await at(hub, "S002", "SKU-APPLE") == (8, 0)  # the closed session was the final receipt
            assert await at(hub, "S002", "SKU-PEAR") == (4, 0)
            [short] = [e for e in await hub.exceptions() if e.kind.startswith("transfer")]
            assert (short.kind, short.location, short.sku) == ("transfer_short", "S002", "SKU-APPLE")
            assert short.data["ref"] == "TR-1001"
            assert (short.data["shipped"], short.data["received"]) == (10, 8)
            assert (short.data["from"], short.data["to"]) == ("S001", "S002")
            assert (short.data["written_off"], short.data["closed"]) == (2, True)
            [writeoff] = [r for r in await hub.ledger(location="S002") if r.kind == "transfer_writeoff"]
            assert (writeoff.sku, writeoff.qty, writeoff.ref) == ("SKU-APPLE", -2, "TR-1001")


async def test_transfer_shipped_to_b_and_received_by_c_is_cs_own_and_leaves_bs_alone(tmp_path: Path) -> None:
    """A store received a transfer meant for another (the van stopped at the wrong door). A transfer is kept per
    (destination, ref, SKU): C's receipt is C's transfer TR-2, nothing was shipped to C under it, so it is listed at
    C as unmatched (and at the sender its receipt names), and it takes nothing out of transit to B: a receipt never
    moves, nor writes off, units shipped to another store (two stores' TR-2 were one transfer before)."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        c_id, c_token = await hub.add_agent(["S003"])
        await hub.add_agent(["S002"])  # a store the hub knows: a transfer to it is no unknown destination's
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            Outbox.open(tmp_path / "c.sqlite3", agent_id=c_id, location="S003") as c_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
            SessionStore.open(tmp_path / "c-sessions.sqlite3") as c_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=catalog())
            store_c = SessionManager(c_store, c_outbox, catalog=catalog())
            ship = await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-2", to_location="S002"), by="ana")
            await store_a.scan(ship.id, APPLE, by="ana", qty=5)
            await store_a.close(ship.id, by="ana")
            await sync(a_outbox, url, a_token)
            receive = await store_c.open(
                SessionSpec(SessionType.TRANSFER_IN, ref="TR-2", from_location="S001"), by="cy"
            )
            await store_c.scan(receive.id, APPLE, by="cy", qty=5)
            await store_c.close(receive.id, by="cy")
            await sync(c_outbox, url, c_token)

            assert await at(hub, "S002", "SKU-APPLE") == (0, 5)
            assert await at(hub, "S003", "SKU-APPLE") == (5, 0)
            assert [r for r in await hub.ledger() if r.kind == "transfer_writeoff"] == []
            for location in ("S003", "S001", None):
                [wrong] = [e for e in await hub.exceptions(location=location) if e.kind.startswith("transfer")]
                assert (wrong.kind, wrong.location, wrong.sku) == ("transfer_unmatched", "S003", "SKU-APPLE")
                assert (wrong.data["from"], wrong.data["to"], wrong.data["received"]) == ("S001", "S003", 5)
            assert [e for e in await hub.exceptions(location="S002") if e.kind.startswith("transfer")] == []


async def test_the_wrong_store_books_it_out_and_sends_it_on_and_nothing_stays_listed(tmp_path: Path) -> None:
    """Found: after the staff did what the unmatched receipt says (C books TR-4 out with a write-off session
    carrying the transfer's reference, B receives it as TR-4), C's transfer_unmatched stayed listed for ever.
    Over HTTP with the agents' own sessions: once C's adjust carrying TR-4 booked its receipt out and B received
    it, nothing is listed at any store, and the counts are right at all three."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        b_id, b_token = await hub.add_agent(["S002"])
        c_id, c_token = await hub.add_agent(["S003"])
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            Outbox.open(tmp_path / "b.sqlite3", agent_id=b_id, location="S002") as b_outbox,
            Outbox.open(tmp_path / "c.sqlite3", agent_id=c_id, location="S003") as c_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
            SessionStore.open(tmp_path / "b-sessions.sqlite3") as b_store,
            SessionStore.open(tmp_path / "c-sessions.sqlite3") as c_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=catalog())
            store_b = SessionManager(b_store, b_outbox, catalog=catalog())
            store_c = SessionManager(c_store, c_outbox, catalog=catalog())
            ship = await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-4", to_location="S002"), by="ana")
            await store_a.scan(ship.id, APPLE, by="ana", qty=5)
            await store_a.close(ship.id, by="ana")
            await sync(a_outbox, url, a_token)
            wrong = await store_c.open(SessionSpec(SessionType.TRANSFER_IN, ref="TR-4", from_location="S001"), by="cy")
            await store_c.scan(wrong.id, APPLE, by="cy", qty=5)
            await store_c.close(wrong.id, by="cy")
            await sync(c_outbox, url, c_token)
            [unmatched] = [e for e in await hub.exceptions() if e.kind.startswith("transfer")]
            assert (unmatched.kind, unmatched.location) == ("transfer_unmatched", "S003")
            assert "carrying the ref TR-4" in unmatched.detail

            out = await store_c.open(
                SessionSpec(SessionType.WRITE_OFF, ref="TR-4", reason="received by mistake, sent on"), by="cy"
            )
            await store_c.scan(out.id, APPLE, by="cy", qty=5)
            await store_c.close(out.id, by="cy")
            await sync(c_outbox, url, c_token)
            receive = await store_b.open(
                SessionSpec(SessionType.TRANSFER_IN, ref="TR-4", from_location="S001"), by="bo"
            )
            await store_b.scan(receive.id, APPLE, by="bo", qty=5)
            await store_b.close(receive.id, by="bo")
            await sync(b_outbox, url, b_token)

            assert [await at(hub, loc, "SKU-APPLE") for loc in ("S001", "S002", "S003")] == [(-5, 0), (5, 0), (0, 0)]
            for location in ("S001", "S002", "S003", None):
                assert [e for e in await hub.exceptions(location=location) if e.kind.startswith("transfer")] == []
            assert [r for r in await hub.ledger() if r.kind == "transfer_writeoff"] == []


async def test_a_shipment_received_back_by_its_shipper_over_http(tmp_path: Path) -> None:
    """Found: a store could no longer receive back its own shipment (cancelled before the van left): its receipt
    was an unmatched transfer of its own and the destination kept the units in transit. Over HTTP with the agents'
    sessions, A's receipt of its own TR-5 puts the apples back on A's shelf and nothing in transit at B, nothing
    listed, nothing written off."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        await hub.add_agent(["S002"])
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=catalog())
            ship = await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-5", to_location="S002"), by="ana")
            await store_a.scan(ship.id, APPLE, by="ana", qty=6)
            await store_a.close(ship.id, by="ana")
            await sync(a_outbox, url, a_token)
            assert await at(hub, "S002", "SKU-APPLE") == (0, 6)
            back = await store_a.open(SessionSpec(SessionType.TRANSFER_IN, ref="TR-5"), by="ana")
            await store_a.scan(back.id, APPLE, by="ana", qty=6)
            await store_a.close(back.id, by="ana")
            await sync(a_outbox, url, a_token)

            assert (await at(hub, "S001", "SKU-APPLE"), await at(hub, "S002", "SKU-APPLE")) == ((0, 0), (0, 0))
            assert [e for e in await hub.exceptions() if e.kind.startswith("transfer")] == []
            assert [r for r in await hub.ledger() if r.kind == "transfer_writeoff"] == []


async def test_a_transfer_to_a_location_the_hub_does_not_know_is_refused_or_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found shipping to ``S999``, and to ``s002`` for ``S002``: agent and hub took it, and the units sat in transit
    to nowhere until the transfer was overdue. The agent learns the hub's locations with its catalog and refuses
    such a destination at the open (suggesting the hub's spelling); an agent that never heard them (offline since
    installed) takes it with a warning, and the hub lists it among the sender's exceptions."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        await hub.add_agent(["S002"])
        learned = AgentCatalog(hub_url=url, token=a_token, cache=tmp_path / "catalog-cache.json")
        await learned.refresh()
        await learned.stop()
        assert learned.known_locations() == frozenset({"S001", "S002"})
        restarted = AgentCatalog(hub_url="http://127.0.0.1:9", token=a_token, cache=tmp_path / "catalog-cache.json")
        await restarted.load()  # the hub away: the list is read from the cache
        offline = AgentCatalog(hub_url="http://127.0.0.1:9", token=a_token, cache=tmp_path / "none.json")
        await offline.load()
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=restarted)
            with pytest.raises(InvalidSessionInput) as nowhere:
                await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-9", to_location="S999"), by="ana")
            assert str(nowhere.value) == (
                "the hub knows no location 'S999' (it knows S001, S002); check where the goods are going"
            )
            with pytest.raises(InvalidSessionInput) as spelled:
                await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-9", to_location="s002"), by="ana")
            assert (
                str(spelled.value) == "the hub knows no location 's002', but S002; write the location as the hub does"
            )
            assert await store_a.list() == []
            fine = await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-8", to_location="S002"), by="ana")
            await store_a.key(fine.id, "SKU-APPLE", 2, by="ana")
            await store_a.close(fine.id, by="ana")

            store_a.catalog = offline
            with caplog.at_level(logging.WARNING, logger="agent.sessions.manager"):
                ship = await store_a.open(
                    SessionSpec(SessionType.TRANSFER_OUT, ref="TR-9", to_location="S999"), by="ana"
                )
            assert "without the hub's list of locations" in caplog.text
            await store_a.key(ship.id, "SKU-APPLE", 5, by="ana")
            await store_a.close(ship.id, by="ana")
            await sync(a_outbox, url, a_token)

            for location in ("S001", None):
                found = [e for e in await hub.exceptions(location=location) if e.kind.startswith("transfer")]
                assert [(e.kind, e.location, e.sku, e.data["to"]) for e in found] == [
                    ("transfer_unknown_destination", "S001", "SKU-APPLE", "S999")
                ]
                assert "a location the hub does not know" in found[0].detail


async def test_serialised_items_transferred_close_the_transfer_and_the_ledger_names_them_on_both_sides(
    tmp_path: Path,
) -> None:
    """Each serialised item is a transfer event of its own on each side (agent.sessions.plan): the hub sums them per
    reference and SKU as before — all received is no shortfall — and its ledger says which items went and came."""
    async with running_hub(tmp_path) as (hub, url):
        a_id, a_token = await hub.add_agent(["S001"])
        b_id, b_token = await hub.add_agent(["S002"])
        async with (
            Outbox.open(tmp_path / "a.sqlite3", agent_id=a_id, location="S001") as a_outbox,
            Outbox.open(tmp_path / "b.sqlite3", agent_id=b_id, location="S002") as b_outbox,
            SessionStore.open(tmp_path / "a-sessions.sqlite3") as a_store,
            SessionStore.open(tmp_path / "b-sessions.sqlite3") as b_store,
        ):
            store_a = SessionManager(a_store, a_outbox, catalog=catalog())
            store_b = SessionManager(b_store, b_outbox, catalog=catalog())
            ship = await store_a.open(SessionSpec(SessionType.TRANSFER_OUT, ref="TR-SN", to_location="S002"), by="ana")
            receive = await store_b.open(SessionSpec(SessionType.TRANSFER_IN, ref="TR-SN"), by="bo")
            for store, session, by in ((store_a, ship, "ana"), (store_b, receive, "bo")):
                for code in (f"(01)0{APPLE}(21)SN1", f"(01)0{APPLE}(21)SN2"):
                    await store.scan(session.id, code, by=by)
                await store.scan(session.id, APPLE, by=by, qty=3)
                await store.close(session.id, by=by)
            await sync(a_outbox, url, a_token)
            await sync(b_outbox, url, b_token)

            assert await at(hub, "S002", "SKU-APPLE") == (5, 0)
            assert [e for e in await hub.exceptions() if e.kind.startswith("transfer")] == []
            for location, kind in (("S001", "transfer_out"), ("S002", "transfer_in")):
                rows = [r for r in await hub.ledger(location=location) if r.kind == kind]
                assert sorted((r.qty, (r.attrs or {}).get("serial")) for r in rows) == sorted(
                    [(1 if kind == "transfer_in" else -1, "SN1"), (1 if kind == "transfer_in" else -1, "SN2"),
                     (3 if kind == "transfer_in" else -3, None)]
                )  # fmt: skip


async def test_two_stores_t1_and_a_stolen_credential_over_http(tmp_path: Path) -> None:
    """End to end, over HTTP on 127.0.0.1: S001 ships its T-1 to S003 and S002 its own T-1 to S004, each received
    short with the closing session's final receipt; then a thief with S002's token ships a T-1 to S004 and books a
    final receipt of a T-1 at S002 naming S001. What the hub answers to a reader: each destination's in transit
    and write-off are its own, and S001's transfer to S003 is as it was; the thief's receipt is listed at S002
    (until this fix both T-1 were one transfer: S004 had nothing in transit, S003's final receipt wrote off
    S002's units, and the thief's receipt counted against S001's shipment)."""
    async with running_hub(tmp_path) as (hub, url):
        ids = {loc: await hub.add_agent([loc]) for loc in ("S001", "S002", "S003", "S004")}
        _, reader = await hub.add_agent([], role="reader")
        async with contextlib.AsyncExitStack() as stack:
            outbox, manager = {}, {}
            for loc, (agent_id, _) in ids.items():
                outbox[loc] = await stack.enter_async_context(
                    Outbox.open(tmp_path / f"{loc}.sqlite3", agent_id=agent_id, location=loc)
                )
                sessions = await stack.enter_async_context(SessionStore.open(tmp_path / f"{loc}-sessions.sqlite3"))
                manager[loc] = SessionManager(sessions, outbox[loc], catalog=catalog())

            async def book(loc: str, spec: SessionSpec, qty: int) -> None:
                session = await manager[loc].open(spec, by="staff")
                await manager[loc].scan(session.id, APPLE, by="staff", qty=qty)
                await manager[loc].close(session.id, by="staff")
                await sync(outbox[loc], url, ids[loc][1])

            await book("S001", SessionSpec(SessionType.TRANSFER_OUT, ref="T-1", to_location="S003"), 6)
            await book("S002", SessionSpec(SessionType.TRANSFER_OUT, ref="T-1", to_location="S004"), 4)
            await book("S003", SessionSpec(SessionType.TRANSFER_IN, ref="T-1", from_location="S001"), 5)
            await book("S004", SessionSpec(SessionType.TRANSFER_IN, ref="T-1"), 1)

            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as http:

                async def get(path: str, **params: str) -> Any:
                    async with http.get(f"{url}{path}", params=params) as resp:
                        assert resp.status == 200, await resp.text()
                        return await resp.json()

                async def state() -> dict[str, Any]:
                    counts = {
                        r["location"]: (r["on_hand"], r["in_transit"])
                        for r in (await get("/v1/counts", sku="SKU-APPLE"))["counts"]
                    }
                    offs = {
                        r["location"]: (r["qty"], r["attrs"]["from"])
                        for r in (await get("/v1/ledger", sku="SKU-APPLE"))["events"]
                        if r["kind"] == "transfer_writeoff"
                    }
                    return {"counts": counts, "writeoffs": offs}

                honest = await state()
                assert honest["counts"] == {"S001": (-6, 0), "S002": (-4, 0), "S003": (5, 0), "S004": (1, 0)}
                assert honest["writeoffs"] == {"S003": (-1, "S001"), "S004": (-3, "S002")}
                to_s003 = [e for e in (await get("/v1/exceptions", location="S003"))["exceptions"]]
                assert [(e["kind"], e["data"]["written_off"]) for e in to_s003] == [("transfer_short", 1)]

                # the thief: S002's token on a machine of its own, booking with the agent's own sessions
                outbox["thief"] = await stack.enter_async_context(
                    Outbox.open(tmp_path / "thief.sqlite3", agent_id=ids["S002"][0], location="S002")
                )
                sessions = await stack.enter_async_context(SessionStore.open(tmp_path / "thief-sessions.sqlite3"))
                manager["thief"] = SessionManager(sessions, outbox["thief"], catalog=catalog())
                ids["thief"] = ids["S002"]
                await book("thief", SessionSpec(SessionType.TRANSFER_OUT, ref="T-1", to_location="S004"), 1)
                await book("thief", SessionSpec(SessionType.TRANSFER_IN, ref="T-1", from_location="S001"), 1)
                after = await state()
                assert {loc: after["counts"][loc] for loc in ("S001", "S003")} == {
                    loc: honest["counts"][loc] for loc in ("S001", "S003")
                }
                assert after["writeoffs"]["S003"] == honest["writeoffs"]["S003"]  # S001's transfer to S003 as it was
                assert after["writeoffs"]["S004"] == (-4, "S002")  # the thief's unit, shipped after S004 closed its T-1
                assert (await get("/v1/exceptions", location="S003"))["exceptions"] == to_s003
                [claimed] = [
                    e
                    for e in (await get("/v1/exceptions", location="S002"))["exceptions"]
                    if e["kind"] == "transfer_unmatched"
                ]
                assert (claimed["location"], claimed["data"]["from"], claimed["data"]["received"]) == (
                    "S002",
                    "S001",
                    1,
                )
