"""Keyboard-wedge scanners: the pure decoder on synthetic input events, the reader on real file descriptors."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware import (
    GS,
    DecodeError,
    KeyboardWedgeDecoder,
    ScannerConfigError,
    WedgeScanner,
    WedgeScannerConfig,
    decode,
    keymap_from_config,
)
from tests.hardware.scanner_helpers import WAIT_S, ScanTaker, StatusLog

# Key codes straight from linux/input-event-codes.h, independent of hardware.keymap.
EV_SYN, EV_KEY, EV_MSC = 0, 1, 4
KEY_ENTER, KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTCTRL, KEY_LEFTALT, KEY_CAPSLOCK = 28, 42, 54, 29, 56, 58
KEY_TAB, KEY_KPENTER, KEY_F5, KEY_Y, KEY_Z, KEY_RIGHTBRACE = 15, 96, 63, 21, 44, 27
KEYPAD = {"7": 71, "8": 72, "9": 73, "4": 75, "5": 76, "6": 77, "1": 79, "2": 80, "3": 81, "0": 82}
_ROWS = {16: "qwertyuiop", 30: "asdfghjkl", 44: "zxcvbnm"}
PLAIN = {
    **{d: 2 + i for i, d in enumerate("1234567890")},
    **{c: start + i for start, row in _ROWS.items() for i, c in enumerate(row)},
    "-": 12, "=": 13, "[": 26, "]": 27, ";": 39, "'": 40, ",": 51, ".": 52, "/": 53, " ": 57,
}  # fmt: skip
SHIFTED = {
    **{c.upper(): code for c, code in PLAIN.items() if c.isalpha()},
    "!": 2, "@": 3, "#": 4, "_": 12, "+": 13, "}": 27, ":": 39, '"': 40, "<": 51, ">": 52, "?": 53,
}  # fmt: skip

Event = tuple[int, int, int]


def press(code: int) -> list[Event]:
    """One key stroke as a USB keyboard reports it: scan code, down, sync, up, sync."""
    return [(EV_MSC, 4, 0x70000 + code), (EV_KEY, code, 1), (EV_SYN, 0, 0), (EV_KEY, code, 0), (EV_SYN, 0, 0)]


def type_text(text: str, *, enter: bool = True) -> list[Event]:
    events: list[Event] = []
    for char in text:
        if char in PLAIN:
            events += press(PLAIN[char])
        elif char == GS:  # Ctrl+]
            events += [(EV_KEY, KEY_LEFTCTRL, 1), *press(KEY_RIGHTBRACE), (EV_KEY, KEY_LEFTCTRL, 0)]
        else:
            events += [(EV_KEY, KEY_LEFTSHIFT, 1), *press(SHIFTED[char]), (EV_KEY, KEY_LEFTSHIFT, 0)]
    return events + (press(KEY_ENTER) if enter else [])


# -- the pure decoder ---------------------------------------------------------------------------


def test_typed_barcode_with_aim_identifier_decodes() -> None:
    decoder = KeyboardWedgeDecoder()
    frames = decoder.feed_all(type_text("]E05901234123457") + type_text("]C0Shelf-A/12"))
    assert frames == ["]E05901234123457", "]C0Shelf-A/12"]
    assert decode(frames[0]).gtin == "05901234123457"


def test_shift_gives_upper_case_and_symbols_and_either_shift_key_works() -> None:
    events = [(EV_KEY, KEY_RIGHTSHIFT, 1), *press(PLAIN["a"]), *press(PLAIN["1"]), (EV_KEY, KEY_RIGHTSHIFT, 0)]
    events += press(PLAIN["a"]) + type_text("@}:?", enter=False) + press(KEY_ENTER)
    assert KeyboardWedgeDecoder().feed_all(events) == ["A!a@}:?"]


def test_key_up_syn_msc_and_autorepeat_type_nothing() -> None:
    events = [*press(PLAIN["7"]), (EV_KEY, PLAIN["7"], 2), (EV_KEY, PLAIN["7"], 2), (EV_SYN, 0, 0), *press(KEY_ENTER)]
    assert KeyboardWedgeDecoder().feed_all(events) == ["7"]


def test_enter_alone_makes_no_frame_and_keypad_enter_also_ends_a_frame() -> None:
    decoder = KeyboardWedgeDecoder()
    assert decoder.feed_all(press(KEY_ENTER) + press(KEY_ENTER)) == []
    assert decoder.feed_all(type_text("42", enter=False) + press(KEY_KPENTER)) == ["42"]


def test_ctrl_right_bracket_is_the_gs1_group_separator() -> None:
    frames = KeyboardWedgeDecoder().feed_all(type_text(f"]C1010950110153000310LOT7{GS}21SN9"))
    assert frames == [f"]C1010950110153000310LOT7{GS}21SN9"]
    decoded = decode(frames[0])
    assert (decoded.lot, decoded.serial) == ("LOT7", "SN9")


def test_a_typed_gs1_digital_link_decodes_as_gs1_data() -> None:
    # ':' is Shift+; and '/' the slash key: a US-layout wedge types the URL whole, with or without an identifier.
    link = "https://id.gs1.org/01/04006381333931/10/LOT7/21/SN1"
    frames = KeyboardWedgeDecoder().feed_all(type_text(f"]Q1{link}") + type_text(link))
    assert frames == [f"]Q1{link}", link]
    for frame in frames:
        decoded = decode(frame)
        assert (decoded.gtin, decoded.lot, decoded.serial) == ("04006381333931", "LOT7", "SN1")


def test_alt_keypad_code_0029_is_the_group_separator() -> None:
    alt_gs = [(EV_KEY, KEY_LEFTALT, 1)] + [e for d in "0029" for e in press(KEYPAD[d])] + [(EV_KEY, KEY_LEFTALT, 0)]
    events = type_text("10LOT", enter=False) + alt_gs + type_text("0109501101530003")
    frames = KeyboardWedgeDecoder().feed_all(events)
    assert frames == [f"10LOT{GS}0109501101530003"]
    assert decode(frames[0]).gtin == "09501101530003"


def test_caps_lock_flips_letters_only() -> None:
    events = press(KEY_CAPSLOCK) + type_text("ab1A", enter=False) + press(KEY_CAPSLOCK) + type_text("c")
    assert KeyboardWedgeDecoder().feed_all(events) == ["AB1ac"]


def test_an_unknown_key_is_visible_not_dropped() -> None:
    frames = KeyboardWedgeDecoder().feed_all(type_text("12", enter=False) + press(KEY_F5) + type_text("3"))
    assert frames == ["12\ufffd3"]
    with pytest.raises(DecodeError, match="could not be read"):  # the operator is told; nothing is booked
        decode(frames[0])


def test_an_over_long_run_is_skipped_up_to_its_enter() -> None:
    """What the reader does past max_frame_chars: the rest of the run never becomes a scan of its own."""
    decoder = KeyboardWedgeDecoder()
    assert decoder.feed_all(type_text("7777", enter=False)) == []
    decoder.skip_to_end()
    assert decoder.in_frame and decoder.pending == ""
    assert decoder.feed_all(type_text("777")) == []  # the tail of the run, Enter included
    assert not decoder.in_frame
    assert decoder.feed_all(type_text("OK")) == ["OK"]
    decoder.skip_to_end()
    assert decoder.flush() is None and not decoder.in_frame  # an idle gap or an unplug ends the run too


def test_keymap_overrides_for_a_qwertz_scanner() -> None:
    keymap = keymap_from_config("us", {"KEY_Y": "zZ", "KEY_Z": "y"})
    decoder = KeyboardWedgeDecoder(keymap)
    events = press(KEY_Y) + press(KEY_Z) + [(EV_KEY, KEY_LEFTSHIFT, 1), *press(KEY_Z), (EV_KEY, KEY_LEFTSHIFT, 0)]
    assert decoder.feed_all(events + press(KEY_ENTER)) == ["zyY"]


def test_custom_terminator_key() -> None:
    decoder = KeyboardWedgeDecoder(terminators=["KEY_TAB"])
    assert decoder.feed_all(type_text("AB", enter=False) + press(KEY_TAB)) == ["AB"]
    assert decoder.feed_all(type_text("C") + type_text("D", enter=False)) == []  # Enter is just an unknown key now
    assert decoder.flush() == "C\ufffdD"
    assert decoder.pending == ""


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keymap": "dvorak"}, "keymap 'dvorak' is not built in"),
        ({"keymap_overrides": {"KEY_NOPE": "x"}}, "'KEY_NOPE' is not a key"),
        ({"keymap_overrides": {"KEY_Y": "xyz"}}, "one or two characters"),
        ({"terminator_keys": "KEY_ENTER"}, "terminator_keys must be a list"),
        ({"device": "event3"}, "absolute path"),
        ({"grab": "yes"}, "grab"),
    ],
)
def test_bad_wedge_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ScannerConfigError, match=message):
        WedgeScannerConfig.from_mapping({"reader_id": "till-1", "device": "/dev/input/event3", **settings})


def test_wedge_config_from_a_table() -> None:
    cfg = WedgeScannerConfig.from_mapping(
        {"reader_id": "till-1", "device": "/dev/input/by-id/usb-Zebra-event-kbd", "terminator_keys": ["KEY_TAB"]}
    )
    assert cfg.terminator_keys == ("KEY_TAB",) and cfg.grab
    assert cfg.decoder().feed_all(type_text("X", enter=False) + press(KEY_TAB)) == ["X"]


# -- the reader on real file descriptors ------------------------------------------------------------

INPUT_EVENT = struct.Struct("@llHHi")  # struct input_event on this machine


class FifoKeyboard:
    """A FIFO standing in for /dev/input/eventN, reached through a by-id style symlink."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.fd: int | None = None
        self.generation = 0
        self.plug()

    def plug(self) -> None:
        self.generation += 1
        node = self.link.with_name(f"event{self.generation}")
        os.mkfifo(node)
        self.fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)  # held open: the "device" stays present
        tmp = self.link.with_name("link.new")
        tmp.symlink_to(node)
        os.replace(tmp, self.link)

    def send(self, events: list[Event]) -> None:
        assert self.fd is not None
        os.write(self.fd, b"".join(INPUT_EVENT.pack(0, 0, *event) for event in events))

    def unplug(self) -> None:
        self.link.unlink()  # the by-id link disappears first, as udev removes it
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def keyboard(tmp_path: Path) -> Iterator[FifoKeyboard]:
    device = FifoKeyboard(tmp_path / "usb-Datalogic_Scanner-event-kbd")
    try:
        yield device
    finally:
        device.close()


