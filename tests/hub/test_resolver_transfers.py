"""Transfers that close: the pure resolver, and the SQLite store against it with final receipts in the mix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.resolver import TRANSFER_QTY_MAX, resolve, transfer_problem
from hub.storage import HubStore
from hub.storage.sqlite import SqliteHubStore
from protocol import Kind, StockEvent
from tests.hub.convergence import SAFETY_STOCK, deliver, delivery, event_sets
from tests.hub.event_factory import EventFactory

DAY_MS = 86_400_000


def both_ways(events: list[StockEvent]) -> Any:
    first, second = resolve(events), resolve(list(reversed(events)))
    assert first == second
    return first


def test_a_final_receipt_closes_the_transfer_and_writes_off_what_never_came() -> None:
    ev = EventFactory()
    out = ev(Kind.TRANSFER_OUT, -10, at_ms=1, ref="T1", attrs={"to": "S2"})
    part = ev(Kind.TRANSFER_IN, 5, at_ms=2, location="S2", ref="T1")
    final = ev(Kind.TRANSFER_IN, 3, at_ms=9, location="S2", ref="T1", attrs={"final": True})
    open_ = both_ways([out, part])
    assert open_.stock[("S2", "A")].in_transit == 5 and not open_.transfers[("S2", "T1", "A")].closed
    closed = both_ways([out, part, final])
    t = closed.transfers[("S2", "T1", "A")]
    assert (t.in_transit, t.written_off, t.closed_at) == (0, 2, final.occurred_at)
    assert closed.stock[("S2", "A")].in_transit == 0 and closed.stock[("S2", "A")].on_hand == 8
    [short] = [f for f in closed.findings if f.kind.startswith("transfer")]
    assert (short.kind, short.data["written_off"]) == ("transfer_short", 2)


def test_the_final_receipt_arriving_before_the_shipment_gives_the_same_answer() -> None:
    ev = EventFactory()
    final = ev(Kind.TRANSFER_IN, 4, at_ms=1, location="S2", ref="T1", attrs={"final": True})
    out = ev(Kind.TRANSFER_OUT, -6, at_ms=5, ref="T1", attrs={"to": "S2"})
    res = both_ways([final, out])
    assert res.transfers[("S2", "T1", "A")].written_off == 2 and res.stock[("S2", "A")].in_transit == 0


def test_a_transfer_open_too_long_is_overdue_and_a_closed_one_never_is() -> None:
    ev = EventFactory()
    out = ev(Kind.TRANSFER_OUT, -3, at_ms=0, ref="T1", attrs={"to": "S2"})
    t = resolve([out]).transfers[("S2", "T1", "A")]
    shipped = out.wall_ms
    assert t.overdue_finding(shipped + DAY_MS, 2 * DAY_MS) is None
    late = t.overdue_finding(shipped + 3 * DAY_MS, 2 * DAY_MS)
    assert late is not None and (late.kind, late.location, late.data["in_transit"]) == ("transfer_overdue", "S2", 3)
    final = ev(Kind.TRANSFER_IN, 1, at_ms=1, location="S2", ref="T1", attrs={"final": True})
    assert resolve([out, final]).transfers[("S2", "T1", "A")].overdue_finding(shipped + 30 * DAY_MS, DAY_MS) is None


@pytest.mark.parametrize(
    ("kind", "qty", "attrs", "says"),
    [
        (Kind.TRANSFER_OUT, -1, {}, "no destination"),
        (Kind.TRANSFER_OUT, -1, {"to": "S1"}, "its own location"),
        (Kind.TRANSFER_OUT, -1, {"to": "S 2"}, "not a location code"),
        (Kind.TRANSFER_OUT, -(TRANSFER_QTY_MAX + 1), {"to": "S2"}, "at most"),
        (Kind.TRANSFER_IN, 1, {"from": "S1"}, "its own location"),
        (Kind.TRANSFER_IN, 1, {"final": 1}, "final"),
    ],
)
def test_bad_transfers_have_a_problem(kind: Kind, qty: int, attrs: dict[str, Any], says: str) -> None:
    problem = transfer_problem(EventFactory()(kind, qty, at_ms=1, ref="T1", attrs=attrs))
    assert problem is not None and says in problem


def test_good_transfers_have_none() -> None:
    ev = EventFactory()
    assert transfer_problem(ev(Kind.TRANSFER_OUT, -5, at_ms=1, ref="T1", attrs={"to": "S2"})) is None
    assert transfer_problem(ev(Kind.TRANSFER_IN, 5, at_ms=1, ref="T1", attrs={"final": True, "from": "S2"})) is None
    assert transfer_problem(ev(Kind.TRANSFER_IN, 5, at_ms=1, ref="T1")) is None


def _with_finals(events: list[StockEvent], finals: list[bool]) -> list[StockEvent]:
    out = []
    for ev, final in zip(events, finals, strict=False):
        if ev.kind is Kind.TRANSFER_IN and final:
            ev = StockEvent(*ev[:-1], {**ev.attrs, "final": True})  # type: ignore[misc]
        out.append(ev)
    return out + events[len(finals) :]


async def _observe(store: HubStore) -> dict[str, Any]:
    counts = {(r.location, r.sku): (r.on_hand, r.in_transit) for r in await store.counts(limit=10_000)}
    exceptions = sorted(
        (e.kind, e.location, e.sku, e.detail)
        for e in await store.exceptions(limit=10_000)
        # the store's own check of a destination against its credentials, which the resolution does not know
        if e.kind != "transfer_unknown_destination"
    )
    writeoffs = sorted((r.ref, r.sku, r.qty) for r in await store.ledger(limit=10_000) if r.kind == "transfer_writeoff")
    return {"counts": counts, "exceptions": exceptions, "writeoffs": writeoffs}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), finals=st.lists(st.booleans(), max_size=40), data=st.data())
def test_final_receipts_converge_on_the_resolution_in_any_delivery(
    events: list[StockEvent], finals: list[bool], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    events = _with_finals(events, finals)
    res = resolve(events, SAFETY_STOCK)
    expected = {
        "counts": {k: (s.on_hand, s.in_transit) for k, s in res.stock.items()},
        "exceptions": sorted((f.kind, f.location, f.sku, f.detail) for f in res.findings),
        "writeoffs": sorted((t.ref, t.sku, -t.written_off) for t in res.transfers.values() if t.written_off),
    }

    async def run(path: Any) -> dict[str, Any]:
        async with SqliteHubStore.open(path) as store:
            for (location, sku), qty in SAFETY_STOCK.items():
                await store.set_safety_stock(location, sku, qty)
            await deliver(store, delivery(data, events))
            return await _observe(store)

    assert asyncio.run(run(tmp_path_factory.mktemp("finals") / "hub.db")) == expected


# --- two stores numbering their transfers alike (a transfer is keyed by destination, ref and SKU) --------------


def _two_stores_ship_t1() -> list[StockEvent]:
    """S001 ships T-1 (6 of A) to S003, S002 ships its own T-1 (4 of A) to S004; each destination receives part
    of its own with a final receipt."""
    a = EventFactory("agent-s001", location="S001")
    b = EventFactory("agent-s002", location="S002")
    c = EventFactory("agent-s003", location="S003")
    d = EventFactory("agent-s004", location="S004")
    return [
        a(Kind.TRANSFER_OUT, -6, at_ms=1, ref="T-1", attrs={"to": "S003"}),
        b(Kind.TRANSFER_OUT, -4, at_ms=2, ref="T-1", attrs={"to": "S004"}),
        c(Kind.TRANSFER_IN, 5, at_ms=3, ref="T-1", attrs={"final": True}),
        d(Kind.TRANSFER_IN, 1, at_ms=4, ref="T-1", attrs={"final": True, "from": "S002"}),
    ]


def test_two_stores_shipping_t1_to_different_destinations_are_two_transfers() -> None:
    """Found: both T-1 were one transfer (ref, sku): 10 shipped, its destination the smaller code (S003), S004
    had nothing in transit, and S003's final receipt wrote off S002's units too (10 − 6 = 4 written off at S003).
    Each destination's in transit and write-off are its own."""
    events = _two_stores_ship_t1()
    shipped = both_ways(events[:2])
    assert (shipped.stock[("S003", "A")].in_transit, shipped.stock[("S004", "A")].in_transit) == (6, 4)
    res = both_ways(events)
    to_c, to_d = res.transfers[("S003", "T-1", "A")], res.transfers[("S004", "T-1", "A")]
    assert (to_c.shipped, to_c.received, to_c.written_off, to_c.shippers) == (6, 5, 1, "S001")
    assert (to_d.shipped, to_d.received, to_d.written_off, to_d.shippers) == (4, 1, 3, "S002")
    assert (res.stock[("S003", "A")].in_transit, res.stock[("S004", "A")].in_transit) == (0, 0)
    assert (res.stock[("S003", "A")].on_hand, res.stock[("S004", "A")].on_hand) == (5, 1)
    shorts = sorted((f.location, f.data["from"], f.data["written_off"]) for f in res.findings if "short" in f.kind)
    assert shorts == [("S003", "S001", 1), ("S004", "S002", 3)]


