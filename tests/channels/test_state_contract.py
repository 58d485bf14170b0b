"""The channel state contract, run against both backends: the hub's SQLite file and a PostgreSQL hub's database.

Each test gets ``reopen``: a new ``ChannelState`` on the same database (a fresh SQLite file in ``tmp_path``, or a
fresh schema of the test PostgreSQL server), so what survives a restart is checked on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import pytest

from hub.channels import Divergence, ItemIds, LevelKey, MappingFinding, Reconciled, Refusal, SkuMapping
from hub.channels.runner import open_channel_state
from hub.channels.state import (
    ORDER_REFUSALS_KEPT_MS,
    ORDER_RESERVES_SQL,
    ORDERS_BOOKED_SQL,
    STAMP_KEPT_MS,
    SqlChannelState,
    Unbooked,
)
from hub.storage import StoreClosed, StoreError, open_store
from protocol import Kind, wall_ms_now
from tests.harness.pg import fresh_schema
from tests.harness.pg_server import ThrowawayPostgres
from tests.hub.event_factory import EventFactory

K = LevelKey("gid://shopify/InventoryItem/1", "gid://shopify/Location/1")
Reopen = Callable[[], AbstractAsyncContextManager[SqlChannelState]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("pg_server")  # skips (fails in CI) when the server cannot be reached
    return str(request.param)


@pytest.fixture
async def db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The hub database: a SQLite file, or a PostgreSQL URL over a fresh schema."""
    if backend == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    async with fresh_schema() as url:
        yield url


@pytest.fixture
def reopen(db: str) -> Reopen:
    return lambda: open_channel_state(db)


async def test_state_lives_beside_the_hub_tables_and_survives_a_reopen(db: str, reopen: Reopen) -> None:
    async with open_store(db) as store:
        async with reopen() as state:
            assert (
                await state.cursor("web") == 0
                and await state.pushed("web") == {}
                and await state.mapping("web") is None
            )
            mapping = SkuMapping((ItemIds("A", K.item_id, "gid://shopify/ProductVariant/1"),),
                                 (MappingFinding("unmapped_sku", "B", "SKU B …"),))  # fmt: skip
            await state.save_mapping("web", mapping)
            await state.record("web", {K: 5}, 1_000)  # a first batch: the cursor does not move yet
            assert await state.cursor("web") == 0
            await state.record("web", {K: 4}, 2_000, cursor=17)
            await state.record("web", {}, 3_000, cursor=12)  # never backwards
        assert await store.latest_change_id() == 0  # the hub's own tables are untouched
    async with reopen() as state:
        assert await state.cursor("web") == 17
        assert await state.pushed("web") == {K: 4}
        assert await state.mapping("web") == mapping
        assert await state.cursor("other") == 0 and await state.mapping("other") is None
        await state.record("other", {K: 2}, 4_000)
        await state.refuse("web", {K: Refusal("A", None, 4, "no.", 4_000)})
        await state.save_mapping("web", SkuMapping((ItemIds("C", "i-3", "v-3"),), ()))  # replaces the old one whole
        assert await state.mapping("web") == SkuMapping((ItemIds("C", "i-3", "v-3"),), ())
        # … and forgets what the channel confirmed and refused under it; the cursor and other channels stay
        assert await state.pushed("web") == {} and await state.refusals("web") == {}
        assert await state.cursor("web") == 17 and await state.pushed("other") == {K: 2}
    await state.close()  # closing twice is safe
    with pytest.raises(StoreClosed):
        await state.cursor("web")


async def test_refusals_are_replaced_and_cleared_per_key_or_whole(reopen: Reopen) -> None:
    keys = [LevelKey(f"i{n}", "L") for n in range(3)]
    async with reopen() as state:
        await state.refuse("web", {k: Refusal("A", None, 4, "NON_MUTABLE_INVENTORY_ITEM: no.", 1_000) for k in keys})
        await state.refuse("web", {keys[0]: Refusal("A", "S1", 2, "again", 2_000)})
        await state.refuse("pos", {keys[0]: Refusal("B", None, 1, "other channel", 3_000)})
        got = await state.refusals("web")
        assert got[keys[0]] == Refusal("A", "S1", 2, "again", 2_000) and set(got) == set(keys)
        await state.clear_refusals("web", [keys[1]])
        assert set(await state.refusals("web")) == {keys[0], keys[2]}
    async with reopen() as state:
        assert set(await state.refusals("web")) == {keys[0], keys[2]}
        await state.clear_refusals("web")
        assert await state.refusals("web") == {}
        assert set(await state.refusals("pos")) == {keys[0]}


