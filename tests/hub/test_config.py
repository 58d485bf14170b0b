"""Hub settings: defaults, the [hub] table of a TOML file, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import DEFAULT_MAX_BODY_BYTES, ConfigError, HubSettings, load_settings


def test_defaults() -> None:
    s = load_settings(db="hub.db")
    assert (s.db, s.host, s.port, s.max_body_bytes) == ("hub.db", "127.0.0.1", 8470, 8 * 1024 * 1024)
    assert DEFAULT_MAX_BODY_BYTES == 8 * 1024 * 1024
    assert (s.shutdown_timeout_s, s.log_level, s.access_log) == (30.0, "INFO", False)


def test_file_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "/srv/hub.db"\nport = 9000\nshutdown_timeout_s = 5\nlog_level = "debug"\n')
    s = load_settings(config, port=9100, host=None)
    assert (s.db, s.port, s.host, s.shutdown_timeout_s, s.log_level) == ("/srv/hub.db", 9100, "127.0.0.1", 5.0, "DEBUG")


def test_relative_db_is_relative_to_the_file_and_urls_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "data/hub.db"\n')
    assert load_settings(config).db == str(tmp_path / "data" / "hub.db")
    config.write_text('[hub]\ndb = "postgresql://hub@127.0.0.1/hub"\n')
    assert load_settings(config).db == "postgresql://hub@127.0.0.1/hub"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[hub]\ndb = "x"\nprot = 1\n', "unknown key(s) 'prot'"),
        ('db = "x"\n', "hub settings go in a [hub] table"),
        ('[hub]\ndb = "x"\nport = "80"\n', "port must be an integer, got str"),
        ('[hub]\ndb = "x"\nport = 70000\n', "port must be between 0 and 65535"),
        ('[hub]\ndb = "x"\nmax_body_bytes = 0\n', "max_body_bytes must be between 1"),
        ('[hub]\ndb = "x"\naccess_log = "yes"\n', "access_log must be true or false"),
        ('[hub]\ndb = "x"\nlog_level = "LOUD"\n', "log_level must be one of"),
        ('[hub]\ndb = "x"\nlease_stale_s = 3\n', "lease_stale_s must be between 10 and 3600 seconds, got 3.0"),
        ('[hub]\ndb = "x"\nlease_retry_s = 0.01\n', "lease_retry_s must be between 0.05 and 60 seconds, got 0.01"),
        (  # the least lease_stale_s follows lease_retry_s: three checks and a second
            '[hub]\ndb = "x"\nlease_retry_s = 0.5\nlease_stale_s = 2\n',
            "lease_stale_s must be between 2.5 and 3600 seconds, got 2.0 (at least three lease_retry_s and 1 s more)",
        ),
        ('[hub]\ndb = "x"\nlease_retry_s = 5\nlease_stale_s = 10\n', "lease_stale_s must be between 16 and 3600"),
        ('[hub]\ndb = "x"\ndb_timeout_s = 0.5\n', "db_timeout_s must be between 1 and 3600 seconds, got 0.5"),
        ('[hub]\ndb = "x"\nagent_copies_window_s = 0\n', "agent_copies_window_s must be between 1 and 86400 seconds"),
        ("[hub\n", "is not valid TOML"),
        ("[hub]\n", "no database given"),
        ('[hub]\ndb = "hub.db\\u0000x"\n', "db holds a control character"),  # was a traceback: embedded null byte
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert expected in str(caught.value)


def test_lease_retry_s_sets_how_often_a_hub_checks_its_locks_and_the_least_lease_stale_s(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndb = "x"\n')
    assert (load_settings(config).lease_retry_s, load_settings(config).lease_stale_s) == (3.0, 30.0)
    config.write_text('[hub]\ndb = "x"\nlease_retry_s = 0.5\nlease_stale_s = 3\n')
    assert (load_settings(config).lease_retry_s, load_settings(config).lease_stale_s) == (0.5, 3.0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_validated_when_built() -> None:
    with pytest.raises(ConfigError, match="port must be an integer, got bool"):
        HubSettings(db="x", port=True)


@pytest.mark.parametrize("slots", [0, 65])
def test_catchup_slots_out_of_range_are_refused_in_one_sentence(slots: int) -> None:
    with pytest.raises(ConfigError, match=rf"^catchup_slots must be between 1 and 64, got {slots}$"):
        HubSettings(db="hub.db", catchup_slots=slots)
