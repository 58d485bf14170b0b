"""A SKU kept in several bins, counted bin by bin: the count booked is what its bins hold together.

Found: apples with 5 in bin X and 3 in bin Y, counted in a session of bin X (5),
then in a session of bin Y (3): each close booked a ``count`` of SKU-APPLE, and a
count sets the SKU's whole stock at the location, so the hub believed 3. A bin
count now adds the units of the bins counted before it in the SKU's round of bin
counts (and what moved since), so the second close books 8.
"""

from __future__ import annotations

import pytest

from agent.outbox import Movement, Outbox
from agent.sessions import InvalidSessionInput, SessionConflict, SessionManager, SessionSpec, SessionType, bins
from protocol import Kind, StockEvent, new_event_id, pack_hlc
from tests.agent.sessions.sessions_helpers import APPLE, PEAR


async def count_bin(sessions: SessionManager, bin_: str, **codes: int) -> str:
    s = await sessions.open(SessionSpec(SessionType.COUNT, bin=bin_), by="bo")
    for code, n in codes.items():
        for _ in range(n):
            await sessions.scan(s.id, code.removeprefix("c"), by="bo")
    await sessions.close(s.id, by="bo")
    return s.id


async def counts(outbox: Outbox, sku: str = "SKU-APPLE") -> list[StockEvent]:
    return [ev for ev in await outbox.pending(1000) if ev.kind is Kind.COUNT and ev.sku == sku]


async def test_a_sku_counted_in_two_bins_one_session_after_the_other_is_booked_as_their_sum(
    sessions: SessionManager, outbox: Outbox
) -> None:
    x = await count_bin(sessions, "X", **{"c" + APPLE: 5})
    y = await count_bin(sessions, "Y", **{"c" + APPLE: 3, "c" + PEAR: 2})
    booked = [(ev.qty, dict(ev.attrs)) for ev in await counts(outbox)]
    assert booked == [
        (5, {"by": "bo", "session": x, "bin": "X"}),
        (8, {"by": "bo", "session": y, "bin": "Y", "carried": 5}),  # bin Y's 3 and the 5 bin X holds
    ]
    assert [ev.qty for ev in await counts(outbox, "SKU-PEAR")] == [2]  # first counted here: its bin's units
    view = await sessions.view(y)
    assert view.session.report is not None
    assert [(r.sku, r.qty) for r in view.session.report.lines] == [("SKU-APPLE", 3), ("SKU-PEAR", 2)]  # as counted


async def test_what_moved_between_two_bins_counts_is_applied_on_top_of_the_round_and_a_third_bin_adds_to_both(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Counting bin X today and bin Y tomorrow: each later bin count is stamped at the round's count before it, so
    the sale in between is applied on top of it (by the hub, as by the local count) and stays sold; the receipt
    between Y and Z is left to the bin that holds it (counted in Z if it went there, never twice)."""
    await count_bin(sessions, "X", **{"c" + APPLE: 5})
    await outbox.record([Movement("S001", "SKU-APPLE", Kind.SALE, -1, "pos:test")])
    await count_bin(sessions, "Y", **{"c" + APPLE: 3})
    await outbox.record([Movement("S001", "SKU-APPLE", Kind.RECEIVE, 4, "pos:test")])
    await count_bin(sessions, "Z", **{"c" + APPLE: 2})
    booked = await counts(outbox)
    assert [(ev.qty, ev.attrs["bin"], ev.attrs.get("carried")) for ev in booked] == [
        (5, "X", None),
        (8, "Y", 5),  # X's 5 and Y's 3, the sale after them
        (6, "Z", 4),  # X's 5, Y's 3 and Z's 2, less the 4 received after them
    ]
    assert {ev.occurred_at for ev in booked} == {booked[0].occurred_at}
    assert (await outbox.counts.local_count("S001", "SKU-APPLE")).on_hand == 9  # 6 − 1 + 4


async def test_a_bin_counted_again_starts_the_skus_round_of_bins_over(sessions: SessionManager, outbox: Outbox) -> None:
    """The round of bin X and Y holds X's units already: X counted again is a new count of the SKU, which bin Y then
    adds to; a count of the SKU without a bin (its whole stock) ends the round too."""
    await count_bin(sessions, "X", **{"c" + APPLE: 5})
    await count_bin(sessions, "Y", **{"c" + APPLE: 3})
    await count_bin(sessions, "X", **{"c" + APPLE: 4})
    await count_bin(sessions, "Y", **{"c" + APPLE: 1})
    whole = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE",)), by="bo")
    await sessions.scan(whole.id, APPLE, by="bo", qty=6)
    await sessions.close(whole.id, by="bo")
    await count_bin(sessions, "Y", **{"c" + APPLE: 2})
    assert [(ev.qty, ev.attrs.get("bin"), ev.attrs.get("carried")) for ev in await counts(outbox)] == [
        (5, "X", None),
        (8, "Y", 5),
        (4, "X", None),
        (5, "Y", 4),
        (6, None, None),
        (2, "Y", None),
    ]


async def test_none_left_in_a_bin_keeps_the_units_of_the_bins_counted_before(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """A bin count closed with ``zero_unscanned`` books 0 for a SKU of its scope not found in the bin: 0 there, not
    0 in the store."""
    await count_bin(sessions, "X", **{"c" + APPLE: 5})
    s = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE",), bin="Y"), by="bo")
    await sessions.close(s.id, by="bo", zero_unscanned=True)
    assert [(ev.qty, ev.attrs.get("carried"), ev.attrs.get("zero_filled")) for ev in await counts(outbox)] == [
        (5, None, None),
        (5, 5, True),
    ]


async def test_a_bin_counted_again_under_another_spelling_starts_a_new_round_not_a_second_bin(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: bin A-01 counted (5), then counted again as "a-01" (a phone keyboard's lower case), "A-01 " (a space
    typed after it) and "Ａ-01" (full-width) booked counts of 10, 15 and 20 for a shelf of 5: each spelling was
    taken for another bin of the round, whose units were added again. One bin, however typed, is one bin. (One
    typed with an invisible character, "A\u200b-01", is refused at the open: it was stored and sent as typed.)"""
    for spelling in ("A-01", "a-01", "A-01 ", "\uff21-01"):
        await count_bin(sessions, spelling, **{"c" + APPLE: 5})
    with pytest.raises(InvalidSessionInput, match=r"U\+200B ZERO WIDTH SPACE"):
        await sessions.open(SessionSpec(SessionType.COUNT, bin="A\u200b-01"), by="ana")
    booked = await counts(outbox)
    assert [(ev.qty, ev.attrs.get("carried")) for ev in booked] == [(5, None)] * 4
    assert booked[2].attrs["bin"] == "A-01"  # kept as typed, less the space around it


async def test_a_count_of_a_bin_open_under_another_spelling_is_refused(sessions: SessionManager) -> None:
    first = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="ana")
    with pytest.raises(SessionConflict, match=f"bin 'a-01' is already being counted in session {first.id}"):
        await sessions.open(SessionSpec(SessionType.COUNT, bin="a-01 "), by="bo")


