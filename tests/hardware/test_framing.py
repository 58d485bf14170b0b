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


def test_a_run_longer_than_the_limit_is_delivered_in_cut_off_pieces() -> None:
    splitter = FrameSplitter(max_frame_bytes=4)
    assert splitter.feed(b"ABCDEFGHIJ") == [Frame(b"ABCD", False), Frame(b"EFGH", False), Frame(b"IJ", False)]
    assert splitter.feed(b"0123456\r\nOK\r\n") == [Frame(b"0123", False), Frame(b"456", False), Frame(b"OK", True)]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ScannerConfigError, match="max_frame_bytes"):
        FrameSplitter(max_frame_bytes=0)
