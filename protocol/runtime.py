"""How a long-running shelfsync process (the hub, its decode workers, a store agent) collects garbage.

Both ends allocate tens of thousands of short-lived tuples per batch of
events (decoding, resolving, reading an outbox), nearly all freed by reference
counting. With Python's default thresholds the cyclic collector still ran
every 700 allocations and, as the heap grew, full collections of everything
start-up built: measured, 3.5 ms per 1,000-event batch in the hub (most of it
on the writer thread, which bounds the ingest rate) and a fifth of a store
agent's CPU while it drained a backlog. While serving, start-up's objects are
frozen out of every collection and the collector runs at
``SERVING_GC_THRESHOLDS``: 8 collections over the same 200 batches, 0.3 ms
per batch. Cyclic garbage is still collected, later.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# A young collection per 20,000 allocations (Python's default: 700), an older one per 20 of those, a full one
# per 50 older ones.
SERVING_GC_THRESHOLDS = (20_000, 20, 50)


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
