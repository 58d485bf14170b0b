"""The agent's TOML configuration: defaults, paths, and errors that name the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent import ConfigError, load_config
from agent.config import SIMULATE_SKUS
from agent.pos.config import PosImportConfig


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = '[agent]\nid = "store-1"\nlocation = "S001"\n'


def test_a_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    a, r = config.agent, config.replicator
    assert (a.id, a.location, a.hub_url, a.token, a.synchronous, a.retention_days) == (
        "store-1",
        "S001",
        None,
        None,
        "full",
        30.0,
    )
    assert a.data_dir == tmp_path and a.outbox == tmp_path / "outbox.sqlite3"
    assert a.reserve_mib == 8  # the disk reserve for scans a full disk refuses (agent.reserve)
    assert (r.batch_size, r.tick_s, r.retry_max_s, r.timeout_s, r.auth_retry_s) == (1000, 5.0, 60.0, 30.0, 300.0)
    assert config.simulate is None


def test_every_key_is_read_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("  s3cret\n")
    config = load_config(
        write(
            tmp_path,
            """
[agent]
id = "store-1"
location = "S001"
token_file = "secrets/token"
hub_url = "http://127.0.0.1:8470/"
data_dir = "var"
outbox = "/elsewhere/box.sqlite3"
synchronous = "normal"
retention_days = 7

[replicator]
batch_size = 250
tick_s = 1
retry_base_s = 0.25
retry_max_s = 30
timeout_s = 10
auth_retry_s = 60

