"""A real hub process configured with a ``[[channel]]`` table pushes what the channel shows.

The hub (``python -m hub serve --config hub.toml``) reads the channel from its config file and the
token from the environment; a movement sent over HTTP reaches the Square emulator's count.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import wait_until
from tests.harness.commands import run_hub
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port


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


@dataclass(frozen=True)
class SquareHub:
    """A hub process (not started) whose ``[[channel]]`` pushes store S1 to one Square location, and what it names."""

    hub: HubProcess
    url: str
    token: str  # store S1's credential
    variation: str  # SKU-1 at Square
    location_id: str


def square_hub(tmp_path: Path, square: SquareEmulator, hub_extra: str = "", channel_extra: str = "") -> SquareHub:
    """A hub configured by a hub.toml in ``tmp_path`` with one Square channel ``pickup`` (``buffer = 1``), plus
    the ``[hub]`` and ``[[channel]]`` lines ``hub_extra`` and ``channel_extra``."""
    location_id = square.add_location()
    variation = square.add_variation("SKU-1")
    cred = add_credential(tmp_path / "hub.db", "S1")
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ndb = "hub.db"\nport = {port}\n{hub_extra}\n'
        f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
        f'pool = {{ S1 = "{location_id}" }}\nbuffer = 1\n{channel_extra}',
        encoding="utf-8",
    )
    hub = HubProcess(tmp_path / "hub.log", "--config", str(config), env={**os.environ, "SQUARE_TOKEN": square.token})
    return SquareHub(hub, f"http://127.0.0.1:{port}", cred.token, variation, location_id)


async def test_a_configured_hub_pushes_a_movement_to_its_channel(tmp_path: Path, square: SquareEmulator) -> None:
    made = square_hub(tmp_path, square)
    hub, url, token, variation, location_id = made.hub, made.url, made.token, made.variation, made.location_id
    try:
        await asyncio.to_thread(hub.start)  # in a thread: the emulator answers the hub from this loop
        assert hub.url == url
        answer = await asyncio.to_thread(
            _post_events,
            url,
            token,
            [{"id": "delivery-1", "location": "S1", "sku": "SKU-1", "kind": "receive", "qty": 6,
              "occurred_at": "2026-01-01T00:00:00Z"}],
        )
        assert answer["applied"] == 1, answer

        async def shown(expected: int) -> bool:
            return square.quantity(variation, location_id) == expected

        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
        await asyncio.to_thread(
            _post_events,
            url,
            token,
            [{"id": "sale-1", "location": "S1", "sku": "SKU-1", "kind": "sale", "qty": -2,
              "occurred_at": "2026-01-01T00:01:00Z"}],
        )
        await wait_until(lambda: shown(3), "Square shows the sale")
    finally:
        hub.close()
    text = hub.log
    assert square.token not in text
    assert "Traceback" not in text


def test_a_channel_table_with_an_inline_token_is_refused_with_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\ndb = "hub.db"\n\n[[channel]]\nname = "web"\nkind = "square"\ntoken = "sq0atp-secret"\n'
        'pool = { S1 = "L1" }\n',
        encoding="utf-8",
    )
    done = run_hub("serve", "--config", str(config), env=os.environ, timeout_s=60)
    assert done.returncode != 0
    assert "channel" in done.stderr and "sq0atp-secret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)


async def test_a_hub_paused_past_lease_stale_s_keeps_running_its_channel_when_it_resumes(
    tmp_path: Path, square: SquareEmulator
) -> None:
    """A hub paused (SIGSTOP) past ``lease_stale_s``: when it resumed, it took its loops' silence over the pause
    for stuck loops, stopped the channel and started it again only after a backoff. A hub that did not run is not
    a stuck job: it runs the channel on, with the loops it had."""
    made = square_hub(tmp_path, square, hub_extra="lease_stale_s = 10\n", channel_extra="reconcile_s = 10\n")
    hub, url, token, variation, location_id = made.hub, made.url, made.token, made.variation, made.location_id

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    paused = False
    try:
        await asyncio.to_thread(hub.start)
        await asyncio.to_thread(_post_events, url, token, [
            {"id": "delivery-1", "location": "S1", "sku": "SKU-1", "kind": "receive", "qty": 6,
             "occurred_at": "2026-01-01T00:00:00Z"}])  # fmt: skip
        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
        os.kill(hub.pid, signal.SIGSTOP)
        paused = True
        await asyncio.sleep(25.0)  # past lease_stale_s (10 s) beyond the bound its reconciler gave (10 s at most)
        os.kill(hub.pid, signal.SIGCONT)
        paused = False
        await asyncio.to_thread(_post_events, url, token, [
            {"id": "sale-1", "location": "S1", "sku": "SKU-1", "kind": "sale", "qty": -2,
             "occurred_at": "2026-01-01T00:01:00Z"}])  # fmt: skip
        await wait_until(lambda: shown(3), "the resumed hub pushes the sale")
        await asyncio.sleep(2 * 3.0)  # two more turns of its lead loop (LEASE_RETRY_S): what it does after resuming
    finally:
        if paused:
            os.kill(hub.pid, signal.SIGCONT)  # a stopped process would not act on the SIGTERM below
        hub.close()
    text = hub.log
    assert "has been stuck" not in text and "starts pushing it again" not in text, text
    assert "Traceback" not in text


async def test_a_buffer_raised_in_the_config_while_the_hub_was_stopped_reaches_the_channel_at_its_start(
    tmp_path: Path, square: SquareEmulator
) -> None:
    """The retailer stops the hub, raises the channel's buffer from 1 to 3 and starts it again. No count moved, so
    before no level went out: Square went on showing 5 of the 6 on the shelf where the hub would show 3 (until the
    SKU next moved, or a reconciliation due in up to 15 minutes found it)."""
    made = square_hub(tmp_path, square)
    hub, url, token, variation, location_id = made.hub, made.url, made.token, made.variation, made.location_id

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    config = tmp_path / "hub.toml"
    try:
        await asyncio.to_thread(hub.start)
        await asyncio.to_thread(_post_events, url, token, [
            {"id": "delivery-1", "location": "S1", "sku": "SKU-1", "kind": "receive", "qty": 6,
             "occurred_at": "2026-01-01T00:00:00Z"}])  # fmt: skip
        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
        assert await asyncio.to_thread(hub.stop) == 0
        config.write_text(config.read_text(encoding="utf-8").replace("buffer = 1\n", "buffer = 3\n"), encoding="utf-8")
        await asyncio.to_thread(hub.start)
        await wait_until(lambda: shown(3), "Square shows the 6 less the new buffer of 3")
    finally:
        hub.close()
    assert "channel pickup: its buffer changed since it last ran" in hub.log
    assert "Traceback" not in hub.log
