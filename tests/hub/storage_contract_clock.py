"""Storage contract, schema version 5: the clock window's quarantine and transfers that close.

Mixed into ``StorageContract``, so every backend runs it (fixture ``store``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest

from hub.storage import AgentIdentity, HubStore
from hub.storage.base import AlreadyResolved
from protocol import Kind, pack_hlc, unpack_hlc
from tests.hub.event_factory import EventFactory

DAY_MS = 86_400_000
WINDOW_MS = DAY_MS
CENTURY_MS = 36_525 * DAY_MS
HALF_YEAR_MS = 182 * DAY_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def agent(store: HubStore, *locations: str) -> AgentIdentity:
    _, token = await store.add_agent(list(locations) or ["S1", "S2"])
    who = await store.authenticate(token)
    assert who is not None and who.created_ms is not None
    return who


async def on_hand(store: HubStore, location: str = "S1", sku: str = "A") -> tuple[int, int]:
    rows = await store.counts(location=location, sku=sku)
    return (rows[0].on_hand, rows[0].in_transit) if rows else (0, 0)


class ClockTransferContract:
    async def test_a_count_a_century_ahead_is_held_and_sales_after_it_count(self, store: HubStore) -> None:
        who = await agent(store)
        ev = EventFactory(who.agent_id, base_ms=now_ms() - 3_600_000)  # movements of the last hour
        future = ev(Kind.COUNT, 50, at_ms=CENTURY_MS)
        held = await store.ingest(who, 1, [ev(Kind.RECEIVE, 10, at_ms=0), future], clock_window_ms=WINDOW_MS)
        assert held.hwm == 2, "the held event counts as processed for the mark"
        [(code, reason)] = [(r.code, r.reason) for r in held.rejected]
        assert code == "quarantined" and "ahead of the hub's clock" in reason and "quarantine" in reason
        sales = [ev(Kind.SALE, -1, at_ms=1 + i) for i in range(3)]
        assert (await store.ingest(who, 1, sales, clock_window_ms=WINDOW_MS)).rejected == ()
        assert await on_hand(store) == (7, 0), "sales after a held count are not superseded by it"
        assert [e.effect for e in await store.ledger() if e.kind == "sale"] == ["applied"] * 3

        [row] = await store.quarantine()
        assert (row.event_id, row.kind, row.qty, row.occurred_at, row.status) == (
            future.event_id, "count", 50, future.occurred_at, "pending"
        )
        assert row.skew_ms > CENTURY_MS - DAY_MS
        [exc] = [e for e in await store.exceptions() if e.kind == "clock_quarantine"]
        assert exc.data["quarantine_id"] == row.quarantine_id and "held in quarantine" in exc.detail

        again = await store.ingest(who, 1, [future], clock_window_ms=WINDOW_MS)
        assert [r.code for r in again.rejected] == ["quarantined"]
        assert [r.attempts for r in await store.quarantine()] == [2], "a resend is one more attempt, not a row"

        more = ev(Kind.SALE, -2, at_ms=DAY_MS // 2)  # later than the receipt time the count is applied at
        await store.ingest(who, 1, [more], clock_window_ms=WINDOW_MS)
        applied = await store.resolve_quarantine(row.quarantine_id, "apply_at_receipt", "admin-1")
        assert applied is not None and (applied.status, applied.resolved_by) == ("applied", "admin-1")
        assert await on_hand(store) == (48, 0), "the count at its receipt time, then the sale after it"
        [count] = [e for e in await store.ledger() if e.kind == "count"]
        assert count.occurred_at == pack_hlc(row.received_at_ms, 0) and count.variance == 50 - 7
        assert count.attrs["original_occurred_at"] == future.occurred_at and count.attrs["applied_by"] == "admin-1"
        assert [e for e in await store.exceptions() if e.kind == "clock_quarantine"] == []
        assert await store.quarantine() == [] and len(await store.quarantine(status=None)) == 1
        with pytest.raises(AlreadyResolved):
            await store.resolve_quarantine(row.quarantine_id, "discard", "admin-2")
        assert await store.resolve_quarantine(row.quarantine_id + 1000, "discard", "admin-2") is None

    async def test_an_event_once_held_is_held_again_whenever_it_comes_back(self, store: HubStore) -> None:
        """A discarded or applied event resent later (an outbox restored from a backup, a fork) never slips in:
        not when its stamp is inside the window by then, not at the time an operator refused."""
        who = await agent(store)
        ev = EventFactory(who.agent_id, base_ms=now_ms() - 3_600_000)
        ahead, also = ev(Kind.RECEIVE, 40, at_ms=3 * DAY_MS), ev(Kind.RECEIVE, 9, at_ms=4 * DAY_MS)
        first = await store.ingest(who, 1, [ahead, also], clock_window_ms=WINDOW_MS)
        assert [r.code for r in first.rejected] == ["quarantined", "quarantined"]
        rows = {r.event_id: r for r in await store.quarantine()}
        await store.resolve_quarantine(rows[ahead.event_id].quarantine_id, "discard", "admin-1")
        await store.resolve_quarantine(rows[also.event_id].quarantine_id, "apply_at_receipt", "admin-1")
        assert await on_hand(store) == (9, 0)
        wide = 10 * DAY_MS  # the window widened since (or days passed): both stamps are inside it now
        resent = await store.ingest(who, 2, [ahead.with_seq(who.agent_id, 2, 1), also.with_seq(who.agent_id, 2, 2)],
                                    clock_window_ms=wide)  # fmt: skip
        assert [(r.code, "discarded" in r.reason or "applied" in r.reason) for r in resent.rejected] == [
            ("quarantined", True), ("quarantined", True)
        ]
        assert resent.applied == 0 and await on_hand(store) == (9, 0)
        assert sorted(r.attempts for r in await store.quarantine(status=None)) == [2, 2]

    async def test_a_stamp_from_before_the_credential_is_held_and_can_be_discarded(self, store: HubStore) -> None:
        who = await agent(store)
        assert who.created_ms is not None
        ev = EventFactory(who.agent_id, base_ms=who.created_ms - 10 * 365 * DAY_MS)  # a clock reset to the past
        past = ev(Kind.SALE, -4, at_ms=0)
        result = await store.ingest(who, 1, [past], clock_window_ms=WINDOW_MS)
        assert [r.code for r in result.rejected] == ["quarantined"] and "before its credential" in result.rejected[0].reason
        assert await on_hand(store) == (0, 0)
        [row] = await store.quarantine(location="S1")
        assert row.skew_ms < -9 * 365 * DAY_MS
        discarded = await store.resolve_quarantine(row.quarantine_id, "discard", "admin-1")
        assert discarded is not None and discarded.status == "discarded"
        [ledger] = [e for e in await store.ledger() if e.event_id == past.event_id]
        assert (ledger.effect, ledger.rejection_code) == ("rejected", "discarded") and "admin-1" in (ledger.rejection or "")
        assert [e.kind for e in await store.exceptions()] == [], "a discarded event is resolved, not an exception"
        assert await on_hand(store) == (0, 0)

    async def test_a_clock_set_back_after_the_credential_is_held_by_the_senders_clock(self, store: HubStore) -> None:
        who = replace(await agent(store), created_ms=now_ms() - 365 * DAY_MS)  # a credential a year old
        other = await agent(store)
        now = now_ms()
        counted = EventFactory(other.agent_id, base_ms=now)
        await store.ingest(other, 1, [counted(Kind.COUNT, 20, at_ms=-3_600_000)], sent_ms=now, clock_window_ms=WINDOW_MS)
        ev = EventFactory(who.agent_id, base_ms=now)
        set_back = now - HALF_YEAR_MS  # this machine's clock, six months behind
        batch = [
            ev(Kind.SALE, -3, at_ms=-HALF_YEAR_MS),  # stamped by the clock set back
            ev(Kind.SALE, -2, at_ms=-2 * DAY_MS),  # its hybrid clock frozen at the reset two days ago
            ev(Kind.SALE, -1, at_ms=-3_000_000),  # frozen less than the window ago: true enough
        ]
        result = await store.ingest(who, 1, batch, sent_ms=set_back, clock_window_ms=WINDOW_MS)
        assert result.hwm == 3 and [r.code for r in result.rejected] == ["quarantined"] * 2
        assert all("behind the hub's when it sent it" in r.reason for r in result.rejected)
        assert await on_hand(store) == (19, 0), "no sale slipped under the count taken since"
        [status] = await store.agent_status(who.agent_id)
        assert status.clock_skew_ms is not None and abs(status.clock_skew_ms - HALF_YEAR_MS) < 60_000

        backlog = ev(Kind.SALE, -4, at_ms=-5 * DAY_MS)  # an old offline backlog, sent once the clock is right
        assert (await store.ingest(who, 1, [backlog], sent_ms=now_ms(), clock_window_ms=WINDOW_MS)).rejected == ()
        [late] = [e for e in await store.ledger() if e.event_id == backlog.event_id]
        assert late.effect == "superseded" and await on_hand(store) == (19, 0), "ordered at its true time"

        held = sorted(await store.quarantine(), key=lambda r: r.seq)
        assert [(r.seq, r.qty) for r in held] == [(1, -3), (2, -2)] and all(r.skew_ms < -DAY_MS for r in held)
        [exc, _] = [e for e in await store.exceptions() if e.kind == "clock_quarantine"]
        assert "behind the hub's clock" in exc.detail
        await store.resolve_quarantine(held[1].quarantine_id, "apply_at_receipt", "admin-1")
        await store.resolve_quarantine(held[0].quarantine_id, "discard", "admin-1")
        assert await on_hand(store) == (17, 0), "applied at its receipt, after the count; the other discarded"

    async def test_what_the_hubs_own_clock_held_before_it_noticed_is_marked_and_released(self, store: HubStore) -> None:
        """The hub's clock two days ahead (schema version 23): a sale of a right store sent before the hub noticed is
        held unmarked; once the hub finds its clock off by as much, the sale is marked (its sender's clock was off
        by as much), and released at its own time. A store whose own clock was two hours behind then is not."""
        right, slow = await agent(store, "S1"), await agent(store, "S2")
        hub_ahead = 2 * DAY_MS
        store_now = now_ms() - hub_ahead  # the stores' right time, as the hub's clock ahead sees it
        ev = EventFactory(right.agent_id, base_ms=store_now - 60_000)
        sale = ev(Kind.SALE, -1, at_ms=0)
        held = await store.ingest(right, 1, [sale], clock_window_ms=60_000, sent_ms=store_now)
        assert [r.code for r in held.rejected] == ["quarantined"]
        ev2 = EventFactory(slow.agent_id, location="S2", base_ms=store_now - 2 * 3_600_000)
        late = ev2(Kind.SALE, -1, at_ms=0)
        held = await store.ingest(slow, 1, [late], clock_window_ms=60_000, sent_ms=store_now - 2 * 3_600_000)
        assert [r.code for r in held.rejected] == ["quarantined"]
        assert [q.hub_clock_off_ms for q in await store.quarantine()] == [None, None]
        assert await store.quarantine_totals() == (0, {right.agent_id: 1, slow.agent_id: 1})

        assert (await store.hub_clock_found(hub_ahead))[0] == 1
        assert await store.quarantine_totals() == (1, {slow.agent_id: 1}), "what each release takes, counted"
        [said] = [e.detail for e in await store.exceptions() if e.kind == "clock_quarantine" and e.location == "S1"]
        assert "the hub's own clock was 2.0 days off its stores' then, so it is applied at its own time" in said
        by_agent = {q.agent_id: q for q in await store.quarantine()}
        assert by_agent[right.agent_id].hub_clock_off_ms == hub_ahead
        assert by_agent[slow.agent_id].hub_clock_off_ms is None, "its sender's clock was not off by as much"
        assert await store.release_hub_clock(60_000, "hub") == (1, 0)
        [released] = [e for e in await store.ledger() if e.location == "S1"]
        assert (released.event_id, released.occurred_at) == (sale.event_id, sale.occurred_at)
        assert released.effect == "applied"
        assert released.attrs["released_by"] == "hub" and released.attrs["hub_clock_off_ms"] == hub_ahead
        assert await on_hand(store) == (-1, 0)
        assert [q.agent_id for q in await store.quarantine()] == [slow.agent_id], "the other waits for an operator"
        assert await store.release_hub_clock(60_000, "hub") == (0, 0), "nothing released twice"
        assert await store.quarantine_totals() == (0, {slow.agent_id: 1}), "only what is pending is counted"

    async def test_a_release_that_leaves_many_pending_says_so_in_one_sentence(
        self, store: HubStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Found: on SQLite each held event a release left pending logged a WARNING of its own ("A write transaction
        of 1 write(s) failed and was rolled back"), besides an INFO line of its own: a release of 5,000 logged
        10,000 lines. Now one sentence says how many stay and why; each one's reason is at DEBUG."""
        right = await agent(store, "S1")
        hub_ahead = 2 * DAY_MS
        store_now = now_ms() - hub_ahead
        ev = EventFactory(right.agent_id, base_ms=store_now)
        many = 120  # stamped a century ahead by the store's clock too: outside the window even once corrected
        events = [ev(Kind.SALE, -1, at_ms=CENTURY_MS + i) for i in range(many)] + [ev(Kind.SALE, -1, at_ms=-60_000)]
        held = await store.ingest(right, 1, events, clock_window_ms=60_000, sent_ms=store_now)
        assert [r.code for r in held.rejected] == ["quarantined"] * (many + 1)
        assert (await store.hub_clock_found(hub_ahead))[0] == many + 1
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hub"):
            assert await store.release_hub_clock(60_000, "hub") == (1, many)
        above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
        assert [r.levelname for r in above_debug] == ["INFO"], [r.getMessage() for r in above_debug]
        said = above_debug[0].getMessage()
        assert said == (
            f"hub released 1 event(s) held because of the hub's own clock, at their own time; {many} stay for an "
            f"operator: {many} outside the clock window even by the corrected clock ({many} ahead of it)."
        ), said
        per_item = [r for r in caplog.records if r.levelno == logging.DEBUG and "stays for an" in r.getMessage()]
        assert len(per_item) == many, "each one's reason is kept at DEBUG"

    async def test_a_credential_made_while_the_hubs_clock_runs_ahead_is_dated_by_its_stores_time(
        self, store: HubStore
    ) -> None:
        """Two stores that synced lately put the hub's clock two days ahead of theirs: a credential made now is
        dated by their time, not two days in the future (where, once the clock was right, it would hold a store's
        movements of those two days as "before its credential"). One made before the stores said so is dated by
        their time once the hub finds its clock off (``hub_clock_found``), and only once."""
        hub_ahead = 2 * DAY_MS

        async def created(token: str) -> int:
            who = await store.authenticate(token)
            assert who is not None and who.created_ms is not None
            return who.created_ms

        _, before = await store.add_agent(["S9"])  # made before any store said the hub's clock is off
        assert abs(await created(before) - now_ms()) < 60_000
        for location in ("S1", "S2"):
            who = await agent(store, location)
            await store.ingest(who, 1, [], sent_ms=now_ms() - hub_ahead)  # a heartbeat: its skew is stored
        _, made = await store.add_agent(["S3"])
        assert abs(await created(made) - (now_ms() - hub_ahead)) < 60_000

        assert (await store.hub_clock_found(hub_ahead))[1] == 3, "S9's and the two stores', made in the last minutes"
        assert abs(await created(before) - (now_ms() - hub_ahead)) < 60_000
        assert abs(await created(made) - (now_ms() - hub_ahead)) < 60_000, "dated right when made: left as it is"
        assert (await store.hub_clock_found(hub_ahead))[1] == 0, "found again (a restart): nothing dated twice"
        assert abs(await created(before) - (now_ms() - hub_ahead)) < 60_000

    async def test_without_a_window_and_inside_it_nothing_is_held(self, store: HubStore) -> None:
        who = await agent(store)
        ev = EventFactory(who.agent_id, base_ms=now_ms())
        edge = [ev(Kind.RECEIVE, 1, at_ms=WINDOW_MS - 60_000), ev(Kind.RECEIVE, 1, at_ms=-WINDOW_MS + 60_000)]
        assert (await store.ingest(who, 1, edge, clock_window_ms=WINDOW_MS)).rejected == ()
        far = ev(Kind.RECEIVE, 1, at_ms=CENTURY_MS)
        assert (await store.ingest(who, 1, [far])).rejected == (), "no window given: the store applies it"

    async def test_the_skew_is_measured_from_the_request_not_the_newest_event(self, store: HubStore) -> None:
        who = await agent(store)
        ev = EventFactory(who.agent_id, base_ms=now_ms() - 3_600_000)  # a bulk import of rows an hour old
        await store.ingest(who, 1, [ev(Kind.RECEIVE, 1, at_ms=0)], sent_ms=now_ms(), clock_window_ms=WINDOW_MS)
        [status] = await store.agent_status(who.agent_id)
        assert status.clock_skew_ms is not None and abs(status.clock_skew_ms) < 60_000
        # this machine's clock an hour fast (a heartbeat at the hub's mark: one below it is a request held late)
        await store.ingest(who, 1, [], acked_seq=1, sent_ms=now_ms() + 3_600_000)
        [status] = await store.agent_status(who.agent_id)
        assert status.clock_skew_ms is not None and abs(status.clock_skew_ms + 3_600_000) < 60_000

    async def test_a_final_receipt_closes_a_transfer_and_writes_off_the_rest(self, store: HubStore) -> None:
        a, b = await agent(store, "S1"), await agent(store, "S2")
        ea, eb = EventFactory(a.agent_id, base_ms=now_ms()), EventFactory(b.agent_id, location="S2", base_ms=now_ms())
        await store.ingest(a, 1, [ea(Kind.TRANSFER_OUT, -10, at_ms=1, ref="T1", attrs={"to": "S2"})])
        await store.ingest(b, 1, [eb(Kind.TRANSFER_IN, 5, at_ms=2, ref="T1")])
        assert await on_hand(store, "S2") == (5, 5), "a partial receipt keeps it open"
        await store.ingest(b, 1, [eb(Kind.TRANSFER_IN, 3, at_ms=3, ref="T1", attrs={"final": True})])
        assert await on_hand(store, "S2") == (8, 0)
        assert await on_hand(store, "S1") == (-10, 0)
        [short] = [e for e in await store.exceptions() if e.kind.startswith("transfer")]
        assert (short.kind, short.data["written_off"], short.data["closed"]) == ("transfer_short", 2, True)
        assert "written off" in short.detail
        [off] = [e for e in await store.ledger(location="S2") if e.kind == "transfer_writeoff"]
        assert (off.sku, off.qty, off.ref, off.reason) == ("A", -2, "T1", "lost_in_transit")
        late = await store.ingest(a, 1, [ea(Kind.TRANSFER_OUT, -1, at_ms=4, ref="T1", attrs={"to": "S2"})])
        assert late.rejected == () and await on_hand(store, "S2") == (8, 0), "nothing is in transit once closed"
        [off] = [e for e in await store.ledger(location="S2") if e.kind == "transfer_writeoff"]
        assert off.qty == -3

    async def test_an_open_transfer_becomes_overdue(self, store: HubStore) -> None:
        a = await agent(store, "S1")
        await agent(store, "S2")  # a location the hub knows (one it does not know is an exception at once)
        ea = EventFactory(a.agent_id, base_ms=now_ms() - 3 * DAY_MS)
        await store.ingest(a, 1, [ea(Kind.TRANSFER_OUT, -4, at_ms=0, ref="T9", attrs={"to": "S2"})])
        assert [e.kind for e in await store.exceptions(transfer_open_max_ms=7 * DAY_MS)] == ["negative_on_hand"]
        kinds = sorted(e.kind for e in await store.exceptions(transfer_open_max_ms=DAY_MS))
        assert kinds == ["negative_on_hand", "transfer_overdue"]
        [late] = [e for e in await store.exceptions(transfer_open_max_ms=DAY_MS) if e.kind == "transfer_overdue"]
        assert (late.location, late.data["in_transit"], late.data["ref"]) == ("S2", 4, "T9")
        assert [e.kind for e in await store.exceptions(location="S2", transfer_open_max_ms=DAY_MS)] == [
            "transfer_overdue"
        ]

    async def test_bad_transfers_are_refused_and_never_in_transit(self, store: HubStore) -> None:
        a = await agent(store, "S1")
        ea = EventFactory(a.agent_id, base_ms=now_ms())
        bad = [
            ea(Kind.TRANSFER_OUT, -1_000_000_000, at_ms=1, ref="T1", attrs={"to": "S2"}),
            ea(Kind.TRANSFER_OUT, -1, at_ms=2, ref="T2"),
            ea(Kind.TRANSFER_OUT, -1, at_ms=3, ref="T3", attrs={"to": "S1"}),
            ea(Kind.TRANSFER_OUT, -1, at_ms=4, ref="T4", attrs={"to": "not a code"}),
            ea(Kind.TRANSFER_IN, 1, at_ms=5, ref="T5", attrs={"final": "yes"}),
        ]
        result = await store.ingest(a, 1, bad)
        assert [r.code for r in result.rejected] == ["invalid_transfer"] * 5
        assert result.hwm == 5
        assert [c for c in await store.counts() if c.in_transit] == []
        assert {e.data["code"] for e in await store.exceptions() if e.kind == "rejected_event"} == {"invalid_transfer"}
        assert unpack_hlc(bad[0].occurred_at)[1] == 0
