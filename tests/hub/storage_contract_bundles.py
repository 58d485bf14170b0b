"""Storage contract, schema version 6: bundles and kits (docs/design.md "Bundles and kits").

Mixed into the SQLite and PostgreSQL contract test classes, so both backends run it (fixtures ``store``,
``who`` (bound to S1 and S2) and ``ev`` of ``StorageContract``).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from hub.resolver import BundleBook, component_event_id, flatten, resolve
from hub.storage.base import AgentIdentity, BundleConflict, Effect, HubStore, InvalidInput
from protocol import Kind, StockEvent, event_id_hex
from tests.hub.event_factory import EventFactory

KIT = {"A": 2, "C": 1}  # a kit of 2 A and 1 C


async def shelf(store: HubStore, location: str = "S1") -> dict[str, tuple[int, int, int, int]]:
    """(on_hand, reserved, available, in_transit) per SKU at ``location``."""
    rows = await store.counts(location=location)
    return {r.sku: (r.on_hand, r.reserved, r.available, r.in_transit) for r in rows}


async def stocked(store: HubStore, who: AgentIdentity, ev: EventFactory, **units: int) -> None:
    """Receive ``units`` (SKU=qty) at S1, then make KIT a bundle of 2 A and 1 C."""
    events = [ev(Kind.RECEIVE, qty, at_ms=i, sku=sku) for i, (sku, qty) in enumerate(units.items(), 1)]
    assert (await store.ingest(who, 1, events)).rejected == ()
    await store.put_bundle("KIT", KIT, "admin-1")


class BundleContract:
    # --- booking a bundle's movements on its parts --------------------------------------------

    async def test_a_bundle_sale_moves_its_parts_and_the_ledger_ties_them_together(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        assert (await shelf(store))["KIT"] == (3, 0, 3, 0)  # ⌊10 ÷ 2⌋ = 5, ⌊3 ÷ 1⌋ = 3: three kits
        sale = ev(Kind.SALE, -2, at_ms=10, sku="KIT", ref="receipt-7", attrs={"till": "2"})
        result = await store.ingest(who, 1, [sale])
        assert (result.applied, result.rejected) == (1, ())
        assert {c.sku: c.on_hand for c in result.counts} == {"A": 6, "C": 1, "KIT": 1}
        assert await shelf(store) == {"A": (6, 0, 6, 0), "C": (1, 0, 1, 0), "KIT": (1, 0, 1, 0)}
        ledger = {r.sku: r for r in await store.ledger(after=None) if r.kind == "sale"}
        own = ledger["KIT"]
        assert (own.event_id, own.effect, own.qty, own.attrs) == (sale.event_id, Effect.EXPANDED, -2, {"till": "2"})
        assert own.expansion is not None and own.expansion.as_json() == {"recipe_version": 1, "parts": KIT}
        for sku, units in KIT.items():
            part = ledger[sku]
            assert part.event_id == component_event_id(sale, sku)
            assert (part.effect, part.qty, part.ref, part.agent_id, part.seq) == (
                Effect.APPLIED, -2 * units, "receipt-7", who.agent_id, sale.seq,
            )  # fmt: skip
            assert part.attrs == {"till": "2", "bundle": "KIT", "bundle_event": event_id_hex(sale.event_id),
                                  "per_bundle": units}  # fmt: skip
            assert part.occurred_at == sale.occurred_at and part.expansion is None

    async def test_a_resent_bundle_movement_books_nothing_twice(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        sale = ev(Kind.SALE, -1, at_ms=10, sku="KIT")
        await store.ingest(who, 1, [sale])
        await store.put_bundle("KIT", {"A": 1, "B": 1}, "admin-1")  # a new recipe must not re-book the resend
        again = await store.ingest(who, 1, [sale, sale])
        assert (again.applied, again.duplicates, again.rejected) == (0, 2, ())
        assert {k: v[0] for k, v in (await shelf(store)).items()} == {"A": 8, "C": 2, "KIT": 0}  # B: none at S1
        kit_rows = [r for r in await store.ledger(sku="KIT")]
        assert [(r.effect, r.duplicates) for r in kit_rows] == [(Effect.EXPANDED, 2)]
        assert len(await store.ledger(sku="A")) == 2  # the receipt and one sale

    async def test_the_same_bundle_movement_from_another_credential_is_another_movement(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        sale = ev(Kind.SALE, -1, at_ms=10, sku="KIT")
        _, token = await store.add_agent(["S1"])
        other = await store.authenticate(token)
        assert other is not None
        await store.ingest(who, 1, [sale])
        theirs = sale._replace(agent_id=other.agent_id)  # the same id under another credential's namespace
        assert (await store.ingest(other, 1, [theirs])).applied == 1
        assert (await shelf(store))["A"][0] == 6

    # --- kinds ------------------------------------------------------------------------------------

    async def test_a_count_of_a_bundle_is_refused_with_a_sentence_and_nothing_moves(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        before = await shelf(store)
        count = ev(Kind.COUNT, 4, at_ms=10, sku="KIT")
        (rejection,) = (await store.ingest(who, 1, [count])).rejected
        assert rejection.code == "invalid_bundle"
        assert "count its parts instead" in rejection.reason and "2 × A, 1 × C" in rejection.reason
        assert await shelf(store) == before
        (row,) = [r for r in await store.ledger(sku="KIT") if r.kind == "count"]
        assert (row.effect, row.rejection_code) == (Effect.REJECTED, "invalid_bundle")
        assert [(e.kind, e.sku, e.data["code"]) for e in await store.exceptions()] == [
            ("rejected_event", "KIT", "invalid_bundle")
        ]

    async def test_receipts_reservations_and_returns_of_a_bundle_move_its_parts(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, C=1)
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=10, sku="KIT")])  # a supplier's kits: their parts
        assert await shelf(store) == {"A": (6, 0, 6, 0), "C": (4, 0, 4, 0), "KIT": (3, 0, 3, 0)}
        order = [ev(Kind.RESERVE, 2, at_ms=11, sku="KIT", ref="web-1")]
        await store.ingest(who, 1, order)
        assert await shelf(store) == {"A": (6, 4, 2, 0), "C": (4, 2, 2, 0), "KIT": (3, 2, 1, 0)}
        await store.ingest(who, 1, [ev(Kind.SALE, -1, at_ms=12, sku="KIT", ref="web-1")])  # consumes one reserved
        await store.ingest(who, 1, [ev(Kind.RELEASE, -1, at_ms=13, sku="KIT", ref="web-1")])  # the other cancelled
        assert await shelf(store) == {"A": (4, 0, 4, 0), "C": (3, 0, 3, 0), "KIT": (2, 0, 2, 0)}
        await store.ingest(who, 1, [ev(Kind.RETURN, 1, at_ms=14, sku="KIT"), ev(Kind.ADJUST, -1, at_ms=15, sku="KIT")])
        assert await shelf(store) == {"A": (4, 0, 4, 0), "C": (3, 0, 3, 0), "KIT": (2, 0, 2, 0)}

    async def test_a_kit_shipped_whole_pairs_with_its_parts_received_loose(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=5)
        ship = ev(Kind.TRANSFER_OUT, -2, at_ms=10, sku="KIT", ref="T-1", attrs={"to": "S2"})
        await store.ingest(who, 1, [ship])
        assert await shelf(store, "S2") == {"A": (0, 0, 0, 4), "C": (0, 0, 0, 2), "KIT": (0, 0, 0, 2)}
        loose = [
            ev(Kind.TRANSFER_IN, 4, at_ms=11, location="S2", sku="A", ref="T-1"),
            ev(Kind.TRANSFER_IN, 1, at_ms=12, location="S2", sku="C", ref="T-1", attrs={"final": True}),
        ]
        await store.ingest(who, 1, loose)
        assert await shelf(store, "S2") == {"A": (4, 0, 4, 0), "C": (1, 0, 1, 0), "KIT": (1, 0, 1, 0)}
        assert await shelf(store) == {"A": (6, 0, 6, 0), "C": (3, 0, 3, 0), "KIT": (3, 0, 3, 0)}
        (short,) = [e for e in await store.exceptions() if e.kind == "transfer_short"]
        assert (short.sku, short.data["written_off"]) == ("C", 1)  # one C never arrived

    async def test_a_bundle_movement_beyond_the_event_limits_is_refused_whole(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        await store.put_bundle("PALLET", {"A": 10_000}, "admin-1")
        big = ev(Kind.TRANSFER_OUT, -200, at_ms=10, sku="PALLET", ref="T-9", attrs={"to": "S2"})  # 2,000,000 A
        crowded = ev(Kind.SALE, -1, at_ms=11, sku="KIT", attrs={f"k{i}": i for i in range(31)})
        result = await store.ingest(who, 1, [big, crowded])
        assert [r.code for r in result.rejected] == ["invalid_bundle", "invalid_bundle"]
        assert "at most 1000000" in result.rejected[0].reason and "at most 29" in result.rejected[1].reason
        assert (await shelf(store))["A"][0] == 10

    # --- counts -----------------------------------------------------------------------------------

    async def test_a_bundles_available_is_the_least_whole_bundles_its_parts_make(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=11, C=9)
        assert (await shelf(store))["KIT"] == (5, 0, 5, 0)
        await store.ingest(who, 1, [ev(Kind.RESERVE, 3, at_ms=10, sku="A", ref="o-1")])  # A available 8: 4 kits
        assert (await shelf(store))["KIT"] == (5, 1, 4, 0)
        await store.set_safety_stock("S1", "C", 6)  # C available 3: 3 kits
        assert (await shelf(store))["KIT"] == (5, 2, 3, 0)
        row = await store.set_safety_stock("S1", "KIT", 1)  # the bundle's own safety stock
        assert (row.on_hand, row.reserved, row.available, row.safety_stock) == (5, 2, 2, 1)
        await store.ingest(who, 1, [ev(Kind.SALE, -20, at_ms=11, sku="A")])  # A goes negative
        assert (await shelf(store))["KIT"] == (0, 0, 0, 0)
        assert [e.sku for e in await store.exceptions() if e.kind == "negative_on_hand"] == ["A"]

    async def test_a_bundle_has_a_row_wherever_one_of_its_parts_has_one(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.put_bundle("KIT", KIT, "admin-1")
        assert await store.counts(sku="KIT") == []
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1, location="S2", sku="C")])
        assert [(r.location, r.on_hand, r.available) for r in await store.counts(sku="KIT")] == [("S2", 0, 0)]
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 4, at_ms=2, location="S2", sku="A")])
        assert [(r.location, r.on_hand, r.available) for r in await store.counts(sku="KIT")] == [("S2", 2, 2)]

    async def test_a_bundles_changes_are_on_the_change_feed_with_their_causes(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, C=3)
        start = await store.latest_change_id()
        restock = ev(Kind.RECEIVE, 2, at_ms=10, sku="C")  # C was limiting: 3 → 5 kits
        await store.ingest(who, 1, [restock])
        feed = {r.sku: r for r in await store.changes(start, 100)}
        assert (feed["KIT"].on_hand, feed["KIT"].available, feed["KIT"].event_ids) == (5, 5, (restock.event_id,))
        start = await store.latest_change_id()
        sale = ev(Kind.SALE, -1, at_ms=11, sku="KIT")
        await store.ingest(who, 1, [sale])
        feed = {r.sku: r for r in await store.changes(start, 100)}
        assert set(feed) == {"A", "C", "KIT"}
        assert feed["KIT"].event_ids == (sale.event_id,)
        assert feed["A"].event_ids == (component_event_id(sale, "A"),)

    async def test_a_new_recipe_puts_every_row_of_the_bundle_on_the_feed_even_one_that_stays(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """A channel sums a part over its pool before dividing (docs/channels.md), so a recipe moves what it shows of
        the bundle even where no location's row moves: 3 A at S1 and at S2 make a kit of 2 A at each (3 of the pool's
        6), and a kit of 3 A at each (2 of 6). Each row goes on the feed, so a channel pusher is told; a recipe set
        again as it is adds nothing."""
        ins = [ev(Kind.RECEIVE, 3, at_ms=1, sku="A", location=loc) for loc in ("S1", "S2")]
        assert (await store.ingest(who, 1, ins)).rejected == ()
        await store.put_bundle("KIT", {"A": 2}, "admin-1")
        start = await store.latest_change_id()
        await store.put_bundle("KIT", {"A": 3}, "admin-1")
        feed = [(r.location, r.sku, r.on_hand, r.available, r.event_ids) for r in await store.changes(start, 100)]
        assert sorted(feed) == [("S1", "KIT", 1, 1, ()), ("S2", "KIT", 1, 1, ())]
        start = await store.latest_change_id()
        await store.put_bundle("KIT", {"A": 3}, "admin-2")
        assert await store.changes(start, 100) == []

    # --- recipes ------------------------------------------------------------------------------------

    async def test_a_recipe_change_never_rewrites_history(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=10, B=10, C=10)
        first = ev(Kind.SALE, -1, at_ms=10, sku="KIT")
        await store.ingest(who, 1, [first])
        bundle, changed = await store.put_bundle("KIT", {"A": 1, "B": 3}, "admin-2")
        assert changed and bundle.recipe.version == 2 and bundle.parts == (("A", 1), ("B", 3))
        assert (await shelf(store))["KIT"] == (3, 0, 3, 0)  # now ⌊8 ÷ 1⌋ and ⌊10 ÷ 3⌋
        second = ev(Kind.SALE, -1, at_ms=11, sku="KIT")
        await store.ingest(who, 1, [second])
        assert {k: v[0] for k, v in (await shelf(store)).items()} == {"A": 7, "B": 7, "C": 9, "KIT": 2}
        booked = {r.event_id: r.expansion for r in await store.ledger(sku="KIT")}
        assert booked[first.event_id] is not None and booked[first.event_id].as_json() == {
            "recipe_version": 1, "parts": {"A": 2, "C": 1}}  # fmt: skip
        assert booked[second.event_id] is not None and booked[second.event_id].as_json() == {
            "recipe_version": 2, "parts": {"A": 1, "B": 3}}  # fmt: skip
        versions = await store.bundle_versions("KIT")
        assert [(v.version, v.components, v.set_by) for v in versions] == [
            (1, (("A", 2), ("C", 1)), "admin-1"), (2, (("A", 1), ("B", 3)), "admin-2")]  # fmt: skip
        assert versions[0].valid_from_ms <= versions[1].valid_from_ms
        same, changed = await store.put_bundle("KIT", {"B": 3, "A": 1}, "admin-3")  # the recipe in force again
        assert not changed and same.recipe.version == 2
        assert len(await store.bundle_versions("KIT")) == 2

    async def test_a_bundle_inside_a_bundle_books_plain_parts_and_cycles_are_refused(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await stocked(store, who, ev, A=20, C=20, D=20)
        await store.put_bundle("DUO", {"KIT": 2, "D": 1}, "admin-1")
        (duo,) = await store.bundles(sku="DUO")
        assert duo.recipe.components == (("D", 1), ("KIT", 2)) and duo.parts == (("A", 4), ("C", 2), ("D", 1))
        assert (await shelf(store))["DUO"] == (5, 0, 5, 0)
        sale = ev(Kind.SALE, -1, at_ms=10, sku="DUO")
        await store.ingest(who, 1, [sale])
        assert {k: v[0] for k, v in (await shelf(store)).items()} == {"A": 16, "C": 18, "D": 19, "DUO": 4, "KIT": 8}
        with pytest.raises(BundleConflict, match="inside itself: KIT → DUO → KIT"):
            await store.put_bundle("KIT", {"A": 1, "DUO": 1}, "admin-1")
        await store.put_bundle("KIT", {"A": 1}, "admin-1")  # the inner bundle changes: so does what DUO moves
        (duo,) = await store.bundles(sku="DUO")
        assert duo.parts == (("A", 2), ("D", 1)) and duo.recipe.version == 1
        assert {k: v[0] for k, v in (await shelf(store)).items()} == {"A": 16, "C": 18, "D": 19, "DUO": 8, "KIT": 16}
        assert await store.bundle_parts(["D"]) == {"DUO": {"A": 2, "D": 1}}
        assert await store.bundle_parts(["A"]) == {"DUO": {"A": 2, "D": 1}, "KIT": {"A": 1}}

    async def test_a_sku_holding_stock_of_its_own_cannot_become_a_bundle(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=1, sku="KIT"), ev(Kind.RECEIVE, 5, at_ms=2, sku="A")])
        own = "KIT holds stock of its own .3 on hand, 0 reserved, 0 in transit at S1"
        with pytest.raises(BundleConflict, match=own):
            await store.put_bundle("KIT", {"A": 1}, "admin-1")
        assert await store.bundles() == []
        await store.ingest(who, 1, [ev(Kind.ADJUST, -3, at_ms=3, sku="KIT")])  # booked out (as its parts, say)
        bundle, changed = await store.put_bundle("KIT", {"A": 1}, "admin-1")
        assert changed and bundle.recipe.version == 1
        assert (await shelf(store))["KIT"] == (5, 0, 5, 0)
        kit = [r for r in await store.ledger(sku="KIT")]
        assert [r.effect for r in kit] == [Effect.APPLIED, Effect.APPLIED]  # its own past stays as it was

    async def test_a_bad_recipe_is_refused_with_a_sentence(self, store: HubStore) -> None:
        for sku, components, message in [
            ("KIT", {}, "at least one component"),
            ("KIT", {"KIT": 1}, "names itself"),
            ("KIT", {"A": 0}, "units of component A must be a whole number from 1 to 10000"),
            ("KIT", {"A": True}, "whole number"),
            ("KIT", {"A\n": 1}, "component SKU"),
            ("unknown:4006381333931", {"A": 1}, "unknown-barcode key"),
            ("KIT", {f"P{i}": 1 for i in range(101)}, "the limit is 100"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                await store.put_bundle(sku, components, "admin-1")
        assert await store.bundles() == []

    async def test_bundles_page_by_sku(self, store: HubStore) -> None:
        for name in ("K3", "K1", "K2"):
            await store.put_bundle(name, {"A": 1}, "admin-1")
        first = await store.bundles(limit=2)
        assert [b.recipe.sku for b in first] == ["K1", "K2"]
        assert [b.recipe.sku for b in await store.bundles(after="K2", limit=2)] == ["K3"]
        assert await store.bundle_versions("NOPE") == [] and await store.bundles(sku="NOPE") == []

    # --- agreement with the pure resolver --------------------------------------------------------------

    @pytest.mark.parametrize("seed", [3, 5, 16])  # seeds whose bundles end with stock at both stores
    async def test_any_delivery_of_bundle_movements_agrees_with_the_resolver(
        self, store: HubStore, who: AgentIdentity, seed: int
    ) -> None:
        recipes = {"KIT": {"A": 2, "C": 1}, "DUO": {"KIT": 1, "C": 2}}
        for sku, parts in recipes.items():
            await store.put_bundle(sku, parts, "admin-1")
        rng = random.Random(seed)
        events = _mixed_events(who.agent_id, rng, 60)
        delivery = events + rng.sample(events, 15)
        rng.shuffle(delivery)
        for i in range(0, len(delivery), 7):
            result = await store.ingest(who, 1, delivery[i : i + 7])
            assert {r.code for r in result.rejected} <= {"invalid_bundle"}
        expected = resolve(events, None, BundleBook(flatten(recipes)))
        assert await _observed(store) == _state(expected)
        assert any(s.available for (_, sku), s in expected.stock.items() if sku in recipes)  # not a trivial case

    async def test_a_recipe_changed_midway_agrees_with_the_resolver_given_what_was_booked(
        self, store: HubStore, who: AgentIdentity
    ) -> None:
        await store.put_bundle("KIT", {"A": 2, "C": 1}, "admin-1")
        rng = random.Random(77)
        events = _mixed_events(who.agent_id, rng, 50)
        delivery = events + rng.sample(events, 10)
        rng.shuffle(delivery)
        half = len(delivery) // 2
        for i in range(0, half, 6):
            await store.ingest(who, 1, delivery[i : min(i + 6, half)])
        await store.put_bundle("KIT", {"C": 3}, "admin-1")  # A is no longer a part: rows where only A is go
        for i in range(half, len(delivery), 6):
            await store.ingest(who, 1, delivery[i : i + 6])
        fixed = {r.event_id: dict(r.expansion.parts) for r in await store.ledger(limit=10_000) if r.expansion}
        expected = resolve(events, None, BundleBook({"KIT": {"C": 3}}, fixed))
        assert await _observed(store) == _state(expected)
        versions = {r.expansion.version for r in await store.ledger(limit=10_000) if r.expansion}
        assert versions == {1, 2}  # some movements were booked under each recipe

    async def test_two_hubs_at_once_and_a_recipe_change_meanwhile_agree_with_the_resolver(
        self, store: HubStore, who: AgentIdentity, tmp_path: Path
    ) -> None:
        await store.put_bundle("KIT", {"A": 2, "C": 1}, "admin-1")
        rng = random.Random(5)
        events = _mixed_events(who.agent_id, rng, 60)
        delivery = events + rng.sample(events, 15)
        rng.shuffle(delivery)
        batches = [delivery[i : i + 5] for i in range(0, len(delivery), 5)]
        halfway = asyncio.Event()

        async def send(hub: HubStore, part: list[list[StockEvent]]) -> None:
            for n, batch in enumerate(part):
                await hub.ingest(who, 1, batch)
                if n == len(part) // 2:
                    halfway.set()

        async def change() -> None:
            await halfway.wait()
            await store.put_bundle("KIT", {"A": 1, "C": 2}, "admin-2")

        async with self.open_store(tmp_path) as one, self.open_store(tmp_path) as two:  # type: ignore[attr-defined]
            await asyncio.gather(send(one, batches[0::2]), send(two, batches[1::2]), change())
        fixed = {r.event_id: dict(r.expansion.parts) for r in await store.ledger(limit=10_000) if r.expansion}
        expected = resolve(events, None, BundleBook({"KIT": {"A": 1, "C": 2}}, fixed))
        assert await _observed(store) == _state(expected)


def _mixed_events(agent_id: str, rng: random.Random, n: int) -> list[StockEvent]:
    """Movements of plain SKUs and bundles at S1 and S2 (every kind; counts of a bundle too, which are refused)."""
    factory = EventFactory(agent_id)
    out = []
    for _ in range(n):
        sku = rng.choice(["A", "C", "KIT", "KIT", "DUO"])
        location = rng.choice(["S1", "S2"])
        kind = rng.choice([Kind.RECEIVE, Kind.SALE, Kind.SALE, Kind.RETURN, Kind.ADJUST, Kind.COUNT, Kind.RESERVE,
                           Kind.RELEASE, Kind.TRANSFER_OUT, Kind.TRANSFER_IN])  # fmt: skip
        extra: dict[str, Any] = {}
        if kind in (Kind.TRANSFER_OUT, Kind.TRANSFER_IN):
            extra["ref"] = rng.choice(["T1", "T2"])
            if kind is Kind.TRANSFER_OUT:
                extra["attrs"] = {"to": "S2" if location == "S1" else "S1"}
        elif kind in (Kind.SALE, Kind.RESERVE, Kind.RELEASE):
            extra["ref"] = rng.choice([None, "O1"])
        qty = {  # stock mostly stays above zero, so the bundles' counts are not all 0
            Kind.COUNT: rng.randint(0, 12), Kind.ADJUST: rng.choice([-2, -1, 1, 3]), Kind.RECEIVE: rng.randint(2, 9),
            Kind.SALE: -rng.randint(1, 2), Kind.TRANSFER_OUT: -rng.randint(1, 2), Kind.RELEASE: -rng.randint(1, 2),
        }.get(kind, rng.randint(1, 3))  # fmt: skip
        out.append(factory(kind, qty, at_ms=rng.randint(1, 20) + rng.choice([0, 0.001]), location=location, sku=sku,
                           **extra))  # fmt: skip
    return out


async def _observed(store: HubStore) -> dict[str, Any]:
    return {
        "counts": {
            (r.location, r.sku): (r.on_hand, r.reserved, r.available, r.in_transit)
            for r in await store.counts(limit=10_000)
        },
        "effects": {r.event_id: r.effect for r in await store.ledger(limit=10_000)},
        "exceptions": sorted(
            (e.kind, e.location, e.sku) for e in await store.exceptions(limit=10_000) if e.kind != "rejected_event"
        ),
    }


def _state(res: Any) -> dict[str, Any]:
    return {
        "counts": {k: (s.on_hand, s.reserved, s.available, s.in_transit) for k, s in res.stock.items()},
        "effects": dict(res.effects),
        "exceptions": sorted((f.kind, f.location, f.sku) for f in res.findings),
    }
