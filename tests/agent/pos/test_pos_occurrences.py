"""Occurrence counting stays exact when identities spill out of memory."""

from __future__ import annotations

import hashlib
import random

from agent.pos.occurrences import OccurrenceCounter


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
