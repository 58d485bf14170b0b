"""A SKU kept in several bins, counted bin by bin: what a bin count adds its bin's units to.

A ``count`` sets a SKU's whole stock at the location (docs/design.md,
Resolution), and the hub knows no bins. So a count of bin Y alone, booked as
counted, replaced the units of bin X counted before it: 5 in X and 3 in Y
counted one session after the other left the hub believing 3.

A SKU's bins counted one after another are a *round*. The first bin count of a
SKU after a count without a bin (its whole stock: a count session of a list of
SKUs, a scanner in count mode), or after none, starts one, and is booked as
counted: the SKU's count is what that bin holds. Each bin count after it of a bin
not yet counted in the round adds its units to the round's: its ``count`` books
the last count of the SKU (the round so far) plus every movement of the SKU
ordered after that count and before this one (a sale between the two counts stays
sold), plus its own bin's units, with ``carried`` in its attrs saying how many
units were the round's. A bin counted again starts a new round (its units are
counted anew, and the other bins are added again as they are counted).

This agent's outbox is what it reads: the counts of the round and the movements
since (those it holds, until retention purges them, and the hub did not refuse).
A round whose first count the outbox no longer holds is over: which bins it
counted is unknown, and adding a bin it may hold twice would overstate the SKU.
A movement of the SKU at the location the agent never held (an order booked
through the hub's API by another client) is not carried.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.outbox import Outbox
from protocol import ON_HAND_KINDS, Kind, StockEvent


async def carried(outbox: Outbox, location: str, bin_: str, stamps: Mapping[str, int], source: str) -> dict[str, int]:
    """Per SKU of ``stamps`` (the HLC its count in bin ``bin_`` is stamped at), the units of its round of bin counts
    that count adds to its own; a SKU whose count starts a round is not in it. ``source``: the closing session's, whose
    own events (a close resumed after a crash) are never its round."""
    out: dict[str, int] = {}
    for sku, at in stamps.items():
        units = _carried(await outbox.booked(location, sku), bin_, at, source)
        if units is not None:
            out[sku] = units
    return out


def _order(ev: StockEvent) -> tuple[int, int]:
    return ev.occurred_at, ev.seq  # the hub's order of one agent's events (its agent id is the same)


def _carried(events: list[StockEvent], bin_: str, at: int, source: str) -> int | None:
    before = sorted((ev for ev in events if ev.occurred_at <= at and ev.source != source), key=_order, reverse=True)
    counts = [ev for ev in before if ev.kind is Kind.COUNT]
    if not counts or not isinstance(counts[0].attrs.get("bin"), str):
        return None  # never counted, or last counted whole: this bin count starts the round
    round_bins: set[str] = set()
    for ev in counts:
        counted_in = ev.attrs.get("bin")
        if not isinstance(counted_in, str):
            return None  # a carrying count with no bin: not one this agent booked
        round_bins.add(counted_in)
        if "carried" not in ev.attrs:  # the count that started the round
            break
    else:
        return None  # the round's first count was purged (retention): which bins it holds is unknown, so it is over
    if bin_ in round_bins:
        return None  # counted again: a new round
    last = _order(counts[0])
    moved = sum(ev.qty for ev in before if ev.kind in ON_HAND_KINDS and _order(ev) > last)
    return counts[0].qty + moved
