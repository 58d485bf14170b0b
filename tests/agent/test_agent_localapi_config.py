"""The [localapi] and [discovery] sections of agent.toml: defaults, every key, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import ConfigError, load_config
from agent.localapi import PinHash, hash_pin

MINIMAL = '[agent]\nid = "store-1"\nlocation = "S001"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + text, encoding="utf-8")
    return path


def test_both_are_off_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    api, d = config.localapi, config.discovery
    assert (api.enabled, api.host, api.port, api.staff, api.login_ttl_h, api.sessions_db, api.same_code_s) == (
        False, "127.0.0.1", 8471, (), 12.0, None, 0.1,
    )  # fmt: skip
    assert (d.enabled, d.hub_id, d.advertise, d.interfaces, d.wait_s) == (False, None, True, (), 5.0)


def test_every_key_is_read(tmp_path: Path) -> None:
    ana = hash_pin("4711")
    config = load_config(
        write(
            tmp_path,
            'token = "t"\n'
            f'[localapi]\nenabled = true\nhost = "0.0.0.0"\nport = 0\nlogin_ttl_h = 1.5\nsessions_db = "s/sessions.db"\n'
            "same_code_s = 0\n"
            f'[localapi.staff]\nana = "{ana}"\n'
            '[discovery]\nenabled = true\nhub_id = "abc"\nadvertise = false\ninterfaces = ["127.0.0.1"]\nwait_s = 0\n',
        )
    )
    api, d = config.localapi, config.discovery
    assert (api.enabled, api.host, api.port, api.login_ttl_h, api.same_code_s) == (True, "0.0.0.0", 0, 1.5, 0.0)
    assert api.staff == (("ana", ana),)
    assert api.sessions_db == tmp_path / "s" / "sessions.db"
    assert (d.enabled, d.hub_id, d.advertise, d.interfaces, d.wait_s) == (True, "abc", False, ("127.0.0.1",), 0.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[localapi]\nenabled = true\n", "lists no staff"),
        ('[localapi.staff]\nana = "4711"\n', "the PIN hash is not usable"),
        ('[localapi.staff]\n"a b" = "x"\n', "a staff id is letters, digits"),
        ("[localapi]\nport = 70000\n", "[localapi] port must be between 0 and 65535"),
        ("[localapi]\ncolour = 1\n", "unknown key 'colour' in [localapi]"),
        ("[localapi]\nsame_code_s = -1\n", "[localapi] same_code_s must be 0"),
        ("[discovery]\nenabled = true\n", "needs the agent's token"),
        ("[discovery]\ninterfaces = [1]\n", "must be a list of IPv4 addresses"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_hash_pin_command_prints_a_usable_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.localapi", "hash-pin", "--staff", "ana"],
        input="4711\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    staff, _, quoted = done.stdout.strip().partition(" = ")
    assert staff == "ana"
    assert PinHash.parse(quoted.strip('"')).matches("4711")
    assert not PinHash.parse(quoted.strip('"')).matches("4712")
    short = subprocess.run(
        [sys.executable, "-m", "agent.localapi", "hash-pin"],
        input="12\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert short.returncode == 2 and "a PIN is 4 to 64" in short.stderr