async def test_divergences_are_numbered_per_channel_and_read_newest_first(reopen: Reopen) -> None:
    async with reopen() as state:
        rows = [Divergence(LevelKey(f"i{n}", "L"), f"S{n}", None, 5, None, n, 1_000 + n) for n in range(5)]
        stored = await state.add_divergences("web", rows[:3])
        assert [d.divergence_id for d in stored] == [1, 2, 3]
        assert [d.divergence_id for d in await state.add_divergences("web", rows[3:])] == [4, 5]
        assert [d.divergence_id for d in await state.add_divergences("pos", rows[:1])] == [1]
        assert await state.add_divergences("web", []) == []
        assert await state.close_divergences("web", [LevelKey("i1", "L")], 9_000) == 1
        assert await state.close_divergences("web", [LevelKey("i1", "L")], 9_500) == 0  # closed once
        assert await state.close_divergences("web", [], 9_500) == 0
    async with reopen() as state:
        assert [d.divergence_id for d in await state.divergences("web", 2)] == [5, 4]
        rest = await state.divergences("web", 10, before_id=4)
        assert [(d.divergence_id, d.corrected_at_ms) for d in rest] == [(3, None), (2, 9_000), (1, None)]
        assert rest[1].key == LevelKey("i1", "L") and rest[1].channel_level == 1 and rest[1].last_pushed is None
        assert await state.open_divergences("web") == 4 and await state.open_divergences("pos") == 1


async def test_the_divergences_not_corrected_yet_are_read_with_what_the_channel_showed_last(reopen: Reopen) -> None:
    a, b = LevelKey("i1", "L"), LevelKey("i2", "L")
    async with reopen() as state:
        assert await state.uncorrected("web") == {}
        await state.add_divergences(
            "web", [Divergence(a, "A", None, 5, 5, 1, 1_000), Divergence(b, "B", None, 5, 5, 9, 1_000)]
        )
        await state.add_divergences("web", [Divergence(a, "A", None, 5, 5, 2, 2_000)])  # found again, showing 2
        await state.close_divergences("web", [b], 3_000)
    async with reopen() as state:
        assert await state.uncorrected("web") == {a: 2} and await state.uncorrected("pos") == {}


async def test_divergences_added_at_once_by_two_states_get_distinct_numbers(reopen: Reopen) -> None:
    """Two hub processes reconciling one channel at the same moment: no number is given twice."""
    rows = [Divergence(LevelKey(f"i{n}", "L"), "A", None, 5, 5, n, 1_000) for n in range(3)]
    async with reopen() as one, reopen() as two:
        batches = await asyncio.gather(*(s.add_divergences("web", rows) for s in (one, two, one, two)))
        ids = sorted(d.divergence_id for batch in batches for d in batch)
        assert ids == list(range(1, 13))
        assert len(await one.divergences("web", 100)) == 12


async def test_many_keys_close_in_parts(reopen: Reopen) -> None:
    keys = [LevelKey(f"i{n}", "L") for n in range(1_200)]  # more than one IN (...) list
    async with reopen() as state:
        await state.add_divergences("web", [Divergence(k, "A", None, 1, None, 0, 1_000) for k in keys])
        await state.refuse("web", {k: Refusal("A", None, 1, "no", 1_000) for k in keys})
        assert await state.close_divergences("web", keys[:1_100], 2_000) == 1_100
        assert await state.open_divergences("web") == 100
        await state.clear_refusals("web", keys[100:])
        assert set(await state.refusals("web")) == set(keys[:100])


async def test_the_last_reconciliation_is_kept_per_channel(reopen: Reopen) -> None:
    async with reopen() as state:
        assert await state.reconciled("web") is None
        await state.save_reconciled("web", Reconciled(1_000, 10, 2))
        await state.save_reconciled("web", Reconciled(2_000, 12, 0))
    async with reopen() as state:
        assert await state.reconciled("web") == Reconciled(2_000, 12, 0)
        assert await state.reconciled("pos") is None


async def test_a_state_opened_on_a_new_database_migrates_it(reopen: Reopen, db: str) -> None:
    async with reopen() as state:
        await state.record("web", {K: 1}, 1_000, cursor=3)
    async with open_store(db) as store:  # the hub opens what the channel state migrated
        assert await store.latest_change_id() == 0


