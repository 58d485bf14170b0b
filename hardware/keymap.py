"""Linux input key codes and keyboard layouts for keyboard-wedge scanners. Pure.

The codes are the kernel's stable ABI (linux/input-event-codes.h), so no
evdev package is needed to name them. A layout maps a key code to the
character it types without and with shift. The US layout is built in; a
scanner set to another keyboard country is handled by overriding the keys
that differ (``{"KEY_Y": "zZ", "KEY_Z": "yY"}`` for a QWERTZ scanner), or,
better, by setting the scanner's keyboard country to USA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hardware.errors import ScannerConfigError

EV_SYN = 0
EV_KEY = 1
EV_MSC = 4

KEY_CODES: dict[str, int] = {
    "KEY_ESC": 1,
    **{f"KEY_{d}": 1 + int(d) for d in "123456789"},
    "KEY_0": 11,
    "KEY_MINUS": 12,
    "KEY_EQUAL": 13,
    "KEY_BACKSPACE": 14,
    "KEY_TAB": 15,
    **{f"KEY_{c}": 16 + i for i, c in enumerate("QWERTYUIOP")},
    "KEY_LEFTBRACE": 26,
    "KEY_RIGHTBRACE": 27,
    "KEY_ENTER": 28,
    "KEY_LEFTCTRL": 29,
    **{f"KEY_{c}": 30 + i for i, c in enumerate("ASDFGHJKL")},
    "KEY_SEMICOLON": 39,
    "KEY_APOSTROPHE": 40,
    "KEY_GRAVE": 41,
    "KEY_LEFTSHIFT": 42,
    "KEY_BACKSLASH": 43,
    **{f"KEY_{c}": 44 + i for i, c in enumerate("ZXCVBNM")},
    "KEY_COMMA": 51,
    "KEY_DOT": 52,
    "KEY_SLASH": 53,
    "KEY_RIGHTSHIFT": 54,
    "KEY_KPASTERISK": 55,
    "KEY_LEFTALT": 56,
    "KEY_SPACE": 57,
    "KEY_CAPSLOCK": 58,
    **{f"KEY_F{n}": 58 + n for n in range(1, 11)},
    "KEY_NUMLOCK": 69,
    "KEY_SCROLLLOCK": 70,
    "KEY_KP7": 71,
    "KEY_KP8": 72,
    "KEY_KP9": 73,
    "KEY_KPMINUS": 74,
    "KEY_KP4": 75,
    "KEY_KP5": 76,
    "KEY_KP6": 77,
    "KEY_KPPLUS": 78,
    "KEY_KP1": 79,
    "KEY_KP2": 80,
    "KEY_KP3": 81,
    "KEY_KP0": 82,
    "KEY_KPDOT": 83,
    "KEY_102ND": 86,
    "KEY_F11": 87,
    "KEY_F12": 88,
    "KEY_KPENTER": 96,
    "KEY_RIGHTCTRL": 97,
    "KEY_KPSLASH": 98,
    "KEY_RIGHTALT": 100,
    "KEY_KPEQUAL": 117,
    "KEY_LEFTMETA": 125,
    "KEY_RIGHTMETA": 126,
}
KEY_NAMES: dict[int, str] = {code: name for name, code in KEY_CODES.items()}

SHIFT_KEYS = frozenset({KEY_CODES["KEY_LEFTSHIFT"], KEY_CODES["KEY_RIGHTSHIFT"]})
CTRL_KEYS = frozenset({KEY_CODES["KEY_LEFTCTRL"], KEY_CODES["KEY_RIGHTCTRL"]})
ALT_KEYS = frozenset({KEY_CODES["KEY_LEFTALT"]})  # right alt is AltGr on most layouts: not an Alt-code key
KEYPAD_DIGITS: dict[int, str] = {KEY_CODES[f"KEY_KP{d}"]: d for d in "0123456789"}
LOCK_KEYS = frozenset({KEY_CODES["KEY_NUMLOCK"], KEY_CODES["KEY_SCROLLLOCK"]})
CAPS_LOCK = KEY_CODES["KEY_CAPSLOCK"]
DEFAULT_TERMINATORS: tuple[str, ...] = ("KEY_ENTER", "KEY_KPENTER")


def key_code(key: str | int) -> int:
    """A key code from a name ("KEY_A"), a number, or a number as text ("30")."""
    if isinstance(key, int) and not isinstance(key, bool):
        code = key
    elif isinstance(key, str) and key.strip().isdigit():
        code = int(key)
    elif isinstance(key, str) and key.strip().upper() in KEY_CODES:
        return KEY_CODES[key.strip().upper()]
    else:
        raise ScannerConfigError(f"{key!r} is not a key: use a name such as KEY_A or a key code number")
    if not 0 < code < 0x300:
        raise ScannerConfigError(f"key code {code} is out of range (1-767)")
    return code


@dataclass(frozen=True, slots=True)
class Keymap:
    """A keyboard layout: key code -> (character without shift, character with shift)."""

    name: str
    keys: tuple[tuple[int, str, str], ...]
    _chars: dict[int, tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_chars", {code: (plain, shifted) for code, plain, shifted in self.keys})

    def chars(self, code: int) -> tuple[str, str] | None:
        return self._chars.get(code)

    def with_overrides(self, overrides: Mapping[str, str]) -> Keymap:
        """This layout with some keys changed: value "zZ" (plain, shifted), "z" (shift upper-cases), "" (removed)."""
        if not isinstance(overrides, Mapping):
            raise ScannerConfigError(
                f"keymap_overrides must be a table of key = characters, got {type(overrides).__name__}"
            )
        chars = dict(self._chars)
        for key, value in overrides.items():
            code = key_code(key)
            if not isinstance(value, str) or len(value) > 2:
                raise ScannerConfigError(
                    f"keymap override for {key!r} must be one or two characters (without and with shift), got {value!r}"
                )
            if value == "":
                chars.pop(code, None)
            else:
                chars[code] = (value[0], value[1] if len(value) == 2 else value.upper())
        keys = tuple(sorted((code, plain, shifted) for code, (plain, shifted) in chars.items()))
        return Keymap(f"{self.name}+overrides" if overrides else self.name, keys)


def _us_keys() -> tuple[tuple[int, str, str], ...]:
    pairs: dict[str, tuple[str, str]] = {
        **{f"KEY_{d}": (d, s) for d, s in zip("1234567890", "!@#$%^&*()")},
        **{f"KEY_{c}": (c.lower(), c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
        "KEY_MINUS": ("-", "_"),
        "KEY_EQUAL": ("=", "+"),
        "KEY_TAB": ("\t", "\t"),
        "KEY_LEFTBRACE": ("[", "{"),
        "KEY_RIGHTBRACE": ("]", "}"),
        "KEY_SEMICOLON": (";", ":"),
        "KEY_APOSTROPHE": ("'", '"'),
        "KEY_GRAVE": ("`", "~"),
        "KEY_BACKSLASH": ("\\", "|"),
        "KEY_102ND": ("\\", "|"),
        "KEY_COMMA": (",", "<"),
        "KEY_DOT": (".", ">"),
        "KEY_SLASH": ("/", "?"),
        "KEY_SPACE": (" ", " "),
        **{f"KEY_KP{d}": (d, d) for d in "0123456789"},
        "KEY_KPASTERISK": ("*", "*"),
        "KEY_KPMINUS": ("-", "-"),
        "KEY_KPPLUS": ("+", "+"),
        "KEY_KPDOT": (".", "."),
        "KEY_KPSLASH": ("/", "/"),
        "KEY_KPEQUAL": ("=", "="),
    }
    return tuple(sorted((KEY_CODES[name], plain, shifted) for name, (plain, shifted) in pairs.items()))


US_KEYMAP = Keymap("us", _us_keys())
KEYMAPS: dict[str, Keymap] = {"us": US_KEYMAP}


def keymap_from_config(name: str = "us", overrides: Mapping[str, str] | None = None) -> Keymap:
    """A built-in layout by name, with optional per-key overrides from the config file."""
    keymap = KEYMAPS.get(name.lower()) if isinstance(name, str) else None
    if keymap is None:
        raise ScannerConfigError(
            f"keymap {name!r} is not built in; use one of {', '.join(KEYMAPS)} with keymap_overrides for the keys that differ"
        )
    return keymap.with_overrides(overrides) if overrides else keymap