def test_a_stolen_credential_shipping_t1_elsewhere_leaves_another_stores_t1_as_it_was() -> None:
    """S001 shipped T-1 to S004 (refs are read in the ledger); a stolen credential of S002 ships a T-1 of its own to
    S003 and receives a T-1 at S002 as final. S001's transfer to S004 is unchanged: its units still in transit to
    S004, nothing written off; what the thief did is at S002 and S003 only."""
    a = EventFactory("agent-s001", location="S001")
    thief = EventFactory("agent-s002", location="S002")
    honest = a(Kind.TRANSFER_OUT, -7, at_ms=1, ref="T-1", attrs={"to": "S004"})
    before = both_ways([honest])
    attack = [
        thief(Kind.TRANSFER_OUT, -1, at_ms=2, ref="T-1", attrs={"to": "S003"}),
        thief(Kind.TRANSFER_IN, 1, at_ms=3, ref="T-1", attrs={"final": True, "from": "S001"}),
    ]
    after = both_ways([honest, *attack])
    assert after.transfers[("S004", "T-1", "A")] == before.transfers[("S004", "T-1", "A")]
    assert after.stock[("S004", "A")] == before.stock[("S004", "A")]
    assert after.stock[("S004", "A")].in_transit == 7 and after.stock[("S001", "A")] == before.stock[("S001", "A")]
    assert not [f for f in after.findings if f.location in ("S001", "S004") and f.kind.startswith("transfer")]


