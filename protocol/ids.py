"""Event ids: 16-byte, time-ordered UUIDs.

``new_event_id`` mints a UUIDv7 (48-bit Unix milliseconds, then randomness), so
ids minted one after another append to the end of a B-tree index.
``derived_event_id`` makes the same id for the same input every time — for
movements that can be imported twice (a POS export row) — keeping the v7
layout's time prefix so those ids stay roughly time ordered too (RFC 9562
UUIDv8, custom bits from a keyed hash).
"""

from __future__ import annotations

import hashlib

import uuid_utils

EVENT_ID_BYTES = 16


def new_event_id() -> bytes:
    return uuid_utils.uuid7().bytes


def derived_event_id(timestamp_ms: int, key: bytes) -> bytes:
    """A deterministic UUIDv8: 48-bit ``timestamp_ms``, then 74 hashed bits of ``key``."""
    if not 0 <= timestamp_ms < 1 << 48:
        raise ValueError(f"timestamp {timestamp_ms} ms does not fit 48 bits")
    digest = bytearray(hashlib.blake2b(key, digest_size=10, person=b"shelfsync-evid").digest())
    raw = bytearray(timestamp_ms.to_bytes(6, "big") + digest)
    raw[6] = 0x80 | (raw[6] & 0x0F)  # version 8
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 9562 variant
    return bytes(raw)


def event_id_hex(event_id: bytes) -> str:
    return str(uuid_utils.UUID(bytes=event_id))


def parse_event_id(text: str) -> bytes:
    """Parse the canonical text form back to 16 bytes (ValueError if not a UUID)."""
    return uuid_utils.UUID(text).bytes
