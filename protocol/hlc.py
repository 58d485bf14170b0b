"""Hybrid logical clock: wall milliseconds plus a counter, packed in one int.

A timestamp is ``wall_ms << 16 | counter``. Packed timestamps order exactly as
(wall_ms, counter) pairs, fit a signed 64-bit column, and never go backwards on
one device even when its wall clock jumps back (the counter advances instead).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COUNTER_BITS = 16
COUNTER_MAX = (1 << COUNTER_BITS) - 1
HLC_MAX = (1 << 63) - 1


def pack_hlc(wall_ms: int, counter: int) -> int:
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError(f"HLC counter {counter} out of range 0..{COUNTER_MAX}")
    if wall_ms < 0:
        raise ValueError(f"HLC wall clock {wall_ms} is negative")
    return (wall_ms << COUNTER_BITS) | counter


def unpack_hlc(ts: int) -> tuple[int, int]:
    """Split a packed timestamp into (wall_ms, counter)."""
    return ts >> COUNTER_BITS, ts & COUNTER_MAX


def wall_ms_now() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class HybridClock:
    """A monotonic HLC for one device.

    ``now()`` never returns a value at or below one it returned before, nor one
    below a value passed to ``observe()`` (a persisted last value, or a peer's).
    """

    wall_clock_ms: Callable[[], int] = wall_ms_now
    last: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def now(self) -> int:
        with self._lock:
            physical = self.wall_clock_ms() << COUNTER_BITS
            self.last = physical if physical > self.last else self.last + 1
            return self.last

    def reset(self, ts: int) -> None:
        """Issue timestamps after ``ts`` from now on, even below ones issued before: only for a clock
        known to have run far ahead (a wrong year), once the real time is known again."""
        with self._lock:
            self.last = ts

    def observe(self, ts: int) -> None:
        """Never issue a timestamp at or below ``ts`` from now on."""
        with self._lock:
            self.last = max(self.last, ts)
