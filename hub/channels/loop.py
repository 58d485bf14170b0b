"""The one shape of a channel's long-running loop, and its backoff value (docs/design.md, "How the code is shaped").

``Backoff`` is a frozen value: the delay after the n-th failure in a row is
drawn from [ceiling/2, ceiling], ceiling = min(max_s, base_s × 2^(n−1)).
``Health`` logs the first failure of a run as a warning and the recovery
once, so a channel that is down for an hour writes two lines, not thousands.
(Both are written to be moved to one shared place when issue 15 gives the tree
one loop type.)
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = BACKOFF_BASE_S
    max_s: float = BACKOFF_MAX_S

    def delay_s(self, failures: int, rng: random.Random | None = None) -> float:
        """How long to wait after ``failures`` failures in a row (0 after none), with jitter."""
        if failures <= 0:
            return 0.0
        ceiling_s = min(self.max_s, self.base_s * 2 ** min(failures - 1, 30))
        return (rng or random).uniform(ceiling_s / 2, ceiling_s)


class Health:
    """Failures in a row of one loop, logged once when they start and once when they end."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failures = 0
        self.last_error: str | None = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures == 1:
            self._log.warning("%s failed (%s); retrying with backoff", self._what, error)

    def succeeded(self) -> None:
        if self.failures:
            self._log.info("%s works again after %d failed attempt(s)", self._what, self.failures)
        self.failures = 0
        self.last_error = None
