"""shelfsync's wire contract: the stock event, its clock and ids, and the codec.

Imported by both the agent and the hub; imports neither.
"""

from protocol.codec import (
    MAX_BATCH_EVENTS,
    MSGPACK_CONTENT_TYPE,
    WIRE_VERSION,
    BadEvent,
    BadEvents,
    CountSnapshot,
    DiskReport,
    EventsPacker,
    Rejection,
    SyncRequest,
    SyncResponse,
    decode_sync_request,
    decode_sync_response,
    encode_events,
    encode_sync_request,
    encode_sync_response,
)
from protocol.errors import ProtocolError
from protocol.event import (
    BOOK_OUT_REASON,
    ON_HAND_KINDS,
    QTY_MAX,
    Kind,
    StockEvent,
    book_out_ref_problem,
    check_kind,
    check_qty,
    event_from_wire,
    event_to_wire,
)
from protocol.hlc import HybridClock, pack_hlc, unpack_hlc, wall_ms_now
from protocol.ids import derived_event_id, event_id_hex, new_event_id, parse_event_id

__all__ = [
    "BOOK_OUT_REASON",
    "MAX_BATCH_EVENTS",
    "MSGPACK_CONTENT_TYPE",
    "ON_HAND_KINDS",
    "QTY_MAX",
    "WIRE_VERSION",
    "BadEvent",
    "BadEvents",
    "CountSnapshot",
    "DiskReport",
    "EventsPacker",
    "HybridClock",
    "Kind",
    "ProtocolError",
    "Rejection",
    "StockEvent",
    "SyncRequest",
    "SyncResponse",
    "book_out_ref_problem",
    "check_kind",
    "check_qty",
    "decode_sync_request",
    "decode_sync_response",
    "derived_event_id",
    "encode_events",
    "encode_sync_request",
    "encode_sync_response",
    "event_from_wire",
    "event_id_hex",
    "event_to_wire",
    "new_event_id",
    "pack_hlc",
    "parse_event_id",
    "unpack_hlc",
    "wall_ms_now",
]
