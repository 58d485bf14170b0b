"""The hub as a real process: ``python -m hub serve …`` on 127.0.0.1, started and stopped like an operator does.

``HubProcess`` starts the command with its arguments (``--db``/``--port`` when given, then any ``--config`` or
other argument) and environment, collects stdout and stderr in one log file, learns its address from its own
``hub listening on …`` line (so port 0, a port from a config file and https all work), and is ready once
``/healthz`` answers 200. ``stop()`` sends SIGTERM and returns the exit status (killing it, and failing, if it
does not end in time); ``kill()`` is SIGKILL; ``close()`` cleans up whatever state it is in. Every wait is
bounded and a failure quotes the log.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05
LOG_TAIL_CHARS = 4_000
LISTENING_RE = re.compile(r"hub listening on (https?)://([0-9.]+):(\d+),")


class HubProcess:
    """``python -m hub serve [--db DB] [--host 127.0.0.1 --port PORT] ARGS``; use it as a context manager.

    ``port`` given: ``url`` is known before the start (agents and proxies may be pointed at it first);
    otherwise it is the address the hub says it listens on. ``env`` replaces the environment (see
    ``tests.harness.commands.hub_env``); ``preexec_fn`` runs in the child before exec (resource limits);
    ``cwd`` is its working directory; ``python`` the interpreter command (one that blocks some modules, say);
    ``pass_fds`` are descriptors the child keeps (a listening socket, as systemd passes one).
    """

    def __init__(
        self,
        log_path: Path,
        *args: str,
        db: Path | str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        cwd: Path | None = None,
        python: Sequence[str] = (sys.executable,),
        start_timeout_s: float = START_TIMEOUT_S,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.log_path = log_path
        self.db = None if db is None else str(db)
        self.listen_port = port  # what it is told (0: any free port, each start)
        self.port = port  # where it listens: ``listen_port``, or the port it says it took
        self.args = args
        self.env = None if env is None else dict(env)  # None: this process's environment when it starts
        self.preexec_fn = preexec_fn
        self.cwd = cwd
        self.python = tuple(python)
        self.start_timeout_s = start_timeout_s
        self.pass_fds = tuple(pass_fds)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}" if port else ""  # port 0: known once it listens
        self._log_offset = 0

    @property
    def command(self) -> list[str]:
        where = ["--db", self.db] if self.db is not None else []
        if self.listen_port is not None:
            where += ["--host", "127.0.0.1", "--port", str(self.listen_port)]
        return [*self.python, "-m", "hub", "serve", *where, *self.args]

    @property
    def log(self) -> str:
        """Everything the hub wrote so far (stdout and stderr, every run)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def run_log(self) -> str:
        """What the last (or running) start of it wrote."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the hub is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Start it and return once it answers ``/healthz``."""
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the process and return at once (``wait_ready`` then waits for it: start several side by side)."""
        assert self.proc is None or self.proc.poll() is not None, "the hub is running already"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command, env={**(os.environ if self.env is None else self.env), "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, pass_fds=self.pass_fds,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509  (resource limits only: no lock is taken)
            )  # fmt: skip

    def wait_ready(self) -> None:
        """Until this run says where it listens and answers ``/healthz`` with 200; killed and failed otherwise."""
        assert self.proc is not None, "spawn() the hub first"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self._reap()
                raise AssertionError(f"the hub exited with {code} while starting: {self._tail()}")
            match = LISTENING_RE.search(self.run_log)
            if match and self._healthy(f"{match.group(1)}://127.0.0.1:{match.group(3)}"):
                self.port = int(match.group(3))
                self.url = f"{match.group(1)}://127.0.0.1:{self.port}"
                return
            time.sleep(POLL_S)
        self.kill()
        raise AssertionError(f"the hub did not answer /healthz within {self.start_timeout_s:.0f} s: {self._tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` (SIGTERM: a clean stop) and return the exit status; killed, and failed, after ``timeout_s``."""
        assert self.proc is not None, "the hub is not running"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the hub did not stop within {timeout_s:.0f} s of {sig}: {self._tail()}") from None
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL: no drain, no clean close of the database. The exit status, or None if it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self._reap()

    def close(self) -> None:
        """Whatever state it is in: SIGTERM, then SIGKILL if it lingers. Safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reap()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reap(self) -> int:
        assert self.proc is not None
        code = self.proc.returncode
        assert code is not None
        self.proc = None
        return code

    def _tail(self) -> str:
        return self.log[-LOG_TAIL_CHARS:]

    @staticmethod
    def _healthy(url: str) -> bool:
        context = ssl.create_default_context()  # https: only to see that it answers; tests check certificates
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        no_proxy = urllib.request.ProxyHandler({})  # loopback, whatever http_proxy says
        opener = urllib.request.build_opener(no_proxy, urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(f"{url}/healthz", timeout=2.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False
