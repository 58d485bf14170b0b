"""docs/scanners.md cannot rot: every setting, region and exception it must explain is there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import hardware
from hardware import RCN_REGIONS, SerialScannerConfig, WedgeScannerConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "scanners.md"


@pytest.mark.parametrize("config", [SerialScannerConfig, WedgeScannerConfig])
def test_every_setting_is_documented(config: type) -> None:
    text = DOC.read_text()
    missing = [f.name for f in dataclasses.fields(config) if f"| `{f.name}` |" not in text]
    assert missing == []


def test_every_rcn_region_and_keymap_is_documented() -> None:
    text = DOC.read_text()
    assert [r for r in RCN_REGIONS if f"`{r}`" not in text] == []
    assert [k for k in hardware.KEYMAPS if f"`{k}`" not in text] == []


def test_every_exception_and_by_id_paths_are_documented() -> None:
    text = DOC.read_text()
    for name in ("HardwareError", "ScannerConfigError", "ScannerDisconnected", "ScannerClosed", "DecodeError"):
        assert f"`{name}`" in text
    assert "/dev/serial/by-id/" in text and "socket://host:port" in text
