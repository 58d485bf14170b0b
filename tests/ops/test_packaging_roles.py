"""Extras per role: ``shelfsync[agent]`` runs a store agent without the hub's packages (asyncpg, aiosqlite …),
``shelfsync[hub]`` serves without the agent's (pyserial, zeroconf …) — checked by what the code imports and
by running each role, against the other, in a process where the other role's packages cannot be imported."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.faults.helpers import hub_events, outbox_events, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port
from tests.ops.packaging_blockers import ROLES, foreign_modules, role_requirements

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"protocol", "hardware", "agent", "hub", "tests", "bench"}
# The extras a role's code may import from (the hub's PostgreSQL and zeroconf parts are extras of their own,
# which the hub runs without: tested below).
ROLE_CODE = {"agent": (("agent", "hardware", "protocol"), ("agent",)), "hub": (("hub", "protocol"), ("hub", "postgres", "discovery"))}
COMMAND_TIMEOUT_S = 60.0
WAIT_S = 60.0
EVENTS = 30


def third_party_imports(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it, in these first-party packages."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("role", ROLE_CODE)
def test_every_package_a_role_imports_is_a_requirement_of_that_role(role: str) -> None:
    packages, extras = ROLE_CODE[role]
    declared = {re.sub(r"[-_.]+", "-", r.name).lower() for r in role_requirements(*extras)}
    provided = importlib.metadata.packages_distributions()
    for module, files in sorted(third_party_imports(packages).items()):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in provided.get(module, [])}
        assert dists & declared, f"{module} (imported by {min(files)}) is not a requirement of shelfsync[{role}]"


def test_the_extras_are_as_documented() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert set(ROLES) | {"test", "dev"} <= set(project["optional-dependencies"])
    names = {role: {re.sub(r"[-_.]+", "-", r.name).lower() for r in role_requirements(role)} for role in ROLES}
    assert "asyncpg" not in names["agent"] | names["hub"] and "asyncpg" in names["postgres"]
    assert {"pyserial", "zeroconf"} & names["hub"] == set() and {"aiosqlite", "prometheus-client"} & names["agent"] == set()
    assert names["hub"] <= names["postgres"]  # a PostgreSQL hub is a hub
    tests = {re.sub(r"[-_.]+", "-", r.name).lower() for r in role_requirements("test")}
    assert names["agent"] | names["postgres"] | names["discovery"] <= tests  # make test installs every part
    assert {"asyncpg", "aiosqlite"} <= foreign_modules("agent")
    assert {"serial", "zeroconf", "asyncpg"} <= foreign_modules("hub")


def without(*modules: str) -> list[str]:
    return [sys.executable, "-m", "tests.ops.packaging_blockers", "--block", ",".join(sorted(modules))]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHELFSYNC_AGENT_", "SHELFSYNC_HUB_"))}
    return {**env, "SHELFSYNC_HUB_CONFIG": "", "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT, env={**clean_env(), **env}
    )


def issue(db: str, agent_id: str, url: str) -> str:
    if not Path(db).exists():  # agent add works on an existing hub database only; init makes a new one
        assert run([sys.executable, "-m", "hub", "init", "--db", db]).returncode == 0
    done = run([sys.executable, "-m", "hub", "agent", "add", "--db", db, "--location", "S001", "--id", agent_id, "--hub-url", url])
    assert done.returncode == 0, done.stderr
    return str(tomllib.loads(done.stdout)["agent"]["token"])


def agent_config(path: Path, agent_id: str, token: str, url: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "S001"\ntoken = "{token}"\nhub_url = "{url}"\n\n'
        f"[replicator]\ntick_s = 0.2\nretry_base_s = 0.05\nretry_max_s = 0.5\n\n"
        f"[simulate]\ncount = {EVENTS}\nrate_per_s = 0\n"
    )
    return path


def all_at_the_hub(outbox: Path, hub_db: Path) -> bool:
    """The store's EVENTS movements are in its outbox and every one of them at the hub."""
    try:
        return (
            outbox.exists() and len(outbox_events(outbox)) == EVENTS
            and set(hub_events(hub_db)) == set(outbox_events(outbox))
        )
    except sqlite3.OperationalError:  # the agent has created the file, not yet its tables
        return False


def test_the_agent_runs_without_the_hubs_packages(tmp_path: Path) -> None:
    blocked = foreign_modules("agent")
    assert "asyncpg" in blocked
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port())
    try:
        token = issue(hub.db, "store-1", hub.url)
        hub.start()
        config = agent_config(tmp_path / "store" / "agent.toml", "store-1", token, hub.url)
        imports = run([*without(*blocked), "--import-all", "protocol,hardware,agent", "-m", "agent", "--version"])
        assert imports.returncode == 0, imports.stderr
        agent = AgentProcess(config, tmp_path / "agent.log", env=clean_env(), cwd=ROOT, python=without(*blocked))
        try:
            outbox = config.parent / "outbox.sqlite3"
            wait_until("the simulated movements at the hub", lambda: all_at_the_hub(outbox, Path(hub.db)), WAIT_S)
            status = run([*without(*blocked), "-m", "agent", "status", "--config", str(config)])
            assert status.returncode == 0, status.stdout + status.stderr
            assert agent.stop() == 0
        finally:
            agent.kill()
    finally:
        hub.close()


def test_the_hub_serves_without_the_agents_packages_and_says_what_advertise_needs(tmp_path: Path) -> None:
    blocked = foreign_modules("hub")
    assert {"serial", "zeroconf", "asyncpg"} <= blocked
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = str(tmp_path / "hub.db")
    assert run([*without(*blocked), "-m", "hub", "--version"]).stdout.startswith("shelfsync-hub ")
    token = issue(db, "store-1", url)
    hub = HubProcess(
        tmp_path / "hub.log", db=db, port=port, env=clean_env(), cwd=ROOT, python=without(*blocked),
        start_timeout_s=WAIT_S,
    )  # fmt: skip
    try:
        hub.start()
        config = agent_config(tmp_path / "store" / "agent.toml", "store-1", token, url)
        agent = AgentProcess(config, tmp_path / "agent.log", env=clean_env(), cwd=ROOT)
        try:
            outbox = config.parent / "outbox.sqlite3"
            wait_until(
                "the agent's movements at the hub without pyserial and zeroconf",
                lambda: all_at_the_hub(outbox, Path(db)),
                WAIT_S,
            )
        finally:
            agent.stop()
        assert hub.stop() == 0
    finally:
        hub.close()
    advertise = run(
        [*without(*blocked), "-m", "hub", "serve", "--db", db, "--host", "127.0.0.1", "--port", "0"],
        SHELFSYNC_HUB_ADVERTISE="true",
    )
    assert advertise.returncode == 2
    assert "advertise needs the zeroconf package, which cannot be loaded" in advertise.stderr
    assert "Traceback" not in advertise.stderr

