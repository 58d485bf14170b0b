"""Event sets and deliveries for the convergence properties, shared by the SQLite and PostgreSQL tests:
hypothesis strategies over a few locations, SKUs and agents, a delivery in any order with resends, and the
state a store shows next to the state the pure resolver computes."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import strategies as st

from hub.resolver import Resolution
from hub.storage import AgentIdentity, HubStore
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


def delivery(data: st.DataObject, events: list[StockEvent]) -> list[list[StockEvent]]:
    """A permutation of ``events`` with some resends, split into batches."""
    resends = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="resends")
    order = data.draw(st.permutations(events + resends), label="order")
    batches: list[list[StockEvent]] = []
    while order:
        size = data.draw(st.integers(1, 12), label="batch size")
        batches.append(order[:size])
        order = order[size:]
    return batches


async def deliver(store: HubStore, batches: list[list[StockEvent]]) -> None:
    for batch in batches:
        # one request carries one agent's epoch: split the batch the way replicators would send it
        by_sender: dict[tuple[str, int], list[StockEvent]] = defaultdict(list)
        for ev in batch:
            by_sender[(ev.agent_id, ev.epoch)].append(ev)
        for (agent_id, epoch), evs in by_sender.items():
            result = await store.ingest(AgentIdentity(agent_id, frozenset(LOCATIONS)), epoch, evs)
            assert result.rejected == ()


async def observe(store: HubStore) -> dict[str, Any]:
    ledger = await store.ledger(limit=10_000)
    return {
        "counts": {
            (r.location, r.sku): (r.on_hand, r.reserved, r.available, r.in_transit, r.last_count_at)
            for r in await store.counts(limit=10_000)
        },
        "effects": {r.event_id: r.effect for r in ledger},
        "variances": {r.event_id: r.variance for r in ledger if r.kind == Kind.COUNT},
        # A transfer to a location the hub does not know depends on its credentials, not on the events (as an
        # overdue one depends on the clock): the pure resolution has no finding of it.
        "exceptions": sorted(
            (e.kind, e.location, e.sku, e.detail)
            for e in await store.exceptions(limit=10_000)
            if e.kind != "transfer_unknown_destination"
        ),
    }


def expected_state(res: Resolution) -> dict[str, Any]:
    return {
        "counts": {
            k: (s.on_hand, s.reserved, s.available, s.in_transit, s.last_count[0] if s.last_count else None)
            for k, s in res.stock.items()
        },
        "effects": dict(res.effects),
        "variances": dict(res.variances),
        "exceptions": sorted((f.kind, f.location, f.sku, f.detail) for f in res.findings),
    }
