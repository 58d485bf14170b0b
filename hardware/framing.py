"""Splitting a scanner's byte stream into frames (one frame = one barcode). Pure.

A frame ends at CR, LF or CRLF. Scanners set to send no suffix are framed by
an idle gap instead; the timing lives with the reader, which calls ``flush()``
when the line has been quiet long enough. Empty frames are dropped, so CRLF
(and LFCR, or a doubled suffix) never makes an empty scan.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import ScannerConfigError

FRAME_MAX_BYTES = 8192  # longer than any 1D/2D symbol a handheld reads; past it the line is noise


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    complete: bool  # False: cut off (device lost mid-frame, or longer than FRAME_MAX_BYTES)


class FrameSplitter:
    """Feed bytes, get frames. Keeps the unterminated tail until more bytes or ``flush()``."""

    __slots__ = ("_buf", "_max_bytes")

    def __init__(self, max_frame_bytes: int = FRAME_MAX_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ScannerConfigError(f"max_frame_bytes must be at least 1, got {max_frame_bytes}")
        self._buf = bytearray()
        self._max_bytes = max_frame_bytes

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished frame are waiting."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if b"\r" in data or b"\n" in data:
            self._buf += data
            parts = self._buf.replace(b"\r", b"\n").split(b"\n")
            self._buf = bytearray(parts.pop())
            for part in parts:
                if not part:
                    continue
                if len(part) > self._max_bytes:
                    frames.extend(self._oversize(bytes(part)))
                else:
                    frames.append(Frame(bytes(part), True))
        else:
            self._buf += data
        if len(self._buf) > self._max_bytes:
            frames.extend(self._oversize(bytes(self._buf)))
            self._buf.clear()
        return frames

    def flush(self, *, complete: bool = True) -> Frame | None:
        """End the current frame now (idle gap, disconnect, close); None when nothing is pending."""
        if not self._buf:
            return None
        frame = Frame(bytes(self._buf), complete)
        self._buf.clear()
        return frame

    def _oversize(self, data: bytes) -> list[Frame]:
        step = self._max_bytes
        return [Frame(data[i : i + step], False) for i in range(0, len(data), step)]
