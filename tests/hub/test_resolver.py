"""The resolver, rule by rule (docs/design.md "Resolution"); no server, no database."""

from __future__ import annotations

import pytest

from hub.resolver import Effect, Resolution, order_key, resolve
from protocol import Kind, StockEvent
from tests.hub.event_factory import EventFactory


def resolved_both_ways(events: list[StockEvent], **kwargs: object) -> Resolution:
    """Resolve in the given order and reversed; the answer must not depend on it."""
    forward = resolve(events, **kwargs)  # type: ignore[arg-type]
    assert resolve(list(reversed(events)), **kwargs) == forward  # type: ignore[arg-type]
    return forward


def test_deltas_without_a_count_add_up() -> None:
    ev = EventFactory()
    events = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.SALE, -3, at_ms=2), ev(Kind.RETURN, 1, at_ms=3)]
    res = resolved_both_ways(events)
    state = res.stock[("S1", "A")]
    assert (state.on_hand, state.reserved, state.available, state.last_count) == (8, 0, 8, None)
    assert set(res.effects.values()) == {Effect.APPLIED}
    assert res.findings == ()


def test_a_late_sale_before_a_count_is_superseded_and_moves_the_variance_only() -> None:
    ev = EventFactory()
    on_time = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.COUNT, 9, at_ms=5), ev(Kind.SALE, -2, at_ms=6)]
    before = resolved_both_ways(on_time)
    count_id = on_time[1].event_id
    assert before.variances[count_id] == -1  # expected 10, counted 9: one unit missing
    assert before.stock[("S1", "A")].on_hand == 7

    late_sale = ev(Kind.SALE, -1, at_ms=3)  # rung up at t=3, delivered after the count
    after = resolved_both_ways([*on_time, late_sale])
    assert after.effects[late_sale.event_id] is Effect.SUPERSEDED
    assert after.variances[count_id] == 0  # the sale explains the missing unit
    assert after.stock[("S1", "A")].on_hand == 7  # the count already saw the shelf


def test_a_late_count_stamped_after_some_deltas_restarts_from_its_quantity() -> None:
    ev = EventFactory()
    deltas = [ev(Kind.RECEIVE, 10, at_ms=1), ev(Kind.SALE, -2, at_ms=3), ev(Kind.SALE, -1, at_ms=7)]
    count = ev(Kind.COUNT, 6, at_ms=5)  # counted at t=5, arrives last
    res = resolved_both_ways([*deltas, count])
    assert res.stock[("S1", "A")].on_hand == 6 - 1  # the count, then the sale at t=7
    assert res.stock[("S1", "A")].last_count == order_key(count)
    assert [res.effects[d.event_id] for d in deltas] == [Effect.SUPERSEDED, Effect.SUPERSEDED, Effect.APPLIED]
    assert res.effects[count.event_id] is Effect.APPLIED
    assert res.variances[count.event_id] == 6 - (10 - 2)


def test_each_count_is_compared_with_the_count_before_it() -> None:
    ev = EventFactory()
    first, second = ev(Kind.COUNT, 5, at_ms=1), ev(Kind.COUNT, 4, at_ms=5)
    events = [first, ev(Kind.RECEIVE, 3, at_ms=2), second, ev(Kind.ADJUST, -1, at_ms=6)]
    res = resolved_both_ways(events)
    assert res.variances == {first.event_id: 5, second.event_id: 4 - (5 + 3)}
    assert res.stock[("S1", "A")].on_hand == 3


def test_ties_on_occurred_at_are_broken_by_agent_then_seq() -> None:
    a, b = EventFactory("a1"), EventFactory("b1")
    count_by_b = b(Kind.COUNT, 5, at_ms=4)
    sale_by_a = a(Kind.SALE, -1, at_ms=4)  # same instant; "a1" < "b1", so the sale is before the count
    res = resolved_both_ways([count_by_b, sale_by_a])
    assert res.effects[sale_by_a.event_id] is Effect.SUPERSEDED
    assert res.stock[("S1", "A")].on_hand == 5


