"""``python shifted_clock.py -m MODULE ARGS``: run MODULE with this process's wall clock shifted, as a machine
whose clock jumped.

The shift is the whole number of milliseconds in the file ``$SHELFSYNC_TEST_CLOCK_SHIFT_FILE``, read at every
look at the clock, so a test moves the clock of a running process by writing the file (a missing or empty file
is no shift). ``time.time`` and ``time.time_ns`` are shifted, which is what the hub and the agent read the wall
clock with (``protocol.wall_ms_now``); the monotonic clock, which timeouts and the event loop use, is not, as on
a real machine.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

SHIFT_FILE_ENV = "SHELFSYNC_TEST_CLOCK_SHIFT_FILE"
SCRIPT = os.path.abspath(__file__)


def _shift_ms(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except OSError:
        return 0


def main() -> None:
    path = os.environ[SHIFT_FILE_ENV]
    time_ns, time_s = time.time_ns, time.time
    time.time_ns = lambda: time_ns() + _shift_ms(path) * 1_000_000
    time.time = lambda: time_s() + _shift_ms(path) / 1000
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        raise SystemExit("usage: python shifted_clock.py -m MODULE [ARGS]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