async def test_a_postgresql_state_names_the_database_without_its_password(pg_url: str) -> None:
    bad = pg_url.replace("@", "x@", 1) if ":" in pg_url.split("@")[0] else pg_url
    password = bad.split("//", 1)[1].split("@", 1)[0].split(":", 1)[-1]
    with pytest.raises(StoreError) as err:
        async with open_channel_state(bad):
            pass
    assert password not in str(err.value) and "***" in str(err.value)


async def test_a_postgresql_state_reads_what_another_process_wrote(pg_url: str) -> None:
    async with open_channel_state(pg_url) as state:
        await state.record("web", {K: 7}, 1_000, cursor=5)
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT cursor FROM channel_state WHERE channel = 'web'") == 5
            await conn.execute("UPDATE channel_state SET cursor = 9 WHERE channel = 'web'")
        finally:
            await conn.close()
        assert await state.cursor("web") == 9


async def test_the_findings_of_the_last_mapping_load_are_hub_exceptions(reopen: Reopen, db: str) -> None:
    """An unmapped SKU (and every other mapping finding) is an exception with the sentence saying what to do;
    a later load replaces them; a location's list leaves them out (a finding names no hub location)."""
    finding = MappingFinding("unmapped_sku", "B", "the hub holds stock of SKU B in the pool but no item carries it: "
                             "add it to the item at the channel.")  # fmt: skip
    async with open_store(db) as store, reopen() as state:
        await state.save_mapping("web", SkuMapping((ItemIds("A", K.item_id, "v-1"),), (finding,)))
        rows = [r for r in await store.exceptions() if r.kind == "channel_mapping"]
        assert [(r.sku, r.data) for r in rows] == [("B", {"channel": "web", "finding": "unmapped_sku"})]
        assert "add it to the item" in rows[0].detail and "mapping/refresh" in rows[0].detail
        assert rows[0].at_ms > 0
        assert not [r for r in await store.exceptions(location="S1") if r.kind == "channel_mapping"]
        await state.save_mapping("web", SkuMapping((ItemIds("A", K.item_id, "v-1"), ItemIds("B", "i-2", "v-2")), ()))
        assert not [r for r in await store.exceptions() if r.kind == "channel_mapping"]


async def test_an_orders_reservation_is_read_from_the_hubs_own_table(reopen: Reopen, db: str) -> None:
    """What settling a Square order compares with: Σ reserved and Σ consumed of its ref, per (location, SKU)."""
    async with open_store(db) as store, reopen() as state:
        agent_id, token = await store.add_agent(["S1"])
        who = await store.authenticate(token)
        assert who is not None
        ev = EventFactory(agent_id)
        result = await store.ingest(who, ev.epoch, [
            ev(Kind.RECEIVE, 5, at_ms=1), ev(Kind.RESERVE, 3, at_ms=2, ref="pos:order:X"),
            ev(Kind.SALE, -1, at_ms=3, ref="pos:order:X"), ev(Kind.RESERVE, 2, at_ms=4, ref="pos:order:Y"),
        ])  # fmt: skip
        assert not result.rejected
        keys = [("S1", "A"), ("S1", "B"), ("S2", "A")]
        assert await state.order_reservations("pos:order:X", keys) == {("S1", "A"): (3, 1)}
        assert await state.order_reservations("pos:order:Z", keys) == {}


async def test_a_levels_stamp_survives_a_mapping_load_and_never_goes_back(db: str, reopen: Reopen) -> None:
    async with open_store(db), reopen() as state:
        await state.record("web", {K: 5}, 1_000, stamps={K: 9_000})  # sent stamped after the clock: the stamp
        assert await state.pushed_at("web") == {K: 9_000}
        await state.record("web", {K: 4}, 2_000)  # a clock set back does not take it back
        assert await state.pushed_at("web") == {K: 9_000}
        await state.save_mapping("web", SkuMapping((ItemIds("A", K.item_id, "v-1"),), ()))
        assert await state.pushed("web") == {}  # the quantity is forgotten …
        assert await state.pushed_at("web") == {K: 9_000}  # … its stamp is not
        await state.record("web", {K: 3}, 10_000)
        assert await state.pushed("web") == {K: 3} and await state.pushed_at("web") == {K: 10_000}


