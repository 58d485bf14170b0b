"""Start the hub and agents as real processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, timeout_s: float = 60.0) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed with {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Credential:
    agent_id: str
    token: str


def add_credential(db: Path | str, *args: str) -> Credential:
    out = run_cli("-m", "hub", "agent", "add", "--db", str(db), *args)
    agent_id = re.search(r"^agent_id: (\S+)$", out, re.M)
    token = re.search(r"^credential: (\S+)$", out, re.M)
    assert agent_id and token, out
    return Credential(agent_id.group(1), token.group(1))


def get_json(url: str, token: str | None = None, timeout_s: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


class HubProcess:
    """``python -m hub serve`` on a fixed port; start/stop/kill it like an operator would."""

    def __init__(self, db: Path | str, port: int, log_path: Path, *extra: str) -> None:
        self.db, self.port, self.log_path, self.extra = str(db), port, log_path, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--db", self.db, "--host", "127.0.0.1", "--port", str(self.port), *self.extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited with {self.proc.returncode}; see {self.log_path}")
            try:
                get_json(f"{self.url}/healthz", timeout_s=1.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise AssertionError(f"hub did not answer /healthz within {START_TIMEOUT_S} s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def __enter__(self) -> HubProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)


def write_agent_config(path: Path, *, cred: Credential, location: str, hub_url: str, extra: str = "") -> Path:
    path.write_text(
        f"""[agent]
id = "{cred.agent_id}"
location = "{location}"
token = "{cred.token}"
hub_url = "{hub_url}"
data_dir = "{path.parent.as_posix()}"

[replicator]
tick_s = 0.2
retry_base_s = 0.05
retry_max_s = 0.5
timeout_s = 5.0
{extra}
"""
    )
    return path


def start_agent(config: Path, log_path: Path) -> subprocess.Popen[str]:
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return proc
