"""The ``shelfsync-hub`` command (and ``python -m hub``): ``--version`` first, then hub/cli.py.

``--version`` is answered from the package metadata before hub/cli.py is imported, so it works on any
install, an agent-only one too; another command on an install without the hub extra is one sentence
naming the extra, never an ImportError traceback.

It imports nothing of shelfsync (agent/entry.py is its twin): the agent and the hub share only protocol/.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence

PROG = "shelfsync-hub"
DISTRIBUTION = "shelfsync"
EXTRA = "hub"
EXIT_OK = 0
EXIT_ERROR = 2
OWN_PACKAGES = frozenset({"hub", "agent", "protocol", "hardware"})  # missing one of these is a broken install


def package_version() -> str:
    """The installed shelfsync's version, from its package metadata."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (shelfsync is not installed as a package)"


def asks_for_version(args: Sequence[str]) -> bool:
    """Whether argparse would answer ``args`` with the version: ``--version`` (or a prefix, down to ``--v``)
    first, where only ``-h``, ``--help`` and ``--version`` are options."""
    return bool(args) and args[0].startswith("--v") and "--version".startswith(args[0])


def missing_extra(err: ModuleNotFoundError, prog: str, extra: str) -> str | None:
    """The sentence for a package of ``extra`` that is not installed; None when the missing module is ours."""
    if (err.name or "hub").partition(".")[0] in OWN_PACKAGES:
        return None
    return f"{prog}: this command needs the {err.name} package, which is not installed; install shelfsync[{extra}]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if asks_for_version(args):
        print(f"{PROG} {package_version()}")
        return EXIT_OK
    try:
        from hub.cli import main as cli_main
    except ModuleNotFoundError as err:
        sentence = missing_extra(err, PROG, EXTRA)
        if sentence is None:
            raise
        print(sentence, file=sys.stderr)
        return EXIT_ERROR
    return cli_main(args)
