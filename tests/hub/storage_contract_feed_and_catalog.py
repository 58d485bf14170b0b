"""The storage contract for the change feed, webhook state, the catalog and
re-booking of unknown barcodes, observations and divergence, import issues, and
the high-water mark answered to a sender that holds more than the hub.

``StorageContract`` inherits these, so every backend runs them.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from hub.catalog import HUB_AGENT_ID, corrections, rebook
from hub.resolver import on_hand_as_of, resolve
from hub.storage.base import (
    AgentIdentity,
    CatalogItem,
    ChangeRow,
    Forbidden,
    HubStore,
    ImportIssue,
    InvalidInput,
    LedgerRow,
    Observation,
    WebhookClaim,
    WebhookState,
)
from protocol import Kind, StockEvent, pack_hlc
from protocol.catalog import unknown_sku
from protocol.hlc import wall_ms_now
from tests.hub.event_factory import BASE_MS, EventFactory

CASE_GTIN = "14006381333938"  # a case of 12 of the item 04006381333931
ITEM_GTIN = "4006381333931"


def _counts(row: ChangeRow) -> tuple[int, int, int, int]:
    return (row.on_hand, row.reserved, row.available, row.in_transit)


class FeedAndCatalogContract:
    # --- high-water mark after a restored hub -------------------------------------

    async def test_a_sender_ahead_of_the_hub_is_answered_the_older_mark(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        events = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 8)]
        assert (await store.ingest(who, 1, events[:5], acked_seq=0)).hwm == 5
        # The agent holds 6 as acknowledged, but this hub never committed it (restored from a backup).
        lost_one = await store.ingest(who, 1, [events[6]], acked_seq=6)
        assert lost_one.hwm == 5 and lost_one.applied == 1  # committed, and the sender is told to rewind
        rewound = await store.ingest(who, 1, events[5:], acked_seq=5)
        assert (rewound.hwm, rewound.applied, rewound.duplicates) == (7, 1, 1)
        assert [r.on_hand for r in await store.counts()] == [7]
        in_step = await store.ingest(who, 1, [], acked_seq=7)
        assert in_step.hwm == 7

    async def test_a_sender_the_hub_never_heard_of_rewinds_to_zero(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        result = await store.ingest(who, 1, [], acked_seq=40)
        assert result.hwm == 0
        assert (await store.agent_status(who.agent_id))[0].hwm == {1: 0}

    # --- the agent's backlog report ----------------------------------------------------

    async def test_a_backlog_report_is_stored_with_its_batch_and_kept_until_the_next(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        _, token = await store.add_agent(["S1"])
        quiet = await store.authenticate(token)
        assert quiet is not None
        (before,) = await store.agent_status(who.agent_id)
        assert (before.backlog, before.oldest_pending_ms, before.backlog_at_ms) == (None, None, None)

        await store.ingest(who, 1, [ev(Kind.RECEIVE, 2, at_ms=1)], backlog=1234, oldest_pending_ms=BASE_MS + 1)
        await store.ingest(quiet, 1, [EventFactory(quiet.agent_id, epoch=1)(Kind.RECEIVE, 1, at_ms=2)])
        (reported,) = await store.agent_status(who.agent_id)
        assert (reported.backlog, reported.oldest_pending_ms) == (1234, BASE_MS + 1)
        assert reported.backlog_at_ms is not None and reported.backlog_at_ms == reported.last_sync_ms
        assert reported.hwm == {1: 1}  # the same ingest committed the batch
        (silent,) = await store.agent_status(quiet.agent_id)
        assert silent.last_sync_ms is not None and silent.backlog is None  # an agent that never reports

        await store.ingest(who, 1, [], acked_seq=1)  # a request without a report: the last one stays
        (kept,) = await store.agent_status(who.agent_id)
        assert (kept.backlog, kept.oldest_pending_ms, kept.backlog_at_ms) == (1234, BASE_MS + 1, reported.backlog_at_ms)

        await store.ingest(who, 1, [], acked_seq=1, backlog=0)  # an idle agent's heartbeat: nothing waits
        (idle,) = await store.agent_status(who.agent_id)
        assert (idle.backlog, idle.oldest_pending_ms) == (0, None)
        assert idle.backlog_at_ms is not None and idle.backlog_at_ms >= reported.backlog_at_ms

    @pytest.mark.parametrize("report", [{"backlog": -1}, {"backlog": 3, "oldest_pending_ms": -5}, {"backlog": 2**63}])
    async def test_a_bad_backlog_report_is_refused_and_nothing_is_committed(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory, report: dict[str, int]
    ) -> None:
        with pytest.raises(InvalidInput, match="backlog|oldest_pending_ms"):
            await store.ingest(who, 1, [ev(Kind.RECEIVE, 2, at_ms=1)], **report)
        assert await store.counts() == []
        (status,) = await store.agent_status(who.agent_id)
        assert (status.last_sync_ms, status.backlog) == (None, None)

    async def test_a_request_replayed_after_the_sender_moved_on_leaves_its_clock_skew(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """A middlebox replays a sync an hour after it was sent, when the agent had moved on: its ``sent_ms``
        is an hour old, which read as the agent's clock an hour slow on the agent list (and the metrics)."""
        events = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 4)]
        sent_ms = wall_ms_now()
        await store.ingest(who, 1, events, acked_seq=0, backlog=3, oldest_pending_ms=BASE_MS + 1, sent_ms=sent_ms)
        await store.ingest(who, 1, [], acked_seq=3, backlog=0, sent_ms=wall_ms_now())  # drained, and said so
        (heard,) = await store.agent_status(who.agent_id)
        assert heard.clock_skew_ms is not None and abs(heard.clock_skew_ms) < 60_000

        late = sent_ms - 3_600_000  # the same request, arriving an hour after it was sent
        result = await store.ingest(who, 1, events, acked_seq=0, backlog=3, oldest_pending_ms=BASE_MS + 1, sent_ms=late)
        assert (result.hwm, result.duplicates) == (3, 3)
        (after,) = await store.agent_status(who.agent_id)
        assert after.clock_skew_ms == heard.clock_skew_ms, "an old request's sent_ms is not the agent's clock now"
        assert (after.backlog, after.oldest_pending_ms) == (0, None)
        # It is a request the hub heard (a live agent's handshake after a lost answer looks the same): the
        # last sync moves.
        assert after.last_sync_ms is not None and heard.last_sync_ms is not None
        assert after.last_sync_ms >= heard.last_sync_ms

    async def test_a_late_replay_of_a_caught_up_agents_heartbeat_leaves_its_clock_skew(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """An empty heartbeat of an agent that is caught up (its acknowledged mark is the hub's) is not stale by
        the mark, so its late replay used to set the skew from its hour-old ``sent_ms``: the newest ``sent_ms``
        heard from the agent is kept, and an older one measures nothing."""
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=1)], acked_seq=0, sent_ms=wall_ms_now())
        old = wall_ms_now() - 3_600_000  # a heartbeat sent an hour ago, held by a middlebox
        await store.ingest(who, 1, [], acked_seq=1, backlog=0, sent_ms=wall_ms_now())
        (heard,) = await store.agent_status(who.agent_id)
        assert heard.clock_skew_ms is not None and abs(heard.clock_skew_ms) < 60_000
        await store.ingest(who, 1, [], acked_seq=1, backlog=0, sent_ms=old)  # the late replay, caught up too
        (after,) = await store.agent_status(who.agent_id)
        assert after.clock_skew_ms == heard.clock_skew_ms, "an older sent_ms than one heard is not the clock now"
        await store.ingest(who, 1, [], acked_seq=1, backlog=0, sent_ms=wall_ms_now() + 7_200_000)  # clock moved
        (moved,) = await store.agent_status(who.agent_id)
        assert moved.clock_skew_ms is not None and moved.clock_skew_ms < -3_600_000  # a newer sent_ms still counts

    # --- change feed -----------------------------------------------------------------

    async def test_every_change_appears_once_in_commit_order_and_any_cursor_resumes(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        rng = random.Random(11)
        skus = ["A", "B", "C"]
        all_events: list[StockEvent] = []
        batches: list[list[StockEvent]] = []
        for b in range(12):
            batch = []
            for _ in range(rng.randint(1, 4)):
                at_ms = rng.uniform(0, 100 * (b + 1))  # some arrive late, before counts already stored
                kind = rng.choice([Kind.RECEIVE, Kind.SALE, Kind.COUNT, Kind.ADJUST])
                qty = {Kind.RECEIVE: 3, Kind.SALE: -1, Kind.COUNT: rng.randint(0, 9), Kind.ADJUST: -2}[kind]
                batch.append(ev(kind, qty, at_ms=at_ms, sku=rng.choice(skus), location=rng.choice(["S1", "S2"])))
            if all_events and rng.random() < 0.3:
                batch.append(rng.choice(all_events))  # a resend
            batches.append(batch)
            all_events += [e for e in batch if e not in all_events]

        marks = [await store.latest_change_id()]
        assert marks == [0]
        previous = {
            (c.location, c.sku): (c.on_hand, c.reserved, c.available, c.in_transit) for c in await store.counts()
        }
        for batch in batches:
            answered = (await store.ingest(who, 1, batch)).change_id
            marks.append(await store.latest_change_id())
            assert answered == marks[-1]  # the sender is told the feed's position as of its own commit
            new = await store.changes(marks[-2], 1000)
            now = {
                (c.location, c.sku): (c.on_hand, c.reserved, c.available, c.in_transit) for c in await store.counts()
            }
            moved = {k for k in now if previous.get(k, (0, 0, 0, 0)) != now[k]}
            # exactly one row per key whose counts moved, carrying its new counts
            assert sorted((c.location, c.sku) for c in new) == sorted(moved)
            assert all(_counts(c) == now[(c.location, c.sku)] for c in new)
            assert all(c.change_id <= marks[-1] for c in new)
            previous = now

        everything = await store.changes(0, 100_000)
        ids = [c.change_id for c in everything]
        assert ids == sorted(set(ids)) and len(ids) > 10 and ids[-1] == marks[-1]
        paged: list[ChangeRow] = []
        cursor = 0
        while page := await store.changes(cursor, 3):
            paged += page
            cursor = page[-1].change_id
        assert paged == everything
        for i, row in enumerate(everything):
            assert await store.changes(row.change_id, 100_000) == everything[i + 1 :]
        assert await store.changes(ids[-1], 10) == []
        # the newest change of each key is its count now
        last = {(c.location, c.sku): c for c in everything}
        assert {k: _counts(c) for k, c in last.items()} == previous
        expected = resolve(all_events).stock
        assert {k: (s.on_hand, s.available) for k, s in expected.items()} == {
            k: (c.on_hand, c.available) for k, c in last.items()
        }

    async def test_a_change_names_its_events_and_resends_change_nothing(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        first = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.SALE, -2, at_ms=2), ev(Kind.RECEIVE, 1, at_ms=3, sku="B")]
        await store.ingest(who, 1, first)
        a, b = await store.changes(0, 10)
        assert (a.location, a.sku, a.on_hand, a.available, a.event_ids) == (
            "S1",
            "A",
            8,
            8,
            (first[0].event_id, first[1].event_id),
        )
        assert (b.sku, b.on_hand, b.event_ids) == ("B", 1, (first[2].event_id,))
        assert a.at_ms > 0 and a.change_id < b.change_id
        mark = await store.latest_change_id()
        await store.ingest(who, 1, first)  # a resend
        late = ev(Kind.COUNT, 8, at_ms=5)
        await store.ingest(who, 1, [late])  # a count that agrees: on_hand does not move
        await store.ingest(who, 1, [ev(Kind.SALE, -1, at_ms=4)])  # late, before that count: superseded
        assert await store.latest_change_id() == mark
        assert await store.changes(mark, 10) == []

    async def test_a_transfer_changes_its_destination_and_names_the_shipment(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        out = ev(Kind.TRANSFER_OUT, -4, at_ms=1, ref="T1", attrs={"to": "S2"})
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=0), out])
        rows = {(c.location, c.sku): c for c in await store.changes(0, 10)}
        assert (rows[("S1", "A")].on_hand, rows[("S2", "A")].in_transit) == (6, 4)
        assert rows[("S2", "A")].event_ids == (out.event_id,)

    async def test_the_feed_filters_by_location_and_sku(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(
            who, 1, [ev(Kind.RECEIVE, 1, at_ms=1, location=loc, sku=sku) for loc in ("S1", "S2") for sku in "AB"]
        )
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=2, location="S2", sku="B")])
        assert [(c.location, c.sku) for c in await store.changes(0, 10, location="S2")] == [
            ("S2", "A"),
            ("S2", "B"),
            ("S2", "B"),
        ]
        only = await store.changes(0, 10, location="S2", sku="B")
        assert [c.on_hand for c in only] == [1, 2]
        assert [c.on_hand for c in await store.changes(only[0].change_id, 10, sku="B")] == [2]
        with pytest.raises(InvalidInput):
            await store.changes(0, 0)

    async def test_safety_stock_appends_a_change_when_available_moves(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=1)])
        mark = await store.latest_change_id()
        await store.set_safety_stock("S1", "A", 3)
        (row,) = await store.changes(mark, 10)
        assert (row.location, row.sku, row.on_hand, row.available, row.event_ids) == ("S1", "A", 10, 7, ())
        await store.set_safety_stock("S1", "A", 3)  # the same again: nothing moves
        await store.set_safety_stock("S1", "Z", 0)  # a new key that stays at zero
        assert await store.latest_change_id() == row.change_id

    # --- webhooks --------------------------------------------------------------------------

    async def test_a_webhooks_settings_start_its_cursor_again_once_and_a_hub_started_before_them_stands_aside(
        self, store: HubStore
    ) -> None:
        old, new = '{"location":null,"url":"http://a/hook"}', '{"location":null,"url":"http://b/hook"}'
        await store.save_webhook_state("shop", 9)  # a webhook that last ran before its settings were kept
        assert await store.webhook_settings("shop") is None
        assert await store.claim_webhook_settings("shop", old, None) == WebhookClaim("stored", old)
        assert (await store.webhook_state("shop")).cursor == 9  # stored quietly: nothing to tell it had changed
        assert await store.claim_webhook_settings("shop", old, old) == WebhookClaim("same", old)
        # two hubs started with the new settings, both having read the old ones: the first starts it again
        assert await store.claim_webhook_settings("shop", new, old) == WebhookClaim("reset", old)
        assert await store.webhook_state("shop") == WebhookState(0, None, 0)
        assert await store.claim_webhook_settings("shop", new, old) == WebhookClaim("same", new)
        # a hub started with the old ones before the new were stored: it stands aside, and its saves are not taken
        assert await store.claim_webhook_settings("shop", old, old) == WebhookClaim("aside", new)
        await store.save_webhook_state("shop", 9, None, 0, old)
        assert (await store.webhook_state("shop")).cursor == 0
        await store.save_webhook_state("shop", 3, None, 0, new)
        assert (await store.webhook_state("shop")).cursor == 3
        # a hub started after the new ones were stored, with the old again (a config put back): its start counts
        assert await store.claim_webhook_settings("shop", old, new) == WebhookClaim("reset", new)
        # two hubs claiming the same new settings at once (PostgreSQL: two connections): one starts it again
        claims = await asyncio.gather(*(store.claim_webhook_settings("shop", new, old) for _ in range(2)))
        assert sorted(claims) == [WebhookClaim("reset", old), WebhookClaim("same", new)]
        # a new webhook: stored with its first claim
        assert await store.claim_webhook_settings("fresh", new, None) == WebhookClaim("stored", new)
        assert await store.webhook_state("fresh") == WebhookState(0, None, 0)

    async def test_webhook_state_and_delivery_log(self, store: HubStore) -> None:
        assert await store.webhook_state("shop") == WebhookState(0, None, 0)
        await store.save_webhook_state("shop", 5, "HTTP 500 from the shop", 2)
        cursor, last_error, attempts = await store.webhook_state("shop")
        assert (cursor, last_error, attempts) == (5, "HTTP 500 from the shop", 2)
        await store.save_webhook_state("shop", 9)
        assert await store.webhook_state("shop") == WebhookState(9, None, 0)
        # a hub that lags (several hubs on one PostgreSQL database) saves an older cursor: it is not taken back
        await store.save_webhook_state("shop", 7, "HTTP 502 from the shop", 1)
        assert await store.webhook_state("shop") == WebhookState(9, "HTTP 502 from the shop", 1)
        await store.save_webhook_state("shop", 9)
        assert await store.webhook_state("other") == WebhookState(0, None, 0)
        await store.log_webhook_delivery("shop", 1, 5, "failed", 500, "HTTP 500", 1_000)
        await store.log_webhook_delivery("shop", 1, 9, "delivered", 200, None, 2_000)
        await store.log_webhook_delivery("other", 1, 2, "delivered", 204, None, 3_000)
        newest, older = await store.webhook_deliveries("shop")
        assert (newest.first_change, newest.last_change, newest.status, newest.http_status, newest.error) == (
            1,
            9,
            "delivered",
            200,
            None,
        )
        assert (older.status, older.error, older.at_ms, older.name) == ("failed", "HTTP 500", 1_000, "shop")
        assert newest.delivery_id > older.delivery_id
        assert [d.last_change for d in await store.webhook_deliveries("shop", limit=1)] == [9]
        assert [d.name for d in await store.webhook_deliveries("other")] == ["other"]

    # --- catalog and unknown barcodes ------------------------------------------------------

    async def test_the_catalog_is_upserted_and_versioned(self, store: HubStore) -> None:
        empty = await store.catalog()
        assert (empty.version, empty.items, await store.catalog_version()) == (0, (), 0)
        items = [CatalogItem(ITEM_GTIN, "PEN", 1, "Pen"), CatalogItem(CASE_GTIN, "PEN", 12, "Pen, case")]
        first = await store.put_catalog(items)
        assert (first.version, first.updated, set(first.changed)) == (1, 2, {ITEM_GTIN, CASE_GTIN})
        same = await store.put_catalog(items[:1])
        assert (same.version, same.updated, same.changed) == (1, 0, ())
        renamed = await store.put_catalog([CatalogItem(ITEM_GTIN, "PEN", 1, "Blue pen"), CatalogItem("QR-77", "MUG")])
        assert (renamed.version, renamed.updated) == (2, 2)
        catalog = await store.catalog()
        assert catalog.version == 2 == await store.catalog_version()
        assert [(i.barcode, i.sku, i.pack_size, i.description) for i in catalog.items] == [
            (CASE_GTIN, "PEN", 12, "Pen, case"),
            (ITEM_GTIN, "PEN", 1, "Blue pen"),
            ("QR-77", "MUG", 1, ""),
        ]

    @pytest.mark.parametrize(
        ("item", "words"),
        [
            (CatalogItem("4006381333932", "PEN"), "check digit"),
            (CatalogItem(ITEM_GTIN, "PEN", 0), "pack_size"),
            (CatalogItem("x" * 65, "PEN"), "limit is 64"),
            (CatalogItem("", "PEN"), "must not be empty"),
            (CatalogItem("QR-1", "unknown:QR-1"), "unknown-barcode key"),
            (CatalogItem("QR-1", "PEN", True), "pack_size"),
        ],
    )
    async def test_bad_catalog_items_are_refused_whole(self, store: HubStore, item: CatalogItem, words: str) -> None:
        with pytest.raises(InvalidInput, match=words):
            await store.put_catalog([CatalogItem("OK-1", "MUG"), item])
        assert await store.catalog_version() == 0

    async def test_a_barcode_twice_in_one_write_is_refused(self, store: HubStore) -> None:
        with pytest.raises(InvalidInput, match="more than once"):
            await store.put_catalog([CatalogItem("QR-1", "A"), CatalogItem("QR-1", "B")])

    async def test_learning_a_barcode_rebooks_its_scans_once(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        key = unknown_sku(CASE_GTIN)
        attrs = {"barcode": CASE_GTIN, "unknown": True}
        scans = [
            ev(Kind.RECEIVE, 1, at_ms=1, sku=key, attrs=attrs),
            ev(Kind.RECEIVE, 1, at_ms=2, sku=key, attrs=attrs),
            ev(Kind.COUNT, 3, at_ms=3, sku=key, attrs=attrs),
            ev(Kind.SALE, -1, at_ms=4, sku=key, attrs=attrs),
            ev(Kind.RECEIVE, 1, at_ms=5, sku=key, attrs=attrs, location="S2"),
        ]
        known = [ev(Kind.COUNT, 50, at_ms=0.5, sku="PEN"), ev(Kind.SALE, -5, at_ms=3.5, sku="PEN")]
        await store.ingest(who, 1, scans + known)
        before = {(e.location, e.sku) for e in await store.exceptions() if e.kind == "unknown_barcode"}
        assert before == {("S1", key), ("S2", key)}

        await store.put_catalog([CatalogItem(CASE_GTIN, "PEN", 12)])
        item = (await store.catalog()).items[0]
        assert await rebook(store, [item]) == len(scans)
        counts = {(c.location, c.sku): c.on_hand for c in await store.counts()}
        # S1: the count of 3 cases replaces the shelf's 50, then one case sold; S2 received a case
        assert counts == {("S1", key): 0, ("S2", key): 0, ("S1", "PEN"): 36 - 5 - 12, ("S2", "PEN"): 12}
        ledger = await store.ledger(limit=100)
        hub_rows = [r for r in ledger if r.agent_id == HUB_AGENT_ID]
        assert len(hub_rows) == 2 * len(scans)
        assert {r.source for r in hub_rows} == {"hub:catalog"}
        booked = {r.attrs["rebooked_from"]: r for r in hub_rows if r.sku == "PEN"}
        assert {r.qty for r in booked.values()} == {12, 36, -12}
        assert all(r.ref == r.attrs["rebooked_from"] for r in booked.values())
        # the store equals the reference resolution of everything it holds
        reference = resolve([_event(r) for r in ledger if r.rejection is None]).stock
        assert {k: s.on_hand for k, s in reference.items()} == counts
        assert [e for e in await store.exceptions() if e.kind in ("unknown_barcode", "rejected_event")] == []

        mark = await store.latest_change_id()
        assert await rebook(store, [item]) == 0  # again: duplicates, nothing moves
        assert await store.latest_change_id() == mark
        assert len(await store.ledger(limit=100)) == len(ledger)

    async def test_scans_rebooked_under_the_former_ids_are_not_rebooked_again(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        """A hub before namespaced re-booking ids derived them from the original's event id alone; its re-bookings
        are recognised, so an upgraded hub does not book them a second time under the new ids."""
        key = unknown_sku(CASE_GTIN)
        scans = [ev(Kind.RECEIVE, 2, at_ms=1, sku=key), ev(Kind.RECEIVE, 1, at_ms=2, sku=key, location="S2")]
        await store.ingest(who, 1, scans)
        await store.put_catalog([CatalogItem(CASE_GTIN, "PEN", 12)])
        item = (await store.catalog()).items[0]
        former = [e for r in await store.unknown_events([key]) for e in corrections(r, item, namespaced=False)]
        hub = AgentIdentity(HUB_AGENT_ID, frozenset({"S1", "S2"}), "admin")
        await store.ingest(hub, 1, former)  # as the hub before them re-booked the scans

        assert await rebook(store, [item]) == 0
        counts = {(c.location, c.sku): c.on_hand for c in await store.counts()}
        assert counts == {("S1", key): 0, ("S2", key): 0, ("S1", "PEN"): 24, ("S2", "PEN"): 12}

    async def test_unknown_events_lists_stored_events_of_those_keys(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        key = unknown_sku("QR-9")
        scans = [ev(Kind.RECEIVE, 1, at_ms=2, sku=key), ev(Kind.RECEIVE, 1, at_ms=1, sku=key, location="S2")]
        await store.ingest(who, 1, [*scans, ev(Kind.RECEIVE, 1, at_ms=3)])
        rows = await store.unknown_events([key, unknown_sku("never")])
        assert [r.event_id for r in rows] == [scans[1].event_id, scans[0].event_id]
        assert await store.unknown_events([]) == []

    # --- observations, divergence, import issues -----------------------------------------------

    async def test_observations_are_kept_once_per_agent_and_id(self, store: HubStore, who: AgentIdentity) -> None:
        obs = Observation("o1", "S1", "A", "shopify", 7, BASE_MS, "inv.csv")
        first = await store.add_observations(who, [obs, Observation("o2", "S9", "A", "shopify", 1, BASE_MS)])
        assert first.accepted == ("o1",)
        assert [i for i, _ in first.rejected] == ["o2"] and "S9" in first.rejected[0][1]
        again = await store.add_observations(who, [obs, Observation("o1", "S1", "A", "shopify", 8, BASE_MS)])
        assert again.accepted == ("o1",)
        assert again.rejected[0][0] == "o1" and "different content" in again.rejected[0][1]
        _, reader_token = await store.add_agent([], role="reader")
        reader = await store.authenticate(reader_token)
        assert reader is not None
        with pytest.raises(Forbidden):
            await store.add_observations(reader, [obs])
        with pytest.raises(InvalidInput, match="system"):
            await store.add_observations(who, [Observation("o3", "S1", "A", "", 1, BASE_MS)])

    async def test_divergence_compares_with_the_hub_as_of_the_observation(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        await store.ingest(
            who,
            1,
            [
                ev(Kind.COUNT, 10, at_ms=100),
                ev(Kind.SALE, -1, at_ms=200),
                ev(Kind.RECEIVE, 5, at_ms=400),  # after the observations: not theirs to see
                ev(Kind.RECEIVE, 40, at_ms=100, sku="B"),
            ],
        )
        agree = [
            Observation("o1", "S1", "A", "shopify", 9, BASE_MS + 300),
            Observation("o2", "S1", "B", "shopify", 40, BASE_MS + 300),
        ]
        await store.add_observations(who, agree)
        assert await store.divergence() == []
        await store.add_observations(
            who,
            [
                Observation("o3", "S1", "A", "shopify", 7, BASE_MS + 310, "later.csv"),  # newer: replaces o1
                Observation("o4", "S1", "A", "shopify", 0, BASE_MS + 50),  # older: ignored
                Observation("o5", "S1", "B", "square", 39, BASE_MS + 300),  # 1 off 40: below 2 and 5 %
                Observation("o6", "S1", "C", "square", 1, BASE_MS + 300),  # the hub has none
            ],
        )
        rows = await store.divergence()
        assert [(r.system, r.sku, r.observed, r.hub_on_hand, r.difference, r.obs_id) for r in rows] == [
            ("shopify", "A", 7, 9, -2, "o3"),
            ("square", "C", 1, 0, 1, "o6"),
        ]
        assert rows[0].source_file == "later.csv" and rows[0].agent_id == who.agent_id
        assert [r.sku for r in await store.divergence(system="square")] == ["C"]
        assert await store.divergence(location="S2") == []
        assert len(await store.divergence(limit=1)) == 1
        found = [e for e in await store.exceptions() if e.kind == "divergence"]
        assert sorted((e.sku, e.data["difference"]) for e in found) == [("A", -2), ("C", 1)]
        # a late sale stamped before the observation moves the hub's figure as of then
        await store.ingest(who, 1, [ev(Kind.SALE, -2, at_ms=305)])
        assert [(r.sku, r.hub_on_hand) for r in await store.divergence(system="shopify")] == []

    async def test_on_hand_as_of_matches_the_reference_for_any_time(
        self, store: HubStore, who: AgentIdentity, ev: EventFactory
    ) -> None:
        rng = random.Random(5)
        events = []
        for _ in range(40):
            kind = rng.choice([Kind.RECEIVE, Kind.SALE, Kind.COUNT])
            qty = {Kind.RECEIVE: rng.randint(1, 5), Kind.SALE: -rng.randint(1, 3), Kind.COUNT: rng.randint(0, 20)}[kind]
            events.append(ev(kind, qty, at_ms=rng.randint(0, 100)))
        for start in range(0, 40, 7):
            await store.ingest(who, 1, events[start : start + 7])
        observations = [Observation(f"o{t}", "S1", "A", f"sys{t}", -999, BASE_MS + t) for t in range(-1, 102, 3)]
        await store.add_observations(who, observations)
        rows = {r.system: r.hub_on_hand for r in await store.divergence()}
        assert len(rows) == len(observations)  # -999 diverges from anything
        for o in observations:
            expected = on_hand_as_of(events, "S1", "A", pack_hlc(o.observed_at_ms + 1, 0))
            assert rows[o.system] == expected, o

    async def test_import_issues_are_exceptions(self, store: HubStore, who: AgentIdentity) -> None:
        issue = ImportIssue("i1", "S1", "sales.csv", 17, "qty 'abc' is not a number", "2025-11-25;A;abc\t")
        result = await store.add_import_issues(who, [issue, ImportIssue("i2", "S9", "x.csv", 1, "bad")])
        assert result.accepted == ("i1",) and [i for i, _ in result.rejected] == ["i2"]
        assert (await store.add_import_issues(who, [issue])).accepted == ("i1",)
        (exc,) = [e for e in await store.exceptions() if e.kind == "import_quarantine"]
        assert (exc.location, exc.data["file"], exc.data["line"], exc.data["raw"]) == (
            "S1",
            "sales.csv",
            17,
            "2025-11-25;A;abc\t",
        )
        assert "sales.csv line 17" in exc.detail and "not a number" in exc.detail
        assert [e.kind for e in await store.exceptions(location="S2")] == []


def _event(r: LedgerRow) -> StockEvent:
    return StockEvent(
        r.event_id,
        r.agent_id,
        r.epoch,
        r.seq,
        r.location,
        r.sku,
        Kind(r.kind),
        r.qty,
        r.occurred_at,
        r.wall_ms,
        r.source,
        r.ref,
        r.reason,
        r.attrs,
    )