async def test_the_sku_each_order_line_was_reserved_on_is_read_from_the_channels_own_reserves(
    reopen: Reopen, db: str
) -> None:
    """What a Shopify line renamed since its order is booked on (hub.channels.order_routes)."""
    from hub.storage.base import AgentIdentity

    async with open_store(db) as store, reopen() as state:
        who = AgentIdentity("channel:web", frozenset({"S1"}), "agent")
        ev = EventFactory("channel:web", epoch=0)
        attrs = {"channel": "web", "order": "7", "stage": "reserve"}
        result = await store.ingest(who, 0, [
            ev(Kind.RECEIVE, 5, at_ms=1),
            ev(Kind.RESERVE, 2, at_ms=2, ref="web:order:7", attrs={**attrs, "line": "70"}),
            ev(Kind.RESERVE, 1, at_ms=3, sku="B", ref="web:order:7", attrs={**attrs, "line": "71"}),
            ev(Kind.SALE, -1, at_ms=4, ref="web:order:7", attrs={**attrs, "line": "70", "stage": "sale"}),
        ])  # fmt: skip
        assert not result.rejected, result.rejected
        assert await state.order_line_skus("web", "web:order:7") == {"70": "A", "71": "B"}
        assert await state.order_line_skus("web", "web:order:8") == {}
        assert await state.order_line_skus("other", "web:order:7") == {}


async def test_the_orders_booked_are_those_a_channels_webhooks_reserved(reopen: Reopen, db: str) -> None:
    """Which of Square's orders behind register sales the hub has booked (hub.channels.pusher takes the others' units
    off the counts it pushes): an order reserved under an order channel's identity and ref, by the ledger's index."""
    from hub.storage.base import AgentIdentity

    async with open_store(db) as store, reopen() as state:
        who = AgentIdentity("channel:pos", frozenset({"S1"}), "agent")
        ev = EventFactory("channel:pos", epoch=0)
        result = await store.ingest(who, 0, [
            ev(Kind.RECEIVE, 5, at_ms=1),
            ev(Kind.RESERVE, 1, at_ms=2, ref="pos:order:O1"), ev(Kind.SALE, -1, at_ms=3, ref="pos:order:O1"),
            ev(Kind.SALE, -1, at_ms=4, ref="pos:order:O3"),  # a sale alone: not how an order webhook books
        ])  # fmt: skip
        assert not result.rejected, result.rejected
        ids = [f"O{i}" for i in range(1, 150)]  # more than one read's worth
        assert await state.orders_booked(["pos"], ids) == {"O1"}
        assert await state.orders_booked(["quiet", "pos"], ["O1", "O2"]) == {"O1"}
        assert await state.orders_booked(["quiet"], ["O1"]) == set()  # another channel's identity booked it
        assert await state.orders_booked(["pos"], []) == set()


async def test_a_mapping_load_drops_the_stamps_of_items_it_no_longer_maps_once_they_no_longer_matter(
    db: str, reopen: Reopen
) -> None:
    """Stamps were kept for every item ever pushed: ``channel_pushed`` grew with item churn. Items the mapping no
    longer has lose their row once its stamp is older than any count the hub sends (24 h, Square's window)."""
    now = wall_ms_now()
    old, new = now - STAMP_KEPT_MS - 60_000, now - 60_000
    gone_long, gone_now, kept = LevelKey("i-old", "L1"), LevelKey("i-recent", "L1"), LevelKey("i-1", "L1")
    async with open_store(db), reopen() as state:
        await state.record("web", {gone_long: 1, gone_now: 2, kept: 3}, old, stamps={gone_now: new})
        await state.save_mapping("web", SkuMapping((ItemIds("A", kept.item_id, "v-1"),), ()))
        assert await state.pushed_at("web") == {gone_now: new, kept: old}  # still mapped: its stamp stays, however old


async def test_a_postgresql_state_on_a_server_turned_read_only_writes_to_the_one_that_took_over() -> None:
    """Failover, as for the hub store (tests/hub/test_postgres_server_faults.py): the server is demoted to a
    read-only standby and the hub's URL names the one that took over (``target_session_attrs=read-write``). The
    channel state's pool kept its sessions on the read-only server, so every save of a channel's position failed
    until the hub was restarted; a connection that meets a read-only server is dropped and the next goes over."""
    with ThrowawayPostgres() as old, ThrowawayPostgres() as new:
        both = (
            f"postgresql://shelfsync:shelfsync@127.0.0.1:{old.port},127.0.0.1:{new.port}/shelfsync"
            "?target_session_attrs=read-write"
        )
        async with open_channel_state(both) as state:
            await state.record("web", {K: 7}, 1_000, cursor=5)
            await asyncio.to_thread(old.copy_to, new)  # the standby that takes over holds what the primary held
            await asyncio.to_thread(old.read_only)
            try:  # a session the pool kept on the old server is refused (the pusher pushes it again); a new one
                await state.record("web", {K: 8}, 2_000, cursor=6)  # goes to the one that took over at once
            except StoreError as err:
                assert "read-only" in str(err), err
            async with asyncio.timeout(30):
                while True:
                    try:
                        await state.record("web", {K: 8}, 2_000, cursor=6)
                        break
                    except StoreError:
                        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(new.psql, "SELECT cursor FROM channel_state WHERE channel = 'web'") == "6"


