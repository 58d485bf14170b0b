"""Loopback plumbing every kind of test needs: a free port, a JSON GET, a bounded wait."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

WAIT_S = 30.0
POLL_S = 0.05


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, token: str | None = None, timeout_s: float = 5.0) -> Any:
    """GET ``url`` (with a bearer ``token``) and its JSON body; an HTTP error status raises HTTPError."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = WAIT_S, poll_s: float = POLL_S) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)
