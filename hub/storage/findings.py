"""Exception rows for findings other than a count's variance, worded once for every backend:
unknown barcodes, divergence from another system, quarantined import rows, a sales channel's diverging or
refused level, a channel's order the hub refused, two copies of one agent; and each exception's place
in the list (its source and that source's key of it, ``hub.storage.keys``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from hub.storage import keys
from hub.storage.base import DivergenceRow, ExceptionRow
from protocol import BOOK_OUT_REASON, event_id_hex
from protocol.catalog import UNKNOWN_SKU_PREFIX


def unknown_barcode(location: str, sku: str, on_hand: int, at_ms: int) -> ExceptionRow:
    barcode = sku[len(UNKNOWN_SKU_PREFIX) :]
    return ExceptionRow(
        "unknown_barcode",
        location,
        sku,
        f"Barcode {barcode} was scanned at {location} but the catalog does not know it; "
        f"{on_hand:+d} units wait under {sku} until it is added to the catalog (PUT /v1/catalog).",
        {"barcode": barcode, "on_hand": on_hand},
        at_ms,
        "unknown_barcode",
        (location, sku),
    )


def divergence(row: DivergenceRow) -> ExceptionRow:
    return ExceptionRow(
        "divergence",
        row.location,
        row.sku,
        f"{row.system} said {row.observed} of {row.sku} were on hand at {row.location}, "
        f"but the hub had {row.hub_on_hand} at that time ({row.difference:+d}).",
        {
            "system": row.system,
            "observed": row.observed,
            "hub_on_hand": row.hub_on_hand,
            "difference": row.difference,
            "observed_at_ms": row.observed_at_ms,
            "agent_id": row.agent_id,
            "id": row.obs_id,
            "source_file": row.source_file,
        },
        row.received_at_ms,
        "divergence",
        (row.location, row.sku, row.system),
    )


def import_quarantine(
    agent_id: str, issue_id: str, location: str, file: str, line: int, reason: str, raw: str, at_ms: int
) -> ExceptionRow:
    where = f"{file} line {line}" if line else file
    return ExceptionRow(
        "import_quarantine",
        location,
        None,
        f"A row of {where} at {location} was not imported: {reason}",
        {"agent_id": agent_id, "id": issue_id, "file": file, "line": line, "reason": reason, "raw": raw},
        at_ms,
        "import_quarantine",
        (agent_id, issue_id),
    )


CHANNEL_DIVERGENCE_FIELDS = (
    "channel, divergence_id, level_key, sku, location, hub_level, last_pushed, channel_level, found_at_ms, "
    "corrected_at_ms"
)
CHANNEL_REFUSED_FIELDS = "channel, level_key, sku, location, quantity, detail, at_ms"


def channel_divergence(
    channel: str, divergence_id: int, level_key: str, sku: str, location: str | None, hub_level: int,
    last_pushed: int | None, channel_level: int, found_at_ms: int, corrected_at_ms: int | None,
) -> ExceptionRow:  # fmt: skip
    """A row of ``CHANNEL_DIVERGENCE_FIELDS`` (table channel_divergences, hub.channels.reconcile)."""
    item_id, _, channel_location = level_key.partition("\t")
    told = "it was never told a level" if last_pushed is None else f"it last confirmed {last_pushed}"
    done = (
        f"the hub pushed its level there again at {_utc(corrected_at_ms)}" if corrected_at_ms is not None
        else "the hub is pushing its level there again"
    )
    return ExceptionRow(
        "channel_divergence",
        location,
        sku,
        f"Channel {channel} showed {channel_level} of {sku} at its location {channel_location} where the hub's level "
        f"is {hub_level} ({told}); {done}.",
        {
            "channel": channel, "id": divergence_id, "item_id": item_id, "channel_location": channel_location,
            "hub_level": hub_level, "last_pushed": last_pushed, "channel_level": channel_level,
            "corrected_at_ms": corrected_at_ms,
        },
        found_at_ms,
        "channel_divergence",
        (channel, divergence_id),
    )  # fmt: skip


def channel_refused(
    channel: str, level_key: str, sku: str, location: str | None, quantity: int, detail: str, at_ms: int
) -> ExceptionRow:
    """A row of ``CHANNEL_REFUSED_FIELDS`` (table channel_refusals, hub.channels.pusher)."""
    item_id, _, channel_location = level_key.partition("\t")
    return ExceptionRow(
        "channel_refused",
        location,
        sku,
        f"Channel {channel} refused to set {sku} (item {item_id}) at its location {channel_location} to {quantity}: "
        f"{detail.rstrip('.')}. Its other levels go out; fix the item at the channel, then refresh the mapping "
        f"(POST /v1/channels/{channel}/mapping/refresh) or wait for its level to change.",
        {"channel": channel, "item_id": item_id, "channel_location": channel_location, "quantity": quantity,
         "reason": detail},
        at_ms,
        "channel_refused",
        (channel, level_key),
    )  # fmt: skip


CHANNEL_MAPPING_FIELDS = "f.channel, f.seq, f.kind, f.sku, f.detail, l.loaded_ms"
CHANNEL_MAPPING_TABLE = "channel_findings f JOIN channel_mapping_loads l ON l.channel = f.channel"


def channel_mapping(channel: str, seq: int, kind: str, sku: str | None, detail: str, loaded_ms: int) -> ExceptionRow:
    """A row of ``CHANNEL_MAPPING_FIELDS`` (a finding of the channel's last mapping load, hub.channels.mapping)."""
    return ExceptionRow(
        "channel_mapping",
        None,
        sku,
        f"Channel {channel}: {detail.rstrip('.')}; then refresh the mapping (POST /v1/channels/{channel}/mapping/refresh).",
        {"channel": channel, "finding": kind},
        loaded_ms,
        "channel_mapping",
        (channel, seq),
    )


# A channel's order whose webhook the hub refused for good (table channel_orders_refused, schema 14,
# hub.channels.order_routes), as a row of ``CHANNEL_REFUSED_FIELDS``' shape (one statement reads both, their UNION
# ALL): it names no SKU (its lines are what could not be mapped), so the SKU's place carries the channel's location
# of the order; the hub location it feeds is the row's (schema 15; NULL when the refusal could not say). One an
# admin dismissed (booked by hand, ``ORDER_REFUSED_LISTED``) is not listed.
CHANNEL_ORDER_REFUSED_FIELDS = (
    "channel, order_id, channel_location AS sku, location, 0 AS quantity, reason, refused_at_ms"
)
ORDER_REFUSED_LISTED = "dismissed_at_ms IS NULL"
# How long a refused order is kept (hub.channels.state.SqlChannelState.refuse_order drops older ones at the
# channel's next refusal) and listed: twice the longest a pushed count reads back (pusher.SALES_WAIT_MAX_MS), and
# longer than Square retries a webhook (a day).
ORDER_REFUSALS_KEPT_MS = 48 * 3600 * 1000


def channel_order_refused(
    channel: str, order_id: str, channel_location: str | None, location: str | None, _quantity: int, reason: str,
    at_ms: int,
) -> ExceptionRow:  # fmt: skip
    """A row of ``CHANNEL_ORDER_REFUSED_FIELDS``: a Square order refused for good, not booked since (its booking
    deletes the row) nor dismissed; or, its id ``sale:<adjustment id>``, a sale at Square whose order has not reached
    the hub long after the sale (hub.channels.pusher.ChannelPusher._report_unbooked), not matched since."""
    if order_id.startswith(UNBOOKED_SALE_PREFIX):
        return _unbooked_sale(channel, order_id, channel_location, location, reason, at_ms)
    why = reason.removeprefix(f"Square order {order_id}: ").rstrip(".")
    at = f" at {location}" if location is not None else ""
    return ExceptionRow(
        "channel_order_refused",
        location,
        None,
        f"Square order {order_id}{at} on channel {channel} was refused at {_utc(at_ms)}: {why}; the hub never booked "
        "its sale, so the hub's level, and what the channels show, is a unit high for each unit sold: fix that and "
        "Square's next retry books the order, or book the sale by hand and dismiss this entry (POST /v1/channels/"
        f"{channel}/orders/{_in_path(order_id)}/dismiss; it leaves the list by itself when the order is booked, or "
        "two days after its refusal).",
        {"channel": channel, "order_id": order_id, "channel_location": channel_location, "reason": reason},
        at_ms,
        "channel_order_refused",
        (channel, order_id),
    )


UNBOOKED_SALE_PREFIX = "sale:"  # hub.channels.pusher.SALE_PREFIX


def _in_path(order_id: str) -> str:
    """An order id as the dismiss URL in a sentence carries it: percent-encoded, a slash too (``:`` left as is)."""
    return quote(order_id, safe=":")


def _unbooked_sale(
    channel: str, sale_id: str, channel_location: str | None, location: str | None, reason: str, at_ms: int
) -> ExceptionRow:
    return ExceptionRow(
        "channel_order_refused",
        location,
        None,
        f"{reason.rstrip('.')}. Until it is settled each count pushed to Square goes out less it, so Square never shows "
        "more than the shelf holds, while the hub's level, and what the other channels show, is a unit high for each "
        f"unit sold. Check that Square's order webhooks reach the hub (the subscription's notification URL and "
        f"signature key; GET /v1/channels shows channel {channel}'s last error) and look the sale up in Square's "
        "dashboard: if its order comes, the hub matches it and this entry leaves the list; if it will not, book the "
        f"sale by hand and dismiss this entry (POST /v1/channels/{channel}/orders/{_in_path(sale_id)}/dismiss), after "
        "which the counts are the hub's level.",
        {"channel": channel, "order_id": sale_id, "channel_location": channel_location, "reason": reason,
         "adjustment_id": sale_id[len(UNBOOKED_SALE_PREFIX) :]},
        at_ms,
        "channel_order_refused",
        (channel, sale_id),
    )  # fmt: skip


# The sources of channel exceptions read alone: (source, its columns, its table, the row maker, has a location
# column). A channel's refused levels and refused orders are read together (``CHANNEL_REFUSALS``).
CHANNEL_SOURCES: tuple[tuple[keys.ExceptionSource, str, str, Callable[..., ExceptionRow], bool], ...] = (
    (keys.CHANNEL_DIVERGENCE, CHANNEL_DIVERGENCE_FIELDS, "channel_divergences", channel_divergence, True),
    (keys.CHANNEL_MAPPING, CHANNEL_MAPPING_FIELDS, CHANNEL_MAPPING_TABLE, channel_mapping, False),
)
# The same for the two sources of one shape, whose rows one statement reads (their UNION ALL).
CHANNEL_REFUSALS: tuple[tuple[keys.ExceptionSource, str, str, Callable[..., ExceptionRow], bool], ...] = (
    (keys.CHANNEL_REFUSED, CHANNEL_REFUSED_FIELDS, "channel_refusals", channel_refused, True),
    (keys.CHANNEL_ORDER_REFUSED, CHANNEL_ORDER_REFUSED_FIELDS, "channel_orders_refused", channel_order_refused, True),
)


AGENT_COPY_FIELDS = "agent_id, epoch, hwm, first_ms, updated_ms, peer"


def agent_copies(
    agent_id: str, at_ms: int, count: int, locations: str, copies: Sequence[tuple[int, int, int, int, str | None]]
) -> ExceptionRow:
    """Two copies or more of one agent syncing at once (hub.storage.exceptions.AGENT_COPIES): ``count`` epochs of
    it, ``copies`` the newest synced of them as (epoch, hwm, first_ms, updated_ms, peer), ``locations`` the
    credential's (JSON)."""
    bound = json.loads(locations)
    epochs = [str(epoch) for epoch, *_ in copies]
    named = ", ".join(epochs[:-1]) + f" and {epochs[-1]}" if len(epochs) > 1 else "".join(epochs)
    more = f" and {count - len(copies):,} more" if count > len(copies) else ""
    seen = "; ".join(
        f"epoch {epoch} last synced at {_utc(last_ms)} from {peer or 'an address not known'}"
        for epoch, _, _, last_ms, peer in copies
    )
    return ExceptionRow(
        "agent_copies",
        bound[0] if bound else None,
        None,
        f"Agent {agent_id} is sending from {count:,} copies at once (epochs {named}{more}): {seen}. One agent's "
        "outbox runs on two machines (a cloned PC, an old disk image started beside the running one): each movement "
        "still counts once, but each copy knows only its own staff sessions, bin counts and POS imports. Switch off "
        "the copy that should not run; a second machine needs a credential of its own (shelfsync-hub agent add).",
        {
            "agent_id": agent_id, "locations": bound, "count": count,
            "copies": [{"epoch": epoch, "epoch_text": str(epoch), "hwm": hwm, "first_sync_ms": first_ms,
                        "last_sync_ms": last_ms, "peer": peer} for epoch, hwm, first_ms, last_ms, peer in copies],
        },
        at_ms,
        "agent_copies",
        (agent_id,),
    )  # fmt: skip


AGENT_DISK_FIELDS = "g.agent_id, g.locations, g.disk_state, g.disk_since_ms, g.disk"


def agent_disk(agent_id: str, locations: str, state: str, since_ms: int, report: str) -> ExceptionRow:
    """A store agent whose newest sync reported its disk full, or its disk reserve in use (hub.storage.exceptions,
    ``AGENT_DISK_FULL``; ``protocol.DiskReport.state``): gone once a report says there is room again."""
    bound = json.loads(locations)
    disk = json.loads(report)
    size, held, free = disk["reserve_bytes"], disk["reserve_held_bytes"], disk.get("free_bytes")
    where = f"{bound[0]}'s agent {agent_id}" if bound else f"Agent {agent_id}"
    room = "" if free is None else f", {_bytes(free)} free"
    if state == "full":
        reserve = f"disk reserve spent ({_bytes(size)})" if size else "no disk reserve configured"
        detail = (
            f"{where}: disk full, {reserve}, since {_utc(since_ms)}{room}; scans are being refused. Free disk space "
            "on that PC: the agent takes scans again at once, and this clears itself once it reports room."
        )
    else:
        detail = (
            f"{where}: disk full since {_utc(since_ms)}{room}; the agent stores scans in its disk reserve "
            f"({_bytes(held)} of {_bytes(size)} left) and refuses them once it is spent. Free disk space on that PC."
        )
    return ExceptionRow(
        "agent_disk_full",
        bound[0] if bound else None,
        None,
        detail,
        {
            "agent_id": agent_id, "locations": bound, "state": state, "since_ms": since_ms,
            "reserve_bytes": size, "reserve_held_bytes": held, "free_bytes": free, "refused_ms": disk.get("refused_ms"),
        },
        since_ms,
        "agent_disk",
        (agent_id,),
    )  # fmt: skip


AGENT_LOST_FIELDS = (
    "l.agent_id, g.locations, l.epoch, l.first_seq, l.last_seq, l.lost, l.at_least, l.of_agent, l.found_ms,"
    " l.received_ms"
)
# How an admin dismisses an agent's agent_movements_lost entries, once its store was counted again.
LOST_DISMISS_PATH = "/v1/agents/{agent_id}/lost/dismiss"


def agent_lost(
    agent_id: str, locations: str, epoch: int, first_seq: int, last_seq: int, lost: int, at_least: bool | int,
    of_agent: str | None, found_ms: int, received_ms: int,
) -> ExceptionRow:  # fmt: skip
    """Movements a store agent reported the hub lacks for good (hub.storage.exceptions, ``LOST``;
    ``protocol.LostReport``): the hub had acknowledged them, its database was restored from an older copy, and
    the agent's outbox no longer holds them to send again. The hub never had their SKUs after the restore: the
    store's stock is counted again, then an admin dismisses the entry."""
    bound = json.loads(locations)
    store = bound[0] if bound else None
    where = f"{store}'s agent {agent_id}" if store else f"Agent {agent_id}"
    how_many = f"at least {lost:,}" if at_least else f"{lost:,}"
    seqs = f"seq {first_seq:,}" if first_seq == last_seq else f"seqs {first_seq:,} to {last_seq:,}"
    whose = f", sent as agent {of_agent} before the outbox was rebound to {agent_id}" if of_agent else ""
    counted = ", ".join(bound) if bound else "that store"
    detail = (
        f"{where}: the hub lacks {how_many} movement{'' if lost == 1 else 's'} of that store ({seqs}{whose}), found"
        f" at {_utc(found_ms)}: it had acknowledged them, then its database was restored from an older copy, and the"
        " store's PC no longer holds them to send again. The hub cannot tell which SKUs they moved, so its counts"
        f" of {counted} are off by them: count {counted}'s stock again, then dismiss this entry (POST"
        f" {LOST_DISMISS_PATH.format(agent_id=agent_id)})."
    )
    return ExceptionRow(
        "agent_movements_lost",
        store,
        None,
        detail,
        {
            "agent_id": agent_id, "locations": bound, "epoch": epoch, "epoch_text": str(epoch), "first_seq": first_seq,
            "last_seq": last_seq, "lost": lost, "at_least": bool(at_least), "of_agent": of_agent, "found_ms": found_ms,
        },
        received_ms,
        "agent_lost",
        (agent_id, epoch, first_seq, last_seq),
    )  # fmt: skip


def book_out_without_ref(
    agent_id: str, event_id: bytes, location: str, sku: str, qty: int, at_ms: int, ref: str, unmatched: int
) -> ExceptionRow:
    """A book-out of goods received by mistake that names no transfer, while its store lists an unmatched receipt of
    its SKU (hub.storage.exceptions, ``BOOK_OUT_UNNAMED``): it booked the units out of the store's count but none
    out of a receipt, so that receipt stays listed. Gone once the store's unmatched receipts of the SKU are booked
    out under their refs."""
    n = -qty
    which = f"transfer {ref}" if unmatched == 1 else f"{unmatched} transfers ({ref} …)"
    detail = (
        f"{location} booked out {n} of {sku} as {BOOK_OUT_REASON!r} naming no transfer (its adjust has no ref), so"
        f" it books out nothing of {location}'s unmatched receipt of {sku} under {which}, which stays listed. If"
        f" these are those goods, book them in again with an adjust of +{n} without a ref and out with an adjust"
        f" of -{n} carrying the transfer's ref (on the handheld: Damage / write-off with the reference in"
        " Reference); both leave the list then."
    )
    data = {"agent_id": agent_id, "event_id": event_id_hex(event_id), "qty": qty, "unmatched_ref": ref,
            "unmatched": unmatched}  # fmt: skip
    return ExceptionRow("book_out_without_ref", location, sku, detail, data, at_ms, "book_out_without_ref",
                        (agent_id, event_id))  # fmt: skip


def _bytes(n: int) -> str:
    """A size as people read it: 8 MiB, 512 KiB, 12 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}".removesuffix(".0") + f" {unit}"
    return f"{n:,} bytes"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def sourced(row: ExceptionRow, source: str, *ident: str | int | bytes) -> ExceptionRow:
    """``row`` placed in the list: from ``source`` (``hub.storage.keys.EXCEPTION_SOURCES``), keyed ``ident``
    (made anew: ``dataclasses.replace`` cost more than the rest of a row's making, once per row a page reads)."""
    return ExceptionRow(row.kind, row.location, row.sku, row.detail, row.data, row.at_ms, source, ident)
