"""gc_for_serving: the serving thresholds and a frozen start-up inside the block, the process's own after it,
even when the block fails."""

from __future__ import annotations

import gc

import pytest

from protocol.runtime import SERVING_GC_THRESHOLDS, gc_for_serving


def test_the_block_serves_with_the_serving_thresholds_and_restores_the_process_settings() -> None:
    before = gc.get_threshold()
    assert before != SERVING_GC_THRESHOLDS
    with pytest.raises(RuntimeError), gc_for_serving():
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up's objects are out of every collection
        raise RuntimeError("the service failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_while_serving_is_still_collected() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with gc_for_serving():
        Node()
        assert gc.collect() > 0


def test_cyclic_garbage_made_while_serving_is_collected_without_being_asked() -> None:
    alive = [0, 0]  # now, most at once

    class Node:
        def __init__(self) -> None:
            self.me = self
            alive[0] += 1
            alive[1] = max(alive[1], alive[0])

        def __del__(self) -> None:
            alive[0] -= 1

    made = 4 * SERVING_GC_THRESHOLDS[0]
    with gc_for_serving():
        for _ in range(made):
            Node()  # a cycle: reference counting never frees it
        assert alive[0] < made  # the collector ran on its own while they were made
        assert alive[1] <= 2 * SERVING_GC_THRESHOLDS[0]  # and often enough to keep them bounded
        gc.collect()
    assert alive[0] == 0
