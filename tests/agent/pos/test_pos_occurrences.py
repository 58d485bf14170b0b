"""Occurrence counting stays exact when identities spill out of memory."""

from __future__ import annotations

import hashlib
import random

import pytest

from agent.pos import occurrences
from agent.pos.occurrences import CountsIncomplete, OccurrenceCounter


def key(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest()


def test_counts_are_exact_across_spills() -> None:
    rng = random.Random(7)
    stream = [rng.randrange(5_000) for _ in range(40_000)]  # far more identities than fit in memory
    expected: dict[int, int] = {}
    with OccurrenceCounter(generation_keys=250) as counter:
        for n in stream:
            assert counter.next(key(n)) == expected.get(n, 0)
            expected[n] = expected.get(n, 0) + 1
        assert counter.spilled > 0  # the spill path was exercised
        assert counter.in_memory() <= 500


def test_first_sighting_is_zero_and_close_is_idempotent() -> None:
    counter = OccurrenceCounter()
    assert [counter.next(key(1)), counter.next(key(1)), counter.next(key(2))] == [0, 1, 0]
    counter.close()
    counter.close()


def test_counts_handed_over_in_packs_go_on_exactly_in_a_new_counter() -> None:
    """An import resumed at its checkpoint counts on from the packs its batches stored (``changes``/``load``)."""
    rng = random.Random(11)
    stream = [rng.randrange(3_000) for _ in range(20_000)]
    expected: dict[int, int] = {}
    packs = []
    with OccurrenceCounter(generation_keys=250) as counter:
        counter.track()
        for i, n in enumerate(stream[:12_000]):
            counter.next(key(n))
            expected[n] = expected.get(n, 0) + 1
            if i % 1_000 == 999:
                packs.append(counter.changes())  # one pack per batch; an identity recurs in several
    with OccurrenceCounter(generation_keys=250) as resumed:
        resumed.load(b"".join(packs))
        for n in stream[12_000:]:
            assert resumed.next(key(n)) == expected.get(n, 0)
            expected[n] = expected.get(n, 0) + 1
        with pytest.raises(ValueError, match="occurrence counts are loaded only into a new counter"):
            resumed.load(packs[0])


def test_a_summary_goes_on_exactly_or_says_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary keeps the exact counts of the identities counted last and a 7-byte fingerprint of every other one:
    a counter loaded from it counts on exactly, and for an identity it kept no count of it raises, never guesses."""
    monkeypatch.setattr(occurrences, "RECENT_KEYS", 100)
    with OccurrenceCounter(generation_keys=250) as counter:
        for n in range(2_000):
            counter.next(key(n))
        counter.next(key(1_990))  # a repeat among the last: its count (2) is kept
        summary = counter.summary()
    assert len(summary) < 100 * 20 + 2_000 * 6 + 257 * 4 + 64  # packs: 2,000 * 20 bytes
    # an agent before it takes it for packs (20 bytes each), and finds them cut short: never for counts
    assert len(summary) % 20 == 1
    with OccurrenceCounter(generation_keys=250) as resumed:
        resumed.load(summary)
        assert [resumed.next(key(1_990)), resumed.next(key(1_999)), resumed.next(key(5_000))] == [2, 1, 0]
        with pytest.raises(CountsIncomplete):
            resumed.next(key(5))  # counted before, its count not kept
        # a summary of the resumed counter keeps what it loaded, and what it counted since
        again = resumed.summary()
    with OccurrenceCounter(generation_keys=250) as later:
        later.load(again)
        assert [later.next(key(1_990)), later.next(key(5_000)), later.next(key(7_000))] == [3, 1, 0]
        with pytest.raises(CountsIncomplete):
            later.next(key(6))


def test_a_new_identity_sharing_the_first_5_bytes_of_one_in_a_summary_is_counted_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A summary kept a 5-byte fingerprint of every identity but the last counted: a new row whose identity began
    with the same 5 bytes as one of a million read before (one in 1,100,000) was taken for a repeat, and the file
    read again from its first line — a 100,000-row append to a 1,000,000-row export did so about once in 11. The
    fingerprints are 7 bytes now: such a row is counted on, and a true repeat still says it cannot be counted."""
    monkeypatch.setattr(occurrences, "RECENT_KEYS", 100)
    with OccurrenceCounter(generation_keys=250) as counter:
        for n in range(2_000):
            counter.next(key(n))
        summary = counter.summary()
    alike = key(7)[:5] + bytes(b ^ 0xFF for b in key(7)[5:])  # a new identity, its first 5 bytes those of key(7)
    with OccurrenceCounter(generation_keys=250) as resumed:
        resumed.load(summary)
        assert [resumed.next(alike), resumed.next(alike)] == [0, 1]
        with pytest.raises(CountsIncomplete):
            resumed.next(key(7))  # a repeat of a row read long before: its occurrence is never guessed


def test_a_summary_keeps_at_most_6_bytes_an_identity() -> None:
    """7-byte fingerprints, sorted: their first byte (or two, from about 260,000 identities on) is kept once, in an
    index, and 6 (5) bytes of each."""
    n = 200_000
    with OccurrenceCounter() as counter:
        for i in range(n):
            counter.next(key(i))
        summary = counter.summary()
    assert len(summary) < n * 6 + 257 * 4 + occurrences.RECENT_KEYS * 20 + 64, len(summary)
