"""The [pos] table: defaults, values, and one clear sentence for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.pos import PosConfigError, PosImportConfig


def test_defaults() -> None:
    config = PosImportConfig.from_mapping({})
    assert config == PosImportConfig()
    assert config.store_path_for(Path("/data/outbox.sqlite3")) == Path("/data/pos-import.sqlite")
    assert set(config.all_profiles()) == {"square", "shopify", "generic"}


def test_values_and_relative_paths(tmp_path: Path) -> None:
    config = PosImportConfig.from_mapping(
        {
            "watch_dir": "drop", "store_path": "/var/pos.sqlite", "profile": "square", "time_zone": "Eastern Time (US & Canada)",
            "date_order": "DMY", "decimal_separator": ",", "units": {"KG": 1000}, "locations": {"Main  Street": "S001"},
            "time_zones": {"Store": "Europe/Lisbon"}, "settle_s": 0.5, "patterns": ["*.csv"], "batch_rows": 500,
            "future_tolerance_s": 60, "force_polling": True,
        },
        base_dir=tmp_path,
    )
    assert config.watch_dir == tmp_path / "drop" and config.store_path == Path("/var/pos.sqlite")
    assert config.units == {"kg": 1000} and config.locations == {"main street": "S001"}
    assert (config.decimal_separator, config.date_order, config.batch_rows, config.force_polling) == (",", "DMY", 500, True)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"watchdir": "x"}, "unknown key"),
        ({"date_order": "YMD"}, "date_order must be"),
        ({"decimal_separator": ";"}, "decimal_separator must be"),
        ({"units": {"kg": 0.5}}, "units must map unit names to whole numbers"),
        ({"settle_s": -1}, "settle_s must be a number from 0 to 3600"),
        ({"batch_rows": 0}, "batch_rows must be a number from 1 to 10000"),
        ({"time_zone": "Atlantis"}, "time_zone: unknown time zone 'Atlantis'"),
        ({"time_zones": {"x": "Nowhere/Land"}}, "not an IANA zone"),
        ({"profile": "clover"}, "profile 'clover' is neither"),
        ({"patterns": "*.csv"}, "patterns must be a list"),
        ({"locations": {"Main": 1}}, "locations must be a table"),
        ({"force_polling": "yes"}, "force_polling must be true or false"),
    ],
)
def test_mistakes_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(PosConfigError, match=message) as info:
        PosImportConfig.from_mapping(table)
    assert isinstance(info.value, ConfigError)  # the agent's CLI answers it as a configuration error (exit 2)
    assert str(info.value).startswith("[pos] ")


def test_a_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[pos]\nprofile = "generic"\nwatch_dir = "in"\n', encoding="utf-8")
    config = PosImportConfig.from_toml_file(path)
    assert config.profile == "generic" and config.watch_dir == tmp_path / "in"
    path.write_text("profile = [", encoding="utf-8")
    with pytest.raises(PosConfigError, match="could not be read as TOML"):
        PosImportConfig.from_toml_file(path)
