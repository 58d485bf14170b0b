"""The ``shelfsync-hub`` command (and ``python -m hub``): ``--version`` first, then hub/cli.py (protocol/entry.py)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.entry import Cli, run

PROG = "shelfsync-hub"


def _cli() -> Cli:
    from hub.cli import main

    return main


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, "hub", _cli, argv)
