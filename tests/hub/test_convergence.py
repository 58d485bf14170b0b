"""Any delivery of a set of events converges on resolve(all events).

Hypothesis draws a set of events over a few locations, SKUs and agents (every
kind, counts and transfers included, order keys that tie on occurred_at),
then delivers it twice to fresh SQLite stores: in two different orders, with
resends, split into batches at random. Both stores must agree with the pure
resolver — counts, per-event effects, count variances and exceptions. The
same holds with bundles: movements of bundle SKUs (one inside the other) are
booked on their parts, and the bundles' counts follow.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.resolver import BundleBook, Resolution, flatten, resolve
from hub.storage import AgentIdentity, HubStore, SqliteHubStore
from protocol import Kind, StockEvent, pack_hlc

LOCATIONS = ("L1", "L2", "L3")
SKUS = ("s1", "s2")
AGENTS = ("a1", "a2")
EPOCHS = (0, 1)
TRANSFER_REFS = ("T1", "T2")
ORDER_REFS = (None, "O1", "O2")
SAFETY_STOCK = {("L1", "s1"): 2}


def _qty(kind: Kind) -> st.SearchStrategy[int]:
    if kind is Kind.COUNT:
        return st.integers(0, 12)
    if kind in (Kind.SALE, Kind.TRANSFER_OUT, Kind.RELEASE):
        return st.integers(-5, -1)
    if kind is Kind.ADJUST:
        return st.integers(-5, 5).filter(bool)
    return st.integers(1, 5)


@st.composite
def _spec(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(Kind)))
    ref: str | None = None
    attrs: dict[str, str] = {}
    location = draw(st.sampled_from(LOCATIONS))
    if kind in (Kind.TRANSFER_OUT, Kind.TRANSFER_IN):
        ref = draw(st.sampled_from(TRANSFER_REFS))
        # the hub refuses a transfer_out without a destination, and either side naming its own location
        side = "to" if kind is Kind.TRANSFER_OUT else "from"
        if kind is Kind.TRANSFER_OUT or draw(st.booleans()):
            attrs[side] = draw(st.sampled_from([loc for loc in LOCATIONS if loc != location]))
    elif kind in (Kind.SALE, Kind.RESERVE, Kind.RELEASE):
        ref = draw(st.sampled_from(ORDER_REFS))
    return {
        "kind": kind,
        "qty": draw(_qty(kind)),
        "location": location,
        "sku": draw(st.sampled_from(SKUS)),
        "agent": draw(st.sampled_from(AGENTS)),
        "epoch": draw(st.sampled_from(EPOCHS)),
        # few distinct instants, so order keys tie on occurred_at and on (occurred_at, agent)
        "at": pack_hlc(draw(st.integers(1, 12)), draw(st.integers(0, 1))),
        "ref": ref,
        "attrs": attrs,
    }


@st.composite
def event_sets(draw: st.DrawFn) -> list[StockEvent]:
    specs = draw(st.lists(_spec(), min_size=1, max_size=40))
    seqs: dict[tuple[str, int], int] = defaultdict(int)
    events = []
    for i, s in enumerate(specs):
        seqs[(s["agent"], s["epoch"])] += draw(st.integers(1, 2))
        events.append(
            StockEvent(
                event_id=(i + 1).to_bytes(16, "big"),
                agent_id=s["agent"],
                epoch=s["epoch"],
                seq=seqs[(s["agent"], s["epoch"])],
                location=s["location"],
                sku=s["sku"],
                kind=s["kind"],
                qty=s["qty"],
                occurred_at=s["at"],
                wall_ms=s["at"] >> 16,
                source="api:test",
                ref=s["ref"],
                attrs=s["attrs"],
            )
        )
    return events


def _delivery(data: st.DataObject, events: list[StockEvent]) -> list[list[StockEvent]]:
    """A permutation of ``events`` with some resends, split into batches."""
    resends = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="resends")
    order = data.draw(st.permutations(events + resends), label="order")
    batches: list[list[StockEvent]] = []
    while order:
        size = data.draw(st.integers(1, 12), label="batch size")
        batches.append(order[:size])
        order = order[size:]
    return batches


async def _deliver(store: HubStore, batches: list[list[StockEvent]]) -> None:
    for batch in batches:
        # one request carries one agent's epoch: split the batch the way replicators would send it
        by_sender: dict[tuple[str, int], list[StockEvent]] = defaultdict(list)
        for ev in batch:
            by_sender[(ev.agent_id, ev.epoch)].append(ev)
        for (agent_id, epoch), evs in by_sender.items():
            result = await store.ingest(AgentIdentity(agent_id, frozenset(LOCATIONS)), epoch, evs)
            assert result.rejected == ()


async def _observe(store: HubStore) -> dict[str, Any]:
    ledger = await store.ledger(limit=10_000)
    return {
        "counts": {
            (r.location, r.sku): (r.on_hand, r.reserved, r.available, r.in_transit, r.last_count_at)
            for r in await store.counts(limit=10_000)
        },
        "effects": {r.event_id: r.effect for r in ledger},
        "variances": {r.event_id: r.variance for r in ledger if r.kind == Kind.COUNT},
        "exceptions": sorted((e.kind, e.location, e.sku, e.detail) for e in await store.exceptions(limit=10_000)),
    }


def _expected(res: Resolution) -> dict[str, Any]:
    return {
        "counts": {
            k: (s.on_hand, s.reserved, s.available, s.in_transit, s.last_count[0] if s.last_count else None)
            for k, s in res.stock.items()
        },
        "effects": dict(res.effects),
        "variances": dict(res.variances),
        "exceptions": sorted((f.kind, f.location, f.sku, f.detail) for f in res.findings),
    }


async def _run(path: Path, batches: list[list[StockEvent]]) -> dict[str, Any]:
    async with SqliteHubStore.open(path) as store:
        for (location, sku), qty in SAFETY_STOCK.items():
            await store.set_safety_stock(location, sku, qty)
        await _deliver(store, batches)
        return await _observe(store)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), data=st.data())
def test_any_delivery_converges_on_the_resolution(
    events: list[StockEvent], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = _expected(resolve(events, SAFETY_STOCK))
    first = asyncio.run(_run(tmp_path_factory.mktemp("first") / "hub.db", _delivery(data, events)))
    second = asyncio.run(_run(tmp_path_factory.mktemp("second") / "hub.db", _delivery(data, events)))
    assert first == expected
    assert second == first


# --- bundles --------------------------------------------------------------------------------------------

BUNDLES = {"k1": {"s1": 2, "s2": 1}, "k2": {"k1": 1, "s2": 1}}  # k2 holds a k1: its parts are 2 s1 and 2 s2


@st.composite
def bundle_event_sets(draw: st.DrawFn) -> list[StockEvent]:
    """``event_sets`` with some movements of the bundles k1 and k2 (every kind but a count, which is refused)."""
    events = draw(event_sets())
    out = []
    for ev in events:
        if ev.kind is not Kind.COUNT and draw(st.booleans()):
            ev = ev._replace(sku=draw(st.sampled_from(sorted(BUNDLES))))
        out.append(ev)
    return out


async def _run_bundles(path: Path, batches: list[list[StockEvent]]) -> dict[str, Any]:
    async with SqliteHubStore.open(path) as store:
        for sku, parts in BUNDLES.items():
            await store.put_bundle(sku, parts, "admin")
        for (location, sku), qty in SAFETY_STOCK.items():
            await store.set_safety_stock(location, sku, qty)
        await _deliver(store, batches)
        return await _observe(store)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=bundle_event_sets(), data=st.data())
def test_any_delivery_with_bundles_converges_on_the_resolution(
    events: list[StockEvent], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = _expected(resolve(events, SAFETY_STOCK, BundleBook(flatten(BUNDLES))))
    first = asyncio.run(_run_bundles(tmp_path_factory.mktemp("first") / "hub.db", _delivery(data, events)))
    second = asyncio.run(_run_bundles(tmp_path_factory.mktemp("second") / "hub.db", _delivery(data, events)))
    assert first == expected
    assert second == first
