"""A SKU kept in several bins, counted bin by bin: what a bin count adds its bin's units to.

A ``count`` sets a SKU's whole stock at the location (docs/design.md,
Resolution), and the hub knows no bins. So a count of bin Y alone, booked as
counted, replaced the units of bin X counted before it: 5 in X and 3 in Y
counted one session after the other left the hub believing 3.

A SKU's bins counted one after another are a *round*. The first bin count of a
SKU after a count without a bin (its whole stock: a count session of a list of
SKUs, a scanner in count mode), or after none, starts one, and is booked as
counted, at its last scan: the SKU's count is what that bin holds. Each bin count
after it of a bin not yet counted in the round adds its units to the round's
bins', and is stamped at the round's last count (after it: its seq is higher), not
at its own last scan. So the hub itself applies on top of it every movement of the
SKU ordered after that count, whoever booked it and whenever it arrives: a sale
between the two counts stays sold even when this agent never held it (an order
booked through the hub's API by another client, a bundle's parts the hub books, a
POS row exported after the count closed). A bin counted again starts a new round
(its units are counted anew, and the other bins are added again as they are
counted).

Which bin a movement between two counts took from or put into, nobody says, and a
bin not yet counted sees it again when it is counted. The rule is the one that
never counts more than the shelf holds: what the round took away stays taken (a
sale from a bin not yet counted is taken twice, and the SKU counts short by it),
and what it put in is left to the bin that holds it: this agent's own receipts,
returns and adjustments ordered after the round's last count and up to this
count's last scan are taken off the count (the hub adds them back), so one put into
a bin counted before is missing until the SKU is counted again, never counted
twice. ``carried`` in the count's attrs is what it holds beyond its own bin's units.

This agent's outbox is what it reads: the round's counts and its own movements
(those it holds, until retention purges them, and the hub did not refuse). A round
whose first count the outbox no longer holds is over: which bins it counted is
unknown, and adding a bin it may hold twice would overstate the SKU. A unit put in
that this agent did not hold when the count closed (a receipt booked through the
hub's API, a bundle's parts received, a POS return exported later) is added by the
hub like any movement after the round's last count: the one way a round can hold
more than its bins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.outbox import Outbox
from protocol import ON_HAND_KINDS, Kind, StockEvent


@dataclass(frozen=True, slots=True)
class Carry:
    """What a bin count of a round books beside its bin's units: ``units`` more (never taking the count below 0),
    stamped ``at`` (the round's last count's HLC) instead of at its own last scan."""

    units: int
    at: int

    def qty(self, counted: int) -> int:
        """The count booked for ``counted`` units in its bin."""
        return max(0, counted + self.units)


async def carried(outbox: Outbox, location: str, bin_: str, stamps: Mapping[str, int], source: str) -> dict[str, Carry]:
    """Per SKU of ``stamps`` (the HLC its count in bin ``bin_`` was taken at: its last scan), what its count adds to
    its bin's units, and where it is stamped; a SKU whose count starts a round is not in it. ``source``: the closing
    session's, whose own events (a close resumed after a crash) are never its round."""
    out: dict[str, Carry] = {}
    for sku, at in stamps.items():
        carry = _carried(await outbox.booked(location, sku), bin_, at, source)
        if carry is not None:
            out[sku] = carry
    return out


def _order(ev: StockEvent) -> tuple[int, int]:
    return ev.occurred_at, ev.seq  # the hub's order of one agent's events (its agent id is the same)


def _carried(events: list[StockEvent], bin_: str, at: int, source: str) -> Carry | None:
    before = sorted((ev for ev in events if ev.occurred_at <= at and ev.source != source), key=_order, reverse=True)
    counts = [ev for ev in before if ev.kind is Kind.COUNT]
    if not counts or not isinstance(counts[0].attrs.get("bin"), str):
        return None  # never counted, or last counted whole: this bin count starts the round
    round_: list[tuple[StockEvent, int]] = []  # newest first, each with the units it held beyond its bin's
    for ev in counts:
        extra = ev.attrs.get("carried", 0)
        if not isinstance(ev.attrs.get("bin"), str) or type(extra) is not int:
            return None  # a carrying count with no bin, or one whose carried units are unreadable: not this agent's
        round_.append((ev, extra))
        if "carried" not in ev.attrs:  # the count that started the round
            break
    else:
        return None  # the round's first count was purged (retention): which bins it holds is unknown, so it is over
    if bin_ in {ev.attrs["bin"] for ev, _ in round_}:
        return None  # counted again: a new round
    # The round's counts booked at its last one's stamp are each its bin's units over the earliest of them (the
    # round's first count; or one an older agent stamped at its own last scan, holding what moved before it).
    last = round_[0][0]
    same = [(ev, extra) for ev, extra in round_ if ev.occurred_at == last.occurred_at]
    base = same[-1][0]
    units = base.qty + sum(ev.qty - extra for ev, extra in same[:-1])
    for ev in before:
        if ev.kind not in ON_HAND_KINDS or _order(ev) <= _order(base):
            continue
        if ev.occurred_at == last.occurred_at:
            units += min(ev.qty, 0)  # ordered before this count, which supersedes it: a unit taken stays taken
        else:
            units -= max(ev.qty, 0)  # ordered after it: the hub adds it, and a unit put in is left to its bin
    return Carry(units, last.occurred_at)