def test_a_transfer_is_in_transit_until_received_then_closed() -> None:
    ev = EventFactory()
    out = ev(Kind.TRANSFER_OUT, -5, at_ms=1, location="S1", ref="T1", attrs={"to": "S2"})
    shipped = resolved_both_ways([out])
    assert shipped.stock[("S2", "A")].in_transit == 5
    assert shipped.stock[("S2", "A")].on_hand == 0
    assert shipped.stock[("S1", "A")].on_hand == -5
    assert shipped.transfers[("S2", "T1", "A")].in_transit == 5

    closed = resolved_both_ways([out, ev(Kind.TRANSFER_IN, 5, at_ms=9, location="S2", ref="T1")])
    assert closed.stock[("S2", "A")].in_transit == 0
    assert closed.stock[("S2", "A")].on_hand == 5
    assert [f.kind for f in closed.findings] == ["negative_on_hand"]  # S1 shipped stock it never received


def test_a_short_receipt_leaves_the_difference_in_transit_and_raises_an_exception() -> None:
    ev = EventFactory()
    events = [
        ev(Kind.RECEIVE, 10, at_ms=1),
        ev(Kind.TRANSFER_OUT, -5, at_ms=2, ref="T7", attrs={"to": "S2"}),
        ev(Kind.TRANSFER_IN, 3, at_ms=9, location="S2", ref="T7", attrs={"from": "S1"}),
    ]
    res = resolved_both_ways(events)
    assert res.stock[("S2", "A")].in_transit == 2
    (finding,) = res.findings
    assert (finding.kind, finding.location, finding.sku) == ("transfer_short", "S2", "A")
    assert finding.data == {"ref": "T7", "from": "S1", "to": "S2", "shipped": 5, "received": 3}
    assert "T7" in finding.detail and "2 are missing" in finding.detail


def test_receiving_more_than_shipped_or_with_no_shipment_is_an_exception() -> None:
    ev = EventFactory()
    over = resolved_both_ways(
        [
            ev(Kind.TRANSFER_OUT, -2, at_ms=1, ref="T1", attrs={"to": "S2"}),
            ev(Kind.TRANSFER_IN, 3, at_ms=2, location="S2", ref="T1"),
            ev(Kind.TRANSFER_IN, 4, at_ms=3, location="S2", ref="T2", attrs={"from": "S1"}),
        ]
    )
    kinds = {f.data["ref"]: f.kind for f in over.findings if f.kind.startswith("transfer")}
    assert kinds == {"T1": "transfer_over", "T2": "transfer_unmatched"}
    assert over.stock[("S2", "A")].in_transit == 0


def test_a_transfer_received_at_another_store_than_it_was_shipped_to_is_that_stores_own() -> None:
    """S1 shipped T5 to S2, S3 received a T5 in full. A transfer is kept per (destination, ref, sku) (schema 20):
    the receipt at S3 is S3's transfer T5, which nothing was shipped to, so a receipt can never take units out of
    transit to, nor write off units shipped to, another store (two stores' T5 are not one transfer). S2 still has
    S1's 5 in transit, and S3's receipt is listed at S3 as unmatched, naming where it came from when it says, and
    S1's shipment to S2 it may be (nothing of it received there), and what S3 does if it is."""
    ev = EventFactory()
    res = resolved_both_ways(
        [
            ev(Kind.TRANSFER_OUT, -5, at_ms=1, ref="T5", attrs={"to": "S2"}),
            ev(Kind.TRANSFER_IN, 5, at_ms=2, location="S3", ref="T5", attrs={"final": True, "from": "S1"}),
        ]
    )
    [finding] = [f for f in res.findings if f.kind.startswith("transfer")]
    assert (finding.kind, finding.location, finding.sku) == ("transfer_unmatched", "S3", "A")
    assert finding.data == {
        "ref": "T5", "from": "S1", "to": "S3", "shipped": 0, "received": 5,
        "shipped_elsewhere": [{"to": "S2", "from": "S1", "shipped": 5, "received": 0, "closed": False}],
    }  # fmt: skip
    assert finding.detail == (
        "Transfer T5: 5 of A were received at S3 but no shipment of it from S1 to S3 has been recorded."
        " Transfer T5 was shipped to S2 by S1 (5 units, not received there). If it arrived here by mistake, book it"
        " out here with an adjust of -5 carrying the ref T5 (received by mistake; it then leaves this list) and send"
        " it on to S2 with T5's papers, for S2 to receive as T5 (not as a transfer T5 of this store's: S2 would then"
        " expect it twice)."
    )
    assert res.stock[("S2", "A")].in_transit == 5 and res.stock[("S3", "A")].on_hand == 5
    assert res.transfers[("S2", "T5", "A")].written_off == 0 and res.transfers[("S3", "T5", "A")].written_off == 0