def ev(seq: int, kind: Kind, qty: int, at_ms: int | None = None, **attrs: object) -> StockEvent:
    """An event of the outbox's: its seq, stamped a millisecond after the one before it unless ``at_ms``."""
    at_ms = 1_700_000_000_000 + seq if at_ms is None else at_ms
    return StockEvent(
        new_event_id(), "store-a", 1, seq, "S001", "SKU-APPLE", kind, qty, pack_hlc(at_ms, 0), at_ms,
        "session:x" if kind is Kind.COUNT else "pos:till", attrs=attrs,
    )  # fmt: skip


def test_a_round_whose_first_count_was_purged_is_over() -> None:
    """After ``retention_days`` the outbox no longer holds the round's first count (bin X): which bins the round
    holds is unknown, and bin X counted again would have added its units to a count already holding them."""
    started = ev(1, Kind.COUNT, 5, bin="X")
    carrying = ev(2, Kind.COUNT, 8, bin="Y", carried=5)
    sold = ev(3, Kind.SALE, -1)
    at = pack_hlc(1_700_000_000_100, 0)
    # bin Y's count stamped at its own time (by an older agent) holds the round so far: Z adds to it, the hub the sale
    after_y = bins.Moved("Y", ("X", "Y"), (), (), (("sold", 1),))  # the sale came after both bins' counts
    assert bins._carried([sold, carrying, started], "Z", at, "session:now") == bins.Carry(
        8, carrying.occurred_at, after_y
    )
    assert bins._carried([sold, carrying, started], "X", at, "session:now") is None  # in the round: a new one
    assert bins._carried([sold, carrying], "X", at, "session:now") is None  # X purged: the round is over


def test_what_the_round_count_supersedes_is_taken_if_taken_away_and_left_if_put_in() -> None:
    """Bin Y's count is stamped at bin X's, after it: the hub applies what is stamped later on top of it, and what
    shares X's stamp (a POS row of that very millisecond) the count books itself, a sale taken and a receipt left to
    its bin; a receipt since X's count is taken off the count (the hub adds it back), never below 0."""
    started = ev(1, Kind.COUNT, 5, bin="X")
    same_ms = [ev(2, Kind.SALE, -1, at_ms=1_700_000_000_001), ev(3, Kind.RECEIVE, 2, at_ms=1_700_000_000_001)]
    later = [ev(4, Kind.RECEIVE, 6), ev(5, Kind.SALE, -2)]
    at = pack_hlc(1_700_000_000_100, 0)
    carry = bins._carried([started, *same_ms, *later], "Y", at, "session:now")
    moved = bins.Moved("X", ("X",), (), (("received", 8),), (("sold", 3),))  # what the staff are told of
    assert carry == bins.Carry(5 - 1 - 6, started.occurred_at, moved)
    # 4 in bin Y: 2 booked, 2 + 6 − 2 at the hub; none: 0, not −2 (the hub's 6 − 2 is still no more than the shelf's:
    # what is not in X or Y went into a bin not yet counted)
    assert (carry.qty(4), carry.qty(0)) == (2, 0)