def wedge_config(device: Path | str, **settings: object) -> WedgeScannerConfig:
    values: dict[str, object] = {
        "reader_id": "till-1",
        "device": str(device),
        "grab": False,  # a FIFO cannot be grabbed; the uinput test below covers the grab
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.1,
        **settings,
    }
    return WedgeScannerConfig.from_mapping(values)


async def test_wedge_scanner_reads_unplugs_and_replugs(
    keyboard: FifoKeyboard, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hardware")
    async with WedgeScanner(wedge_config(keyboard.link), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        keyboard.send(type_text("]E05901234123457"))
        first = await taker.one()

        keyboard.send(type_text("]C0PART", enter=False))
        keyboard.unplug()
        cut = await taker.one()
        down = await statuses.wait(available=False)

        keyboard.plug()
        await statuses.wait(available=True)
        keyboard.send(type_text(f"]C1010950110153000310LOT{GS}"))
        after = await taker.one()

    assert (first.text, first.complete, first.reader_id) == ("]E05901234123457", True, "till-1")
    assert (cut.text, cut.complete) == ("]C0PART", False)
    assert down.error is not None and "till-1" in str(down.error)
    assert decode(after.text).lot == "LOT"
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "went away" in r.getMessage()
    ]
    assert len(warnings) == 1


async def test_wedge_events_split_mid_struct_are_reassembled(keyboard: FifoKeyboard, statuses: StatusLog) -> None:
    async with WedgeScanner(wedge_config(keyboard.link), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        data = b"".join(INPUT_EVENT.pack(0, 0, *event) for event in type_text("96385074"))
        assert keyboard.fd is not None
        os.write(keyboard.fd, data[:37])
        await asyncio.sleep(0.02)  # let the reader see the first, partial struct on its own
        os.write(keyboard.fd, data[37:])
        scan = await ScanTaker(scanner).one()
    assert scan.text == "96385074"


async def test_wedge_idle_gap_for_scanners_without_enter(keyboard: FifoKeyboard, statuses: StatusLog) -> None:
    async with WedgeScanner(wedge_config(keyboard.link, idle_gap_s=0.05), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        keyboard.send(type_text("4006381333931", enter=False))
        scan = await taker.one()
        keyboard.send(type_text("BIN-7"))  # with Enter: ended by its terminator, not by the line going quiet
        entered = await taker.one()
    assert (scan.text, scan.complete, scan.by_gap) == ("4006381333931", True, True)  # the agent reads pieces by it
    assert (entered.text, entered.complete, entered.by_gap) == ("BIN-7", True, False)


async def test_grab_refused_is_unavailable_with_a_reason(keyboard: FifoKeyboard, statuses: StatusLog) -> None:
    async with WedgeScanner(wedge_config(keyboard.link, grab=True), on_status=statuses) as scanner:
        down = await statuses.wait(available=False)
        assert not scanner.available
    assert down.error is not None and "cannot take" in str(down.error) and "exclusively" in str(down.error)


@pytest.mark.skipif(not os.path.exists("/dev/uinput"), reason="needs /dev/uinput")
async def test_wedge_scanner_grabs_and_reads_a_virtual_keyboard(statuses: StatusLog) -> None:
    evdev = importlib.import_module("evdev")  # python-evdev, from the test extra: only this test needs it
    keys = sorted(set(PLAIN.values()) | set(SHIFTED.values()) | {KEY_ENTER, KEY_LEFTSHIFT, KEY_LEFTCTRL})
    virtual = await asyncio.to_thread(evdev.UInput, {EV_KEY: keys}, name="shelfsync-test-scanner")
    try:
        path = virtual.device.path
        async with WedgeScanner(wedge_config(path, grab=True), on_status=statuses) as scanner:
            await statuses.wait(available=True)
            other = evdev.InputDevice(path)
            try:
                with pytest.raises(OSError):
                    other.grab()  # ours is exclusive
            finally:
                other.close()
            for type_, code, value in type_text("]E05901234123457"):
                if type_ == EV_KEY:
                    virtual.write(type_, code, value)
                    virtual.syn()
            scan = await asyncio.wait_for(ScanTaker(scanner).one(), WAIT_S)
    finally:
        virtual.close()
    assert scan.text == "]E05901234123457"
