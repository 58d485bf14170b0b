"""Schemathesis, an outside property-based API tester, against a live hub process (tests/api/live.py).

It takes the document the hub serves (GET /v1/openapi.json, saved as it came) and runs all four of its phases
against that hub — examples, coverage (boundary and invalid values of every parameter and body), fuzzing, and
stateful (chains of calls through the document's OpenAPI links: a page's ``next`` into the next call's
``cursor``, a held event's id into its resolution, a channel's name into its divergences …) — with all fourteen
of its checks (``--checks all``): no server error; answers conforming to the documented status codes, content
types, headers and schemas; invalid requests refused and valid ones accepted; required headers enforced;
methods not documented answered 405 with a correct Allow; authentication not ignored; no object reachable with
another's credential; resources created are readable, deleted ones gone. The hub runs on SQLite with a reader,
an agent and an admin credential, a webhook and a Shopify channel (the emulator of tests/channels);
schemathesis_hooks.py calls each operation with a credential of a role it names.

The document is run from its saved copy with ``--url`` rather than from the hub's URL: loaded from a URL,
Schemathesis silently leaves out the operation that serves the document, and GET /v1/openapi.json is an
operation like any other (ETag, If-None-Match, 405 …).

Bounded for CI: ``MAX_EXAMPLES`` per operation and phase, ``STATEFUL_EXAMPLES`` scenarios, one worker, a
deadline per run; both runs take well under a minute on an idle two-core machine. No check is switched off.
What is left out or bent, named here with the reason:

* ``GET /v1/changes/stream`` is not called (``EXCLUDED_PATHS``): a server-sent event stream does not end while
  the hub runs, so every call would last until the request timeout. Its parameters and errors are those of
  ``GET /v1/changes``, which is fuzzed, and tests/hub covers the stream.
* ``wait`` of ``GET /v1/changes`` is capped at a fraction of a second before the call (the hooks): a long-poll
  on an idle hub waits the whole ``wait``, up to 60 s as documented.
* ``POST /v1/channels/{name}/webhooks`` is reached only up to its signature check (``401``, as documented):
  Schemathesis cannot sign a body with the channel's secret. tests/channels covers the signed webhooks.
* The stateful phase leaves out dismissing a refused order and undoing it (schemathesis.toml): each answers
  ``200`` once and ``409`` after, so a scenario Hypothesis replays ends differently, and Schemathesis then ends
  the whole stateful phase early, quietly ("inconsistent data generation"): with seed 3 after 22 of its 150
  scenarios, covering 4 links. The other phases call both routes. The test asserts the stateful phase ran all
  its scenarios, so an operation that does the same is found, not left to the seed.

Links covered: of the document's links and those Schemathesis infers, 10 to 14 are covered with seeds 1, 3, 5,
11, 17, 42, 99 and 123 (``LINKS_COVERED_MIN`` is 9). A link counts as covered when a value it reads is put in
the next call, so a page's ``NextPage`` is covered only when a generated ``limit`` is below the rows there are,
and a link out of an operation whose generated path names nothing (``GET /v1/locations/{location}/counts`` …)
is rarely followed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hub import openapi
from tests.api.live import LiveHub, live_hub

REPO = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = int(os.environ.get("SHELFSYNC_ST_MAX_EXAMPLES", "25"))  # per operation, in each generating phase
STATEFUL_EXAMPLES = int(os.environ.get("SHELFSYNC_ST_STATEFUL_EXAMPLES", "150"))  # scenarios through the links
SEED = os.environ.get("SHELFSYNC_ST_SEED", "17")  # fixed in CI so a failure can be replayed; set another to explore
RUN_DEADLINE_S = 200.0
EXCLUDED_PATHS = ("/v1/changes/stream",)  # see the module docstring
TEST_CASES_RE = re.compile(r"^\s*(\d+) generated", re.MULTILINE)
TESTED_RE = re.compile(r"^\s*Tested:\s+(\d+)", re.MULTILINE)
LINKS_RE = re.compile(r"API Links:\s+(\d+) covered")
SCENARIOS_RE = re.compile(r"Scenarios:\s+(\d+)")
LINKS_COVERED_MIN = 9  # 10 to 14 with the seeds tried (see the module docstring)
CONFIG = Path(__file__).with_name("schemathesis.toml")

pytestmark = pytest.mark.timeout(480)


def _schemathesis(hub: LiveHub, document: Path, report_dir: Path, phases: str, max_examples: int) -> tuple[str, int]:
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
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", str(document),
        "--url", hub.url,
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


def _number(pattern: re.Pattern[str], output: str) -> int:
    found = pattern.search(output)
    assert found is not None, output[-3000:]
    return int(found.group(1))


def test_schemathesis_finds_nothing_against_a_live_hub(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with live_hub(tmp_path) as hub:
        status, _, served = hub.call("GET", openapi.PATH)
        assert status == 200 and served == (REPO / "docs" / "openapi.json").read_bytes()
        document = tmp_path / "openapi.json"
        document.write_bytes(served)
        operations = len(openapi.operations(json.loads(served)))
        started = time.monotonic()
        output, generated = _schemathesis(hub, document, tmp_path / "report", "examples,coverage,fuzzing", MAX_EXAMPLES)
        assert _number(TESTED_RE, output) == operations - len(EXCLUDED_PATHS), "every operation but the stream"
        output, stateful = _schemathesis(hub, document, tmp_path / "report-stateful", "stateful", STATEFUL_EXAMPLES)
        elapsed_s = time.monotonic() - started
        links = _number(LINKS_RE, output)
        scenarios = _number(SCENARIOS_RE, output)
        summary = {"operations": operations, "examples": generated, "stateful_examples": stateful,
                   "stateful_scenarios": scenarios, "links_covered": links,
                   "wall_time_s": round(elapsed_s, 1)}  # fmt: skip
        for name, value in summary.items():
            record_property(f"schemathesis_{name}", value)  # in the JUnit report of CI
        print(f"schemathesis: {json.dumps(summary)}")
        assert generated > 20 * MAX_EXAMPLES
        assert scenarios >= STATEFUL_EXAMPLES, (
            f"the stateful phase ended after {scenarios} of its {STATEFUL_EXAMPLES} scenarios: an operation whose "
            f"answer changes when called again (200, then 409) ends it; see the module docstring\n{output[-3000:]}"
        )
        assert links >= LINKS_COVERED_MIN, output[-3000:]
        assert "Traceback" not in hub.log.read_text(errors="replace"), "the hub logged a traceback"
