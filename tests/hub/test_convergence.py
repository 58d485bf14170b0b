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
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.resolver import BundleBook, flatten, resolve
from hub.storage import SqliteHubStore
from protocol import Kind, StockEvent
from tests.hub.convergence import SAFETY_STOCK, deliver, delivery, event_sets, expected_state, observe


async def _run(path: Path, batches: list[list[StockEvent]]) -> dict[str, Any]:
    async with SqliteHubStore.open(path) as store:
        for (location, sku), qty in SAFETY_STOCK.items():
            await store.set_safety_stock(location, sku, qty)
        await deliver(store, batches)
        return await observe(store)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_sets(), data=st.data())
def test_any_delivery_converges_on_the_resolution(
    events: list[StockEvent], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = expected_state(resolve(events, SAFETY_STOCK))
    first = asyncio.run(_run(tmp_path_factory.mktemp("first") / "hub.db", delivery(data, events)))
    second = asyncio.run(_run(tmp_path_factory.mktemp("second") / "hub.db", delivery(data, events)))
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
        await deliver(store, batches)
        return await observe(store)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=bundle_event_sets(), data=st.data())
def test_any_delivery_with_bundles_converges_on_the_resolution(
    events: list[StockEvent], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    expected = expected_state(resolve(events, SAFETY_STOCK, BundleBook(flatten(BUNDLES))))
    first = asyncio.run(_run_bundles(tmp_path_factory.mktemp("first") / "hub.db", delivery(data, events)))
    second = asyncio.run(_run_bundles(tmp_path_factory.mktemp("second") / "hub.db", delivery(data, events)))
    assert first == expected
    assert second == first
