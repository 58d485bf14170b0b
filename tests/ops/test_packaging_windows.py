"""The Windows service recipe (packaging/windows/install-agent-service.ps1) agrees with the agent: the default
configuration place, the program and command, Ctrl+C as the stop, the exit codes not worth a restart."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PureWindowsPath

from agent.cli import EXIT_ALREADY_RUNNING, EXIT_USAGE, STOP_SIGNALS
from agent.config_sources import default_config_path, default_data_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "windows" / "install-agent-service.ps1"


def script() -> str:
    return SCRIPT.read_text(encoding="utf-8")


def code_lines() -> list[str]:
    """The script without its help block and comments."""
    text = re.sub(r"<#.*?#>", "", script(), flags=re.DOTALL)
    return [line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_it_uses_the_agents_default_configuration_and_data_folder() -> None:
    config = default_config_path(platform="win32", environ={"ProgramData": r"C:\ProgramData"})
    assert PureWindowsPath(str(config)).parts[-2:] == ("shelfsync", "agent.toml")
    assert default_data_dir(config) == config.parent  # the outbox lives beside agent.toml
    code = "\n".join(code_lines())
    assert '$Data = Join-Path $env:ProgramData "shelfsync"' in code
    assert '$Config = Join-Path $Data "agent.toml"' in code
    assert '@("AppDirectory", $Data)' in code


def test_it_runs_the_console_script_and_stops_it_with_ctrl_c() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    code = "\n".join(code_lines())
    assert "shelfsync-agent" in scripts and r'$Agent = Join-Path $Prefix "Scripts\shelfsync-agent.exe"' in code
    assert '@("AppParameters", "run")' in code
    assert '"shelfsync[agent]"' in code
    assert '@("AppStopMethodConsole", "30000")' in code and "SIGINT" in STOP_SIGNALS and "SIGBREAK" in STOP_SIGNALS


def test_a_configuration_error_or_a_second_agent_is_not_restarted() -> None:
    code = "\n".join(code_lines())
    assert f"AppExit {EXIT_USAGE} Exit" in code and f"AppExit {EXIT_ALREADY_RUNNING} Exit" in code
    assert "AppExit Default Restart" in code


def test_the_token_file_is_private_to_the_service() -> None:
    code = "\n".join(code_lines())
    assert 'icacls $Config /inheritance:r /grant:r "*S-1-5-32-544:(F)" "*S-1-5-18:(F)" "${Account}:(R)"' in code
    assert '$Account = "NT SERVICE\\$Service"' in code and "sc.exe config $Service obj= $Account" in code


def test_a_python_in_a_users_profile_is_refused_before_the_service_is_made() -> None:
    """The service account cannot read a Python in an administrator's profile (python.org's per-user default)."""
    code = "\n".join(code_lines())
    check = code.index("$venvHome.StartsWith($env:USERPROFILE")
    assert code.index("-m venv $Prefix") < check < code.index("nssm install")
    assert "pyvenv.cfg" in code and "$venvHome.StartsWith($env:LOCALAPPDATA" in code


def test_brackets_and_quotes_are_balanced() -> None:
    """PowerShell is not here to parse it; at least every string, brace and bracket closes."""
    stack: list[str] = []
    pairs = {")": "(", "}": "{", "]": "["}
    for number, line in enumerate(code_lines(), start=1):
        i = 0
        while i < len(line):
            c = line[i]
            if c in "\"'":
                end = i + 1
                while end < len(line) and not (line[end] == c and line[end - 1] != "`"):
                    end += 1
                assert end < len(line), f"line {number}: unclosed {c}"
                i = end
            elif c in "({[":
                stack.append(c)
            elif c in ")}]":
                assert stack and stack.pop() == pairs[c], f"line {number}: unbalanced {c}"
            i += 1
    assert not stack, f"unclosed {stack}"


def test_the_operations_guide_describes_it() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "packaging/windows/install-agent-service.ps1" in guide
