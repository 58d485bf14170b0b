"""A hub process for the operations tests: ``python -m hub …`` with the environment an operator gives it.

Unlike tests/e2e/procs.py it passes a chosen environment (settings by ``SHELFSYNC_HUB_*``), may listen on
https, and learns its address from its own ``hub listening on …`` log line (port 0: a free one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0
POLL_S = 0.05
LISTENING_RE = re.compile(r"hub listening on (https?)://127\.0\.0\.1:(\d+),")


def hub_env(**variables: str) -> dict[str, str]:
    """This process's environment without any SHELFSYNC_HUB_* setting, no config file, then ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFSYNC_HUB_")}
    return {**env, "SHELFSYNC_HUB_CONFIG": "", "PYTHONUNBUFFERED": "1", **variables}


def run_hub(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m hub ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], env=dict(env or hub_env()), cwd=cwd, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(POLL_S)


class ServedHub:
    """``python -m hub serve ARGS`` with ``env``; ``url`` once it listens. Use as a context manager."""

    def __init__(self, *args: str, env: Mapping[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, dict(env), log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> ServedHub:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        found: list[re.Match[str]] = []

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited with {self.proc.returncode}: {self.log}")
            match = LISTENING_RE.search(self.log)
            if match:
                found.append(match)
            return bool(match)

        wait_until("the hub listening", listening)
        scheme, port = found[0].groups()
        self.url = f"{scheme}://127.0.0.1:{port}"
        return self

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def __enter__(self) -> ServedHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
