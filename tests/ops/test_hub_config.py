"""The hub's settings as an operator gives them: a default config file, environment variables that win over
it (every secret among them), a database URL kept in a file, and one sentence for each mistake."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

import hub.config
from hub.config import CONFIG_KEYS, ENV_KEYS, ConfigError, HubSettings, config_path, env_name, load_settings
from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_env_wins_over_the_file_and_the_command_line_over_both(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "hub.db"\nport = 9000\nhost = "127.0.0.1"\naccess_log = false\n')
    env = {"SHELFSYNC_HUB_PORT": "9100", "SHELFSYNC_HUB_ACCESS_LOG": "yes", "SHELFSYNC_HUB_BODY_TIMEOUT_S": "2.5"}
    s = load_settings(config, environ=env)
    assert (s.db, s.port, s.host, s.access_log, s.body_timeout_s) == (
        str(tmp_path / "hub.db"), 9100, "127.0.0.1", True, 2.5,
    )  # fmt: skip
    assert load_settings(config, environ=env, port=9200).port == 9200
    assert load_settings(config, environ={**env, "SHELFSYNC_HUB_PORT": ""}).port == 9000  # empty: not set


def test_the_database_url_comes_from_the_environment_without_a_file(tmp_path: Path) -> None:
    url = "postgresql://hub:s3cret@db.example:5432/hub"
    assert load_settings(None, environ={"SHELFSYNC_HUB_DB": url}).db == url


def test_database_url_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db-url").write_text("postgresql://hub:s3cret@db.example/hub\n")
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndatabase_url_file = "secrets/db-url"\n')
    assert load_settings(config, environ={}).db == "postgresql://hub:s3cret@db.example/hub"
    # from the environment, a relative file is relative to the working directory, as any path there
    env = {"SHELFSYNC_HUB_DATABASE_URL_FILE": str(tmp_path / "secrets" / "db-url")}
    assert load_settings(None, environ=env).db == "postgresql://hub:s3cret@db.example/hub"


def test_a_later_place_s_db_wins_and_the_earlier_url_file_is_not_even_read(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndatabase_url_file = "no-such-file"\n')
    assert load_settings(config, environ={"SHELFSYNC_HUB_DB": "/srv/hub.db"}).db == "/srv/hub.db"
    assert load_settings(config, environ={}, db="/cli/hub.db").db == "/cli/hub.db"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[hub]\ndb = "x"\ndatabase_url_file = "f"\n', {}, "db and database_url_file are both set in the [hub] table"),
        ('[hub]\ndatabase_url_file = "missing"\n', {}, "database_url_file"),
        ('[hub]\ndb = "x"\n', {"SHELFSYNC_HUB_PORT": "eighty"}, "SHELFSYNC_HUB_PORT must be an integer, got 'eighty'"),
        ('[hub]\ndb = "x"\n', {"SHELFSYNC_HUB_ACCESS_LOG": "maybe"}, "SHELFSYNC_HUB_ACCESS_LOG must be true or false"),
        ('[hub]\ndb = "x"\n', {"SHELFSYNC_HUB_PORT": "70000"}, "port must be between 0 and 65535, got 70000 (in the"),
        ('[hub]\ndb = "x"\n', {"SHELFSYNC_HUB_PROT": "80"}, "unknown environment variable SHELFSYNC_HUB_PROT"),
        ('[hub]\ndb = "x"\ntls_cert = "c.pem"\n', {}, "tls_cert is set but tls_key is not"),
        ('[hub]\ndb = "x"\npublic_url = "hub.example"\n', {}, "public_url must be an http:// or https:// address"),
        ('[hub]\nport = 1\n', {}, "no database given; pass --db URL, set SHELFSYNC_HUB_DB"),
    ],
)
def test_each_mistake_is_one_sentence_naming_where_it_is(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(text)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=env)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_empty_database_url_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text("\n")
    with pytest.raises(ConfigError, match="must hold one line: the database URL"):
        load_settings(None, environ={"SHELFSYNC_HUB_DATABASE_URL_FILE": str(tmp_path / "db-url")})


def test_a_variable_the_file_names_as_a_secret_is_not_a_hub_setting(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\ndb = "hub.db"\n\n[[webhooks]]\nname = "shop"\nurl = "https://shop.example/hook"\n'
        'secret_env = "SHELFSYNC_HUB_SHOP_SECRET"\n'
    )
    s = load_settings(config, environ={"SHELFSYNC_HUB_SHOP_SECRET": "a-long-shared-webhook-secret"})
    assert [w.secret for w in s.webhooks] == ["a-long-shared-webhook-secret"]


def test_a_channel_order_webhook_secret_variable_is_not_a_hub_setting(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\ndb = "hub.db"\n\n[[channel]]\nname = "web"\nkind = "shopify"\nshop = "x.myshopify.com"\n'
        'secret_env = "SHELFSYNC_HUB_SHOP_TOKEN"\nwebhook_secret_env = "SHELFSYNC_HUB_SHOP_HOOKS"\n'
        'pool = { S1 = "gid://shopify/Location/1" }\n'
    )
    environ = {"SHELFSYNC_HUB_SHOP_TOKEN": "shpat_0123456789", "SHELFSYNC_HUB_SHOP_HOOKS": "hook-secret-0123456789"}
    s = load_settings(config, environ=environ)
    assert s.port == HubSettings().port  # neither variable was taken for a setting, and neither refused


def test_a_webhook_secret_from_a_file_or_the_environment_never_from_both(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("  from-a-file-0123456789  \n")
    config = tmp_path / "hub.toml"
    hook = '[[webhooks]]\nname = "shop"\nurl = "https://shop.example/hook"\n'
    config.write_text(f'[hub]\ndb = "hub.db"\n\n{hook}secret_file = "hook.secret"\n')
    assert [w.secret for w in load_settings(config, environ={}).webhooks] == ["from-a-file-0123456789"]
    config.write_text(f'[hub]\ndb = "hub.db"\n\n{hook}secret_env = "HOOK_SECRET"\n')
    with pytest.raises(ConfigError, match="environment variable HOOK_SECRET .* is empty or not set"):
        load_settings(config, environ={})
    both = 'secret = "inline-secret-0123456789"\nsecret_env = "HOOK_SECRET"\n'
    config.write_text(f'[hub]\ndb = "hub.db"\n\n{hook}{both}')
    with pytest.raises(ConfigError, match="exactly one of secret, secret_file and secret_env"):
        load_settings(config, environ={"HOOK_SECRET": "x" * 20})


def test_the_config_file_is_the_option_else_the_variable_else_the_default_if_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "etc" / "hub.toml"
    monkeypatch.setattr(hub.config, "DEFAULT_CONFIG_PATH", default)
    assert config_path(None, {}) is None  # no file there: none
    default.parent.mkdir()
    default.write_text('[hub]\ndb = "hub.db"\n')
    assert config_path(None, {}) == default
    assert config_path(None, {"SHELFSYNC_HUB_CONFIG": "/srv/hub.toml"}) == Path("/srv/hub.toml")
    assert config_path(None, {"SHELFSYNC_HUB_CONFIG": ""}) is None  # set but empty: no file at all
    assert config_path("/opt/hub.toml", {"SHELFSYNC_HUB_CONFIG": "/srv/hub.toml"}) == Path("/opt/hub.toml")


def test_every_key_has_a_variable_and_every_variable_is_in_the_docs() -> None:
    assert set(ENV_KEYS.values()) == set(CONFIG_KEYS)
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in [*ENV_KEYS, "SHELFSYNC_HUB_CONFIG"] if f"| `{name}` |" not in text]
    assert missing == [], "environment variables missing from the table in docs/configuration.md"
    assert env_name("db") == "SHELFSYNC_HUB_DB"


# --- as processes ---------------------------------------------------------------------------------


def test_serve_takes_its_config_file_from_the_variable_and_its_database_from_the_environment(tmp_path: Path) -> None:
    """No option at all: the file SHELFSYNC_HUB_CONFIG names, the database SHELFSYNC_HUB_DB names (it wins)."""
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "from-the-file.db"\nhost = "127.0.0.1"\nport = 0\n')
    env = hub_env(SHELFSYNC_HUB_CONFIG=str(config), SHELFSYNC_HUB_DB=str(tmp_path / "from-env.db"))
    new_hub_db(tmp_path / "from-env.db", env=env)
    added = run_hub("agent", "add", "--role", "reader", env=env)
    assert added.returncode == 0, added.stderr
    token = next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("credential: "))
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        req = urllib.request.Request(f"{served.url}/v1/agents", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            agents = json.loads(resp.read())["agents"]
        assert served.stop() == 0
    assert [a["role"] for a in agents] == ["reader"]
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "from-the-file.db").exists()
    listed = run_hub("agent", "list", env=env)
    assert listed.returncode == 0 and "reader" in listed.stdout


def test_a_bad_variable_stops_every_command_with_one_sentence(tmp_path: Path) -> None:
    env = hub_env(SHELFSYNC_HUB_DB=str(tmp_path / "hub.db"), SHELFSYNC_HUB_PORT="eighty")
    for args in (("serve",), ("agent", "list")):
        run = run_hub(*args, env=env)
        assert run.returncode == 2
        assert run.stderr.strip().splitlines() == ["shelfsync-hub: SHELFSYNC_HUB_PORT must be an integer, got 'eighty'"]


def test_a_config_file_that_is_not_utf8_is_one_sentence_for_every_command(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_bytes('# Café\n[hub]\ndb = "hub.db"\n'.encode("cp1252"))  # no mark, not UTF-8: the wrong editor
    for args in (("serve", "--port", "0"), ("agent", "list"), ("backup", "--to", str(tmp_path))):
        run = run_hub(*args, "--config", str(config), env=hub_env())
        assert (run.returncode, run.stderr) == (2, f"shelfsync-hub: config file {config} is not UTF-8 text\n")


WINDOWS_TEXT = [("utf-8-sig", "UTF-8 with BOM (Notepad)"), ("utf-16", "UTF-16 with its mark (PowerShell's >)")]


@pytest.mark.parametrize(("encoding", "saved_as"), WINDOWS_TEXT)
def test_a_config_file_saved_by_a_windows_tool_is_read_by_its_mark(
    tmp_path: Path, encoding: str, saved_as: str
) -> None:
    """Found: a hub.toml saved "UTF-8 with BOM" stopped every command with "is not valid TOML (Invalid statement
    (at line 1, column 1))", one saved as UTF-16 "is not UTF-8 text", as the agent's configuration did
    (protocol.textfile, which both now read text files with)."""
    db = new_hub_db(tmp_path / "hub.db")
    config = tmp_path / "hub.toml"
    config.write_text(f'# {saved_as}\n[hub]\ndb = "{db.name}"\n', encoding=encoding)
    run = run_hub("agent", "list", "--config", str(config), env=hub_env())
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    (tmp_path / "db-url").write_text("postgresql://hub:s3cret@db.example/hub\n", encoding=encoding)
    (tmp_path / "hook.secret").write_text("from-a-file-0123456789\n", encoding=encoding)
    hook = '[[webhooks]]\nname = "shop"\nurl = "https://shop.example/hook"\nsecret_file = "hook.secret"\n'
    config.write_text(f'[hub]\ndatabase_url_file = "db-url"\n\n{hook}', encoding=encoding)
    s = load_settings(config, environ={})
    assert s.db == "postgresql://hub:s3cret@db.example/hub"
    assert [w.secret for w in s.webhooks] == ["from-a-file-0123456789"]


def test_a_misspelt_key_or_variable_is_named_with_its_line_and_the_key_it_looks_like(tmp_path: Path) -> None:
    """A typo in a long file is found by its line, and the sentence says which key was meant, ahead of the list of
    every key; a whole word that is no key gets no guess."""
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "hub.db"\nport = 8470\n\n  header_timout_s = 5\nfrobnicate = true\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    said = str(caught.value)
    assert said.startswith(
        f"unknown key(s) 'frobnicate' (line 6), 'header_timout_s' (line 5; did you mean 'header_timeout_s'?) in the "
        f"[hub] table of {config}; the known keys are db, "
    ), said
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"SHELFSYNC_HUB_DB": "x.db", "SHELFSYNC_HUB_PROT": "80"})
    assert str(caught.value).startswith(
        "unknown environment variable SHELFSYNC_HUB_PROT (did you mean SHELFSYNC_HUB_PORT?); the hub's are "
    ), str(caught.value)
    done = run_hub("agent", "list", "--config", str(config), env=hub_env())
    assert done.returncode == 2 and "'header_timout_s' (line 5; did you mean 'header_timeout_s'?)" in done.stderr


def test_a_secret_file_every_user_may_read_is_said_at_every_command_and_still_read(tmp_path: Path) -> None:
    """The database URL's file (its password) made with `echo … >` under the default umask is mode 0644: every user
    of the machine reads the password, and nothing said so. Each command that reads it now says it in one WARNING,
    naming the file and the fix, and goes on; once it is 0640 (docs/operations.md) nothing is said."""
    db = tmp_path / "hub.db"
    assert run_hub("init", "--db", str(db), env=hub_env()).returncode == 0
    url_file, hook_secret = tmp_path / "database-url", tmp_path / "hook.secret"
    url_file.write_text(f"{db}\n")
    hook_secret.write_text("a-shared-secret-of-the-shop-1234\n")
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\ndatabase_url_file = "database-url"\n\n[[webhooks]]\nname = "shop"\nurl = "http://127.0.0.1:9/hook"\n'
        'secret_file = "hook.secret"\n'
    )
    for path in (url_file, hook_secret):
        path.chmod(0o644)
    done = run_hub("agent", "list", "--config", str(config), env=hub_env())
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "readable by every user" in line]
    said = "{0} is readable by every user of this machine (mode 0644), and it holds {1}: make it readable by its owner "
    said += "and the hub's group only (chmod o-rwx {0})"
    assert warned == [
        said.format(url_file, "the hub database's URL (with its password)"),
        said.format(hook_secret, "the shared secret of webhook 'shop'"),
    ], done.stderr
    for path in (url_file, hook_secret):
        path.chmod(0o640)
    done = run_hub("agent", "list", "--config", str(config), env=hub_env())
    assert done.returncode == 0 and "readable by every user" not in done.stderr, done.stderr
