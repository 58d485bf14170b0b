"""agent.toml: [[scanner]] tables, [catalog] and [pos], with errors that name the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import hardware
from agent.config import ConfigError, load_config
from agent.scanning import SAME_CODE_S

HEAD = '[agent]\nid = "store-1"\nlocation = "S001"\n'
TWO_READERS = (
    '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sale"\n'
    '[[scanner]]\nid = "{id2}"\ntype = "serial"\nport = "{port2}"\nmode = "sale"\n'
)


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(HEAD + body, encoding="utf-8")
    return path


def test_scanner_tables_catalog_and_pos_sections_are_read(tmp_path: Path) -> None:
    cfg = load_config(
        config(
            tmp_path,
            """
[[scanner]]
id = "backdoor"
type = "serial"
port = "/dev/serial/by-id/usb-Honeywell-if00"
baudrate = 115200
parity = "even"
bytesize = 7
mode = "receive"
rcn_region = "GB"

[[scanner]]
id = "till-1"
type = "wedge"
device = "/dev/input/by-id/usb-Datalogic-event-kbd"
mode = "count"
location = "W001"
count_reset_s = 60
same_code_s = 0

[catalog]
file = "catalog.csv"
refresh_s = 30

[pos]
watch_dir = "drop"
settle_s = 0.5
""",
        )
    )
    back, till = cfg.scanners
    assert (back.id, back.type, back.mode, back.location, back.rcn_region) == (
        "backdoor",
        "serial",
        "receive",
        None,
        "gb",
    )
    assert isinstance(back.device, hardware.SerialScannerConfig)
    assert (back.device.reader_id, back.device.baudrate, back.device.parity, back.device.bytesize) == (
        "backdoor",
        115200,
        "E",
        7,
    )
    assert isinstance(till.device, hardware.WedgeScannerConfig)
    assert (till.mode, till.location, till.count_reset_s, till.device_path) == (
        "count", "W001", 60.0, "/dev/input/by-id/usb-Datalogic-event-kbd",
    )  # fmt: skip
    assert (back.same_code_s, till.same_code_s) == (SAME_CODE_S, 0.0)  # 0: every scan of a code is booked
    assert (cfg.catalog.file, cfg.catalog.refresh_s, cfg.catalog.cache_file) == (tmp_path / "catalog.csv", 30.0, None)
    assert (cfg.pos.watch_dir, cfg.pos.settle_s) == (tmp_path / "drop", 0.5)


def test_without_the_new_sections_nothing_changes(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, ""))
    assert (cfg.scanners, cfg.catalog.file, cfg.pos.watch_dir) == ((), None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "receive"\nbaud = 9600\n',
            "unknown key 'baud' in \\[\\[scanner\\]\\] #1",
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "wedge"\ndevice = "/dev/input/event3"\nmode = "receive"\nport = "/dev/x"\n',
            "\\[\\[scanner\\]\\] 'a' is wrong: unknown keyboard-wedge scanner setting\\(s\\) 'port'",
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "usb"\nport = "/dev/ttyS0"\nmode = "receive"\n',
            'type must be "serial" or "wedge"',
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sell"\n',
            "mode must be one of receive, sale",
        ),
        ('[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\n', "\\[\\[scanner\\]\\] 'a' mode is required"),
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sale"\nparity = "weird"\n',
            "parity must be one of",
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sale"\nrcn_region = "xx"\n',
            "rcn_region 'xx' is not supported",
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sale"\nlocation = "no spaces"\n',
            "location is not a valid",
        ),
        (
            '[[scanner]]\nid = "a"\ntype = "serial"\nport = "/dev/ttyS0"\nmode = "sale"\nsame_code_s = 6\n',
            "same_code_s must be 0 \\(off\\) or up to 5 seconds, got 6",
        ),
        (TWO_READERS.format(id2="a", port2="/dev/ttyS1"), "is used by two"),
        (TWO_READERS.format(id2="b", port2="/dev/ttyS0"), "which scanner 'a' uses already"),
        ('[scanner]\nid = "a"\n', "scanner must be written as \\[\\[scanner\\]\\] tables"),
        ("[catalog]\nrefresh = 3\n", "unknown key 'refresh' in \\[catalog\\]"),
        ("[catalog]\nrefresh_s = -1\n", "\\[catalog\\] refresh_s must be a positive number"),
        ("[pos]\nsettle = 1\n", "\\[pos\\] unknown key\\(s\\) settle"),
        ('[pos]\ndate_order = "YMD"\n', "date_order must be"),
        ("[scanners]\n", "unknown section \\[scanners\\]; known sections are .*\\[pos\\]"),
    ],
)
def test_errors_name_the_file_the_table_and_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = config(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
