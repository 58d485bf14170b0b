"""The ``shelfsync-agent`` command (and ``python -m agent``): ``--version`` first, then agent/cli.py (protocol/entry.py).

``run`` holds SIGHUP from its first line: until its event loop watches the signal, a reload (``systemctl
reload``, sent as soon as the unit counts the agent started) would otherwise end the agent with SIGHUP's
default action, a clean exit to systemd's ``Restart=on-failure``. A SIGHUP held so is taken as a reload once the
loop watches it (``held_reload``; agent/cli.py).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from protocol.entry import Cli, run

PROG = "shelfsync-agent"
RELOAD_SIGNAL = "SIGHUP"  # none on Windows

_held: list[int] = []  # SIGHUPs that came before the event loop watched them


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold_reloads() -> None:
    """Keep SIGHUP from ending the process: it is only noted, for ``held_reload``."""
    if (sig := getattr(signal, RELOAD_SIGNAL, None)) is not None:
        signal.signal(sig, _hold)


def held_reload() -> bool:
    """Whether a SIGHUP came since the last call, while nothing else watched it."""
    came = bool(_held)
    _held.clear()
    return came


def _cli() -> Cli:
    from agent.cli import main

    return main


def main(argv: Sequence[str] | None = None) -> int:
    if next(iter(sys.argv[1:] if argv is None else argv), None) == "run":
        hold_reloads()
    return run(PROG, "agent", _cli, argv)
