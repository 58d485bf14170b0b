"""A real hub process configured with a ``[[channel]]`` table pushes what the channel shows.

The hub (``python -m hub serve --config hub.toml``) reads the channel from its config file and the
token from the environment; a movement sent over HTTP reaches the Square emulator's count.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.channels.conftest import wait_until
from tests.channels.emulators.square import SquareEmulator
from tests.e2e.procs import add_credential, free_port

HUB_START_S = 20.0


def _post_events(url: str, token: str, events: list[dict[str, object]]) -> dict[str, object]:
    req = urllib.request.Request(
        f"{url}/v1/events",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, object] = json.loads(resp.read())
        return answer


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


async def test_a_configured_hub_pushes_a_movement_to_its_channel(tmp_path: Path, square: SquareEmulator) -> None:
    location_id = square.add_location()
    variation = square.add_variation("SKU-1")
    db = tmp_path / "hub.db"
    cred = add_credential(db, "--location", "S1")
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ndb = "hub.db"\nport = {port}\n\n'
        f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
        f'pool = {{ S1 = "{location_id}" }}\nbuffer = 1\n',
        encoding="utf-8",
    )
    log = (tmp_path / "hub.log").open("wb")
    env = {**os.environ, "SQUARE_TOKEN": square.token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: asyncio.to_thread(_healthy, url), "the hub answers", HUB_START_S)
        answer = await asyncio.to_thread(
            _post_events,
            url,
            cred.token,
            [{"id": "delivery-1", "location": "S1", "sku": "SKU-1", "kind": "receive", "qty": 6,
              "occurred_at": "2026-01-01T00:00:00Z"}],  # fmt: skip
        )
        assert answer["applied"] == 1, answer

        async def shown(expected: int) -> bool:
            return square.quantity(variation, location_id) == expected

        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
        await asyncio.to_thread(
            _post_events,
            url,
            cred.token,
            [{"id": "sale-1", "location": "S1", "sku": "SKU-1", "kind": "sale", "qty": -2,
              "occurred_at": "2026-01-01T00:01:00Z"}],  # fmt: skip
        )
        await wait_until(lambda: shown(3), "Square shows the sale")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    text = (tmp_path / "hub.log").read_text(encoding="utf-8", errors="replace")
    assert square.token not in text
    assert "Traceback" not in text


def test_a_channel_table_with_an_inline_token_is_refused_with_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\ndb = "hub.db"\n\n[[channel]]\nname = "web"\nkind = "square"\ntoken = "sq0atp-secret"\n'
        'pool = { S1 = "L1" }\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "channel" in done.stderr and "sq0atp-secret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
