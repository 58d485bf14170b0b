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
    assert open_.stock[("S2", "A")].in_transit == 5 and not open_.transfers[("T1", "A")].closed
    closed = both_ways([out, part, final])
    t = closed.transfers[("T1", "A")]
    assert (t.in_transit, t.written_off, t.closed_at) == (0, 2, final.occurred_at)
    assert closed.stock[("S2", "A")].in_transit == 0 and closed.stock[("S2", "A")].on_hand == 8
    [short] = [f for f in closed.findings if f.kind.startswith("transfer")]
    assert (short.kind, short.data["written_off"]) == ("transfer_short", 2)


def test_the_final_receipt_arriving_before_the_shipment_gives_the_same_answer() -> None:
    ev = EventFactory()
    final = ev(Kind.TRANSFER_IN, 4, at_ms=1, location="S2", ref="T1", attrs={"final": True})
    out = ev(Kind.TRANSFER_OUT, -6, at_ms=5, ref="T1", attrs={"to": "S2"})
    res = both_ways([final, out])
    assert res.transfers[("T1", "A")].written_off == 2 and res.stock[("S2", "A")].in_transit == 0


def test_a_transfer_open_too_long_is_overdue_and_a_closed_one_never_is() -> None:
    ev = EventFactory()
    out = ev(Kind.TRANSFER_OUT, -3, at_ms=0, ref="T1", attrs={"to": "S2"})
    t = resolve([out]).transfers[("T1", "A")]
    shipped = out.wall_ms
    assert t.overdue_finding(shipped + DAY_MS, 2 * DAY_MS) is None
    late = t.overdue_finding(shipped + 3 * DAY_MS, 2 * DAY_MS)
    assert late is not None and (late.kind, late.location, late.data["in_transit"]) == ("transfer_overdue", "S2", 3)
    final = ev(Kind.TRANSFER_IN, 1, at_ms=1, location="S2", ref="T1", attrs={"final": True})
    assert resolve([out, final]).transfers[("T1", "A")].overdue_finding(shipped + 30 * DAY_MS, DAY_MS) is None


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
