"""FrameSplitter: the pure part of serial framing."""

from __future__ import annotations

import pytest

from hardware import Frame, FrameSplitter, ScannerConfigError


def test_suffixes_split_across_feeds_make_no_empty_frames() -> None:
    splitter = FrameSplitter()
    got = splitter.feed(b"AB\r") + splitter.feed(b"\nCD\n\r") + splitter.feed(b"\r\nE") + splitter.feed(b"F\r\n")
    assert got == [Frame(b"AB", True), Frame(b"CD", True), Frame(b"EF", True)]
    assert not splitter.pending


def test_flush_ends_the_pending_frame_once() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"4006381") == []
    assert splitter.pending
    assert splitter.flush(complete=False) == Frame(b"4006381", False)
    assert splitter.flush() is None


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096, 100_000])
def test_a_run_longer_than_the_limit_is_cut_off_once_and_skipped_to_its_line_end(chunk: int) -> None:
    """However the bytes arrive, an over-long run gives one cut-off frame; its tail is never a scan."""
    splitter = FrameSplitter(max_frame_bytes=16)
    stream = b"OK-1\r\n" + b"7" * 100 + b"\r\n" + b"OK-2\r\n" + b"8" * 17 + b"\nOK-3\r"
    got = [f for i in range(0, len(stream), chunk) for f in splitter.feed(stream[i : i + chunk])]
    assert got == [
        Frame(b"OK-1", True), Frame(b"7" * 16, False), Frame(b"OK-2", True), Frame(b"8" * 16, False),
        Frame(b"OK-3", True),
    ]  # fmt: skip
    assert not splitter.pending


def test_an_over_long_run_ends_at_the_idle_gap_or_disconnect_too() -> None:
    splitter = FrameSplitter(max_frame_bytes=4)
    assert splitter.feed(b"ABCDEFGHIJ") == [Frame(b"ABCD", False)]
    assert splitter.pending  # still inside the run: the reader keeps its idle timer running
    assert splitter.flush() is None  # the rest of the run is dropped, not made a scan
    assert not splitter.pending
    assert splitter.feed(b"OK\r\n") == [Frame(b"OK", True)]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ScannerConfigError, match="max_frame_bytes"):
        FrameSplitter(max_frame_bytes=0)
