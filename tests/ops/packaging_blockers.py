"""Run a module as on a machine that lacks some modules: another role's packages, or Windows' missing POSIX parts.

    python -m tests.ops.packaging_blockers [--block a,b] [--windows] [--import-all pkg,…] -m MODULE [ARGS…]

``--block``: importing these top-level modules (and their submodules) raises ModuleNotFoundError, as
when their package is not installed. ``--windows``: as on Windows — ``termios``, ``fcntl``, ``pwd``,
``grp`` and ``resource`` cannot be imported, ``signal.SIGHUP`` does not exist and the event loop's
``add_signal_handler`` raises NotImplementedError (as Windows' event loops do). ``--import-all``: import
every module of these packages first (``__main__`` modules aside); one that fails ends the run with
exit code 70 and its error. Then ``-m MODULE`` runs as ``python -m`` would run it.

The role helpers below say which modules a role must do without, from pyproject.toml's extras and the
installed packages' own requirements.
"""

from __future__ import annotations

# Only what the blocker itself needs is imported up here: asyncio, subprocess, shutil and importlib.metadata
# import fcntl or pwd where they can, so they load after the blocker (``install``), as they would on Windows.
import argparse
import importlib
import importlib.abc
import importlib.machinery
import os
import re
import signal
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POSIX_ONLY = ("termios", "fcntl", "pwd", "grp", "resource")
EXIT_IMPORT_FAILED = 70
ROLES = ("agent", "hub", "postgres", "discovery")  # the extras that install a part of shelfsync
PROJECT = "shelfsync"


class Blocker(importlib.abc.MetaPathFinder):
    """A finder that refuses ``names`` (top-level modules and everything under them)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def install(blocked: Iterable[str], *, windows: bool) -> None:
    names = set(blocked) | (set(POSIX_ONLY) if windows else set())
    loaded = sorted(n for n in sys.modules if n.partition(".")[0] in names)
    if loaded:
        raise SystemExit(f"packaging_blockers: {', '.join(loaded)} were imported before they could be blocked")
    sys.meta_path.insert(0, Blocker(names))
    if windows:
        import asyncio

        del signal.SIGHUP

        def no_signals(*args: object, **kwargs: object) -> None:
            raise NotImplementedError  # what Windows' event loops raise

        loop_class = asyncio.SelectorEventLoop  # the Unix selector loop here
        loop_class.add_signal_handler = no_signals  # type: ignore[method-assign, assignment]
        loop_class.remove_signal_handler = no_signals  # type: ignore[method-assign, assignment]


def import_all(packages: Iterable[str]) -> list[str]:
    """Import every module of ``packages``; the failures, as "module: error" lines."""
    import pkgutil

    failed = []
    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.rpartition(".")[2] == "__main__":
                continue
            try:
                importlib.import_module(info.name)
            except Exception as err:  # noqa: BLE001 - every failure is reported
                failed.append(f"{info.name}: {type(err).__name__}: {err}")
    return failed


# --- roles ---------------------------------------------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict[str, object]:
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)["project"]  # type: ignore[no-any-return]


def role_requirements(*extras: str) -> list[Requirement]:
    """The requirements of ``shelfsync[extras]``: the base ones and each extra's, self-references expanded."""
    from packaging.requirements import Requirement

    meta = project()
    optional: dict[str, list[str]] = meta["optional-dependencies"]  # type: ignore[assignment]
    out = [Requirement(r) for r in meta["dependencies"]]  # type: ignore[attr-defined]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if _normal(req.name) == PROJECT:
                todo.extend(req.extras)
            elif req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(req)
    return out


def closure(requirements: Iterable[Requirement]) -> set[str]:
    """The installed distributions these requirements pull in, transitively (normalised names)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    found: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = _normal(req.name)
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (an optional speed-up, another platform's)
        found.add(name)
        for text in dist.requires or ():
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((sub, frozenset(sub.extras)))
    return found


def modules_of(distributions: Iterable[str]) -> set[str]:
    """The top-level modules these installed distributions provide."""
    import importlib.metadata

    wanted = set(distributions)
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(_normal(d) in wanted for d in dists) and not module.startswith("_")
    }


def foreign_modules(*extras: str) -> set[str]:
    """What ``shelfsync[extras]`` must run without: modules of the other roles' packages that it does not pull in."""
    everything = closure(role_requirements(*ROLES))
    mine = closure(role_requirements(*extras))
    return modules_of(everything - mine) - modules_of(mine)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="packaging_blockers")
    parser.add_argument("--block", default="", help="comma-separated top-level modules")
    parser.add_argument("--windows", action="store_true")
    parser.add_argument("--import-all", default="", metavar="PKGS")
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args(argv)
    install([n for n in args.block.split(",") if n], windows=args.windows)
    failed = import_all([p for p in args.import_all.split(",") if p])
    if failed:
        print("\n".join(failed), file=sys.stderr)
        raise SystemExit(EXIT_IMPORT_FAILED)
    import runpy

    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
