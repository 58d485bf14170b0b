"""docs/api-client.md as a user follows it: generate a client from docs/openapi.json with openapi-python-client
(run as ``python -m openapi_python_client`` from the test's own environment, into tmp_path: nothing installed),
then run the page's example against a live hub process — it prints a location's counts and follows the change
feed, and a movement recorded while it waits shows up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.live import live_hub

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "api-client.md"
FENCE_RE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
GENERATE_TIMEOUT_S = 120.0
EXAMPLE_TIMEOUT_S = 60.0
POLL_S = 0.05

pytestmark = pytest.mark.timeout(240)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE_RE.findall(GUIDE.read_text()) if lang == language]


def test_a_generated_client_reads_counts_and_follows_the_change_feed(tmp_path: Path) -> None:
    config_block = next(b for b in blocks("sh") if "client-config.json" in b)
    config = re.search(r"<<'EOF'\n(.*?)\nEOF", config_block, re.DOTALL)
    assert config is not None
    (tmp_path / "client-config.json").write_text(config.group(1))
    generated = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(REPO / "docs" / "openapi.json"),
         "--config", str(tmp_path / "client-config.json"), "--meta", "none", "--output-path", "shelfsync_hub_client"],
        cwd=tmp_path, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "will not be generated" not in generated.stdout, generated.stdout
    assert (tmp_path / "shelfsync_hub_client" / "api" / "counts" / "get_location_counts.py").exists()
    example = next(b for b in blocks("python") if "follow_changes" in b)
    (tmp_path / "example.py").write_text(example)

    with live_hub(tmp_path) as hub:
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        out_path = tmp_path / "example.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "example.py", hub.url, hub.reader.token, "S001", "2"],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + EXAMPLE_TIMEOUT_S
            while "change " not in out_path.read_text() and proc.poll() is None:  # the first page: the seeded ones
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(POLL_S)
            hub.json("POST", "/v1/events", hub.agent.token, {"events": [
                {"id": "walk-in-sale", "location": "S001", "sku": "SKU-9", "kind": "receive", "qty": 7,
                 "occurred_at": int(time.time() * 1000)}]})  # fmt: skip
            assert proc.wait(timeout=EXAMPLE_TIMEOUT_S) == 0, out_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        lines = out_path.read_text().splitlines()
    assert "SKU-1: on hand 10, available 10" in lines, lines  # counted 12, sold 2
    assert any(line.startswith("SKU-2: on hand 5, available 4") for line in lines), lines  # safety stock 1
    changes = [line for line in lines if line.startswith("change ")]
    assert changes and changes[-1].endswith("SKU-9 on hand 7, available 7"), lines
    ids = [int(line.split()[1].rstrip(":")) for line in changes]
    assert ids == sorted(set(ids)), "each change once, in order"
    assert json.loads((REPO / "docs" / "openapi.json").read_text())["info"]["title"]
