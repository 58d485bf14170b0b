"""The systemd units (packaging/systemd/): ``systemd-analyze verify`` accepts them, they are hardened, and they
agree with the code (console scripts, the agent's default data directory, exit codes not worth a restart)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.cli import EXIT_ALREADY_RUNNING, EXIT_USAGE
from agent.config_sources import POSIX_CONFIG, default_data_dir
from hub.config import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
INSTALL_PREFIX = "/opt/shelfsync/bin/"  # where the units expect the console scripts (docs/operations.md)
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"  # installed by .ci/test-services when missing
COMMAND_TIMEOUT_S = 120.0
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
    "Restart": "on-failure",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS / name, encoding="utf-8")
    return parser


def tool(name: str) -> str:
    found = shutil.which(name) or (SYSTEMD_ANALYZE if name == "systemd-analyze" else None)
    assert found and Path(found).exists(), f"{name} is missing: `make test` installs it (.ci/test-services)"
    return found


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """Verified as written, but for the install prefix: systemd checks that ExecStart exists, so it points
    at this checkout's own console scripts. The hub's socket unit is verified with the service it starts."""
    scripts = Path(sys.executable).parent
    for name in ("shelfsync-agent.service", "shelfsync-hub.service"):
        text = (UNITS / name).read_text(encoding="utf-8")
        assert text.count(f"ExecStart={INSTALL_PREFIX}") == 1
        (tmp_path / name).write_text(text.replace(f"ExecStart={INSTALL_PREFIX}", f"ExecStart={scripts}/"), encoding="utf-8")
    shutil.copy(UNITS / "shelfsync-hub.socket", tmp_path)
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", "shelfsync-agent.service", "shelfsync-hub.service",
         "shelfsync-hub.socket"],
        cwd=tmp_path, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_unit_with_a_mistake_is_refused(tmp_path: Path) -> None:
    """Control: verify does read the file (an unknown key and a missing program are reported)."""
    text = (UNITS / "shelfsync-agent.service").read_text(encoding="utf-8")
    (tmp_path / "shelfsync-agent.service").write_text(text.replace("ProtectSystem=", "ProtectSystm="))
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", "shelfsync-agent.service"],
        cwd=tmp_path, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    assert "ProtectSystm" in done.stderr and f"{INSTALL_PREFIX}shelfsync-agent is not executable" in done.stderr


@pytest.mark.parametrize("role", ["agent", "hub"])
def test_the_units_are_hardened_and_run_the_console_script(role: str) -> None:
    service = unit(f"shelfsync-{role}.service")["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"shelfsync-{role}.service: {key}={service.get(key)}"
    assert service["User"] == service["Group"] == "shelfsync"
    assert service["StateDirectory"] == f"shelfsync-{role}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    program, command = service["ExecStart"].split()
    assert program == f"{INSTALL_PREFIX}shelfsync-{role}" and f"shelfsync-{role}" in scripts
    assert command == {"agent": "run", "hub": "serve"}[role]
    assert str(EXIT_USAGE) in service["RestartPreventExitStatus"].split()


def test_the_hub_socket_unit_listens_on_the_hubs_port_for_the_hub_to_accept() -> None:
    """One listening socket on the port of the documented hub.toml, passed to shelfsync-hub.service (the same
    name), which accepts its connections itself (hub/activation.py)."""
    socket_unit = unit("shelfsync-hub.socket")
    assert socket_unit["Socket"]["ListenStream"] == f"0.0.0.0:{DEFAULT_PORT}"
    assert socket_unit["Socket"]["Accept"] == "no"
    assert socket_unit["Install"]["WantedBy"] == "sockets.target"
    assert "Service" not in socket_unit and "Sockets" not in unit("shelfsync-hub.service")["Service"]


def test_the_agent_unit_keeps_the_outbox_where_the_agent_looks_for_it() -> None:
    service = unit("shelfsync-agent.service")["Service"]
    assert default_data_dir(POSIX_CONFIG) == Path("/var/lib") / service["StateDirectory"]
    assert set(service["RestartPreventExitStatus"].split()) == {str(EXIT_USAGE), str(EXIT_ALREADY_RUNNING)}
    assert "dialout" in service["SupplementaryGroups"].split()  # serial scanners
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads token and hub address


def test_the_sysusers_file_creates_the_user_the_units_run_as(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    done = subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(UNITS / "shelfsync.sysusers")],
        capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    assert users["shelfsync"][6] == "/usr/sbin/nologin"
