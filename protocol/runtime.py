"""How a long-running shelfsync process (the hub, its decode workers, a store agent) collects garbage.

Both ends allocate tens of thousands of short-lived tuples per batch of
events (decoding, resolving, reading an outbox), nearly all freed by reference
counting. With Python's default thresholds the cyclic collector still ran
every 700 allocations and, as the heap grew, full collections of everything
start-up built: measured, 3.5 ms per 1,000-event batch in the hub (most of it
on the writer thread, which bounds the ingest rate) and a fifth of a store
agent's CPU while it drained a backlog. While serving, start-up's objects are
frozen out of every collection and the collector runs at
``SERVING_GC_THRESHOLDS``. Cyclic garbage is still collected, later.

A young collection starts when tracked allocations outnumber deallocations by
the first threshold, so batches in flight trigger one by their size alone: 8
batches of 1,000 events hold some 40,000 tracked objects until their commit,
and each collection walked them all to free nothing (they die by reference
count a few milliseconds later). At a first threshold of 20,000 a PostgreSQL
hub ingesting 799 such batches from 8 agents ran 21 and 25 young collections,
530 and 780 ms (0.7–1.0 ms a batch, 5–7 % of its CPU); at 100,000, none.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# A young collection per 100,000 allocations not yet freed (Python's default: 700), an older one per 20 of those,
# a full one per 50 older ones.
SERVING_GC_THRESHOLDS = (100_000, 20, 50)


def tune_gc_for_serving() -> None:
    """For a process that serves until it exits (a decode worker): freeze what exists, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


@contextlib.contextmanager
def gc_for_serving() -> Iterator[None]:
    """``tune_gc_for_serving`` for the block; the process's own settings come back after it (tests serve
    hubs and run agents in-process)."""
    thresholds = gc.get_threshold()
    tune_gc_for_serving()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