async def test_a_postgresql_state_has_the_session_settings_of_the_hub_store(pg_url: str) -> None:
    """A hub that stalls or vanishes inside a write of the channel state (paused, powered off) holds that row's locks:
    the hub that takes the channel over waits on them to save its position. The hub store's sessions bound that
    (``SESSION_DEFAULTS``: idle_in_transaction_session_timeout, lock_timeout, TCP keepalives); the channel state's
    pool was opened without them, so the wait lasted TCP's two hours. A setting the URL gives wins."""
    async with (
        open_channel_state(pg_url + "&lock_timeout=3s") as state,
        state._pool.acquire() as conn,  # type: ignore[attr-defined]
    ):
        shown = {
            name: await conn.fetchval(f"SELECT current_setting('{name}')")
            for name in ("idle_in_transaction_session_timeout", "lock_timeout", "tcp_keepalives_idle")
        }
    assert shown == {"idle_in_transaction_session_timeout": "30s", "lock_timeout": "3s", "tcp_keepalives_idle": "30"}


@pytest.mark.parametrize("query", [ORDER_RESERVES_SQL, ORDERS_BOOKED_SQL.format("?, ?")])
async def test_an_orders_reserves_are_read_by_an_index_not_by_walking_the_ledger(
    db: str, backend: str, query: str
) -> None:
    """``order_line_skus`` runs for every line of an order holding a bundle; PostgreSQL had no index that
    leads with the ref, so each read scanned every partition of the ledger (schema 9 adds events_reserve_ref).
    ``orders_booked`` runs before a Square push that finds register sales: the same index."""
    async with open_store(db):
        pass  # migrated
    params = ("r",) * (query.count("?") - 1) + ("a",)
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(db)) as conn:
            plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + query, params))
        assert "USING INDEX" in plan and "SCAN events" not in plan, plan
        return
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("SET enable_seqscan = off")  # so that a table of a few rows shows the plan of a big one
        sql = query
        for n in range(1, len(params) + 1):
            sql = sql.replace("?", f"${n}", 1)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *params))
    finally:
        await conn.close()
    assert "Seq Scan" not in plan and "Index" in plan, plan


async def test_what_counts_took_off_and_the_orders_refused_survive_a_reopen(reopen: Reopen, db: str) -> None:
    """What a Square count confirmed took off for register sales whose orders had not reached the hub, and the
    orders whose webhooks the hub refused for good (schema 14): the pusher reads both after a restart."""
    k2 = LevelKey(K.item_id, "gid://shopify/Location/2")
    now = wall_ms_now()
    async with open_store(db), reopen() as state:
        await state.record("pos", {K: 8, k2: 3}, 1_000, unbooked={K: Unbooked(1, 900), k2: Unbooked(0, 800)})
        await state.refuse_order("pos", "O1", "a line of item X is not mapped", now)
        await state.refuse_order("pos", "O-old", "…", now - ORDER_REFUSALS_KEPT_MS - 1)
    async with reopen() as state:
        assert await state.unbooked("pos") == {K: Unbooked(1, 900), k2: Unbooked(0, 800)}
        assert await state.orders_refused(["quiet", "pos"], ["O1", "O2"]) == {"O1"}
        assert await state.orders_refused(["quiet"], ["O1"]) == set()
        assert await state.orders_refused(["pos"], []) == set()
        await state.record("pos", {K: 7}, 2_000)  # a count that took nothing off
        await state.clear_unbooked("pos", [k2])
        assert await state.unbooked("pos") == {} and await state.pushed("pos") == {K: 7, k2: 3}
        assert await state.pushed_at("pos") == {K: 2_000, k2: 1_000}  # clearing moves no stamp
        await state.refuse_order("pos", "O2", "…", now + 1)  # refusals past their use go with the next one
        assert await state.orders_refused(["pos"], ["O-old", "O1", "O2"]) == {"O1", "O2"}


