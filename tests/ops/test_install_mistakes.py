"""Mistakes of a store setting the agent up by hand, run as it runs them: ``python -m agent …`` and ``python -m hub …``
processes, from another working directory, on files with spaces and non-ASCII characters in their paths.

A configuration written on Windows and copied to a Linux store PC, a path with backslashes in a "double-quoted"
TOML string, a token pasted with its quotes, a data folder deeper than SQLite opens: each is one sentence naming
the key and what to write instead, exit status 2 (or 1 for the outbox), and nothing made on disk.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from pathlib import Path

import pytest

from tests.harness.commands import hub_env, new_hub_db, run_agent, run_hub

TOKEN = "ssk1.store-1.4Bcd7b259Y4N-eV0uyFsnWd50CkulcH4mv1_I7qz1kQ"


def agent_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFSYNC_AGENT_")}
    return {**env, **variables}


def folder(tmp_path: Path) -> Path:
    """A store's folder as an operator names it: spaces and non-ASCII letters."""
    made = tmp_path / "Filiale München" / "shelf sync"
    made.mkdir(parents=True)
    return made


def config(where: Path, extra: str = "", *, token: str = TOKEN) -> Path:
    path = where / "agent ü.toml"
    path.write_text(
        f'[agent]\nid = "store-1"\nlocation = "S001"\nhub_url = "http://127.0.0.1:9"\ntoken = {token}\n{extra}',
        encoding="utf-8",
    )
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("data_dir = 'C:\\ProgramData\\shelfsync'", "data_dir"),
        ("outbox = 'D:/shelfsync/outbox.sqlite3'", "outbox"),
        ("token_file = '\\\\fileserver\\shelfsync\\token.txt'", "token_file"),
        ("[pos]\nwatch_dir = 'C:\\POS\\exports'", "watch_dir"),
    ],
    ids=["drive and backslashes", "drive and slashes", "UNC share", "the POS export folder"],
)
def test_a_windows_path_on_a_posix_store_pc_is_refused_and_nothing_is_made(tmp_path: Path, line: str, key: str) -> None:
    where = folder(tmp_path)
    path = config(where, line + "\n", token='""' if key == "token_file" else f'"{TOKEN}"')
    if key == "token_file":
        path.write_text(path.read_text(encoding="utf-8").replace('token = ""\n', ""), encoding="utf-8")
    before = listing(tmp_path)
    done = run_agent("status", "--config", str(path), env=agent_env(), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert f"] {key} is a Windows path" in sentence and "Traceback" not in sentence
    assert listing(tmp_path) == before


def test_a_windows_path_in_the_environment_is_refused_naming_the_variable(tmp_path: Path) -> None:
    where = folder(tmp_path)
    path = config(where, token=f'"{TOKEN}"')
    env = agent_env(SHELFSYNC_AGENT_DATA_DIR="C:\\ProgramData\\shelfsync")
    before = listing(tmp_path)
    done = run_agent("status", "--config", str(path), env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert sentence.startswith("shelfsync-agent: SHELFSYNC_AGENT_DATA_DIR ") and "is a Windows path" in sentence
    assert listing(tmp_path) == before


def test_a_backslash_escape_in_a_double_quoted_path_is_named_with_the_way_to_write_it(tmp_path: Path) -> None:
    # "\n", "\t" and "\b" are TOML escapes: the file parses, and the folder's name holds a line break and a tab
    where = folder(tmp_path)
    path = config(where, 'data_dir = "stores\\new\\today"\n', token=f'"{TOKEN}"')
    before = listing(tmp_path)
    done = run_agent("record", "--config", str(path), "--sku", "A", "--kind", "receive", "--qty", "1",
                     env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "[agent] data_dir " in sentence and "control character" in sentence and "'single quotes'" in sentence
    assert listing(tmp_path) == before


def test_a_backslash_toml_cannot_read_says_how_to_write_a_windows_path(tmp_path: Path) -> None:
    where = folder(tmp_path)
    path = config(where, 'data_dir = "C:\\ProgramData\\shelfsync"\n', token=f'"{TOKEN}"')
    done = run_agent("status", "--config", str(path), env=agent_env(), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "is not valid TOML" in sentence and "'single quotes'" in sentence


@pytest.mark.parametrize("quote", ["'", '\\"'])
def test_a_token_pasted_with_its_quotes_is_refused_as_such(tmp_path: Path, quote: str) -> None:
    where = folder(tmp_path)
    path = config(where, token=f'"{quote}{TOKEN}{quote}"')
    done = run_agent("status", "--config", str(path), env=agent_env(), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "[agent] token " in sentence and "quotes" in sentence and TOKEN not in sentence


def test_a_token_variable_with_quotes_is_refused_as_such(tmp_path: Path) -> None:
    # docker run --env-file and a systemd EnvironmentFile= line keep quotes a shell would drop
    where = folder(tmp_path)
    path = config(where, token=f'"{TOKEN}"')
    done = run_agent("status", "--config", str(path), env=agent_env(SHELFSYNC_AGENT_TOKEN=f'"{TOKEN}"'), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert sentence.startswith("shelfsync-agent: SHELFSYNC_AGENT_TOKEN ") and "quotes" in sentence
    assert TOKEN not in sentence


def test_a_data_folder_deeper_than_sqlite_opens_is_named_so(tmp_path: Path) -> None:
    where = folder(tmp_path)
    deep = where / "/".join(["Lager Außenstelle Nord"] * 24)  # 600 bytes, far below the system's own limit
    path = config(where, f"data_dir = '{deep}'\n", token=f'"{TOKEN}"')
    done = run_agent("record", "--config", str(path), "--sku", "A", "--kind", "receive", "--qty", "1",
                     env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "bytes long" in sentence and "shorter data_dir" in sentence and "not a usable" not in sentence


def test_an_outbox_of_another_agent_is_refused_without_saying_it_moved(tmp_path: Path) -> None:
    where = folder(tmp_path)
    path = config(where, token=f'"{TOKEN}"')
    first = run_agent("record", "--config", str(path), "--sku", "A", "--kind", "receive", "--qty", "1",
                      env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    other = where / "other store.toml"
    other.write_text(path.read_text(encoding="utf-8").replace("store-1", "store-2").replace("S001", "S002"))
    done = run_agent("record", "--config", str(other), "--sku", "A", "--kind", "receive", "--qty", "1",
                     env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    # another store's agent (another id and location), not this store's under a new credential: rebind is not the cure
    (sentence,) = [line for line in done.stderr.splitlines() if line.startswith("shelfsync-agent: ")]
    assert "belongs to agent 'store-1' at S001, not 'store-2' at S002" in sentence
    assert "give it its own data_dir" in sentence
    assert "is now for S002" not in done.stderr  # nothing moved: the outbox is still S001's
    with sqlite3.connect(where / "outbox.sqlite3") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'location'").fetchone() == ("S001",)


def test_agent_add_write_names_a_start_command_a_shell_takes_as_it_is(tmp_path: Path) -> None:
    where = folder(tmp_path)
    db = new_hub_db(tmp_path / "hub.db")
    target = where / "store 1.toml"
    done = run_hub("agent", "add", "--db", str(db), "--id", "store-1", "--location", "S001",
                   "--hub-url", "http://127.0.0.1:9", "--write", str(target))  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = done.stdout.strip().rsplit("Start the agent with: ", 1)[1]
    assert shlex.split(command) == ["shelfsync-agent", "run", "--config", str(target)]


@pytest.mark.parametrize(
    ("how", "db"),
    [
        ("--db", "C:\\ProgramData\\shelfsync\\hub.db"),
        ("SHELFSYNC_HUB_DB", "\\\\fileserver\\shelfsync\\hub.db"),
        ("config", "'D:\\shelfsync\\hub.db'"),
        ("config", '"hubs\\new.db"'),
    ],
    ids=["--db", "environment", "config file", "escape in a double-quoted string"],
)
def test_a_windows_or_escaped_hub_db_path_is_refused_and_nothing_is_made(tmp_path: Path, how: str, db: str) -> None:
    where = folder(tmp_path)
    env = hub_env()
    args = ["init"]
    if how == "--db":
        args += ["--db", db]
    elif how == "SHELFSYNC_HUB_DB":
        env["SHELFSYNC_HUB_DB"] = db
    else:
        (where / "hub.toml").write_text(f"[hub]\ndb = {db}\n", encoding="utf-8")
        args += ["--config", str(where / "hub.toml")]
    before = listing(tmp_path)
    done = run_hub(*args, env=env, cwd=where)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert sentence.startswith("shelfsync-hub: db ") and (
        "is a Windows path" in sentence or "'single quotes'" in sentence
    )
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("data_dir", "said"),
    [
        ("/proc/shelfsync", "the folder /proc/shelfsync for the outbox cannot be made (No such file or directory)"),
        ("/proc/self", "the outbox /proc/self/outbox.sqlite3 cannot be created"),
    ],
    ids=["a folder that cannot be made", "a folder where no file can be made"],
)
def test_a_data_dir_the_agent_cannot_write_is_one_sentence(tmp_path: Path, data_dir: str, said: str) -> None:
    # as a store's own user runs `record` on the service's configuration: /var/lib/shelfsync-agent is not theirs
    where = folder(tmp_path)
    path = config(where, f"data_dir = '{data_dir}'\n", token=f'"{TOKEN}"')
    done = run_agent("record", "--config", str(path), "--sku", "A", "--kind", "receive", "--qty", "1",
                     env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert said in sentence and "Traceback" not in sentence


def test_an_agent_id_with_a_space_is_named_in_plain_english(tmp_path: Path) -> None:
    where = folder(tmp_path)
    path = where / "agent.toml"
    path.write_text('[agent]\nid = "store 1"\nlocation = "S001"\n', encoding="utf-8")
    done = run_agent("status", "--config", str(path), env=agent_env(), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "'store 1' is not an agent id; an agent id is ASCII letters" in sentence, sentence


def test_an_outbox_that_names_a_folder_is_refused_naming_the_file_to_give(tmp_path: Path) -> None:
    where = folder(tmp_path)
    (where / "data").mkdir()
    path = config(where, "outbox = 'data'\n", token=f'"{TOKEN}"')
    before = listing(tmp_path)
    done = run_agent("record", "--config", str(path), "--sku", "A", "--kind", "receive", "--qty", "1",
                     env=agent_env(), cwd=tmp_path)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    (sentence,) = done.stderr.splitlines()
    assert "[agent] outbox must be a file" in sentence and f"{where / 'data'} is a folder" in sentence, sentence
    assert listing(tmp_path) == before
