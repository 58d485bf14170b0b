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
from agent.sessions.model import CountNote, Line, bin_key
from protocol import ON_HAND_KINDS, Kind, StockEvent

# The words a movement is told by to the staff, per kind and direction (an adjustment either way).
_WORDS = {
    (Kind.RECEIVE, 1): "received", (Kind.RETURN, 1): "returned", (Kind.ADJUST, 1): "adjusted up",
    (Kind.TRANSFER_IN, 1): "transferred in", (Kind.SALE, -1): "sold", (Kind.ADJUST, -1): "written off",
    (Kind.TRANSFER_OUT, -1): "transferred out",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Moved:
    """What this agent holds of a SKU moved since its round's last count, up to this bin count's last scan: which
    bin each movement touched nobody says, so the count books them on an assumption (docs/design.md, Bin counts):
    the units put in are in the bin counted now (any put into a bin counted before are missing), the units taken
    out came from the bins counted before (any taken from another bin are taken twice)."""

    since: str  # the bin counted last before the movements (the count the round's counts are stamped at)
    before: tuple[str, ...]  # the round's bins counted before the movements, first first (``since`` last)
    between: tuple[str, ...]  # the round's bins counted since ``since``, before or after each movement, first first
    put_in: tuple[tuple[str, int], ...]  # units put in, per word ("received", …), in the order first seen
    taken: tuple[tuple[str, int], ...]  # units taken out, per word ("sold", …), as positive numbers

    def sentence(self, sku: str, bin_: str) -> str:
        """What the staff closing the count of ``bin_`` are told, with the numbers and what to do."""
        put_in, taken = _listing(self.put_in), _listing(self.taken)
        before = _bins(self.before)
        then, was = _bins(self.between), "it was" if len(self.between) == 1 else "they were"
        assumes = []
        if put_in and self.between:
            assumes.append(
                f"the {put_in} are in bin {bin_} or went into {then} before {was} counted (any put into a bin"
                " already counted are missing from it)"
            )
        elif put_in:
            assumes.append(f"the {put_in} are in bin {bin_} (any put into {before} are missing from it)")
        if taken and self.between:
            assumes.append(
                f"the {taken} came from {before}, or from {then} after {was} counted (any taken from a bin before it"
                " was counted are taken twice)"
            )
        elif taken:
            assumes.append(f"the {taken} came from {before} (any taken from another bin are taken twice)")
        return (
            f"{_listing(self.put_in + self.taken)} of {sku} since bin {self.since} was counted; this count assumes"
            f" {' and '.join(assumes)} — if not, count all bins of {sku} again, one right after another."
        )


def _bins(names: tuple[str, ...]) -> str:
    return ("bin " if len(names) == 1 else "bins ") + _joined(list(names))


def _listing(words: tuple[tuple[str, int], ...]) -> str:
    return _joined([f"{qty} {word}" for word, qty in words])


def _joined(parts: list[str]) -> str:
    return "".join(parts) if len(parts) < 2 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True, slots=True)
class Carry:
    """What a bin count of a round books beside its bin's units: ``units`` more (never taking the count below 0),
    stamped ``at`` (the round's last count's HLC) instead of at its own last scan."""

    units: int
    at: int
    moved: Moved | None = None  # what of the SKU this agent holds moved since the round's last count, if any

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


async def spanned(outbox: Outbox, location: str, lines: list[Line], source: str) -> tuple[CountNote, ...]:
    """Per SKU of a count's ``lines`` (a count of whole SKUs, not of a bin), what this agent booked of it between
    the count's first effective scan of it and its last, which the count is stamped at: a unit taken out then (a
    sale) is superseded by the count, and counted again if it was among the units scanned before it; a unit put in
    then is superseded too, and missing if it went where the count had scanned already. Nobody records which, so
    the close tells it (``CountNote``). ``source``: the closing session's, whose own events are never in between."""
    spans: dict[str, tuple[int, int, int]] = {}  # sku -> (first HLC, last HLC, units counted)
    for line in lines:
        if line.undone or line.pending:
            continue
        first, last, units = spans.get(line.sku, (line.hlc, line.hlc, 0))
        spans[line.sku] = (min(first, line.hlc), max(last, line.hlc), units + line.qty)
    notes = []
    for sku, (first, last, units) in spans.items():
        if first == last:
            continue
        moved: dict[str, int] = {}
        put_in: dict[str, int] = {}
        taken: dict[str, int] = {}
        events = await outbox.booked(location, sku)
        for ev in sorted(events, key=_order):  # oldest first: the words in the order they happened
            if ev.kind not in ON_HAND_KINDS or ev.kind is Kind.COUNT or ev.source == source:
                continue
            if not first < ev.occurred_at < last:
                continue
            word = _WORDS.get((ev.kind, 1 if ev.qty > 0 else -1), ev.kind.value)
            into = put_in if ev.qty > 0 else taken
            into[word] = into.get(word, 0) + abs(ev.qty)
            moved[word] = moved.get(word, 0) + abs(ev.qty)
        if not moved:
            continue
        assumes = []
        if taken:
            these = _listing(tuple(taken.items()))
            assumes.append(f"the {these} were not among the units scanned before them")
        if put_in:
            these = _listing(tuple(put_in.items()))
            assumes.append(f"the {these} were among the units scanned after them")
        message = (
            f"{_listing(tuple(moved.items()))} of {sku} between this count's first scan of it and its last; the count"
            f" of {units:,} is booked at its last scan, so it assumes {' and '.join(assumes)} — if that is wrong,"
            f" count {sku} again, all of it at once."
        )
        notes.append(CountNote(sku, tuple(moved.items()), message))
    return tuple(notes)


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
    if bin_key(bin_) in {bin_key(str(ev.attrs["bin"])) for ev, _ in round_}:
        return None  # counted again (however its name was typed each time): a new round
    # The round's counts booked at its last one's stamp are each its bin's units over the earliest of them (the
    # round's first count; or one an older agent stamped at its own last scan, holding what moved before it).
    last = round_[0][0]
    same = [(ev, extra) for ev, extra in round_ if ev.occurred_at == last.occurred_at]
    base = same[-1][0]
    units = base.qty + sum(ev.qty - extra for ev, extra in same[:-1])
    put_in: dict[str, int] = {}
    taken: dict[str, int] = {}
    for ev in reversed(before):  # oldest first: the words in the order they happened
        if ev.kind not in ON_HAND_KINDS or _order(ev) <= _order(base):
            continue
        word = _WORDS.get((ev.kind, 1 if ev.qty > 0 else -1), ev.kind.value)
        into = put_in if ev.qty > 0 else taken
        into[word] = into.get(word, 0) + abs(ev.qty)
        if ev.occurred_at == last.occurred_at:
            units += min(ev.qty, 0)  # ordered before this count, which supersedes it: a unit taken stays taken
        else:
            units -= max(ev.qty, 0)  # ordered after it: the hub adds it, and a unit put in is left to its bin
    moved = None
    if put_in or taken:
        named = [str(ev.attrs["bin"]) for ev, _ in reversed(round_)]  # first first: base is the len(same)-th last
        cut = len(named) - len(same) + 1
        moved = Moved(
            named[cut - 1], tuple(named[:cut]), tuple(named[cut:]), tuple(put_in.items()), tuple(taken.items())
        )
    return Carry(units, last.occurred_at, moved)
