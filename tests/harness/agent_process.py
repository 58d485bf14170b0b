"""The store agent as a real process: ``python -m agent run --config …``, and the config file it reads.

``AgentProcess`` starts one run; what it prints on stdout (``recorded …`` lines, ``simulation complete N``) is
collected line by line as it comes, its log (stderr) goes to a file. ``stop()`` is SIGTERM and the exit status,
``kill()`` SIGKILL; ``wait_for_log`` and ``wait_for_printed`` wait (bounded) for what it logs or prints.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.localapi.auth import hash_pin
from tests.harness.credentials import Credential

STOP_TIMEOUT_S = 30.0
WAIT_S = 30.0
POLL_S = 0.05


def write_agent_config(
    path: Path,
    *,
    cred: Credential,
    location: str,
    hub_url: str,
    data_dir: Path | None = None,
    batch_size: int | None = None,
    timeout_s: float = 5.0,
    auth_retry_s: float | None = None,
    extra: str = "",
) -> Path:
    """An agent config at ``path`` with quick replicator timings (its data beside it unless ``data_dir``)."""
    tuned = (("batch_size", batch_size), ("auth_retry_s", auth_retry_s))
    tuning = "".join(f"{key} = {value}\n" for key, value in tuned if value is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""[agent]
id = "{cred.agent_id}"
location = "{location}"
token = "{cred.token}"
hub_url = "{hub_url}"
data_dir = "{(data_dir or path.parent).as_posix()}"

[replicator]
tick_s = 0.2
retry_base_s = 0.05
retry_max_s = 0.5
timeout_s = {timeout_s}
{tuning}
{extra}"""
    )
    return path


def local_api_section(port: int, staff: Mapping[str, str] | None = None) -> str:
    """An agent config's local API on 127.0.0.1:``port`` with its staff (id -> PIN; ``ana`` with 4711 unless given)."""
    pins = {"ana": "4711"} if staff is None else staff
    people = "".join(f'{staff_id} = "{hash_pin(pin)}"\n' for staff_id, pin in pins.items())
    return f"""[localapi]
enabled = true
host = "127.0.0.1"
port = {port}

[localapi.staff]
{people}"""


def fsize_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the size of every file the child writes: a full disk, as far as it can tell."""

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

    return apply


_STARTED: list[AgentProcess] = []  # every agent process a test started, for ``kill_leftovers``


def kill_leftovers() -> int:
    """Kill the agent processes a test started and left running (a failed wait skips its ``stop``): each would
    run on, syncing to nothing, for the rest of the session. Returns how many there were."""
    left = [run for run in _STARTED if run.proc.poll() is None]
    for run in left:
        run.kill()
    _STARTED.clear()
    return len(left)


class AgentProcess:
    """One run of ``python -m agent run --config CONFIG ARGS``; stdout lines are appended to ``printed`` as they come.

    ``env`` replaces the environment, ``cwd`` is its working directory, ``python`` the interpreter command.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        printed: list[str] | None = None,
        *args: str,
        fsize_limit_bytes: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: Sequence[str] = (sys.executable,),
    ) -> None:
        self.config, self.log_path = config, log_path
        self.printed = printed if printed is not None else []
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*python, "-m", "agent", "run", "--config", str(config), *args],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=cwd,
                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
                # setrlimit and signal between fork and exec touch no lock a thread of ours could hold
                preexec_fn=fsize_limit(fsize_limit_bytes) if fsize_limit_bytes is not None else None,  # noqa: PLW1509
            )  # fmt: skip
        _STARTED.append(self)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a line cut short by a kill was never printed whole
                self.printed.append(line[:-1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        """What this run wrote to its log so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match[str]:
        """The first match of ``pattern`` in this run's log, once it is there; fails if the agent ends first."""
        deadline = time.monotonic() + timeout_s
        while (match := re.search(pattern, self.log)) is None:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the agent exited with {code} before logging {pattern!r}: {self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent did not log {pattern!r} within {timeout_s:.0f} s: {self.log}")
            time.sleep(POLL_S)
        return match

    def wait_for_printed(self, what: str, done: Callable[[list[str]], bool], timeout_s: float = WAIT_S) -> None:
        """Until ``done(printed lines)``; fails naming ``what`` if the agent ends first or it takes too long."""
        deadline = time.monotonic() + timeout_s
        while not done(self.printed):
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)  # what it printed before it ended
                if done(self.printed):
                    return
                raise AssertionError(f"the agent exited with {self.proc.returncode} before {what}: {self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s: {self.log}")
            time.sleep(POLL_S)

    def kill(self) -> int:
        """SIGKILL, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.wait(STOP_TIMEOUT_S)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """``sig`` (SIGTERM; SIGINT is Ctrl-C), and the exit status of its clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(STOP_TIMEOUT_S)

    def wait(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code
