"""An agent configured with another agent's token, and an outbox bound to another agent id: what the operator
is told (one sentence naming both ids and the command), and ``rebind``: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent import Kind, Movement, Outbox, OutboxOfAnotherAgent
from agent.huberrors import credentials_refused
from tests.faults.helpers import hub_events, outbox_events, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60.0
WAIT_S = 60.0


# --- the outbox -----------------------------------------------------------------------------------------------


async def test_an_outbox_of_another_id_says_how_to_recover_and_rebind_sends_only_what_was_never_acknowledged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
        await outbox.record([Movement("S001", f"SKU-{i}", Kind.SALE, -1, "api:test") for i in range(5)])
        await outbox.mark_acked(3)  # the hub acknowledged seq 1-3 to store-1
        old_epoch = outbox.epoch
    with pytest.raises(OutboxOfAnotherAgent) as err:
        async with Outbox.open(path, agent_id="agent-b", location="S001"):
            pass
    assert str(err.value) == (
        f"the outbox {path} belongs to agent 'store-1', not 'agent-b' as this configuration says; to send its 2"
        " waiting movements as 'agent-b', run `shelfsync-agent rebind` (or set id back to 'store-1')"
    )
    async with Outbox.open(path, agent_id=None, location=None, create=False) as outbox:
        done = await outbox.rebind("agent-b")
        assert (done.previous_agent_id, done.agent_id, done.epoch_base, done.waiting) == ("store-1", "agent-b", 3, 2)
        assert done.changed and done.epoch != old_epoch
        again = await outbox.rebind("agent-b")
        assert not again.changed and again.epoch == done.epoch
    async with Outbox.open(path, agent_id="agent-b", location="S001") as outbox:
        outgoing = await outbox.outgoing(100)
        stats = await outbox.stats()
    assert [(e.agent_id, e.epoch, e.seq) for e in outgoing.events] == [("agent-b", done.epoch, 4), ("agent-b", done.epoch, 5)]
    assert outgoing.epoch_base == 3  # the hub starts agent-b's epoch there: seq 1-3 are not sent again
    assert (stats.agent_id, stats.acked_seq, stats.backlog, stats.sync_state) == ("agent-b", 3, 2, "never")
    assert stats.rebound_from == "store-1" and stats.rebound_ms is not None


def test_a_403_for_another_agents_token_says_so_and_any_other_refusal_calls_the_token_wrong() -> None:
    body = json.dumps({"error": {"code": "forbidden", "message": "m", "credential_agent_id": "agent-7f3a"}}).encode()
    refused, fix = credentials_refused("http://hub/v1/sync", 403, body, "store-042")
    assert refused == (
        "the hub at http://hub/v1/sync says this agent's token belongs to agent 'agent-7f3a', not 'store-042' as"
        ' configured (HTTP 403): set id = "agent-7f3a" in [agent] and run `shelfsync-agent rebind` so the outbox'
        " sends as 'agent-7f3a', or give this agent the token of 'store-042'"
    )
    assert fix == "the id or the token is fixed"
    unknown = json.dumps({"error": {"code": "unauthorized", "message": "unknown token"}}).encode()
    assert credentials_refused("http://hub", 401, unknown, "store-042") == (
        "the hub at http://hub refused this agent's credentials (HTTP 401: unknown token)",
        "the token is fixed",
    )
    assert "refused this agent's credentials" in credentials_refused("http://hub", 403, b"<html>", "store-042")[0]


# --- real processes -----------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT
    )


def issue(hub: HubProcess, agent_id: str, location: str) -> str:
    """``shelfsync-hub agent add --id``: the token of the ready configuration it prints (``init`` first, for a hub
    database that does not exist yet: agent add refuses one)."""
    if not Path(hub.db or "").exists():
        assert cli("-m", "hub", "init", "--db", str(hub.db)).returncode == 0
    done = cli("-m", "hub", "agent", "add", "--db", hub.db, "--location", location, "--id", agent_id, "--hub-url", hub.url)
    assert done.returncode == 0, done.stderr
    return str(tomllib.loads(done.stdout)["agent"]["token"])


def write_config(path: Path, agent_id: str, token: str, hub: HubProcess, *, simulate: int = 0) -> Path:
    sim = f"[simulate]\ncount = {simulate}\nrate_per_s = 0\n" if simulate else ""
    path.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "S042"\ntoken = "{token}"\nhub_url = "{hub.url}"\n'
        f'data_dir = "{path.parent.as_posix()}"\n\n[replicator]\ntick_s = 0.2\nretry_base_s = 0.05\n'
        f"retry_max_s = 0.5\nauth_retry_s = 1.0\n\n{sim}"
    )
    return path


def status(config: Path) -> tuple[int, dict[str, object]]:
    done = cli("-m", "agent", "status", "--config", str(config), "--json")
    return done.returncode, json.loads(done.stdout) if done.stdout else {}


def hub_agents(hub: HubProcess) -> dict[str, str]:
    """Event id → the agent id the hub holds it under (every row: an event held twice shows as a lost key)."""
    import sqlite3

    conn = sqlite3.connect(hub.db)
    try:
        rows = conn.execute("SELECT lower(hex(event_id)), agent_id FROM events").fetchall()
    finally:
        conn.close()
    held: dict[str, str] = {}
    for event_id, agent_id in rows:
        assert event_id not in held, f"event {event_id} is held twice, as {held[event_id]} and {agent_id}"
        held[event_id] = agent_id
    return held


def test_a_wrong_id_is_named_at_every_step_and_rebind_delivers_everything_once(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port())
    try:
        token = issue(hub, "agent-7f3a", "S042")
        hub.start()
        (tmp_path / "store").mkdir()
        config = write_config(tmp_path / "store" / "agent.toml", "store-042", token, hub, simulate=12)
        printed: list[str] = []
        run = AgentProcess(config, tmp_path / "agent.log", printed)
        wait_until("the refusal", lambda: status(config)[0] == 5 and "simulation complete 12" in printed, WAIT_S)
        _code, report = status(config)
        assert report["sync_state"] == "credentials_refused" and report["backlog"] == 12
        assert str(report["last_error"]).startswith(
            f"the hub at {hub.url}/v1/sync says this agent's token belongs to agent 'agent-7f3a', not 'store-042' as"
            ' configured (HTTP 403): set id = "agent-7f3a" in [agent] and run `shelfsync-agent rebind`'
        )
        assert run.stop() == 0
        log = (tmp_path / "agent.log").read_text()
        assert "belongs to agent 'agent-7f3a', not 'store-042'" in log and "refused this agent's credentials" not in log

        write_config(config, "agent-7f3a", token, hub)  # the id fixed, as the error said
        refused = cli("-m", "agent", "status", "--config", str(config))
        outbox = config.parent / "outbox.sqlite3"
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr == (
            f"shelfsync-agent: the outbox {outbox} belongs to agent 'store-042', not 'agent-7f3a' as this"
            " configuration says; to send its 12 waiting movements as 'agent-7f3a', run"
            f" `shelfsync-agent rebind --config {config}` (or set id back to 'store-042')\n"
        )
        assert cli("-m", "agent", "run", "--config", str(config)).returncode == 2  # the same sentence, no start

        rebound = cli("-m", "agent", "rebind", "--config", str(config))
        assert rebound.returncode == 0, rebound.stderr
        assert rebound.stdout.startswith(f"The outbox {outbox} now belongs to agent 'agent-7f3a' instead of 'store-042'")
        run = AgentProcess(config, tmp_path / "agent.log", printed)
        recorded = outbox_events(outbox)
        wanted = {key.replace("-", "") for key in recorded}
        wait_until("delivery as agent-7f3a", lambda: set(hub_agents(hub)) == wanted, WAIT_S)
        assert set(hub_agents(hub).values()) == {"agent-7f3a"} and len(wanted) == 12
        wait_until("a clean status", lambda: status(config)[0] == 0, WAIT_S)
        assert "rebound      from agent store-042" in cli("-m", "agent", "status", "--config", str(config)).stdout
        assert run.stop() == 0
    finally:
        hub.close()


def test_after_a_new_credential_only_what_the_old_one_never_delivered_is_sent_again(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port())
    try:
        old = issue(hub, "store-a", "S042")
        hub.start()
        (tmp_path / "store").mkdir()
        config = write_config(tmp_path / "store" / "agent.toml", "store-a", old, hub, simulate=10)
        outbox = config.parent / "outbox.sqlite3"
        printed: list[str] = []
        run = AgentProcess(config, tmp_path / "agent.log", printed)
        wait_until("the first 10 delivered", lambda: len(hub_events(Path(hub.db))) == 10, WAIT_S)
        wait_until("the mark", lambda: status(config)[1].get("backlog") == 0, WAIT_S)
        assert run.stop() == 0
        write_config(config, "store-a", old, hub)
        for sku in ("SKU-X", "SKU-Y", "SKU-Z"):  # recorded while the store's credential is being replaced
            done = cli("-m", "agent", "record", "--config", str(config), "--sku", sku, "--kind", "receive", "--qty", "4")
            assert done.returncode == 0, done.stderr
        assert cli("-m", "hub", "agent", "revoke", "--db", hub.db, "store-a").returncode == 0
        new = issue(hub, "store-b", "S042")
        write_config(config, "store-b", new, hub)
        refused = cli("-m", "agent", "status", "--config", str(config))
        assert refused.returncode == 2 and "to send its 3 waiting movements as 'store-b'" in refused.stderr
        rebound = cli("-m", "agent", "rebind", "--config", str(config))
        assert rebound.returncode == 0 and "stays counted there" in rebound.stdout and "up to seq 10" in rebound.stdout

        run = AgentProcess(config, tmp_path / "agent.log", printed)
        wanted = {key.replace("-", "") for key in outbox_events(outbox)}
        wait_until("all 13 at the hub", lambda: set(hub_agents(hub)) == wanted, WAIT_S)
        by_agent = hub_agents(hub)
        assert sorted(by_agent.values()).count("store-a") == 10 and sorted(by_agent.values()).count("store-b") == 3
        counts = get_json(f"{hub.url}/v1/locations/S042/counts?limit=1000", new)["counts"]
        assert {row["sku"]: row["on_hand"] for row in counts if row["sku"].startswith("SKU-X")} == {"SKU-X": 4}
        assert run.stop() == 0
    finally:
        hub.close()
