"""Fixtures for the hardware tests (helpers live in scanner_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardware.scanner_helpers import PtyScanner, StatusLog


@pytest.fixture
def pty_scanner(tmp_path: Path) -> Iterator[PtyScanner]:
    device = PtyScanner(tmp_path / "usb-Honeywell_Scanner_12345-if00")
    try:
        yield device
    finally:
        device.close()


@pytest.fixture
def statuses() -> StatusLog:
    return StatusLog()
