"""The values a reader hands out: one scan, and a reader's availability."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hardware.decode import scan_text
from hardware.errors import ScannerDisconnected


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Scan:
    """One frame a scanner sent: the bytes exactly as received, without the CR/LF suffix.

    ``complete`` is False for a frame that was cut off: bytes that were waiting
    for their suffix when the device went away or the reader closed, or a run
    longer than the frame limit. Such a scan is delivered (nothing is dropped)
    so the operator can be asked to scan again instead of the reader guessing.
    """

    reader_id: str
    raw: bytes
    received_at_ms: int
    complete: bool = True
    by_gap: bool = False  # ended where the line went quiet (a scanner sending no suffix), not at its suffix

    @property
    def text(self) -> str:
        return scan_text(self.raw)


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """A reader's availability, reported to ``on_status`` whenever it changes."""

    reader_id: str
    available: bool
    changed_at_ms: int
    error: ScannerDisconnected | None = None  # why it is unavailable (None when available)
