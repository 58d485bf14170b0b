"""``--version`` on both commands (module and console script), from the package metadata; the LICENSE."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness.commands import without_modules

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60.0


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "agent", "--version"],
        [sys.executable, "-m", "hub", "--version"],
        [str(Path(sys.executable).with_name("shelfsync-agent")), "--version"],
        [str(Path(sys.executable).with_name("shelfsync-hub")), "--version"],
    ],
    ids=["python -m agent", "python -m hub", "shelfsync-agent", "shelfsync-hub"],
)
def test_version_comes_from_the_package_metadata(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT)
    installed = importlib.metadata.version("shelfsync")
    prog = "shelfsync-agent" if "agent" in " ".join(argv[1:3]) or argv[0].endswith("agent") else "shelfsync-hub"
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{prog} {installed}\n", "")
    assert installed == project()["version"]  # make reinstalls when pyproject.toml changes


def test_the_console_scripts_are_the_two_commands() -> None:
    # entry.py, like python -m, answers --version before importing what an install without the extra lacks
    assert project()["scripts"] == {"shelfsync-hub": "hub.entry:main", "shelfsync-agent": "agent.entry:main"}
    for package in ("hub", "agent"):
        assert f"from {package}.entry import main" in (ROOT / package / "__main__.py").read_text(encoding="utf-8")


HUB_EXTRA = ["aiosqlite", "prometheus_client", "aiohttp_sse", "uvloop", "filelock"]
AGENT_EXTRA = ["serial", "serial_asyncio_fast", "zeroconf", "ifaddr", "biip", "tqdm", "watchfiles", "filelock"]


@pytest.mark.parametrize(
    ("package", "blocked"),
    [("agent", AGENT_EXTRA), ("hub", HUB_EXTRA)],
    ids=["shelfsync-agent on a hub-only install", "shelfsync-hub on an agent-only install"],
)
def test_version_works_without_the_command_s_extra(package: str, blocked: list[str]) -> None:
    for flag in ("--version", "--vers"):  # argparse takes a prefix too
        argv = without_modules(blocked, package, flag)
        done = subprocess.run(argv, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT)
        expected = f"shelfsync-{package} {importlib.metadata.version('shelfsync')}\n"
        assert (done.returncode, done.stdout, done.stderr) == (0, expected, "")


@pytest.mark.parametrize(
    ("package", "blocked", "args", "missing"),
    [
        ("agent", AGENT_EXTRA, ["status"], "shelfsync-agent: this command needs the "),
        ("hub", HUB_EXTRA, ["agent", "list"], "shelfsync-hub: this command needs the "),
    ],
)
def test_a_command_without_its_extra_is_one_sentence_naming_it(
    tmp_path: Path, package: str, blocked: list[str], args: list[str], missing: str
) -> None:
    argv = without_modules(blocked, package, *args)
    done = subprocess.run(argv, capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=tmp_path)
    (line,) = done.stderr.splitlines()
    assert (done.returncode, done.stdout) == (2, "")
    assert line.startswith(missing) and line.endswith(f", which is not installed; install shelfsync[{package}]")


def test_the_license_is_apache_2_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright ") and "the shelfsync authors" in text.splitlines()[0]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    meta = project()
    assert (meta["license"], meta["license-files"]) == ("Apache-2.0", ["LICENSE"])
