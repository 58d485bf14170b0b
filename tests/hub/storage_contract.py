"""The contract every hub storage backend passes (docs/design.md "Storage").

Subclass ``StorageContract`` in a ``test_storage_<backend>.py`` and implement
``open_store`` (a store over the files or database kept under ``tmp_path``)
and ``stored_bytes`` (every byte the backend has persisted there).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.storage.base import (
    AgentIdentity,
    CredentialChanged,
    Effect,
    Forbidden,
    HubStore,
    InvalidInput,
    StoreClosed,
    StoreOpener,
)
from protocol import CountSnapshot, Kind
from tests.hub.event_factory import EventFactory, at
from tests.hub.storage_contract_clock import ClockTransferContract
from tests.hub.storage_contract_feed_and_catalog import FeedAndCatalogContract
from tests.hub.storage_contract_transfers import TransferKeyContract

AGENT_ID_RE = re.compile(r"agent-[0-9a-f]{8}")


class StorageContract(FeedAndCatalogContract, ClockTransferContract, TransferKeyContract):
    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        raise NotImplementedError

    def stored_bytes(self, tmp_path: Path) -> bytes:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[HubStore]:
        async with self.open_store(tmp_path) as store:
            yield store

    @pytest.fixture
    async def who(self, store: HubStore) -> AgentIdentity:
        _, token = await store.add_agent(["S1", "S2"])
        identity = await store.authenticate(token)
        assert identity is not None
        return identity

    @pytest.fixture
    def ev(self, who: AgentIdentity) -> EventFactory:
        return EventFactory(who.agent_id, epoch=1)

    # --- ingest ------------------------------------------------------------

    async def test_ingest_commits_and_answers_the_counts_it_touched(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        events = [
            ev(Kind.RECEIVE, 10, at_ms=1),
            ev(Kind.SALE, -3, at_ms=2),
            ev(Kind.RECEIVE, 5, at_ms=3, location="S2", sku="B"),
        ]
        result = await store.ingest(who, 1, events)
        assert (result.agent_id, result.epoch, result.hwm) == (who.agent_id, 1, 3)
        assert (result.applied, result.duplicates, result.rejected) == (3, 0, ())
        assert result.counts == (CountSnapshot("S1", "A", 7, 0, 7, 0), CountSnapshot("S2", "B", 5, 0, 5, 0))
        rows = await store.counts()
        assert [(r.location, r.sku, r.on_hand, r.available) for r in rows] == [("S1", "A", 7, 7), ("S2", "B", 5, 5)]
        assert [(r.sku, r.on_hand) for r in await store.counts(location="S2")] == [("B", 5)]
        assert [(r.location, r.sku) for r in await store.counts(sku="A")] == [("S1", "A")]

    async def test_a_resend_is_a_duplicate_and_counted_once(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        events = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.SALE, -1, at_ms=2)]
        await store.ingest(who, 1, events)
        again = await store.ingest(who, 1, [*events, events[0]])  # resent, and one twice in the same batch
        assert (again.applied, again.duplicates, again.rejected) == (0, 3, ())
        assert again.counts == (CountSnapshot("S1", "A", 9, 0, 9, 0),)
        ledger = {r.event_id: r for r in await store.ledger()}
        assert len(ledger) == 2
        assert ledger[events[0].event_id].duplicates == 2
        assert ledger[events[1].event_id].duplicates == 1
        assert {r.effect for r in ledger.values()} == {Effect.APPLIED}

    async def test_a_new_event_twice_in_its_first_batch_is_stored_once_with_its_duplicate(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        first = ev(Kind.RECEIVE, 10, at_ms=1)
        result = await store.ingest(who, 1, [first, ev(Kind.SALE, -1, at_ms=2), first._replace(seq=first.seq + 2)])
        assert (result.applied, result.duplicates, result.rejected) == (2, 1, ())
        ledger = {r.event_id: r for r in await store.ledger()}
        assert len(ledger) == 2 and ledger[first.event_id].duplicates == 1
        assert [(r.sku, r.on_hand) for r in await store.counts()] == [("A", 9)]

    async def test_a_resend_is_found_whole_across_locations_and_whatever_the_order_of_its_ids(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        # both backends look stored ids up within the batch's lowest and highest id (PostgreSQL one location
        # at a time): a resend is found whatever lies between
        stored = [
            ev(Kind.RECEIVE, 5, at_ms=1, event_id=b"\x40" * 16),
            ev(Kind.RECEIVE, 7, at_ms=2, location="S2", sku="B", event_id=b"\x80" * 16),
        ]
        await store.ingest(who, 1, stored)
        lowest = ev(Kind.SALE, -1, at_ms=3, event_id=b"\x01" * 16)
        highest = ev(Kind.SALE, -2, at_ms=4, location="S2", sku="B", event_id=b"\xfe" * 16)
        again = await store.ingest(who, 1, [highest, *stored, lowest])
        assert (again.applied, again.duplicates, again.rejected) == (2, 2, ())
        assert again.counts == (CountSnapshot("S1", "A", 4, 0, 4, 0), CountSnapshot("S2", "B", 5, 0, 5, 0))
        assert {r.event_id: r.duplicates for r in await store.ledger()} == {
            b"\x40" * 16: 1, b"\x80" * 16: 1, b"\x01" * 16: 0, b"\xfe" * 16: 0,
        }  # fmt: skip

    async def test_new_ids_around_a_stored_one_are_all_new(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        # SQLite seeks the first stored id between the batch's lowest and highest: one found there that the
        # batch does not hold must not make a new event a duplicate
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 5, at_ms=1, event_id=b"\x40" * 16)])
        around = [ev(Kind.SALE, -1, at_ms=2, event_id=b"\x01" * 16), ev(Kind.SALE, -2, at_ms=3, event_id=b"\xfe" * 16)]
        result = await store.ingest(who, 1, around)
        assert (result.applied, result.duplicates, result.rejected) == (2, 0, ())
        assert result.counts == (CountSnapshot("S1", "A", 2, 0, 2, 0),)

    async def test_the_same_id_with_other_content_is_a_conflict_and_the_original_stands(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        original = ev(Kind.RECEIVE, 10, at_ms=1)
        await store.ingest(who, 1, [original])
        forged = ev(Kind.RECEIVE, 99, at_ms=1, event_id=original.event_id)
        result = await store.ingest(who, 1, [forged])
        (rejection,) = result.rejected
        assert (rejection.event_id, rejection.seq, rejection.code) == (original.event_id, forged.seq, "conflict")
        assert "different content" in rejection.reason
        assert (result.applied, result.duplicates, result.hwm) == (0, 0, forged.seq)
        assert [(r.on_hand) for r in await store.counts()] == [10]
        rows = await store.ledger()
        assert [(r.event_id, r.qty, r.effect, r.rejection_code) for r in rows] == [
            (original.event_id, 99, Effect.REJECTED, "conflict"),  # the attempt (a later seq), kept aside
            (original.event_id, 10, Effect.APPLIED, None),
        ]
        assert rows[0].rejection == rejection.reason
        (exc,) = await store.exceptions()
        assert (exc.kind, exc.location, exc.sku, exc.data["code"]) == ("rejected_event", "S1", "A", "conflict")

    async def test_an_event_for_another_location_is_rejected_and_never_counted(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        allowed = ev(Kind.RECEIVE, 4, at_ms=1)
        elsewhere = ev(Kind.RECEIVE, 50, at_ms=2, location="S9")
        result = await store.ingest(who, 1, [allowed, elsewhere])
        (rejection,) = result.rejected
        assert (rejection.event_id, rejection.code) == (elsewhere.event_id, "forbidden_location")
        assert "S9" in rejection.reason
        assert result.hwm == elsewhere.seq  # processed, so the agent can move past it
        assert result.applied == 1
        assert [c.location for c in result.counts] == ["S1"]
        assert await store.counts(location="S9") == []
        (row,) = await store.ledger(location="S9")
        assert (row.effect, row.rejection_code, row.qty) == (Effect.REJECTED, "forbidden_location", 50)
        assert [(e.kind, e.location) for e in await store.exceptions(location="S9")] == [("rejected_event", "S9")]
        # the same refused event again is one more attempt, not a second row
        await store.ingest(who, 1, [elsewhere])
        (row,) = await store.ledger(location="S9")
        assert row.duplicates == 1

    async def test_only_agents_and_admins_may_ingest(self, store: HubStore, ev: EventFactory) -> None:
        _, token = await store.add_agent([], role="reader")
        reader = await store.authenticate(token)
        assert reader is not None and reader.role == "reader"
        with pytest.raises(Forbidden):
            await store.ingest(reader, 1, [ev(Kind.RECEIVE, 1, at_ms=1)])
        assert await store.ledger() == []
        admin_id, admin_token = await store.add_agent(["S1"], role="admin")
        admin = await store.authenticate(admin_token)
        assert admin is not None
        result = await store.ingest(admin, 0, [EventFactory(admin_id, epoch=0)(Kind.ADJUST, 2, at_ms=1)])
        assert result.applied == 1

    async def test_events_of_another_agent_or_epoch_are_rejected(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        spoofed = EventFactory("someone-else", epoch=1)(Kind.RECEIVE, 5, at_ms=1)
        other_epoch = ev(Kind.RECEIVE, 5, at_ms=2)
        result = await store.ingest(who, 2, [spoofed, other_epoch])
        assert [r.code for r in result.rejected] == ["invalid", "invalid"]
        assert await store.counts() == []

    async def test_the_high_water_mark_only_rises_and_is_kept_per_epoch(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        events = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 6)]
        assert (await store.ingest(who, 1, events)).hwm == 5
        assert (await store.ingest(who, 1, events[:2])).hwm == 5  # an old resend does not lower it
        assert (await store.ingest(who, 1, [])).hwm == 5
        fresh = EventFactory(who.agent_id, epoch=2)
        assert (await store.ingest(who, 2, [fresh(Kind.SALE, -1, at_ms=9)])).hwm == 1
        (status,) = await store.agent_status(who.agent_id)
        assert status.hwm == {1: 5, 2: 1}
        assert status.locations == ("S1", "S2")
        assert status.last_sync_ms is not None and status.clock_skew_ms is not None

    async def test_a_batch_met_before_the_one_it_follows_stores_its_events_but_not_the_mark(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """Two batches in flight (agent.replicator): the second, met first, must not acknowledge the first's seqs."""
        first = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 6)]  # seqs 1-5: still on its way
        second = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(6, 11)]  # seqs 6-10, sent before 1-5 was answered
        early = await store.ingest(who, 1, second, 0, after_seq=5)
        assert early.hwm == 0 and early.applied == 5  # stored, but seqs 1-5 are not here: the mark stays
        (status,) = await store.agent_status(who.agent_id)
        assert status.hwm == {1: 0}
        assert (await store.ingest(who, 1, first, 0)).hwm == 5
        again = await store.ingest(who, 1, second, 5, after_seq=5)  # the sender resends it: duplicates, mark moves
        assert (again.hwm, again.applied, again.duplicates) == (10, 0, 5)
        assert sum(r.on_hand for r in await store.counts()) == 10
        in_turn = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(11, 13)]  # the first answered first: it moves
        assert (await store.ingest(who, 1, in_turn, 5, after_seq=10)).hwm == 12
        fresh = EventFactory(who.agent_id, epoch=2)  # a new epoch starts at its base: after_seq is read from there
        base = await store.ingest(who, 2, [fresh(Kind.SALE, -1, at_ms=20)], 0, after_seq=3, lineage=None)
        assert base.hwm == 0

    async def test_concurrent_batches_are_all_committed(self, store: HubStore) -> None:
        agents = []
        for i in range(8):
            _, token = await store.add_agent([f"L{i}"])
            agents.append(await store.authenticate(token))
        batches = []
        for who in agents:
            assert who is not None
            ev = EventFactory(who.agent_id, location=next(iter(who.locations)))
            batches.append((who, [ev(Kind.RECEIVE, 1, at_ms=i, sku=f"K{i % 7}") for i in range(100)]))
        results = await asyncio.gather(*(store.ingest(who, 1, evs) for who, evs in batches))
        assert [r.applied for r in results] == [100] * 8
        rows = await store.counts(limit=10_000)
        assert sum(r.on_hand for r in rows) == 800
        assert len(rows) == 8 * 7

    # --- resolution through the store ----------------------------------------

    async def test_the_ledger_is_newest_first_with_effects_and_variances(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        receive, sale, count, later = (
            ev(Kind.RECEIVE, 10, at_ms=1),
            ev(Kind.SALE, -2, at_ms=2),
            ev(Kind.COUNT, 7, at_ms=3),
            ev(Kind.SALE, -1, at_ms=4),
        )
        await store.ingest(who, 1, [receive, sale, count, later])
        late = ev(Kind.SALE, -1, at_ms=2.5)  # rung up before the count, delivered after it
        result = await store.ingest(who, 1, [late])
        assert result.counts == (CountSnapshot("S1", "A", 6, 0, 6, 0),)
        rows = await store.ledger()
        assert [r.event_id for r in rows] == [e.event_id for e in (later, count, late, sale, receive)]
        assert [r.effect for r in rows] == [Effect.APPLIED, Effect.APPLIED] + [Effect.SUPERSEDED] * 3
        assert rows[1].variance == 7 - (10 - 2 - 1)
        assert {r.variance for r in rows if r.kind != Kind.COUNT} == {None}
        assert (rows[1].kind, rows[1].qty, rows[1].source, rows[1].agent_id) == ("count", 7, "api:test", who.agent_id)
        assert [r.event_id for r in await store.ledger(limit=2)] == [later.event_id, count.event_id]
        assert [r.event_id for r in await store.ledger(before=at(2.5))] == [sale.event_id, receive.event_id]
        assert await store.ledger(sku="B") == []
        (row,) = await store.counts()
        assert row.last_count_at == count.occurred_at

    async def test_a_count_stamped_before_deltas_it_missed_restarts_on_hand(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        deltas = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.SALE, -2, at_ms=3), ev(Kind.SALE, -1, at_ms=7)]
        await store.ingest(who, 1, deltas)
        count = ev(Kind.COUNT, 6, at_ms=5)
        result = await store.ingest(who, 1, [count])
        assert result.counts[0].on_hand == 5
        effects = {r.event_id: (r.effect, r.variance) for r in await store.ledger()}
        assert effects[count.event_id] == (Effect.APPLIED, 6 - 8)
        assert [effects[d.event_id][0] for d in deltas] == [Effect.SUPERSEDED, Effect.SUPERSEDED, Effect.APPLIED]

    async def test_a_transfer_is_in_transit_then_a_short_receipt_is_an_exception(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        shipped = await store.ingest(who, 1, [ev(Kind.TRANSFER_OUT, -5, at_ms=2, ref="T1", attrs={"to": "S2"})])
        assert shipped.counts == (CountSnapshot("S1", "A", 5, 0, 5, 0),)
        (dest,) = await store.counts(location="S2")
        assert (dest.on_hand, dest.in_transit) == (0, 5)
        assert await store.exceptions() == []
        received = await store.ingest(who, 1, [ev(Kind.TRANSFER_IN, 3, at_ms=8, location="S2", ref="T1")])
        assert received.counts == (CountSnapshot("S2", "A", 3, 0, 3, 2),)
        (exc,) = await store.exceptions()
        assert (exc.kind, exc.location, exc.sku) == ("transfer_short", "S2", "A")
        assert exc.data == {"ref": "T1", "from": "S1", "to": "S2", "shipped": 5, "received": 3}
        assert "2 are missing" in exc.detail
        assert exc.at_ms > 0
        assert await store.exceptions(location="S1") == [exc]  # the sending side sees it too
        assert await store.exceptions(location="S3") == []

    async def test_a_transfer_to_a_location_the_hub_does_not_know_is_the_senders_exception(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """Shipped to S999 (or s2 for S2), a location no credential is bound to and where nothing was booked: no
        store will receive it, so it is listed for the sender at once, not only when overdue."""
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        await store.ingest(who, 1, [ev(Kind.TRANSFER_OUT, -5, at_ms=2, ref="T9", attrs={"to": "S999"})])
        await store.ingest(who, 1, [ev(Kind.TRANSFER_OUT, -1, at_ms=3, ref="T8", attrs={"to": "S2"})])
        (exc,) = await store.exceptions()
        assert (exc.kind, exc.location, exc.sku) == ("transfer_unknown_destination", "S1", "A")
        assert exc.data == {"ref": "T9", "from": "S1", "to": "S999", "shipped": 5, "received": 0, "in_transit": 5}
        assert await store.exceptions(location="S1") == [exc]
        await store.add_agent(["S999"])  # the store opened after all: its agent will receive it
        assert await store.exceptions() == []

    async def test_a_destination_is_known_only_by_its_exact_code(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """The known codes were matched with LIKE: ``_`` in a shipped-to code is a wildcard there (and SQLite's
        LIKE ignores case), so S_02 and s002 counted as known when a store S002 exists, and a transfer no store
        would ever receive was never listed."""
        await store.add_agent(["S002"])
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        for n, to in enumerate(("S_02", "s002", "S002"), start=2):
            await store.ingest(who, 1, [ev(Kind.TRANSFER_OUT, -1, at_ms=n, ref=f"T{n}", attrs={"to": to})])
        listed = await store.exceptions()
        assert sorted(e.data["to"] for e in listed if e.kind == "transfer_unknown_destination") == ["S_02", "s002"]

    async def test_negative_on_hand_is_an_exception_and_nothing_is_available(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        result = await store.ingest(who, 1, [ev(Kind.SALE, -3, at_ms=1)])
        assert result.counts == (CountSnapshot("S1", "A", -3, 0, 0, 0),)
        (exc,) = await store.exceptions()
        assert (exc.kind, exc.location, exc.sku) == ("negative_on_hand", "S1", "A")
        assert exc.data == {"on_hand": -3, "available": 0}
        assert "below zero" in exc.detail
        await store.ingest(who, 1, [ev(Kind.COUNT, 2, at_ms=2)])
        assert await store.exceptions() == []

    async def test_reservations_safety_stock_and_available(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.RESERVE, 3, at_ms=2, ref="W1")])
        result = await store.ingest(who, 1, [ev(Kind.RESERVE, 2, at_ms=3)])
        assert result.counts == (CountSnapshot("S1", "A", 10, 5, 5, 0),)
        row = await store.set_safety_stock("S1", "A", 1)
        assert (row.on_hand, row.reserved, row.safety_stock, row.available) == (10, 5, 1, 4)
        result = await store.ingest(who, 1, [ev(Kind.SALE, -3, at_ms=4, ref="W1")])
        assert result.counts == (CountSnapshot("S1", "A", 7, 2, 4, 0),)
        result = await store.ingest(who, 1, [ev(Kind.RELEASE, -2, at_ms=5)])
        assert result.counts == (CountSnapshot("S1", "A", 7, 0, 6, 0),)
        new = await store.set_safety_stock("S3", "Z", 4)
        assert (new.location, new.on_hand, new.safety_stock, new.available) == ("S3", 0, 4, 0)
        with pytest.raises(InvalidInput):
            await store.set_safety_stock("S1", "A", -1)
        with pytest.raises(InvalidInput):
            await store.set_safety_stock("no spaces", "A", 1)

    # --- credentials -------------------------------------------------------------

    async def test_a_credential_authenticates_its_agent_and_nothing_else(self, store: HubStore) -> None:
        agent_id, token = await store.add_agent(["S2", "S1", "S1"])
        assert AGENT_ID_RE.fullmatch(agent_id)
        assert token.startswith(f"ssk1.{agent_id}.")
        assert await store.authenticate(token) == AgentIdentity(agent_id, frozenset({"S1", "S2"}), "agent")
        other_id, _ = await store.add_agent(["S1"])
        assert other_id != agent_id
        secret = token.rsplit(".", 1)[1]
        for bad in (
            token[:-1] + ("A" if token[-1] != "A" else "B"),
            f"ssk1.{other_id}.{secret}",  # a real agent id with someone else's secret
            "ssk1.agent-00000000." + secret,
            "",
            "ssk1",
            "ssk1..x",
            f"ssk2.{agent_id}.{secret}",
            f"Bearer {token}",
            token + "x" * 300,
        ):
            assert await store.authenticate(bad) is None, bad

    async def test_only_a_hash_of_the_token_is_stored(self, store: HubStore, tmp_path: Path) -> None:
        _, token = await store.add_agent(["S1"])
        assert await store.authenticate(token) is not None
        await store.close()
        stored = self.stored_bytes(tmp_path)
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored  # we are looking at the right bytes
        assert token.encode() not in stored
        assert token.rsplit(".", 1)[1].encode() not in stored

    async def test_a_revoked_credential_no_longer_authenticates(self, store: HubStore) -> None:
        agent_id, token = await store.add_agent(["S1"])
        assert await store.revoke_agent(agent_id) is True
        assert await store.authenticate(token) is None
        assert await store.revoke_agent(agent_id) is False
        assert await store.revoke_agent("agent-ffffffff") is False
        (status,) = await store.agent_status(agent_id)
        assert status.revoked

    async def test_a_credential_bound_to_other_locations_authenticates_with_them_at_once(self, store: HubStore) -> None:
        agent_id, token = await store.add_agent(["S1"])
        assert await store.bind_agent(agent_id, ["S2", "S1", "S2"]) == ("S1",)
        who = await store.authenticate(token)  # the same token, the new binding: nothing is cached
        assert who is not None and who.locations == frozenset({"S1", "S2"})
        assert await store.bind_agent(agent_id, ["S2"]) == ("S1", "S2")
        (status,) = await store.agent_status(agent_id)
        assert status.locations == ("S2",)
        with pytest.raises(InvalidInput, match="at least one location"):
            await store.bind_agent(agent_id, [])
        with pytest.raises(InvalidInput, match="location code"):
            await store.bind_agent(agent_id, ["S 3"])
        with pytest.raises(InvalidInput, match="no credential agent-ffffffff"):
            await store.bind_agent("agent-ffffffff", ["S2"])
        reader, _ = await store.add_agent([], role="reader")
        with pytest.raises(InvalidInput, match="reader credential"):
            await store.bind_agent(reader, ["S2"])
        assert await store.revoke_agent(agent_id) is True
        with pytest.raises(InvalidInput, match="is revoked"):
            await store.bind_agent(agent_id, ["S3"])
        (status,) = await store.agent_status(agent_id)
        assert status.locations == ("S2",)

    async def test_a_batch_whose_credential_changed_since_it_was_found_writes_nothing(self, store: HubStore) -> None:
        """``ingest(credential=…)`` confirms the credential in the batch's transaction: bound elsewhere, revoked or
        its hash another token's, the batch raises ``CredentialChanged`` with nothing written (no event, count,
        mark or sync); confirmed, it books as without."""
        agent_id, token = await store.add_agent(["S1"])
        who = await store.authenticate(token)
        assert who is not None
        hashed = hashlib.sha256(token.encode()).hexdigest()
        ev = EventFactory(agent_id, epoch=1)

        async def nothing_written() -> None:
            assert await store.counts() == []
            (status,) = await store.agent_status(agent_id)
            assert (status.hwm, status.last_sync_ms) == ({}, None)

        with pytest.raises(CredentialChanged, match=agent_id):  # the hash of another token
            await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=1)], credential=hashed.replace(hashed[0], "x"))
        await nothing_written()
        await store.bind_agent(agent_id, ["S2"])  # S1 as it was found: bound elsewhere since
        with pytest.raises(CredentialChanged):
            await store.ingest(who, 1, [ev(Kind.RECEIVE, 3, at_ms=2)], credential=hashed)
        await nothing_written()
        now = await store.authenticate(token)
        assert now is not None and now.locations == frozenset({"S2"})
        result = await store.ingest(now, 1, [ev(Kind.RECEIVE, 4, at_ms=3, location="S2")], credential=hashed)
        assert (result.applied, result.hwm) == (1, 3)
        assert [(c.location, c.on_hand) for c in await store.counts()] == [("S2", 4)]
        assert await store.revoke_agent(agent_id)
        with pytest.raises(CredentialChanged):
            await store.ingest(now, 1, [ev(Kind.RECEIVE, 5, at_ms=4, location="S2")], credential=hashed)
        assert [(c.location, c.on_hand) for c in await store.counts()] == [("S2", 4)]
        (status,) = await store.agent_status(agent_id)
        assert status.hwm == {1: 3}

    async def test_a_bad_grant_is_refused(self, store: HubStore) -> None:
        with pytest.raises(InvalidInput, match="role"):
            await store.add_agent(["S1"], role="root")
        with pytest.raises(InvalidInput, match="at least one location"):
            await store.add_agent([])
        with pytest.raises(InvalidInput, match="location code"):
            await store.add_agent(["S 1"])
        assert await store.agent_status() == []

    # --- lifecycle -----------------------------------------------------------------

    async def test_data_survives_closing_and_reopening(self, tmp_path: Path) -> None:
        async with self.open_store(tmp_path) as store:
            agent_id, token = await store.add_agent(["S1"])
            who = await store.authenticate(token)
            assert who is not None
            await store.ingest(who, 1, [EventFactory(agent_id)(Kind.RECEIVE, 3, at_ms=1)])
        async with self.open_store(tmp_path) as store:
            assert await store.authenticate(token) == who
            assert [r.on_hand for r in await store.counts()] == [3]
            assert len(await store.ledger()) == 1
            health = await store.health()
            assert health["ok"] is True

    async def test_close_twice_is_safe_and_calls_after_close_raise(self, tmp_path: Path) -> None:
        store = await self.open_store(tmp_path)
        who = AgentIdentity("a1", frozenset({"S1"}))
        await store.close()
        await store.close()
        calls = [
            store.add_agent(["S1"]),
            store.authenticate("ssk1.agent-00000000.x"),
            store.revoke_agent("agent-00000000"),
            store.ingest(who, 1, [EventFactory()(Kind.RECEIVE, 1, at_ms=1)]),
            store.counts(),
            store.ledger(),
            store.exceptions(),
            store.agent_status(),
            store.set_safety_stock("S1", "A", 1),
            store.health(),
        ]
        for call in calls:
            with pytest.raises(StoreClosed, match="closed"):
                await call

    async def test_limits_are_checked(self, store: HubStore) -> None:
        for read in (store.counts, store.ledger, store.exceptions):
            with pytest.raises(InvalidInput, match="limit"):
                await read(limit=0)
