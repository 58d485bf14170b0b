"""``shelfsync-hub agent add --id`` hands over a ready agent configuration, and the agent runs on it as it is."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from tests.harness.agent_process import AgentProcess
from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until

SYNC_TIMEOUT_S = 60.0


def credential(out: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("credential: "))


def agents(db: Path) -> str:
    listed = run_hub("agent", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def get_json(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_with_an_id_agent_add_prints_a_configuration_the_agent_reads_as_it_is(tmp_path: Path) -> None:
    db = new_hub_db(tmp_path / "hub.db")
    run = run_hub(
        "agent", "add", "--db", str(db), "--id", "store-017", "--location", "S017", "--location", "S018",
        "--hub-url", "https://hub.example:8470",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = tomllib.loads(run.stdout)
    assert set(doc) == {"agent"} and doc["agent"]["id"] == "store-017" and doc["agent"]["location"] == "S017"
    assert "may also write S018" in run.stdout  # said, in a comment
    config = tmp_path / "agent.toml"
    config.write_text(run.stdout)
    loaded = load_config(config).agent
    assert (loaded.id, loaded.location, loaded.hub_url) == ("store-017", "S017", "https://hub.example:8470")
    assert loaded.token is not None and loaded.token.startswith("ssk1.store-017.")
    assert "store-017  agent  S017,S018" in agents(db)


def test_without_a_hub_url_it_is_the_public_url_else_built_from_host_port_and_tls(tmp_path: Path) -> None:
    db = str(new_hub_db(tmp_path / "hub.db"))
    plain = run_hub(
        "agent", "add", "--db", db, "--id", "a1", "--location", "S1", env=hub_env(SHELFSYNC_HUB_PORT="9443")
    )
    assert tomllib.loads(plain.stdout)["agent"]["hub_url"] == "http://127.0.0.1:9443"
    tls = hub_env(SHELFSYNC_HUB_TLS_CERT="/etc/hub.crt", SHELFSYNC_HUB_TLS_KEY="/etc/hub.key")
    secure = run_hub("agent", "add", "--db", db, "--id", "a2", "--location", "S1", env=tls)
    assert tomllib.loads(secure.stdout)["agent"]["hub_url"] == "https://127.0.0.1:8470"
    public = run_hub(
        "agent", "add", "--db", db, "--id", "a3", "--location", "S1",
        env=hub_env(SHELFSYNC_HUB_PUBLIC_URL="https://hub.example.com"),
    )  # fmt: skip
    assert tomllib.loads(public.stdout)["agent"]["hub_url"] == "https://hub.example.com"


def test_write_makes_a_new_file_only_its_owner_can_read(tmp_path: Path) -> None:
    db = new_hub_db(tmp_path / "hub.db")
    target = tmp_path / "agent.toml"
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked by the hub; the agent checks it when it starts\n")
    old_umask = os.umask(0)  # even a careless umask: the file is 0600
    try:
        run = run_hub("agent", "add", "--db", str(db), "--id", "store-1", "--location", "S1", "--write", str(target),
                      "--hub-url", "http://127.0.0.1:1", "--ca-file", str(ca))  # fmt: skip
    finally:
        os.umask(old_umask)
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "ssk1." not in run.stdout and f"to {target}, mode 0600" in run.stdout  # the token is in the file only
    written = tomllib.loads(target.read_text())["agent"]
    assert written["ca_file"] == str(ca) and written["token"].startswith("ssk1.store-1.")

    again = run_hub("agent", "add", "--db", str(db), "--id", "store-2", "--location", "S2", "--write", str(target))
    assert again.returncode == 2 and "exists already" in again.stderr and "never overwritten" in again.stderr
    assert tomllib.loads(target.read_text())["agent"] == written  # untouched
    nowhere = run_hub("agent", "add", "--db", str(db), "--id", "store-3", "--location", "S3",
                      "--write", str(tmp_path / "no" / "agent.toml"))  # fmt: skip
    assert nowhere.returncode == 2 and "cannot create" in nowhere.stderr
    listed = agents(db)
    assert "store-1" in listed and "store-2" not in listed and "store-3" not in listed  # no credential was made


@pytest.fixture(scope="module")
def taken_and_gone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A hub database with the agent ids "taken" and "gone" (revoked: a revoked id stays taken), made once for
    the module, and its agent list; each test works on a copy."""
    db = new_hub_db(tmp_path_factory.mktemp("taken") / "hub.db")
    for agent_id in ("taken", "gone"):
        assert run_hub("agent", "add", "--db", str(db), "--id", agent_id, "--location", "S1").returncode == 0
    assert run_hub("agent", "revoke", "--db", str(db), "gone").returncode == 0
    listed = agents(db)
    assert "taken" in listed and "gone" in listed
    return db, listed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--id", "store 1", "--location", "S1"), "--id 'store 1' cannot be an agent id"),
        (("--id", "x" * 65, "--location", "S1"), "cannot be an agent id"),
        (("--id", "channel:web", "--location", "S1"), "are the hub's own, for channel orders"),
        (("--id", "hub", "--location", "S1"), "the agent id hub is the hub's own"),
        (("--id", "TAKEN", "--location", "S1"), "differs from the agent id taken only in case"),
        (("--id", "Gone", "--location", "S1"), "differs from the agent id gone only in case"),
        (("--id", "new-1", "--location", "s1"), "the location s1 differs from the location S1 only in case"),
        (("--id", "taken", "--location", "S1"), "a credential with the agent id taken exists already"),
        (("--id", "gone", "--location", "S1"), "a credential with the agent id gone exists already"),
        (("--role", "reader", "--write", "r.toml"), "--write makes an agent's configuration; a reader credential"),
        (("--id", "p0", "--location", "S1", "--port", "0"), "unrecognized arguments"),
    ],
)
def test_a_bad_or_taken_id_is_one_sentence_and_no_credential(
    tmp_path: Path, taken_and_gone: tuple[Path, str], args: tuple[str, ...], expected: str
) -> None:
    db = tmp_path / "hub.db"
    for file in taken_and_gone[0].parent.glob("hub.db*"):  # the database and any WAL beside it
        shutil.copyfile(file, tmp_path / file.name)
    before = taken_and_gone[1]
    run = run_hub("agent", "add", "--db", str(db), *args, cwd=tmp_path)
    assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and agents(db) == before


