"""The exceptions of the hardware package: one base, a few precise kinds.

Every message is one sentence an operator can act on; the log keeps the cause
(``raise ... from err``).
"""

from __future__ import annotations


class HardwareError(Exception):
    """Base of every error the hardware package raises."""


class ScannerConfigError(HardwareError):
    """A scanner or decoder setting is invalid (bad parity, unknown keymap key, ...)."""


class ScannerClosed(HardwareError):
    """The scanner was used after ``close()``."""


class ScannerDisconnected(HardwareError):
    """The scanner's device went away or cannot be opened.

    Carried by ``ReaderStatus.error`` while a reader is unavailable and raised
    by calls that need the device (``SerialScanner.send``).
    """

    def __init__(self, reader_id: str, where: str, reason: str) -> None:
        self.reader_id = reader_id
        self.where = where
        self.reason = reason
        super().__init__(f"scanner {reader_id!r} on {where} is disconnected: {reason}")


class DecodeError(HardwareError):
    """A scanned value cannot be decoded; ``str(err)`` is the sentence to show the operator."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(reason)
