"""Splitting a scanner's byte stream into frames (one frame = one barcode). Pure.

A frame ends at CR, LF or CRLF. Scanners set to send no suffix are framed by
an idle gap instead; the timing lives with the reader, which calls ``flush()``
when the line has been quiet long enough. Empty frames are dropped, so CRLF
(and LFCR, or a doubled suffix) never makes an empty scan.

A run longer than the frame limit is line noise, not a barcode: its first
``max_frame_bytes`` are delivered once, cut off, and the rest of the run is
skipped up to and including its end (CR/LF, or ``flush()``), however the bytes
arrive. Its tail is never taken for a scan of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hardware.errors import ScannerConfigError

FRAME_MAX_BYTES = 8192  # longer than any 1D/2D symbol a handheld reads; past it the line is noise
_LINE_END = re.compile(rb"[\r\n]")


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    complete: bool  # False: cut off (device lost mid-frame, or longer than FRAME_MAX_BYTES)
    by_disconnect: bool = False  # cut off because the device went away in the middle of it
    by_gap: bool = False  # ended by the line going quiet (the idle gap), not by a suffix


class FrameSplitter:
    """Feed bytes, get frames. Keeps the unterminated tail until more bytes or ``flush()``."""

    __slots__ = ("_buf", "_max_bytes", "_skipping")

    def __init__(self, max_frame_bytes: int = FRAME_MAX_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ScannerConfigError(f"max_frame_bytes must be at least 1, got {max_frame_bytes}")
        self._buf = bytearray()
        self._max_bytes = max_frame_bytes
        self._skipping = False  # inside an over-long run whose first piece was delivered: drop up to its end

    @property
    def pending(self) -> bool:
        """Whether a frame is unfinished: bytes waiting, or an over-long run not yet ended."""
        return bool(self._buf) or self._skipping

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        start = 0
        for end in _LINE_END.finditer(data):
            self._take(data[start : end.start()], frames)
            start = end.end()
            if self._skipping:
                self._skipping = False  # the over-long run ends here, its line end with it
            elif self._buf:
                frames.append(Frame(bytes(self._buf), True))
            self._buf.clear()
        self._take(data[start:], frames)
        return frames

    def flush(self, *, complete: bool = True) -> Frame | None:
        """End the current frame now (idle gap, disconnect, close); None when nothing is pending.

        The end of an over-long run gives nothing: its first piece was delivered already.
        """
        self._skipping = False
        if not self._buf:
            return None
        frame = Frame(bytes(self._buf), complete)
        self._buf.clear()
        return frame

    def _take(self, part: bytes, frames: list[Frame]) -> None:
        """Add bytes without a line end to the current frame; cut it off once it outgrows the limit."""
        if self._skipping or not part:
            return
        self._buf += part
        if len(self._buf) > self._max_bytes:
            frames.append(Frame(bytes(self._buf[: self._max_bytes]), False))
            self._buf.clear()
            self._skipping = True