def test_negative_on_hand_is_an_exception_and_shows_nothing_available() -> None:
    ev = EventFactory()
    res = resolved_both_ways([ev(Kind.RECEIVE, 1, at_ms=1), ev(Kind.SALE, -3, at_ms=2)])
    state = res.stock[("S1", "A")]
    assert (state.on_hand, state.available) == (-2, 0)
    (finding,) = res.findings
    assert (finding.kind, finding.location, finding.sku, finding.data) == (
        "negative_on_hand",
        "S1",
        "A",
        {"on_hand": -2},
    )
    assert "-2" in finding.detail


def test_a_sale_with_the_reservations_ref_consumes_it_and_a_release_frees_it() -> None:
    ev = EventFactory()
    stock = ev(Kind.RECEIVE, 10, at_ms=1)
    reserve_web = ev(Kind.RESERVE, 3, at_ms=2, ref="W1")
    reserve_hold = ev(Kind.RESERVE, 2, at_ms=3)  # no ref: only a release frees it
    reserved = resolved_both_ways([stock, reserve_web, reserve_hold])
    assert (reserved.stock[("S1", "A")].reserved, reserved.stock[("S1", "A")].available) == (5, 5)

    picked = [stock, reserve_web, reserve_hold, ev(Kind.SALE, -3, at_ms=4, ref="W1"), ev(Kind.SALE, -1, at_ms=5)]
    res = resolved_both_ways(picked)
    assert (res.stock[("S1", "A")].on_hand, res.stock[("S1", "A")].reserved) == (6, 2)

    released = resolved_both_ways([*picked, ev(Kind.RELEASE, -2, at_ms=6)])
    assert (released.stock[("S1", "A")].reserved, released.stock[("S1", "A")].available) == (0, 6)


def test_a_sale_delivered_before_its_reservation_still_consumes_it() -> None:
    ev = EventFactory()
    reserve = ev(Kind.RESERVE, 2, at_ms=1, ref="W9")
    sale = ev(Kind.SALE, -3, at_ms=2, ref="W9")  # more than reserved: nothing stays open
    res = resolved_both_ways([sale, reserve])
    assert res.reservations[("S1", "A", "W9")].open == 0
    assert res.stock[("S1", "A")].reserved == 0


def test_safety_stock_holds_units_back_from_available() -> None:
    ev = EventFactory()
    res = resolved_both_ways([ev(Kind.RECEIVE, 4, at_ms=1)], safety_stock={("S1", "A"): 3, ("S9", "B"): 1})
    assert res.stock[("S1", "A")].available == 1
    assert res.stock[("S9", "B")].available == 0  # a key with only a safety stock still has a row


def test_duplicates_are_ignored_and_a_conflicting_id_is_refused() -> None:
    ev = EventFactory()
    receive = ev(Kind.RECEIVE, 4, at_ms=1)
    assert resolve([receive, receive]).stock[("S1", "A")].on_hand == 4
    forged = ev(Kind.RECEIVE, 40, at_ms=1, event_id=receive.event_id)
    with pytest.raises(ValueError, match="share the id"):
        resolve([receive, forged])
