"""shelfsync's device layer: barcode scanners and barcode decoding.

Imports nothing from ``agent`` or ``hub``. A reader (serial or keyboard
wedge) is an async context manager that keeps its device open, reconnects
with backoff when it goes away, reports availability through ``on_status``
and yields every ``Scan`` from ``scans()``. ``decode()`` turns a scan's bytes
into a ``Decoded`` value (GTIN, GS1 element strings, RCN, plain text) or
raises ``DecodeError`` with one sentence for the operator.

    async with SerialScanner(SerialScannerConfig("backdoor", "/dev/serial/by-id/..."),
                             on_status=mark_reader) as scanner:
        async for scan in scanner.scans():
            try:
                decoded = decode(scan.raw, rcn_region="gb")
            except DecodeError as err:
                tell_operator(str(err))
"""

from hardware.decode import (
    GS,
    GTIN_LENGTHS,
    RCN_REGIONS,
    Decoded,
    DecodedKind,
    Element,
    GtinFormat,
    NetWeight,
    RcnInfo,
    Symbology,
    WeightUnit,
    check_rcn_region,
    decode,
    scan_text,
)
from hardware.errors import DecodeError, HardwareError, ScannerClosed, ScannerConfigError, ScannerDisconnected
from hardware.framing import FRAME_MAX_BYTES, Frame, FrameSplitter
from hardware.keymap import KEY_CODES, KEYMAPS, US_KEYMAP, Keymap, keymap_from_config
from hardware.reader import RECONNECT_INITIAL_S, RECONNECT_MAX_S, ScannerReader, StatusCallback
from hardware.scan import ReaderStatus, Scan
from hardware.serial_scanner import IDLE_GAP_S, SerialScanner, SerialScannerConfig
from hardware.wedge import KeyboardWedgeDecoder, WedgeScanner, WedgeScannerConfig

__all__ = [
    "FRAME_MAX_BYTES",
    "GS",
    "GTIN_LENGTHS",
    "IDLE_GAP_S",
    "KEYMAPS",
    "KEY_CODES",
    "RCN_REGIONS",
    "RECONNECT_INITIAL_S",
    "RECONNECT_MAX_S",
    "US_KEYMAP",
    "DecodeError",
    "Decoded",
    "DecodedKind",
    "Element",
    "Frame",
    "FrameSplitter",
    "GtinFormat",
    "HardwareError",
    "KeyboardWedgeDecoder",
    "Keymap",
    "NetWeight",
    "RcnInfo",
    "ReaderStatus",
    "Scan",
    "ScannerClosed",
    "ScannerConfigError",
    "ScannerDisconnected",
    "ScannerReader",
    "SerialScanner",
    "SerialScannerConfig",
    "StatusCallback",
    "Symbology",
    "WedgeScanner",
    "WedgeScannerConfig",
    "WeightUnit",
    "check_rcn_region",
    "decode",
    "keymap_from_config",
    "scan_text",
]