def test_two_shippers_of_one_ref_to_one_destination_are_one_transfer_and_a_finding() -> None:
    """S001 and S002 both ship T-1 of A to S003: one transfer at the receiver (its in transit is what both shipped),
    both shippers kept whatever the order, and a finding names them; a final receipt writes off only what was
    shipped to S003."""
    a = EventFactory("agent-s001", location="S001")
    b = EventFactory("agent-s002", location="S002")
    c = EventFactory("agent-s003", location="S003")
    events = [
        b(Kind.TRANSFER_OUT, -4, at_ms=1, ref="T-1", attrs={"to": "S003"}),
        a(Kind.TRANSFER_OUT, -6, at_ms=2, ref="T-1", attrs={"to": "S003"}),
        a(Kind.TRANSFER_OUT, -2, at_ms=3, ref="T-1", attrs={"to": "S005"}),
        c(Kind.TRANSFER_IN, 7, at_ms=4, ref="T-1", attrs={"final": True, "from": "S001"}),
    ]
    res = both_ways(events)
    t = res.transfers[("S003", "T-1", "A")]
    assert (t.shipped, t.received, t.written_off, t.shippers, t.out_from) == (10, 7, 3, "S001,S002", "S001")
    assert res.stock[("S005", "A")].in_transit == 2
    [shared] = [f for f in res.findings if f.kind == "transfer_shared_ref"]
    assert (shared.location, shared.sku) == ("S003", "A")
    assert shared.data == {
        "ref": "T-1", "from": "S001", "to": "S003", "shipped": 10, "received": 7, "shippers": ["S001", "S002"],
        "written_off": 3, "closed": True,
    }  # fmt: skip
    assert shared.detail == (
        "S001 and S002 both shipped A to S003 as transfer T-1 (10 in all, 7 received; 3 are missing and were"
        " written off); one of them may have meant another transfer, or its credential was misused: check with both."
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_two_stores_same_ref_resolves_alike_in_any_order(data: st.DataObject) -> None:
    """The fold over transfers is a function of the set: the two-stores-same-ref events, with a second shipper to
    one destination, in any order."""
    a = EventFactory("agent-s001", location="S001")
    events = [*_two_stores_ship_t1(), a(Kind.TRANSFER_OUT, -2, at_ms=5, ref="T-1", attrs={"to": "S004"})]
    expected = resolve(events)
    shuffled = data.draw(st.permutations(events))
    assert resolve(shuffled) == expected
