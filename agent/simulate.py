"""A simulated store: records made-up movements at a steady rate, for demos and crash tests.

After every successful ``record()`` it prints, and flushes, one line per event:

    recorded <event_id> <location> <sku> <kind> <qty>

so a test that kills the process knows exactly which movements were
acknowledged as durable. The number recorded is kept in the outbox (in the
same transaction as the events), so a restarted simulation resumes where it
stopped and records ``count`` events in total. Movement ``n`` is derived from
``(seed, n)`` alone: a resumed run records what the uninterrupted one would
have. There are no counts, so the expected on_hand of a SKU is the plain sum
of its quantities.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import TextIO

from agent.config import SimulateSection
from agent.outbox import Movement, Outbox
from protocol import Kind, event_id_hex

log = logging.getLogger(__name__)

TALLY = "simulate"
SOURCE = "api:simulate"


def simulated_movement(location: str, skus: tuple[str, ...], seed: int, n: int) -> Movement:
    """Movement number ``n`` of the simulation with this seed: mostly sales and receipts."""
    rng = random.Random(f"{seed}:{n}")
    sku = rng.choice(skus)
    roll = rng.random()
    if roll < 0.70:
        kind, qty, reason = Kind.SALE, -rng.choice((1, 1, 1, 2)), None
    elif roll < 0.88:
        kind, qty, reason = Kind.RECEIVE, rng.randint(5, 20), None
    elif roll < 0.95:
        kind, qty, reason = Kind.RETURN, 1, "customer_return"
    else:
        kind, qty = Kind.ADJUST, rng.choice((-3, -2, -1, 1, 2, 3))
        reason = "damaged" if qty < 0 else "found"
    return Movement(location, sku, kind, qty, SOURCE, ref=f"sim-{seed}-{n}", reason=reason)


class Simulator:
    def __init__(self, outbox: Outbox, section: SimulateSection, *, location: str, out: TextIO | None = None) -> None:
        self._outbox = outbox
        self._section = section
        self._location = location
        self._out = out or sys.stdout

    async def run(self) -> int:
        """Record until ``count`` events have been recorded in total; return that total."""
        s = self._section
        done = await self._outbox.tally(TALLY)
        if done:
            log.info("Simulation resumes after %s of %s movements.", f"{done:,}", f"{s.count:,}")
        started = time.monotonic()
        recorded_here = 0
        while done < s.count:
            size = min(s.batch, s.count - done)
            movements = [simulated_movement(self._location, s.skus, s.seed, done + i) for i in range(size)]
            result = await self._outbox.record(movements, tally=TALLY)
            for ev in result.events:
                self._out.write(
                    f"recorded {event_id_hex(ev.event_id)} {ev.location} {ev.sku} {ev.kind.value} {ev.qty}\n"
                )
            self._out.flush()
            done += size
            recorded_here += size
            if s.rate_per_s > 0:
                await asyncio.sleep(max(0.0, started + recorded_here / s.rate_per_s - time.monotonic()))
        self._out.write(f"simulation complete {s.count}\n")
        self._out.flush()
        return done
