"""The ``shelfsync-agent`` command (and ``python -m agent``): ``--version`` first, then agent/cli.py (protocol/entry.py)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.entry import Cli, run

PROG = "shelfsync-agent"


def _cli() -> Cli:
    from agent.cli import main

    return main


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, "agent", _cli, argv)