def test_an_agent_started_on_the_written_file_syncs_with_the_running_hub(tmp_path: Path) -> None:
    """The documented path, end to end: a hub runs; agent add --id … --write; the agent records and runs on
    that file, unchanged; the hub counts what the store recorded."""
    db = tmp_path / "hub.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0")
    new_hub_db(db, env=env)
    reader = credential(run_hub("agent", "add", "--role", "reader", env=env).stdout)
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        store = tmp_path / "store-1"
        store.mkdir()
        config = store / "agent.toml"
        added = run_hub("agent", "add", "--id", "store-1", "--location", "S1", "--hub-url", served.url,
                        "--write", str(config), env=env)  # fmt: skip
        assert added.returncode == 0, added.stderr
        recorded = subprocess.run(
            [sys.executable, "-m", "agent", "record", "--config", str(config), "--sku", "SKU-1", "--kind", "receive",
             "--qty", "5"], capture_output=True, check=False, text=True, timeout=60,
        )  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
        lines: list[str] = []
        agent = AgentProcess(config, tmp_path / "agent.log", lines)
        try:

            def counted() -> bool:
                rows = get_json(f"{served.url}/v1/locations/S1/counts", reader)["counts"]
                return [(r["sku"], r["on_hand"]) for r in rows] == [("SKU-1", 5)]

            wait_until("the hub counting the store's receipt", counted, SYNC_TIMEOUT_S)
            status = {a["agent_id"]: a for a in get_json(f"{served.url}/v1/agents", reader)["agents"]}
            assert status["store-1"]["locations"] == ["S1"] and status["store-1"]["last_sync_ms"] is not None
        finally:
            assert agent.stop() == 0
        assert served.stop() == 0
    token = tomllib.loads(config.read_text())["agent"]["token"]
    assert token not in (tmp_path / "agent.log").read_text() and token not in served.log  # never logged
