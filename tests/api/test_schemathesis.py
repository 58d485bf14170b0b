"""Schemathesis, an outside property-based API tester, against a live hub process (tests/api/live.py).

It loads the document the hub serves (GET /v1/openapi.json) and runs all four of its phases — examples,
coverage (boundary and invalid values of every parameter and body), fuzzing, and stateful (chains of calls
through the document's OpenAPI links: a page's ``next`` into the next call's ``cursor``, a held event's id into
its resolution, the catalog's ETag …) — with every check it has: no server error, answers conforming to the
documented status codes, content types, headers and schemas, invalid requests refused and valid ones accepted,
authentication not ignored, methods not documented answered 405 with Allow, and the rest (``--checks all``).
The hub runs on SQLite with a reader, an agent and an admin credential; schemathesis_hooks.py calls each
operation with a credential of a role it names.

Bounded for CI: ``MAX_EXAMPLES`` per operation and phase, ``STATEFUL_EXAMPLES`` scenarios, one worker, a
deadline per run; both runs take about a minute on the CI machine. Nothing is switched off but, named here with the reason:

* ``GET /v1/changes/stream`` is not fuzzed: it is a server-sent event stream that does not end while the hub
  runs, so every call would last until the request timeout. Its errors are those of ``GET /v1/changes``, which
  is fuzzed, and tests/hub covers the stream.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.live import LiveHub, live_hub

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = int(os.environ.get("SHELFSYNC_ST_MAX_EXAMPLES", "25"))  # per operation, in each generating phase
STATEFUL_EXAMPLES = int(os.environ.get("SHELFSYNC_ST_STATEFUL_EXAMPLES", "60"))  # scenarios through the links
SEED = os.environ.get("SHELFSYNC_ST_SEED", "17")  # fixed in CI so a failure can be replayed; set another to explore
RUN_DEADLINE_S = 200.0
EXCLUDED_PATHS = ("/v1/changes/stream",)  # see the module docstring
TEST_CASES_RE = re.compile(r"^\s*(\d+) generated", re.MULTILINE)
LINKS_RE = re.compile(r"API Links:\s+(\d+) covered")
LINKS_COVERED_MIN = 3

pytestmark = pytest.mark.timeout(480)


def _schemathesis(hub: LiveHub, report_dir: Path, phases: str, max_examples: int) -> tuple[str, int]:
    """One run of Schemathesis against ``hub``: its output, after asserting it found nothing; and its test cases."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": str(REPO),
        "SHELFSYNC_ST_TOKENS": json.dumps(hub.tokens()),
        "SHELFSYNC_ST_AGENT_ID": hub.agent.agent_id,
        "NO_COLOR": "1",
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{hub.url}/v1/openapi.json",
        "--checks", "all",
        "--phases", phases,
        "--max-examples", str(max_examples),
        "--seed", SEED,
        "--workers", "1",
        "--request-timeout", "10",
        "--report", "junit", "--report-dir", str(report_dir),
        *(arg for path in EXCLUDED_PATHS for arg in ("--exclude-path", path)),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=report_dir.parent, env=env, capture_output=True, text=True,
                          timeout=RUN_DEADLINE_S, check=False)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"Schemathesis ({phases}) found failures against the hub:\n{output[-20000:]}"
    counted = TEST_CASES_RE.search(output)
    assert counted is not None, output[-3000:]
    return output, int(counted.group(1))


def test_schemathesis_finds_nothing_against_a_live_hub(tmp_path: Path) -> None:
    with live_hub(tmp_path) as hub:
        started = time.monotonic()
        _, generated = _schemathesis(hub, tmp_path / "report", "examples,coverage,fuzzing", MAX_EXAMPLES)
        output, stateful = _schemathesis(hub, tmp_path / "report-stateful", "stateful", STATEFUL_EXAMPLES)
        elapsed_s = time.monotonic() - started
        print(f"schemathesis: {generated} + {stateful} stateful test cases in {elapsed_s:.1f} s")
        assert generated > 20 * MAX_EXAMPLES
        links = LINKS_RE.search(output)
        assert links is not None and int(links.group(1)) >= LINKS_COVERED_MIN, output[-3000:]
        assert "Traceback" not in hub.log.read_text(errors="replace"), "the hub logged a traceback"
