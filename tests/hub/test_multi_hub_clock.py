"""A hub process whose own clock is wrong, beside others on one PostgreSQL. The hub judges every event's time by
its clock (the clock window, hub.clock_window): one two days slow holds every event of a correct store in
quarantine and tells that store's agent to check *its* clock, while the other hubs take the same events. The
database server's clock is the one clock all hubs share, so a hub compares its own with it at start and says so
in one line, and ``/healthz`` shows the offset.

The wrong clock is a real ``python -m hub serve`` process whose ``time.time``/``time.time_ns`` run two days
behind (a ``sitecustomize`` on its PYTHONPATH; no faketime needed)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

DAY_S = 86_400
SKEWED_CLOCK = """\
import os, time
_offset_s = float(os.environ["TEST_CLOCK_OFFSET_S"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset_s
time.time_ns = lambda: _time_ns() + int(_offset_s * 1e9)
"""


def _env_with_clock_offset(tmp_path: Path, offset_s: float) -> dict[str, str]:
    site = tmp_path / "skewed-clock"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEWED_CLOCK)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return hub_env(PYTHONPATH=path, TEST_CLOCK_OFFSET_S=str(offset_s))


def test_a_hub_whose_clock_is_off_the_database_servers_says_so_at_start(pg_url: str, tmp_path: Path) -> None:
    env = _env_with_clock_offset(tmp_path, -2 * DAY_S)
    with (
        HubProcess(tmp_path / "right.log", db=pg_url, port=free_port(), env=hub_env()) as right,
        HubProcess(tmp_path / "slow.log", db=pg_url, port=free_port(), env=env) as slow,
    ):
        offset_ms = get_json(f"{slow.url}/healthz")["db"]["clock_offset_ms"]
        assert -2 * DAY_S * 1000 - 60_000 < offset_ms < -2 * DAY_S * 1000 + 60_000, offset_ms
        assert "clock is 2.0 days behind the database server's" in slow.log, slow.log
        assert "fix this machine's clock" in slow.log, slow.log
        assert "clock is" not in right.log, right.log  # a right clock is not mentioned
