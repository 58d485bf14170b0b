"""``--version`` on both commands (module and console script), from the package metadata; the LICENSE."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT)
    installed = importlib.metadata.version("shelfsync")
    prog = "shelfsync-agent" if "agent" in " ".join(argv[1:3]) or argv[0].endswith("agent") else "shelfsync-hub"
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{prog} {installed}\n", "")
    assert installed == project()["version"]  # make reinstalls when pyproject.toml changes


def test_the_console_scripts_are_the_two_commands() -> None:
    assert project()["scripts"] == {"shelfsync-hub": "hub.cli:main", "shelfsync-agent": "agent.cli:main"}


def test_the_license_is_apache_2_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright ") and "the shelfsync authors" in text.splitlines()[0]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    meta = project()
    assert (meta["license"], meta["license-files"]) == ("Apache-2.0", ["LICENSE"])
