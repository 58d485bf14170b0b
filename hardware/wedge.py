"""USB keyboard-wedge scanners: key events in, barcodes out.

``KeyboardWedgeDecoder`` is pure: it turns (type, code, value) input events
(key down = 1, up = 0, repeat = 2) into strings, with shift, caps lock, Ctrl
combinations (Ctrl+] is GS, the GS1 separator) and Alt+keypad codes
(Alt+0029 is GS too). A terminator key (Enter) ends a frame.

``WedgeScanner`` reads a Linux evdev node (/dev/input/by-id/...-event-kbd)
and grabs it exclusively, so the barcode never lands in whatever window has
focus. It talks to the kernel's evdev interface directly (one ioctl and a
fixed struct), so it needs no compiled package on the store machine.

Decisions: a key the layout does not know becomes U+FFFD in the frame (the
scan then fails to decode and the operator sees it) rather than vanishing;
autorepeat events are ignored, because a scanner never holds a key for the
kernel's repeat delay and a repeat is a stuck-key artefact.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hardware.config import (
    check_backoff,
    check_bool,
    check_idle_gap,
    check_number,
    check_reader_id,
    config_from_mapping,
)
from hardware.errors import HardwareError, ScannerConfigError
from hardware.framing import FRAME_MAX_BYTES, Frame
from hardware.keymap import (
    ALT_KEYS,
    CAPS_LOCK,
    CTRL_KEYS,
    DEFAULT_TERMINATORS,
    EV_KEY,
    KEYPAD_DIGITS,
    LOCK_KEYS,
    SHIFT_KEYS,
    US_KEYMAP,
    Keymap,
    key_code,
    keymap_from_config,
)
from hardware.reader import RECONNECT_INITIAL_S, RECONNECT_MAX_S, ScannerReader, StatusCallback

try:
    import fcntl
except ImportError:  # not Linux (Windows): there is no evdev to read; WedgeScanner says so when it opens
    fcntl = None  # type: ignore[assignment]

NO_EVDEV = (
    "a keyboard-wedge scanner is read from a Linux input device, which this system does not have; set the"
    ' scanner to USB serial (COM port) mode and configure it as type = "serial"'
)

KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2
UNKNOWN_KEY_CHAR = "\ufffd"
EVIOCGRAB = 0x40044590  # _IOW('E', 0x90, int)
INPUT_EVENT = struct.Struct("@llHHi")  # struct input_event: timeval, type, code, value
READ_EVENTS = 64

InputEvent = tuple[int, int, int]  # (type, code, value)


class KeyboardWedgeDecoder:
    """Key events to strings. Feed every event; a finished frame comes back from ``feed``."""

    def __init__(self, keymap: Keymap = US_KEYMAP, *, terminators: Iterable[str | int] = DEFAULT_TERMINATORS) -> None:
        self._keymap = keymap
        self._terminators = frozenset(key_code(k) for k in terminators)
        self._shift: set[int] = set()
        self._ctrl: set[int] = set()
        self._alt: set[int] = set()
        self._caps = False
        self._alt_digits = ""
        self._chars: list[str] = []
        self._skipping = False

    @property
    def pending(self) -> str:
        """The characters of the unfinished frame."""
        return "".join(self._chars)

    @property
    def in_frame(self) -> bool:
        """Whether a frame is unfinished: characters waiting, or an over-long run being skipped."""
        return bool(self._chars) or self._skipping

    def skip_to_end(self) -> None:
        """Drop the unfinished frame and whatever is typed until its terminator (or ``flush()``): an over-long run."""
        self._chars.clear()
        self._skipping = True

    def feed(self, type_: int, code: int, value: int) -> str | None:
        if type_ != EV_KEY:
            return None  # EV_SYN, EV_MSC (scan codes), LEDs ...
        if code in SHIFT_KEYS:
            _track(self._shift, code, value)
            return None
        if code in CTRL_KEYS:
            _track(self._ctrl, code, value)
            return None
        if code in ALT_KEYS:
            _track(self._alt, code, value)
            if not self._alt and self._alt_digits:
                self._chars.append(_alt_code_char(self._alt_digits))
                self._alt_digits = ""
            return None
        if value != KEY_DOWN:
            return None  # key up, or autorepeat (see the module docstring)
        if code == CAPS_LOCK:
            self._caps = not self._caps
            return None
        if code in LOCK_KEYS:
            return None
        if self._alt and code in KEYPAD_DIGITS:
            self._alt_digits += KEYPAD_DIGITS[code]
            return None
        if code in self._terminators:
            return self.flush()
        if not self._skipping:
            self._chars.append(self._char(code))
        return None

    def feed_all(self, events: Iterable[InputEvent]) -> list[str]:
        frames = []
        for type_, code, value in events:
            frame = self.feed(type_, code, value)
            if frame is not None:
                frames.append(frame)
        return frames

    def flush(self) -> str | None:
        """End the current frame now; None when it is empty (empty frames are dropped) or was skipped."""
        self._skipping = False
        frame = "".join(self._chars)
        self._chars.clear()
        return frame or None

    def _char(self, code: int) -> str:
        chars = self._keymap.chars(code)
        if chars is None:
            return UNKNOWN_KEY_CHAR
        plain, shifted = chars
        if self._ctrl:
            base = plain.upper()
            return chr(ord(base) & 0x1F) if len(base) == 1 and "@" <= base <= "_" else UNKNOWN_KEY_CHAR
        shift = bool(self._shift)
        if self._caps and plain.isalpha():
            shift = not shift
        return shifted if shift else plain


def _track(held: set[int], code: int, value: int) -> None:
    if value == KEY_UP:
        held.discard(code)
    else:
        held.add(code)


def _alt_code_char(digits: str) -> str:
    """Alt+keypad code: with a leading 0 a Windows-1252 code, else a code page 437 one (as Windows types them)."""
    number = int(digits) % 256
    if number < 128:
        return chr(number)
    return bytes([number]).decode("cp1252" if digits.startswith("0") else "cp437", errors="replace")


@dataclass(frozen=True, slots=True)
class WedgeScannerConfig:
    """Every setting of one keyboard-wedge scanner."""

    reader_id: str
    device: str  # /dev/input/by-id/usb-...-event-kbd
    grab: bool = True  # take the device exclusively, so keystrokes reach no other program
    keymap: str = "us"
    keymap_overrides: Mapping[str, str] = field(default_factory=dict, hash=False)
    terminator_keys: tuple[str, ...] = DEFAULT_TERMINATORS
    idle_gap_s: float | None = None  # end a frame after this much silence (scanners without an Enter); 0/None: never
    reconnect_initial_s: float = RECONNECT_INITIAL_S
    reconnect_max_s: float = RECONNECT_MAX_S
    max_frame_chars: int = FRAME_MAX_BYTES

    def __post_init__(self) -> None:
        check_reader_id(self.reader_id)
        if not isinstance(self.device, str) or not self.device.startswith("/"):
            raise ScannerConfigError(f"device {self.device!r} must be an absolute path such as /dev/input/by-id/...")
        check_bool("grab", self.grab)
        if isinstance(self.terminator_keys, str) or not self.terminator_keys:
            raise ScannerConfigError(f"terminator_keys must be a list of key names, got {self.terminator_keys!r}")
        object.__setattr__(self, "terminator_keys", tuple(self.terminator_keys))
        for key in self.terminator_keys:
            key_code(key)
        keymap_from_config(self.keymap, self.keymap_overrides)  # validates both
        object.__setattr__(self, "idle_gap_s", check_idle_gap(self.idle_gap_s, 0.001, 5.0, "a terminator key"))
        check_backoff(self.reconnect_initial_s, self.reconnect_max_s)
        check_number("max_frame_chars", self.max_frame_chars, 16, 1 << 20)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> WedgeScannerConfig:
        return config_from_mapping(cls, mapping, "keyboard-wedge scanner")

    def decoder(self) -> KeyboardWedgeDecoder:
        return KeyboardWedgeDecoder(
            keymap_from_config(self.keymap, self.keymap_overrides), terminators=self.terminator_keys
        )


class _EventLink:
    """One open evdev node: input_event structs in, frames out."""

    def __init__(
        self, fd: int, decoder: KeyboardWedgeDecoder, deliver: Callable[[Frame], None], config: WedgeScannerConfig
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = fd
        self._decoder = decoder
        self._deliver = deliver
        self._config = config
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._loop.add_reader(fd, self._readable)

    @property
    def lost(self) -> asyncio.Future[BaseException | None]:
        return self._lost

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, INPUT_EVENT.size * READ_EVENTS)
        except BlockingIOError:
            return
        except OSError as err:  # ENODEV: unplugged
            self._end(err)
            return
        if not data:
            self._end(None)
            return
        self._buf += data
        whole = len(self._buf) - len(self._buf) % INPUT_EVENT.size
        chunk, self._buf = self._buf[:whole], self._buf[whole:]
        for _sec, _usec, type_, code, value in INPUT_EVENT.iter_unpack(chunk):
            text = self._decoder.feed(type_, code, value)
            if text is not None:
                self._deliver(Frame(text.encode("utf-8"), True))
            elif len(self._decoder.pending) > self._config.max_frame_chars:
                self._flush(complete=False)
                self._decoder.skip_to_end()  # the rest of the run, up to its Enter, is noise too
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._config.idle_gap_s is not None and self._decoder.in_frame:
            self._timer = self._loop.call_later(self._config.idle_gap_s, self._flush, True, False, True)

    def _flush(self, complete: bool = True, by_disconnect: bool = False, by_gap: bool = False) -> None:
        self._timer = None
        text = self._decoder.flush()
        if text is not None:
            self._deliver(Frame(text.encode("utf-8"), complete, by_disconnect, by_gap and complete))

    def _end(self, cause: BaseException | None) -> None:
        if self._fd is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)  # also releases the grab
        self._fd = None
        self._flush(complete=False, by_disconnect=True)
        self._lost.set_result(cause)

    def pause(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)

    def resume(self) -> None:
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._readable)

    def abort(self) -> None:
        self._end(None)


class WedgeScanner(ScannerReader):
    """One keyboard-wedge scanner on an evdev node; same life cycle as ``SerialScanner``."""

    def __init__(self, config: WedgeScannerConfig, *, on_status: StatusCallback | None = None) -> None:
        if not isinstance(config, WedgeScannerConfig):
            raise ScannerConfigError(f"WedgeScanner needs a WedgeScannerConfig, got {type(config).__name__}")
        super().__init__(
            config.reader_id,
            config.device,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            on_status=on_status,
        )
        self._config = config

    @property
    def config(self) -> WedgeScannerConfig:
        return self._config

    async def _open(self) -> _EventLink:
        if fcntl is None:
            raise HardwareError(NO_EVDEV)
        fd = os.open(self._config.device, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if self._config.grab:
            try:
                fcntl.ioctl(fd, EVIOCGRAB, 1)
            except OSError as err:
                os.close(fd)
                raise HardwareError(
                    f"cannot take {self._config.device} exclusively ({os.strerror(err.errno or 0)})"
                ) from err
        return _EventLink(fd, self._config.decoder(), self._deliver, self._config)
