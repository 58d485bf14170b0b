"""One-shot commands of the project, run as an operator runs them: ``python -m hub …``, ``python -m agent …``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

COMMAND_TIMEOUT_S = 120.0


def hub_env(**variables: str) -> dict[str, str]:
    """This process's environment without any SHELFSYNC_HUB_* setting, no config file, then ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFSYNC_HUB_")}
    return {**env, "SHELFSYNC_HUB_CONFIG": "", "PYTHONUNBUFFERED": "1", **variables}


def run_hub(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m hub ARGS`` to its end, its output captured (the exit status is the caller's to check)."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], env=dict(env or hub_env()), cwd=cwd, capture_output=True, check=False, text=True,
        timeout=timeout_s,
    )  # fmt: skip


def run_agent(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` to its end, its output captured (the exit status is the caller's to check)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        cwd=cwd, capture_output=True, check=False, text=True, timeout=timeout_s,
    )  # fmt: skip


def without_modules(blocked: Sequence[str], module: str, *args: str) -> list[str]:
    """The command line of ``python -m MODULE ARGS`` in an interpreter where the ``blocked`` packages cannot be
    imported, as on an install without the extra that brings them (``import`` raises ModuleNotFoundError)."""
    code = (
        "import runpy, sys\n"
        f"for name in {list(blocked)!r}:\n"
        "    sys.modules[name] = None\n"
        f"sys.argv[0] = {module!r}\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]


def new_hub_db(db: Path | str, env: Mapping[str, str] | None = None) -> Path | str:
    """A new hub database made by ``shelfsync-hub init`` (the credential commands refuse one that does not exist)."""
    done = run_hub("init", "--db", str(db), env=env)
    assert done.returncode == 0 and "was created" in done.stdout, done.stderr
    return db