async def test_an_order_accepted_after_its_refusal_is_no_longer_refused(reopen: Reopen, db: str) -> None:
    """A delivery of a refused order applied (Square's retry once the cause is fixed) deletes its refusal, on that
    channel only, and says whether there was one: the refusal is the order's exception until then."""
    now = wall_ms_now()
    async with open_store(db), reopen() as state:
        await state.refuse_order("pos", "O1", "a line of item X is not mapped", now)
        await state.refuse_order("web", "O1", "…", now)
        assert await state.order_accepted("pos", "O2") is False
        assert await state.order_accepted("pos", "O1") is True
        assert await state.order_accepted("pos", "O1") is False
    async with reopen() as state:
        assert await state.orders_refused(["pos"], ["O1"]) == set()
        assert await state.orders_refused(["web"], ["O1"]) == {"O1"}


async def test_a_dismissal_undone_lists_the_order_again_on_that_channel_only(reopen: Reopen, db: str) -> None:
    """``undismiss_order`` clears who dismissed a refused order and when (a dismissal by mistake), on that channel
    only, and answers the order as stored; an order not stored is None, and so is a call that changes nothing (a
    dismissal of an order dismissed already, an undoing of one not dismissed: another call came first), so a route
    answers exactly one of two calls at once as done."""
    now = wall_ms_now()
    async with open_store(db), reopen() as state:
        await state.refuse_order("pos", "O1", "a line of item X is not mapped", now, location="S1")
        await state.refuse_order("web", "O1", "…", now)
        for channel in ("pos", "web"):
            assert (await state.dismiss_order(channel, "O1", "admin-1", now + 1)) is not None
        assert await state.dismiss_order("pos", "O1", "admin-2", now + 2) is None, "dismissed already"
        undone = await state.undismiss_order("pos", "O1")
        assert undone is not None and (undone.dismissed_at_ms, undone.dismissed_by) == (None, None), undone
        assert (undone.location, undone.reason, undone.refused_at_ms) == ("S1", "a line of item X is not mapped", now)
        assert await state.undismiss_order("pos", "O1") is None, "not dismissed"
        assert await state.undismiss_order("pos", "O2") is None
    async with reopen() as state:
        web = await state.refused_order("web", "O1")
        assert web is not None and web.dismissed_by == "admin-1", web
        pos = await state.refused_order("pos", "O1")
        assert pos is not None and pos.dismissed_at_ms is None, pos


async def test_the_settings_a_channel_ran_with_survive_a_reopen_beside_its_cursor(reopen: Reopen) -> None:
    async with reopen() as state:
        assert await state.settings("web") is None  # never stored: a channel that last ran before schema 26
        await state.save_settings("web", '{"pool":{"S1":"L1"}}')  # before any push: no cursor row yet
        await state.record("web", {K: 5}, 1_000, cursor=9)
        await state.save_settings("web", '{"pool":{"S1":"L2"}}')
        await state.record("web", {K: 4}, 2_000, cursor=12)
    async with reopen() as state:
        assert await state.settings("web") == '{"pool":{"S1":"L2"}}'
        assert await state.cursor("web") == 12 and await state.settings("pos") is None


async def test_a_sqlite_write_cancelled_while_it_waits_for_the_write_lock_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """A pusher stopped (stuck, its loop started again, the hub stopping) while its state write waits for the file's
    write lock: the BEGIN IMMEDIATE goes on in the connection's thread once the lock is free. Before, it was left
    open: the state's connection, shared by every channel of the hub, held the hub file's write lock for good —
    every sync failed with "database is locked" and every later state write with "cannot start a transaction
    within a transaction"."""
    db = str(tmp_path / "hub.db")
    async with open_channel_state(db) as state:
        await state.record("web", {K: 5}, 1_000, cursor=3)
        holder = sqlite3.connect(db, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the hub's writer, busy
            write = asyncio.ensure_future(state.record("web", {K: 4}, 2_000, cursor=4))
            await asyncio.sleep(0.3)
            assert not write.done(), "the write waits for the lock"
            write.cancel()
            await asyncio.sleep(0)  # the cancellation is delivered while the lock is still held
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        assert await state.cursor("web") == 3  # read after whatever the cancelled write left queued
        other = sqlite3.connect(db, isolation_level=None, timeout=2)
        try:
            other.execute("BEGIN IMMEDIATE")  # the hub's writer again: the file's write lock is free
            other.execute("ROLLBACK")
        finally:
            other.close()
        await state.record("web", {K: 4}, 3_000, cursor=4)
        assert await state.cursor("web") == 4 and await state.pushed("web") == {K: 4}