[simulate]
count = 500
rate_per_s = 50
skus = ["A", "B"]
seed = 42
batch = 5
enabled = false
""",
        )
    )
    a, r, s = config.agent, config.replicator, config.simulate
    assert a.token == "s3cret" and "s3cret" not in repr(a)
    assert a.hub_url == "http://127.0.0.1:8470"
    assert a.data_dir == tmp_path / "var" and a.outbox == Path("/elsewhere/box.sqlite3")
    assert (a.synchronous, a.retention_days) == ("normal", 7.0)
    assert (r.batch_size, r.tick_s, r.retry_base_s, r.retry_max_s, r.timeout_s, r.auth_retry_s) == (
        250,
        1.0,
        0.25,
        30.0,
        10.0,
        60.0,
    )
    assert s is not None and (s.count, s.rate_per_s, s.skus, s.seed, s.batch, s.enabled) == (
        500,
        50.0,
        ("A", "B"),
        42,
        5,
        False,
    )


def test_simulate_defaults(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, MINIMAL + "[simulate]\ncount = 10\n")).simulate
    assert s is not None and (s.count, s.skus, s.batch, s.enabled) == (10, SIMULATE_SKUS, 1, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "colour = 'blue'\n", r"unknown key 'colour' in \[agent\]; known keys are id, location"),
        (MINIMAL + "[replicator]\nbatchsize = 5\n", r"unknown key 'batchsize' in \[replicator\]"),
        (MINIMAL + "[hub]\nx = 1\n", r"unknown section \[hub\]"),
        ('[agent]\nlocation = "S001"\n', r"\[agent\] id is required"),
        ("[replicator]\n", r"the \[agent\] section is missing"),
        ('[agent]\nid = "store 1"\nlocation = "S001"\n', r"\[agent\] has an invalid id or location: agent_id"),
        (MINIMAL + 'hub_url = "ftp://hub"\n', r"\[agent\] hub_url must be an http:// or https:// address"),
        (MINIMAL + 'hub_url = "http://127.0.0.1:1"\n', r"needs token or token_file"),
        (MINIMAL + 'token = "a"\ntoken_file = "t"\n', r"token_file cannot be given together with token"),
        (MINIMAL + 'token_file = "missing"\n', r"token_file .*missing cannot be read"),
        (MINIMAL + 'synchronous = "off"\n', r"synchronous must be one of full, normal, got 'off'"),
        (MINIMAL + "retention_days = 0\n", r"retention_days must be a positive number"),
        (MINIMAL + "reserve_mib = -1\n", r"reserve_mib must be between 0 and 1024, got -1"),
        (MINIMAL + "reserve_mib = 2.5\n", r"reserve_mib must be an integer, got 2.5"),
        (MINIMAL + "[replicator]\nbatch_size = 0\n", r"batch_size must be between 1 and 10000, got 0"),
        (MINIMAL + "[replicator]\ntick_s = true\n", r"tick_s must be a number, got True"),
        (MINIMAL + '[replicator]\ntimeout_s = "5"\n', r"timeout_s must be a number, got '5'"),
        (MINIMAL + "[simulate]\nrate_per_s = 5\n", r"\[simulate\] count is required"),
        (MINIMAL + "[simulate]\ncount = 5\nskus = []\n", r"skus must list at least one SKU"),
        (MINIMAL + "[simulate]\ncount = 5\nskus = [1]\n", r"skus must be a list of non-empty strings"),
        ("[agent\n", r"is not valid TOML"),
        (MINIMAL + "[simulate]\ncount = 1.5\n", r"\[simulate\] count must be an integer, got 1.5"),
        (MINIMAL + '[catalog]\nencoding = "utf-7"\n', r"\[catalog\] encoding 'utf-7' hides characters in plain ASCII"),
        (MINIMAL + '[catalog]\nencoding = "klingon-8"\n', r"\[catalog\] encoding 'klingon-8' is not one the agent"),
        (MINIMAL + '[catalog]\nencoding = ""\n', r"\[catalog\] encoding is empty"),
        (MINIMAL + "[catalog]\nencoding = 1252\n", r"\[catalog\] encoding must be a string, got 1252"),
    ],
)
def test_bad_files_say_which_file_and_which_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_the_catalog_files_charset_is_read_and_by_default_its_mark_says_it(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).catalog.encoding is None
    named = load_config(write(tmp_path, MINIMAL + '[catalog]\nfile = "c.csv"\nencoding = "windows-1252"\n'))
    assert (named.catalog.file, named.catalog.encoding) == (tmp_path / "c.csv", "windows-1252")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the configuration file .*nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")


# What Windows tools write: Notepad's "UTF-8 with BOM" (the only UTF-8 of Notepad before Windows 10 1903), Windows
# PowerShell 5's `Set-Content -Encoding UTF8` (a BOM always), its `>` / `Out-File` (UTF-16 with a BOM), and its
# `-Encoding UTF32` (UTF-32 with a BOM, whose first two bytes are UTF-16's).
WINDOWS_ENCODINGS = [
    pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="utf-8 with BOM"),
    pytest.param(lambda text: text.replace("\n", "\r\n").encode("utf-16"), id="utf-16 with BOM (PowerShell >)"),
    pytest.param(lambda text: b"\xfe\xff" + text.encode("utf-16-be"), id="utf-16 big-endian with BOM"),
    pytest.param(lambda text: b"\xff\xfe\x00\x00" + text.encode("utf-32-le"), id="utf-32 with BOM (-Encoding UTF32)"),
]


@pytest.mark.parametrize("encode", WINDOWS_ENCODINGS)
def test_a_configuration_and_a_token_file_saved_by_windows_tools_are_read(
    tmp_path: Path, encode: Callable[[str], bytes]
) -> None:
    """Found: a configuration saved with a byte-order mark was "not valid TOML (Invalid statement (at line 1,
    column 1))", a token written by PowerShell's `>` was "not UTF-8 text", and one saved by Set-Content held "a
    space, a control character or a non-ASCII character": the agent did not start (exit 2, which its service does
    not restart on), though each file shows right in any editor."""
    (tmp_path / "agent.token").write_bytes(encode("ssk1.store-1.s3cret\n"))
    text = MINIMAL + 'hub_url = "http://127.0.0.1:8470"\ntoken_file = "agent.token"\n'
    (tmp_path / "agent.toml").write_bytes(encode(text))
    config = load_config(tmp_path / "agent.toml")
    assert (config.agent.id, config.agent.location, config.agent.token) == ("store-1", "S001", "ssk1.store-1.s3cret")
    (tmp_path / "mapping.toml").write_bytes(encode('[pos]\ntime_zone = "Europe/Berlin"\n'))  # import --mapping
    assert PosImportConfig.from_toml_file(tmp_path / "mapping.toml").time_zone == "Europe/Berlin"


def test_a_configuration_in_another_encoding_without_a_mark_is_refused_naming_utf_8(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(MINIMAL.replace("S001", "S\xf6001").encode("cp1252"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text"):
        load_config(path)
