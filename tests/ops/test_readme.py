"""The README as a new user meets it on a fresh clone: its first lines are the two commands, it lists what the
machine needs, every command it shows is one the commands take, no link leaves the repository; and its test
command sets up what the tests need by itself, a second time without installing anything."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from hub.cli import build_parser as hub_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETUP_TIMEOUT_S = 240.0
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
SH_BLOCK_RE = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_first_lines_are_the_two_commands_and_what_the_machine_needs() -> None:
    commands, needs, *_ = readme().split("\n\n", 2)  # the two commands, then the paragraph after them
    lines = commands.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("#")[0].split() == ["make", "demo"]
    assert lines[1].split("#")[0].split() == ["make", "test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    for package in ("make", "python3", "python3-venv", "git"):  # what a fresh Debian lacks before `make test`
        assert re.search(rf"\b{re.escape(package)}\b", needs), package
    assert "root" in needs and "sudo" in needs


def test_make_test_sets_up_the_services_and_ci_only_calls_it() -> None:
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert recipe is not None
    steps = [line.strip() for line in recipe.group(1).splitlines()]
    assert steps[0] == "bash .ci/test-services"
    run, options = steps[-1].split(" -m pytest -q")
    assert run == "$(PY)" and "-n logical" in options  # every test (no path, no selection), a worker per core
    assert not {"-k", "-m", "--deselect", "--ignore", "-x"} & set(options.split()), options
    assert all(word.startswith("-") or word.isalnum() for word in options.split()), options
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test" and not any("pytest" in line or "apt" in line for line in ci)
    services = (ROOT / ".ci" / "test-services").read_text(encoding="utf-8")
    for tool in ("chromium", "pg_lsclusters", "promtool", "systemd-analyze"):  # each installed only when missing
        assert f"if ! command -v {tool} " in services, tool
    assert services.rstrip().endswith("bash .ci/start-postgres")


def test_a_second_set_up_installs_nothing_and_leaves_postgresql_ready() -> None:
    """What `make test` runs before the tests, twice: the second run finds everything there."""
    for _ in range(2):
        done = subprocess.run(
            ["bash", ".ci/test-services"], cwd=ROOT, capture_output=True, check=False, text=True, timeout=SETUP_TIMEOUT_S
        )
        assert done.returncode == 0, done.stderr
    assert "installing" not in done.stdout + done.stderr, done.stdout
    assert "PostgreSQL 15 ready on 127.0.0.1:5432" in done.stdout


def test_no_link_leaves_the_repository() -> None:
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK_RE.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a web address or a place in the same page
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert ROOT in path.parents and path.exists(), f"{doc.name}: {target}"
    assert (ROOT / "docs" / "design.md").exists() and (ROOT / "LICENSE").exists()


def readme_commands() -> list[list[str]]:
    """Every shelfsync-hub / shelfsync-agent command line of the README's sh blocks (comments dropped)."""
    found = []
    for block in SH_BLOCK_RE.findall(readme()):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("shelfsync-hub", "shelfsync-agent"):
                found.append(words)
    return found


@pytest.mark.parametrize("words", readme_commands(), ids=lambda words: " ".join(words[:3]))
def test_every_command_the_readme_shows_is_one_the_command_takes(words: list[str]) -> None:
    parser = hub_parser() if words[0] == "shelfsync-hub" else agent_parser()
    try:
        parsed = parser.parse_args(words[1:])
    except SystemExit as err:
        raise AssertionError(f"{shlex.join(words)} is refused by {words[0]}") from err
    if words[:3] == ["shelfsync-hub", "agent", "add"]:
        assert parsed.id and parsed.location, "agent add with the id the store's configuration keeps"


def test_the_readme_shows_the_path_from_hub_to_store() -> None:
    shown = [" ".join(words[:3]) for words in readme_commands()]
    assert shown == [
        "shelfsync-hub serve --db", "shelfsync-hub agent add", "shelfsync-agent run", "shelfsync-agent status"
    ]  # fmt: skip
