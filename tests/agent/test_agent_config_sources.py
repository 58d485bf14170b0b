"""Where the agent's configuration comes from: the default file per system, ``SHELFSYNC_AGENT_*`` over it, secrets
from a variable or a file; errors name the variable; docs/agent.md lists every variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import ConfigError, load_config
from agent.config_sources import (
    COMMAND_ENVIRONMENT,
    CONFIG_ENV,
    ENVIRONMENT,
    POSIX_DATA_DIR,
    config_source,
    default_config_path,
    default_data_dir,
)

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = '[agent]\nid = "store-1"\nlocation = "S001"\n'
RUN_TIMEOUT_S = 60


def write(tmp_path: Path, text: str = MINIMAL, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFSYNC_AGENT_")}
    return {**env, **variables}


def test_the_default_file_is_per_system() -> None:
    assert default_config_path(platform="linux", environ={}) == Path("/etc/shelfsync/agent.toml")
    assert default_config_path(platform="darwin", environ={}) == Path("/etc/shelfsync/agent.toml")
    windows = default_config_path(platform="win32", environ={"ProgramData": r"D:\Data"})
    assert str(windows) == r"D:\Data\shelfsync\agent.toml"
    assert str(default_config_path(platform="win32", environ={})) == r"C:\ProgramData\shelfsync\agent.toml"


def test_config_option_then_variable_then_default() -> None:
    assert config_source("x.toml", {CONFIG_ENV: "/y.toml"}).path == Path("x.toml")
    assert config_source(None, {CONFIG_ENV: "/y.toml"}) == config_source("/y.toml", {})
    source = config_source(None, {CONFIG_ENV: "  "}, platform="linux")  # set but empty: not set
    assert (source.path, source.named) == (Path("/etc/shelfsync/agent.toml"), False)


def test_data_lives_beside_the_file_except_in_etc_shelfsync(tmp_path: Path) -> None:
    assert default_data_dir(tmp_path / "agent.toml") == tmp_path
    assert default_data_dir(Path("/etc/shelfsync/agent.toml")) == POSIX_DATA_DIR == Path("/var/lib/shelfsync-agent")
    assert default_data_dir(Path("/etc/shelfsync/store-2.toml")) == POSIX_DATA_DIR
    windows = default_config_path(platform="win32", environ={})
    assert default_data_dir(windows) == windows.parent  # %ProgramData%\shelfsync holds both


def test_variables_win_over_the_file_and_paths_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + 'hub_url = "http://file.example:1"\ntoken = "from-file"\ndata_dir = "var"\n')
    monkeypatch.chdir(tmp_path / ".")
    (tmp_path / "elsewhere").mkdir()
    config = load_config(
        path,
        environ={
            "SHELFSYNC_AGENT_ID": "store-9",
            "SHELFSYNC_AGENT_LOCATION": "S009",
            "SHELFSYNC_AGENT_HUB_URL": "https://hub.example:8470/",
            "SHELFSYNC_AGENT_TOKEN": "from-env",
            "SHELFSYNC_AGENT_DATA_DIR": "elsewhere",
            "SHELFSYNC_AGENT_OUTBOX": "",  # set but empty: as if not set
            "SHELFSYNC_HUB_PORT": "1",  # the hub's, not the agent's: ignored here
        },
    )
    a = config.agent
    assert (a.id, a.location, a.hub_url, a.token) == ("store-9", "S009", "https://hub.example:8470", "from-env")
    assert a.data_dir == tmp_path / "elsewhere" and a.outbox == tmp_path / "elsewhere" / "outbox.sqlite3"
    assert load_config(path).agent.token == "from-file"  # no environment given: the file alone


def test_a_token_variable_replaces_the_files_token_file_and_a_token_file_variable_its_token(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-secret-file\n")
    path = write(tmp_path, MINIMAL + 'hub_url = "http://hub:1"\ntoken_file = "missing.token"\n')
    assert load_config(path, environ={"SHELFSYNC_AGENT_TOKEN": "t-env"}).agent.token == "t-env"
    path = write(tmp_path, MINIMAL + 'hub_url = "http://hub:1"\ntoken = "t-file"\n')
    secret = str(tmp_path / "secret")
    assert load_config(path, environ={"SHELFSYNC_AGENT_TOKEN_FILE": secret}).agent.token == "from-secret-file"
    with pytest.raises(ConfigError, match="SHELFSYNC_AGENT_TOKEN and SHELFSYNC_AGENT_TOKEN_FILE are both set"):
        load_config(path, environ={"SHELFSYNC_AGENT_TOKEN": "a", "SHELFSYNC_AGENT_TOKEN_FILE": secret})


def test_errors_name_the_variable_that_set_the_value(tmp_path: Path) -> None:
    path = write(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"SHELFSYNC_AGENT_HUB_URL": "ftp://hub", "SHELFSYNC_AGENT_TOKEN": "t"})
    assert str(err.value).startswith("SHELFSYNC_AGENT_HUB_URL (the environment's [agent] hub_url) must be an http://")
    with pytest.raises(ConfigError, match=r"SHELFSYNC_AGENT_TOKEN_FILE \(the environment's \[agent\] token_file\) .* cannot be read"):
        load_config(path, environ={"SHELFSYNC_AGENT_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"unknown environment variable SHELFSYNC_AGENT_TOKN; the agent's are .*SHELFSYNC_AGENT_TOKEN,"):
        load_config(path, environ={"SHELFSYNC_AGENT_TOKN": "typo"})
    with pytest.raises(ConfigError, match=r"\[agent\] location is required \(or set SHELFSYNC_AGENT_LOCATION\)"):
        load_config(write(tmp_path, '[agent]\nid = "store-1"\n'))


def test_a_named_file_must_exist_but_the_environment_alone_may_replace_the_default_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"the configuration file {re.escape(str(missing))} does not exist"):
        load_config(missing, environ={"SHELFSYNC_AGENT_ID": "store-1", "SHELFSYNC_AGENT_LOCATION": "S001"})
    with pytest.raises(ConfigError, match=f"the configuration file {re.escape(str(missing))} does not exist"):
        load_config(None, environ={CONFIG_ENV: str(missing), "SHELFSYNC_AGENT_ID": "store-1"})
    if default_config_path().exists():
        pytest.skip(f"{default_config_path()} exists on this machine")  # never the case in CI
    with pytest.raises(ConfigError, match="there is no configuration file at .*, this system's default; write it"):
        load_config(None, environ={})
    config = load_config(
        None,
        environ={
            "SHELFSYNC_AGENT_ID": "store-1",
            "SHELFSYNC_AGENT_LOCATION": "S001",
            "SHELFSYNC_AGENT_DATA_DIR": str(tmp_path),
        },
    )
    assert (config.agent.id, config.agent.outbox) == ("store-1", tmp_path / "outbox.sqlite3")
    assert config.path == default_config_path().absolute()


def test_every_variable_has_a_row_in_the_docs_table() -> None:
    text = (ROOT / "docs" / "agent.md").read_text(encoding="utf-8")
    table = text[text.index("\n### Environment\n") : text.index("\n### `[agent]`\n")]
    documented = set(re.findall(r"^\| `(SHELFSYNC_AGENT_\w+)` \|", table, re.MULTILINE))
    assert documented == set(ENVIRONMENT) | set(COMMAND_ENVIRONMENT)
    for name, key in ENVIRONMENT.items():
        assert re.search(rf"^\| `{name}` \| `\[agent\] {key}` \|", table, re.MULTILINE), name


def run_agent(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={**env, "PYTHONPATH": str(ROOT)}, cwd=cwd, capture_output=True, check=False, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip


def test_commands_need_no_config_option(tmp_path: Path) -> None:
    """``record`` and ``status`` find the file through SHELFSYNC_AGENT_CONFIG, take the id from the environment."""
    path = write(tmp_path, '[agent]\nlocation = "S001"\ndata_dir = "data"\n')
    env = clean_env(SHELFSYNC_AGENT_CONFIG=str(path), SHELFSYNC_AGENT_ID="store-7", SHELFSYNC_AGENT_LOG_LEVEL="error")
    done = run_agent("record", "--sku", "SKU-1", "--kind", "sale", "--qty", "-1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = run_agent("status", env=env, cwd=tmp_path)
    assert status.returncode == 3, status.stderr  # no agent runs on this outbox; everything else answered
    assert "agent        store-7 at S001" in status.stdout and "backlog      1 events waiting" in status.stdout
    assert (tmp_path / "data" / "outbox.sqlite3").exists()
    bad = run_agent("status", env={**env, "SHELFSYNC_AGENT_LOG_LEVEL": "loud"}, cwd=tmp_path)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "shelfsync-agent: SHELFSYNC_AGENT_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'\n"
    typo = run_agent("status", env={**env, "SHELFSYNC_AGENT_HUBURL": "http://x"}, cwd=tmp_path)
    assert typo.returncode == 2 and "unknown environment variable SHELFSYNC_AGENT_HUBURL" in typo.stderr


@pytest.mark.parametrize("token", ["t0k3n\nsecond-line", "t0k3n with-a-space", "t0k3n\x1b"])
def test_a_token_that_is_not_the_credential_alone_is_refused_without_showing_it(tmp_path: Path, token: str) -> None:
    # it goes into every request's Authorization header, which cannot hold these: refused at start, not per request
    path = write(tmp_path, MINIMAL + 'hub_url = "http://hub:1"\n')
    with pytest.raises(ConfigError, match=r"SHELFSYNC_AGENT_TOKEN .* must hold the credential alone on one line") as err:
        load_config(path, environ={"SHELFSYNC_AGENT_TOKEN": token})
    assert "t0k3n" not in str(err.value)
    secret = tmp_path / "agent.token"
    secret.write_text(token + "\n")
    with pytest.raises(ConfigError, match=r"token_file\) .* must hold the credential alone on one line") as err:
        load_config(path, environ={"SHELFSYNC_AGENT_TOKEN_FILE": str(secret)})
    assert "t0k3n" not in str(err.value)
