"""Checks shared by the reader configurations, and building one from a config-file mapping."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from hardware.errors import ScannerConfigError

READER_ID_MAX_LEN = 64
_READER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")

C = TypeVar("C")


def check_reader_id(reader_id: object) -> None:
    if not (isinstance(reader_id, str) and len(reader_id) <= READER_ID_MAX_LEN and _READER_ID_RE.fullmatch(reader_id)):
        raise ScannerConfigError(
            f"reader_id {reader_id!r} must be 1-{READER_ID_MAX_LEN} letters, digits, '.', '_', ':' or '-' "
            "and start with a letter or digit"
        )


def check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ScannerConfigError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


IDLE_GAP_OFF = 0  # idle_gap_s = 0 in a config file: no idle gap (TOML has no null)


def check_idle_gap(value: object, low: float, high: float, ends: str, auto: str | None = None) -> float | None:
    """``idle_gap_s`` as a reader keeps it: None (no idle gap) for 0 or None, else a number in range. ``auto``: the
    word that also stands for the reader's default, named in the error."""
    if value is None or (value == IDLE_GAP_OFF and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        default = f", or {auto!r} (the default)" if auto else ""
        raise ScannerConfigError(
            f"idle_gap_s must be 0 (no idle gap: frames end only at {ends}) or a number of seconds from {low:g} "
            f"to {high:g}{default}, got {value!r}"
        )
    return float(value)


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ScannerConfigError(f"{name} must be true or false, got {value!r}")


def check_backoff(initial_s: object, max_s: object) -> None:
    check_number("reconnect_initial_s", initial_s, 0.001, 3600.0)
    check_number("reconnect_max_s", max_s, 0.001, 3600.0)
    assert isinstance(initial_s, (int, float)) and isinstance(max_s, (int, float))
    if initial_s > max_s:
        raise ScannerConfigError(f"reconnect_initial_s ({initial_s}) must not exceed reconnect_max_s ({max_s})")


def config_from_mapping(cls: type[C], mapping: Mapping[str, Any], what: str) -> C:
    """Build a config dataclass from a mapping (a TOML table), naming any unknown key."""
    if not isinstance(mapping, Mapping):
        raise ScannerConfigError(f"the {what} settings must be a table of key = value, got {type(mapping).__name__}")
    assert dataclasses.is_dataclass(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ScannerConfigError(
            f"unknown {what} setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}"
        )
    try:
        return cls(**mapping)
    except TypeError as err:  # a required key is missing
        raise ScannerConfigError(f"the {what} settings are incomplete ({err})") from err
