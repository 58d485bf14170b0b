"""The Square pusher against the Square emulator, with a real hub store and its real change feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.channels import Backoff, ChannelPusher, ChannelSpec, LevelKey, SqliteChannelState, SquareConnector
from hub.channels import pusher as pusher_module
from hub.channels.connector import (
    COUNTED_PAGES_FACTOR,
    COUNTED_PAGES_SLACK,
    CallRecord,
    ChannelError,
    ChannelUnavailable,
    Target,
)
from hub.channels.orders import square_movements
from hub.channels.reconcile import Reconciler
from hub.channels.runner import open_channel_state
from hub.channels.square import rfc3339_ms
from hub.feed import ChangeWatch
from hub.storage import open_store
from hub.storage.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from hub.storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from protocol import Kind, wall_ms_now
from protocol.retry import NO_JITTER
from tests.channels.emulators.square import SquareEmulator
from tests.channels.emulators.square_orders import SquareOrdersEmulator
from tests.channels.helpers import (
    Hub,
    book_order,
    logged,
    pushed_to_head,
    settle,
    spec_of,
    store_moves,
    wait_until,
)
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory

FAST = Backoff(base_s=0.02, max_s=0.2)


def square_spec(emu: SquareEmulator, pool: dict[str, str], **extra: Any) -> ChannelSpec:
    return spec_of({"name": "pos", "kind": "square", "url": emu.url, "pool": pool, "timeout_s": 2, **extra}, emu.token)


@asynccontextmanager
async def pushing(spec: ChannelSpec, hub: Hub, state: SqliteChannelState, **kw: Any) -> AsyncIterator[ChannelPusher]:
    async with (
        aiohttp.ClientSession() as session,
        ChannelPusher(spec, hub.store, state, SquareConnector(spec, session, **kw), hub.watch, backoff=FAST) as p,
    ):
        yield p


def shows(emu: SquareEmulator, expected: dict[tuple[str, str], int]) -> Callable[[], Any]:
    async def check() -> bool:
        return all(emu.quantity(obj, loc) == q for (obj, loc), q in expected.items())

    return check


async def _async(value: bool) -> bool:
    return value


async def test_250_levels_go_out_in_batches_of_at_most_100(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    ids = {f"P{i:03d}": square.add_variation(f"P{i:03d}") for i in range(250)}
    await hub.move(*[(Kind.RECEIVE, i % 7 + 1, "S1", sku) for i, sku in enumerate(ids)])
    await hub.move(*[(Kind.RECEIVE, 1, "S2", sku) for sku in list(ids)[:10]])
    async with pushing(square_spec(square, {"S1": loc, "S2": loc}), hub, state):
        expected = {(vid, loc): i % 7 + 1 + (1 if i < 10 else 0) for i, vid in enumerate(ids.values())}
        await wait_until(shows(square, expected), "Square holds every level")
    assert square.stats.batch_sizes and max(square.stats.batch_sizes) <= 100
    assert sum(square.stats.batch_sizes) == 250
    assert len(set(square.stats.keys)) == len(square.stats.keys), "one idempotency key per request"


async def test_429_waits_retry_after_and_sends_the_same_request_again(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    vid = square.add_variation("A")
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    square.faults.retry_after_s = 7
    square.faults.queue("429", "429")
    await hub.move((Kind.RECEIVE, 12, "S1", "A"))
    async with pushing(square_spec(square, {"S1": loc}), hub, state, sleep=sleep) as pusher:
        await wait_until(shows(square, {(vid, loc): 12}), "the level is out")
    assert slept == [7.0, 7.0], "Retry-After is honoured, each time"
    assert square.stats.rate_limited == 2 and pusher.status.failures == 0
    assert isinstance(pusher.connector, SquareConnector) and pusher.connector.rate_limited == 2


async def test_a_lost_answer_is_retried_with_the_same_key_and_applied_once(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    vid = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(square_spec(square, {"S1": loc}), hub, state):
        await wait_until(shows(square, {(vid, loc): 5}), "first level")
        before = len(square.stats.keys)
        square.faults.queue("drop_after", "http_500", "drop")
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await wait_until(lambda: _async(square.stats.replays >= 1), "the retry was answered from the first result")
        assert square.quantity(vid, loc) == 3
    keys = square.stats.keys[before:]
    assert len(keys) >= 2 and len(set(keys)) == 1, keys
    assert square.stats.batches_applied == 2


async def test_a_restart_resumes_from_the_saved_cursor(hub: Hub, square: SquareEmulator) -> None:
    loc = square.add_location()
    a, b = square.add_variation("A"), square.add_variation("B")
    spec = square_spec(square, {"S1": loc})
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 6, "S1", "B"))
    async with await SqliteChannelState.open(hub.db_path) as state:
        async with pushing(spec, hub, state) as pusher:
            await wait_until(shows(square, {(a, loc): 5, (b, loc): 6}), "first levels")
            await pushed_to_head(pusher, hub)
        saved = await state.cursor("pos")
    await hub.move((Kind.SALE, -1, "S1", "B"))
    await hub.move((Kind.SALE, -1, "S1", "B"))
    sizes = len(square.stats.batch_sizes)
    async with await SqliteChannelState.open(hub.db_path) as state:
        assert await state.cursor("pos") == saved
        async with pushing(spec, hub, state):
            await wait_until(shows(square, {(a, loc): 5, (b, loc): 4}), "levels after the restart")
    assert square.stats.batch_sizes[sizes:] == [1], "only B went out again"


async def test_a_deleted_variation_is_refused_alone_the_other_levels_still_go_out_and_it_is_unmapped(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    loc = square.add_location()
    a, b = square.add_variation("A"), square.add_variation("B")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 6, "S1", "B"))
    async with pushing(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await wait_until(shows(square, {(a, loc): 5, (b, loc): 6}), "first levels")
        kept = square.variations.pop(a)  # deleted at Square after the mapping was loaded
        await hub.move((Kind.SALE, -1, "S1", "A"), (Kind.SALE, -2, "S1", "B"))
        await wait_until(shows(square, {(b, loc): 4}), "B goes out without A")
        assert (
            f"channel pos: Square refused to set A ({a}) at {loc} to 4 (INVALID_REQUEST_ERROR NOT_FOUND: Catalog "
            "object not found. (changes[0].physical_count.catalog_object_id)); the channel's other levels go out"
        ) in caplog.text
        # the variation is gone: the listing is read at once, and A is no longer mapped (not a refusal left)
        await wait_until(lambda: _async(pusher.unmapped() == ["A"]), "A is unmapped")
        assert pusher.status.failures == 0 and pusher.status.refused == 0
        assert await state.refusals("pos") == {}
        assert [e for e in await hub.store.exceptions() if e.kind == "channel_refused"] == []

        sent = len(square.stats.batch_sizes)
        await hub.move((Kind.SALE, -1, "S1", "B"))  # A is not mapped: nothing of it is sent
        await wait_until(shows(square, {(b, loc): 3}), "B's next level")
        assert square.stats.batch_sizes[sent:] == [1]

        square.variations[a] = kept  # back at Square; a refresh maps it and sends its level
        await pusher.refresh_mapping()
        await wait_until(shows(square, {(a, loc): 4}), "A's level is taken")


async def test_a_refreshed_mapping_sets_every_level_again_over_newer_counts_at_square(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    a, b = square.add_variation("A"), square.add_variation("B")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 6, "S1", "B"))
    async with pushing(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await wait_until(shows(square, {(a, loc): 5, (b, loc): 6}), "first levels")
        square.drift(a, loc, 1)  # counted at Square after the hub's last change
        await pusher.refresh_mapping()
        await wait_until(shows(square, {(a, loc): 5, (b, loc): 6}), "the refresh set A again")
    assert square.stats.batch_sizes[-1] == 2, "every mapped level went out once"


async def test_a_level_after_a_full_push_stamped_later_still_wins_at_square(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, monkeypatch: Any
) -> None:
    """Square keeps the count with the latest occurred_at. The full push after a mapping load is stamped with
    the push time; a change whose commit time is earlier than that stamp (another hub's clock a little behind,
    or this one's stepped back) must still go out stamped after it, or Square keeps the stale level."""
    import hub.channels.pusher as pusher_module
    from protocol import wall_ms_now

    loc = square.add_location()
    vid = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    ahead_ms = 3_600_000
    monkeypatch.setattr(pusher_module, "wall_ms_now", lambda: wall_ms_now() + ahead_ms)  # the push's clock ahead
    async with pushing(square_spec(square, {"S1": loc}), hub, state):
        await wait_until(shows(square, {(vid, loc): 5}), "the full push after the mapping load")
        monkeypatch.setattr(pusher_module, "wall_ms_now", wall_ms_now)
        await hub.move((Kind.SALE, -2, "S1", "A"))  # committed an hour before the full push's stamp
        await wait_until(shows(square, {(vid, loc): 3}), "the sale's level wins over the earlier-pushed one")


async def test_levels_read_back_follow_squares_cursor_page_by_page(square: SquareEmulator) -> None:
    locs = [square.add_location() for _ in range(3)]
    ids = [square.add_variation(f"R{i:03d}") for i in range(150)]
    for i, vid in enumerate(ids):
        for j, loc in enumerate(locs):
            square.drift(vid, loc, i + j + 1)
    never = square.add_variation("NEVER-COUNTED")
    spec = square_spec(square, {"S1": locs[0], "S2": locs[1], "WH": locs[2]})
    keys = [LevelKey(v, loc) for v in [*ids, never] for loc in locs]
    async with aiohttp.ClientSession() as session:
        read = await SquareConnector(spec, session).read_levels(keys)
    expected = {LevelKey(v, loc): i + j + 1 for i, v in enumerate(ids) for j, loc in enumerate(locs)}
    assert read == {**expected, **{LevelKey(never, loc): 0 for loc in locs}}
    # 151 items: 100 a request (300 counts: 3 pages of 100), then 51 (150 counts: 2 pages)
    assert (square.stats.count_pages, square.stats.count_cursors) == (5, 3)


async def test_a_square_inventing_a_count_for_every_page_is_stopped_near_what_the_hub_asked_for(
    square: SquareEmulator,
) -> None:
    """The hub asks for at most items × locations counts: a Square handing out one new made-up count per page under
    fresh cursors brings something new every time (the stale rule cannot see it) and was followed to the
    1,000-page cap; it is stopped a few pages past what 3 items at 2 locations need, with one sentence."""
    locs = [square.add_location() for _ in range(2)]
    ids = [square.add_variation(f"R{i}") for i in range(3)]
    square.invent_count_pages = 200  # far past the bound; the stand-in refuses the cursor after that many
    spec = square_spec(square, {"S1": locs[0], "S2": locs[1]})
    async with aiohttp.ClientSession() as session:
        asked = r"far past the 6 count\(s\) asked for: 3 item\(s\) × 2 location\(s\)"
        with pytest.raises(ChannelUnavailable, match=asked) as err:
            await SquareConnector(spec, session).read_levels([LevelKey(v, loc) for v in ids for loc in locs])
    pages = square.stats.count_pages
    # each page counted as one count, as Square promises no page size: 6 counts need at most 6 honest pages
    assert pages == COUNTED_PAGES_FACTOR * 6 + COUNTED_PAGES_SLACK + 1, f"{pages} pages were asked for"
    message = str(err.value)
    assert message.startswith(f"Square's pages of counts of channel {spec.name}") and "reading stopped there" in message
    assert "\n" not in message


async def test_a_level_mapped_just_before_a_restart_goes_out_after_it(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    vb = square.add_variation("B")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 3, "S1", "B"))
    spec = square_spec(square, {"S1": loc})
    async with pushing(spec, hub, state) as first:
        await wait_until(shows(square, {(vb, loc): 3}), "Square shows B")
        await pushed_to_head(first, hub)  # the cursor is past A's receipt: A was unmapped then
        va = square.add_variation("A")  # the merchant adds A at Square and asks for a refresh …
        await first.refresh_mapping()
        square.faults.queue(*["http_503"] * 10_000)  # … and Square fails every push from now on
        await wait_until(lambda: _async(first.status.failures >= 2), "the forced push of A fails")
    square.faults._queue.clear()  # Square is back; the hub restarted meanwhile
    batches = len(square.stats.batch_sizes)
    async with pushing(spec, hub, state):
        await wait_until(shows(square, {(va, loc): 5, (vb, loc): 3}), "Square shows A after the restart", 10.0)
    assert square.stats.batch_sizes[batches:] == [2], "A and B: B's confirmation was forgotten with the refresh"


@pytest.mark.parametrize("restart", [False, True], ids=["same-hub", "after-a-restart"])
async def test_a_level_applied_whose_answer_was_lost_is_set_again_when_the_hub_returns_to_the_last_confirmed_one(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, restart: bool
) -> None:
    """Square applied 2 but its answer was lost (or the hub was killed before it came); then the hub's level goes
    back to the 0 Square last confirmed. The channel holds 2, not 0: that level must go out, not be skipped as
    unchanged."""
    loc = square.add_location()
    a = square.add_variation("A")
    spec = square_spec(square, {"S1": loc})
    async with aiohttp.ClientSession() as session:

        def pusher() -> ChannelPusher:
            return ChannelPusher(spec, hub.store, state, SquareConnector(spec, session), hub.watch, backoff=FAST)

        first = pusher()
        assert await first.turn()  # the mapping's levels: A at 0
        assert square.quantity(a, loc) == 0
        await hub.move((Kind.RECEIVE, 2, "S1", "A"))
        square.faults.queue("drop_after")
        with pytest.raises(ChannelError):
            await first.turn()
        assert square.quantity(a, loc) == 2  # applied; the answer never came
        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub's level is back at the 0 Square last confirmed
        again = pusher() if restart else first
        for _ in range(10):
            if not await again.turn():
                break
    assert square.quantity(a, loc) == 0


async def test_a_variation_created_again_under_a_new_id_is_mapped_again_at_the_refused_push(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A push refused because the variation is gone (NOT_FOUND) was stored as a refusal and nothing more: a
    variation deleted and created again at Square showed nothing until the next reconciliation, 15 minutes
    later by default. The refusal now reads the listing at once (at most once per REMAP_GAP_S) and pushes to
    the new id."""
    loc = square.add_location()
    old = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await wait_until(shows(square, {(old, loc): 5}), "the first level")
        del square.variations[old]  # deleted in the Square dashboard …
        new = square.add_variation("A")  # … and created again: a new id
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(square, {(new, loc): 4}), "the new variation gets A's level", bound_s=10)
        assert pusher.items == {"A": new} and pusher.status.refused == 0
    assert f"channel pos: Square no longer has, or renamed, the item(s) of 1 level(s) (first A, item {old}); reading its listing now" in caplog.text


async def test_items_gone_again_within_the_gap_wait_for_it_before_the_listing_is_read_again(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused pushes read the listing at most once per REMAP_GAP_S per channel; one within it waits for it."""
    import hub.channels.pusher as pusher_module

    monkeypatch.setattr(pusher_module, "REMAP_GAP_S", 5.0)
    loc = square.add_location()
    first = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    listings = []
    async with pushing(square_spec(square, {"S1": loc}), hub, state) as pusher:
        real = pusher.connector.listing

        async def counted() -> Any:
            listings.append(1)
            return await real()

        await wait_until(shows(square, {(first, loc): 5}), "the first level (the mapping loaded)")
        monkeypatch.setattr(pusher.connector, "listing", counted)
        del square.variations[first]
        second = square.add_variation("A")
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(square, {(second, loc): 4}), "the second variation gets A's level")
        assert len(listings) == 1
        del square.variations[second]
        third = square.add_variation("A")
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(lambda: _async(bool(pusher.refused)), "the level is refused again")
        assert len(listings) == 1 and pusher.items == {"A": second}  # within the gap: not read yet
        await wait_until(shows(square, {(third, loc): 3}), "the third variation gets A's level after the gap")
        assert len(listings) == 2


async def test_counts_stamped_outside_squares_window_are_sent_at_its_edge(
    square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Square refuses a physical count stamped in the future or more than 24 hours back; stamps never go back, so
    after a clock ran ahead they were in the future (and a level unchanged for days is stamped days back): the
    levels were refused. They are now sent at the window's edge, said once."""
    loc = square.add_location()
    ahead, old = square.add_variation("A"), square.add_variation("B")
    spec = square_spec(square, {"S1": loc})
    now = wall_ms_now()
    batch = {
        LevelKey(ahead, loc): Target(4, None, now + 3600 * 1000),  # a clock an hour ahead stamped the last one
        LevelKey(old, loc): Target(6, None, now - 3 * 86400 * 1000),  # its newest change is three days old
    }
    async with aiohttp.ClientSession() as session:
        connector = SquareConnector(spec, session)
        confirmed = await connector.push(batch, "pos:1")
        assert confirmed == {LevelKey(ahead, loc): 4, LevelKey(old, loc): 6}
        await connector.push({LevelKey(ahead, loc): Target(5, 4, now + 3600 * 1000 + 1)}, "pos:2")
    assert square.quantity(ahead, loc) == 5 and square.quantity(old, loc) == 6
    said = [r for r in caplog.records if "outside the window Square takes" in r.getMessage()]
    assert len(said) == 1, "said once while it goes on"
    assert "channel pos: 2 count(s) are stamped outside the window Square takes" in said[0].getMessage()


async def test_counts_are_stamped_by_squares_clock_when_its_answers_say_it_is_behind_the_hubs(
    square: SquareEmulator,
) -> None:
    """Square refuses a count stamped in its future: a hub whose clock runs ahead of Square's sent its level stamped
    at its own now, and Square refused it. The connector reads Square's clock from its answers' Date header, so once
    Square has answered (the listing read before any push), the stamp is no later than Square's own time."""
    square.wall_offset_s = -3600.0  # Square's clock an hour behind this machine's
    loc = square.add_location()
    a = square.add_variation("A")
    spec = square_spec(square, {"S1": loc})
    async with aiohttp.ClientSession() as session:
        connector = SquareConnector(spec, session)
        assert [e.sku for e in await connector.listing()] == ["A"]
        confirmed = await connector.push({LevelKey(a, loc): Target(7, None, wall_ms_now())}, "pos:1")
    assert confirmed == {LevelKey(a, loc): 7}
    assert square.quantity(a, loc) == 7


async def test_a_clock_in_step_with_squares_moves_no_stamp() -> None:
    """Date says the second only: an answer made by a clock in step with ours reads up to a second (plus the trip)
    behind, which must not move stamps, or two pushes in a row could be stamped out of order."""
    record = CallRecord()
    now = wall_ms_now()
    for lag_ms in (990, 20, 640):
        record.dated(format_datetime(datetime.fromtimestamp((now - lag_ms) / 1000, UTC), usegmt=True), now)
    assert record.peer_behind_ms == 0
    record.dated("Sat, 05 Dec 2026 10:00:00 GMT", wall_ms_now())  # one answer a day behind: the smallest lag stands
    assert record.peer_behind_ms == 0
    far = CallRecord()
    far.dated(format_datetime(datetime.fromtimestamp((now - 3_600_000) / 1000, UTC), usegmt=True), now)
    far.dated("not a date", now)
    assert 3_600_000 <= far.peer_behind_ms < 3_602_000


# --- a register sale during a push, told from a count Square kept over it -----------------------------------------

CHANGES_PATH = "/v2/inventory/changes/batch-retrieve"


@asynccontextmanager
async def by_hand(spec: ChannelSpec, hub: Hub, state: SqliteChannelState) -> AsyncIterator[ChannelPusher]:
    """A pusher whose loop is not started: each test turns it (``settle``), so what Square holds at every step is
    known."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield ChannelPusher(spec, hub.store, state, SquareConnector(spec, session), hub.watch, backoff=FAST)


async def past_the_change(hub: Hub, location: str, sku: str) -> None:
    """Return once this machine's clock is past the hub's newest change of ``sku`` (the push's occurred_at): what
    the register does from then on happened after the hub's change — in the coalescing wait, or while the push
    is on its way."""
    (row,) = await hub.store.counts(location=location, sku=sku)
    while wall_ms_now() <= row.updated_at_ms:
        await asyncio.sleep(0.001)


async def book_square_order(
    hub: Hub, pusher: ChannelPusher, location: str, lines: list[tuple[str, int]], order_id: str | None = None
) -> None:
    """The register's sale comes back as its order (docs/channels.md, "Orders back"): a COMPLETED in-person order
    (``order_id``: the register sale's ``transaction_id``), translated and booked at the hub as the order webhook
    books it, under the channel's identity."""
    now = rfc3339_ms(wall_ms_now())
    order = {"id": order_id or f"ORDER{wall_ms_now()}", "location_id": location, "state": "COMPLETED", "version": 3,
             "created_at": now, "updated_at": now, "closed_at": now, "fulfillments": [],
             "line_items": [{"uid": f"LINE{i}", "catalog_object_id": item, "quantity": str(n)}
                            for i, (item, n) in enumerate(lines)]}  # fmt: skip
    await book_order(hub, pusher, "square", lambda ctx: square_movements(ctx, order))


async def test_a_register_sale_during_the_push_is_not_pushed_over_and_its_order_is_not_counted_twice(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Square applies a sale that occurred after a pushed count's occurred_at on top of it, so its answer shows one
    unit less than pushed — as it does when it keeps a register count stamped later. The pusher took both for a
    kept count and pushed the hub's level again: Square showed one unit too many (an oversell) until the sale's
    order came back. Square's own record of the changes tells them apart: only a sale after the push, so Square's
    count is right, confirmed as it stands, and the order booked later moves the hub's level to it: nothing more
    goes out."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await settle(pusher)
        assert square.quantity(a, loc) == 10 and square.stats.change_queries == []  # an answer as pushed: no read
        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub's change: A is 8 …
        await past_the_change(hub, "S1", "A")
        square.register_sale(a, loc, 1)  # … and a sale at the register before the push reaches Square
        applied = square.stats.batches_applied
        await settle(pusher)
        assert square.quantity(a, loc) == 7  # 8 pushed, less the register's sale: not pushed back up to 8
        assert square.stats.batches_applied == applied + 1, "the level was not pushed again"
        assert pusher.pushed == {LevelKey(a, loc): 7} and await state.pushed("pos") == {LevelKey(a, loc): 7}
        assert len(square.stats.change_queries) == 1  # one read of Square's changes for the push's answer
        query = square.stats.change_queries[0]
        assert (query["catalog_object_ids"], query["location_ids"]) == ([a], [loc])
        assert query["types"] == ["PHYSICAL_COUNT", "ADJUSTMENT"] and "updated_after" in query

        await book_square_order(hub, pusher, loc, [(a, 1)])  # the sale's order comes back: the hub books it
        assert await hub.available("S1", "A") == 7
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and square.stats.batches_applied == applied + 1  # once, not twice
    said = [r.getMessage() for r in caplog.records if "after the push's time" in r.getMessage()]
    assert said == [
        (
            f"channel pos: Square applied 1 change(s) made there after the push's time on top of 1 pushed level(s) "
            f"(first A at {loc}: 8 pushed, -1 since, 7 now), so its count stands and is confirmed rather than pushed "
            "over; a sale among them reaches the hub with its order"
        )
    ]
    assert "kept its own count" not in caplog.text


async def test_a_register_count_kept_over_the_push_and_a_sale_during_another_are_each_handled_as_what_they_are(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """One push, three levels: A counted at the register after the hub's change (Square keeps that count: the hub's
    level goes out again, stamped after it), B sold at the register (Square's count stands), C counted and then
    sold there (the count is not the hub's: pushed again)."""
    loc = square.add_location()
    a, b, c = square.add_variation("A"), square.add_variation("B"), square.add_variation("C")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 10, "S1", "B"), (Kind.RECEIVE, 10, "S1", "C"))
    async with by_hand(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await settle(pusher)
        await hub.move((Kind.SALE, -2, "S1", "A"), (Kind.SALE, -2, "S1", "B"), (Kind.SALE, -2, "S1", "C"))
        await past_the_change(hub, "S1", "C")
        square.register_count(a, loc, 5)
        square.register_sale(b, loc, 1)
        square.register_count(c, loc, 6)
        square.register_sale(c, loc, 1)
        sizes = len(square.stats.batch_sizes)
        await settle(pusher)
        assert (square.quantity(a, loc), square.quantity(b, loc), square.quantity(c, loc)) == (8, 7, 8)
        assert square.stats.batch_sizes[sizes:] == [3, 2], "A and C went out again, B did not"
        assert pusher.pushed == {LevelKey(a, loc): 8, LevelKey(b, loc): 7, LevelKey(c, loc): 8}
        assert len(square.stats.change_queries) == 1, "one read for the push's answer, none for the answer after"
        assert sorted(square.stats.change_queries[0]["catalog_object_ids"]) == sorted([a, b, c])
    assert (
        "channel pos: Square kept its own count at 2 level(s) it holds stamped later than the push "
        f"(first A at {loc}: 5, not 8"
    ) in caplog.text


async def test_squares_changes_are_read_page_by_page_with_its_cursor(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 20, "S1", "A"))
    async with by_hand(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await settle(pusher)
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await past_the_change(hub, "S1", "A")
        for _ in range(5):
            square.register_sale(a, loc, 1)
        square.changes_page_max = 2  # Square answers smaller pages than asked for
        applied = square.stats.batches_applied
        await settle(pusher)
        assert square.quantity(a, loc) == 13 and square.stats.batches_applied == applied + 1
        assert pusher.pushed == {LevelKey(a, loc): 13}
    # the mapping's count, the push's, five sales: four pages of two, the last three asked for with Square's cursor
    assert (square.stats.change_pages, square.stats.change_cursors) == (4, 3)


async def test_changes_read_past_their_bound_leave_the_level_kept(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import hub.channels.square as square_module

    monkeypatch.setattr(square_module, "CHANGES_PAGES_MAX", 2)
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 20, "S1", "A"))
    async with by_hand(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await settle(pusher)
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await past_the_change(hub, "S1", "A")
        for _ in range(5):
            square.register_sale(a, loc, 1)
        square.changes_page_max = 2
        await settle(pusher)
        assert square.quantity(a, loc) == 18  # today's way: pushed again as a kept count
    assert square.stats.change_pages == 2, "reading stopped at the bound"
    assert "more than 2 page(s) of changes" in caplog.text


@pytest.mark.parametrize("fault", ["429", "http_503", "slow"])
async def test_when_squares_changes_cannot_be_read_the_level_is_pushed_again_as_kept_said_once(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(square_spec(square, {"S1": loc}, timeout_s=0.5), hub, state) as pusher:
        await settle(pusher)
        for shown in (9, 8):  # twice: a sale at the register during each push, Square's changes unreadable
            at = square.fault_at(CHANGES_PATH, fault)
            at.retry_after_s, at.slow_s = 30, 3.0
            await hub.move((Kind.SALE, -1, "S1", "A"))
            await past_the_change(hub, "S1", "A")
            square.register_sale(a, loc, 1)
            await settle(pusher)
            assert square.quantity(a, loc) == shown  # as before: the hub's level, pushed again after the sale
        await hub.move((Kind.SALE, -1, "S1", "A"))  # Square's changes can be read again
        await past_the_change(hub, "S1", "A")
        square.register_sale(a, loc, 1)
        await settle(pusher)
        assert square.quantity(a, loc) == 6
    fell_back = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(fell_back) == 1, "said once while it goes on"
    message = fell_back[0].getMessage()
    assert message.startswith(
        "channel pos: Square's inventory changes could not be read to tell a sale at Square from a count it kept "
        "over the push ("
    )
    assert message.endswith("); until they can, a level Square answers differently is pushed again as a kept count")
    assert sum("can be read again" in r.getMessage() for r in caplog.records) == 1


async def test_the_square_stand_in_answers_changes_as_the_reference_says(square: SquareEmulator) -> None:
    """BatchRetrieveInventoryChanges (2024-11-20): filters, oldest occurred_at first, cursor pages bound to their
    query, Square's error shapes."""
    loc, other = square.add_location(), square.add_location()
    a, b = square.add_variation("A"), square.add_variation("B")
    now = datetime.now(UTC)
    square.register_count(a, loc, 5, occurred_at=now - timedelta(minutes=3))
    square.register_sale(a, loc, 2, occurred_at=now - timedelta(minutes=1))
    square.register_sale(a, loc, 1, occurred_at=now - timedelta(minutes=2))
    square.register_count(b, loc, 9)
    square.register_count(a, other, 4)
    headers = {"Authorization": f"Bearer {square.token}", "Square-Version": "2024-11-20"}

    async def ask(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with session.post(square.url + CHANGES_PATH, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession(trust_env=False) as session:
        status, answer = await ask(session, {"catalog_object_ids": [a], "location_ids": [loc]})
        assert status == 200 and "cursor" not in answer
        kinds = [(c["type"], (c.get("physical_count") or c.get("adjustment"))["quantity"]) for c in answer["changes"]]
        assert kinds == [("PHYSICAL_COUNT", "5"), ("ADJUSTMENT", "1"), ("ADJUSTMENT", "2")]  # oldest first
        sale = answer["changes"][1]["adjustment"]
        assert (sale["from_state"], sale["to_state"], sale["source"]["product"]) == ("IN_STOCK", "SOLD", "SQUARE_POS")
        assert {"id", "occurred_at", "created_at", "catalog_object_id", "location_id"} <= sale.keys()
        assert square.quantity(a, loc) == 2  # the count, less the sales after it

        status, answer = await ask(session, {"types": ["ADJUSTMENT"]})
        assert status == 200 and [c["type"] for c in answer["changes"]] == ["ADJUSTMENT"] * 2
        status, answer = await ask(session, {"updated_after": rfc3339_ms(wall_ms_now() + 60_000)})
        assert status == 200 and answer.get("changes") == []

        pages, body = [], {"location_ids": [loc, other], "limit": 2}
        while True:
            status, answer = await ask(session, body)
            assert status == 200
            pages.append(len(answer["changes"]))
            if "cursor" not in answer:
                break
            body = {**body, "cursor": answer["cursor"]}
        assert pages == [2, 2, 1]
        status, answer = await ask(session, {"location_ids": [loc], "limit": 2, "cursor": body["cursor"]})
        assert (status, answer["errors"][0]["code"]) == (400, "INVALID_CURSOR")

        for bad, code, field in (
            ({"types": ["TRANSFER"]}, "INVALID_VALUE", "types[0]"),
            ({"types": ["SOMETHING"]}, "INVALID_ENUM_VALUE", "types[0]"),
            ({"updated_before": "yesterday"}, "INVALID_TIME", "updated_before"),
            ({"limit": 0}, "INVALID_VALUE", "limit"),
            ({"catalog_object_ids": a}, "EXPECTED_ARRAY", "catalog_object_ids"),
        ):
            status, answer = await ask(session, bad)
            (error,) = answer["errors"]
            assert (status, error["category"], error["code"], error["field"]) == (
                400, "INVALID_REQUEST_ERROR", code, field
            ), bad  # fmt: skip


async def test_a_register_sale_names_its_order_by_the_transaction_the_order_is_not_by_its_payment() -> None:
    """Square's reference (2024-11-20) ties a sale in the inventory to what sold it only by the adjustment's
    ``transaction_id``, the id of the Transaction (InventoryAdjustment has no order field); an order paid at a register
    is its own transaction: its tenders carry the order's ``id`` as their ``transaction_id`` and the payment's id as
    their ``id`` and ``payment_id``. The sale read before a push names the order the order webhooks book, not the
    payment."""
    async with SquareOrdersEmulator() as square:
        loc, a = square.add_location(), square.add_variation("A")
        square.register_count(a, loc, 5, occurred_at=datetime.now(UTC) - timedelta(minutes=2))
        order = square.sell_at_register(loc, [(a, 2)])
        (tender,) = order["tenders"]
        assert tender["transaction_id"] == order["id"] != tender["payment_id"] == tender["id"]
        async with aiohttp.ClientSession() as session:
            connector = SquareConnector(square_spec(square, {"S1": loc}), session)
            sales = await connector.sales_since({LevelKey(a, loc): wall_ms_now() - 180_000})
    assert sales is not None
    assert [(s.order_id, s.units) for s in sales[LevelKey(a, loc)]] == [(order["id"], 2)]


def hooked(spec: ChannelSpec) -> ChannelSpec:
    """The channel takes Square's order webhooks: the hub books its register sales' orders."""
    return replace(
        spec, webhook_secret="sq-signature-key-0123", notification_url="https://hub.test/v1/channels/pos/webhooks"
    )


async def test_a_count_goes_out_less_the_register_sales_whose_orders_have_not_reached_the_hub(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A register sale whose order had not reached the hub was taken over by the hub's next count stamped after it
    (a sale at another till in between): Square showed one unit too many until the order came back. Now each count
    goes out less those sales, from Square's record read before the push: also the push after that, while the order
    is still on its way; a sale after the count's time is left to Square, which applies it on top; a reconciliation
    in between leaves the level; and when the orders are booked nothing more goes out, nothing taken off twice."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        assert square.quantity(a, loc) == 10 and square.stats.change_queries == []  # never counted before: no read
        square.register_sale(a, loc, 1, order_id="ORDER-1")  # its order is on its way to the hub
        pushes, reads = len(square.stats.batch_sizes), len(square.stats.change_queries)
        await hub.move((Kind.SALE, -1, "S1", "A"))  # a sale at another till: the hub's level 9
        await settle(pusher)
        assert square.quantity(a, loc) == 8 and pusher.pushed == {LevelKey(a, loc): 8}
        # the push's API calls: one read of Square's sales, one batch-create (before the fix: the batch-create alone)
        assert (len(square.stats.batch_sizes) - pushes, len(square.stats.change_queries) - reads) == (1, 1)
        query = square.stats.change_queries[-1]
        assert (query["catalog_object_ids"], query["location_ids"]) == ([a], [loc])
        assert (query["types"], query["states"]) == (["ADJUSTMENT"], ["SOLD"]) and "updated_before" not in query
        found = await Reconciler(pusher).reconcile()  # Square at the hub's level less the sale: not a divergence
        assert found.divergences == () and square.quantity(a, loc) == 8

        await hub.move((Kind.SALE, -1, "S1", "A"))  # the order still on its way: taken off this count too
        await settle(pusher)
        assert square.quantity(a, loc) == 7

        await hub.move((Kind.SALE, -1, "S1", "A"))  # the hub's level 7 …
        await past_the_change(hub, "S1", "A")
        square.register_sale(a, loc, 1, order_id="ORDER-2")  # … and a register sale after it: Square applies it
        await settle(pusher)
        assert square.quantity(a, loc) == 5 and pusher.pushed == {LevelKey(a, loc): 5}  # 7 less ORDER-1, less ORDER-2

        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-1")
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-2")
        assert await hub.available("S1", "A") == 5
        await settle(pusher)
        assert square.quantity(a, loc) == 5 and square.stats.batches_applied == applied, "not taken off twice"
        assert pusher.less_unbooked == {}
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 4 and pusher.pushed == {LevelKey(a, loc): 4}
    said = [r.getMessage() for r in caplog.records if "whose orders have not reached the hub" in r.getMessage()]
    assert said[0] == (
        f"channel pos: Square sold 1 unit(s) at 1 level(s) whose orders have not reached the hub (first A at {loc}: "
        "the hub's level 9, 1 sold in order ORDER-1, 8 pushed); the counts go out less them, so those sales stay sold "
        "until their orders come back"
    )


@pytest.mark.parametrize("named", [None, "TX-NOT-AN-ORDER"], ids=["no transaction id", "an id no order carries"])
async def test_a_register_sale_without_a_payment_is_not_pushed_over_nor_taken_off_twice_when_its_order_comes(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture, named: str | None
) -> None:
    """A sale at a Square register without a payment (an order completed with no tender) carries no
    ``transaction_id`` ("only relevant for payment-related state transitions", InventoryAdjustment 2024-11-20), so
    nothing names its order: it was left out of what a count takes off, and the hub's next count pushed over it —
    9 received, 1 sold so at the register, 1 at the hub: Square showed 8 where 7 are left, until the order came.
    Now it is taken off like a sale whose order is on its way; when the order is booked (an id nothing in Square's
    record names) it is matched to the sale by item, location, units and time, and nothing is taken off twice. The
    same for a sale whose ``transaction_id`` names no order the hub will ever book (a tender's transaction that is
    not its order): taken off while waiting, matched when the order comes, never counted twice."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 9, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        assert square.quantity(a, loc) == 9
        square.register_sale(a, loc, 1, unpaid=named is None, order_id=named)  # 8 on the shelf; its order on its way
        await hub.move((Kind.SALE, -1, "S1", "A"))  # a sale at another till: 7 on the shelf, the hub's level 8
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and pusher.pushed == {LevelKey(a, loc): 7}
        assert await state.refused_order("pos", "") is None

        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-NO-PAYMENT")
        assert await hub.available("S1", "A") == 7
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and square.stats.batches_applied == applied, "not taken off twice"
        assert pusher.less_unbooked == {}
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 6 and pusher.pushed == {LevelKey(a, loc): 6}
    said = logged(caplog, "whose orders have not reached the hub")
    assert said[0] == (
        f"channel pos: Square sold 1 unit(s) at 1 level(s) whose orders have not reached the hub (first A at {loc}: "
        f"the hub's level 8, 1 sold in {'a sale naming no order' if named is None else 'order ' + named}, 7 pushed); "
        "the counts go out less them, so those sales stay sold until their orders come back"
    )


async def test_a_register_sale_whose_order_never_comes_is_an_exception_until_booked_by_hand_and_dismissed(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A sale at a Square register whose order never reaches the hub (no payment named it, or its webhook was
    lost) was taken off the counts for a day and then silently pushed over. Now, once it has waited longer than the
    pusher waits for an order, it is a ``channel_order_refused`` exception saying what to check, still taken off
    (Square never shows more than the shelf); staff book the sale by hand and dismiss the entry, and from then on
    the count is the hub's level, the sale counted once."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 9, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        pusher.unbooked_sale_wait_ms = 0  # the order is given up on at once (an hour in service)
        await settle(pusher)
        sale = square.register_sale(a, loc, 1, unpaid=True)
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 7
        rows = await hub.store.exceptions(kind="channel_order_refused")
        (row,) = rows
        assert (row.location, row.data["order_id"], row.data["channel_location"]) == ("S1", f"sale:{sale.id}", loc)
        assert row.detail.startswith(
            f"Square sold 1 of A (item variation {a}) at {loc} (S1) on channel pos in sale {sale.id} at "
        ), row.detail
        assert "carries no transaction id" in row.detail and "order webhook" in row.detail, row.detail
        assert f"POST /v1/channels/pos/orders/sale:{sale.id}/dismiss" in row.detail, row.detail
        await settle(pusher)  # listed once, however often the count goes out
        assert len(await hub.store.exceptions(kind="channel_order_refused")) == 1

        await hub.move((Kind.SALE, -1, "S1", "A"))  # staff book the register's sale by hand …
        await settle(pusher)
        assert square.quantity(a, loc) == 6, "until dismissed, the sale is taken off (Square one low, never high)"
        assert await state.dismiss_order("pos", f"sale:{sale.id}", "admin-1", wall_ms_now()) is not None
        await hub.move((Kind.SALE, -1, "S1", "A"))  # … and dismiss it: the count is the hub's level
        await settle(pusher)
        assert square.quantity(a, loc) == 6 and pusher.pushed == {LevelKey(a, loc): 6}
        assert await hub.store.exceptions(kind="channel_order_refused") == []


async def test_a_reported_sale_whose_order_comes_late_leaves_the_exceptions_and_is_counted_once(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A register sale reported as waiting too long for its order (here at once), whose order then comes after all
    — by the id the sale names, or one nothing names — leaves the exceptions list with one line in the log, and
    the count pushed is the hub's level: the sale counted once."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 9, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        pusher.unbooked_sale_wait_ms = 0
        await settle(pusher)
        named = square.register_sale(a, loc, 1, order_id="ORDER-LATE")
        unnamed = square.register_sale(a, loc, 1, unpaid=True)
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 6
        listed = {r.data["order_id"] for r in await hub.store.exceptions(kind="channel_order_refused")}
        assert listed == {f"sale:{named.id}", f"sale:{unnamed.id}"}

        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-LATE")
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-UNNAMED")
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the next count: the hub's level, 5
        await settle(pusher)
        assert square.quantity(a, loc) == 5 and pusher.pushed == {LevelKey(a, loc): 5}
        assert square.stats.batches_applied == applied + 1
        assert await hub.store.exceptions(kind="channel_order_refused") == []
    assert len(logged(caplog, "matches an order the hub booked since")) == 2


class _Turns:
    """The hub store as a pusher reads it, counting its reads of the change feed: one each turn of its loop."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.turns = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def changes(self, *args: Any, **kw: Any) -> Any:
        self.turns += 1
        return await self._store.changes(*args, **kw)

    async def passed(self, turns: int) -> None:
        start = self.turns
        await wait_until(lambda: _async(self.turns >= start + turns), f"the pusher's loop turned {turns} times")


async def test_a_register_sale_whose_order_never_comes_is_reported_an_hour_on_though_its_level_never_moves_again(
    hub_db: tuple[Hub, str], square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A register sale taken off the counts whose order never came was reported only when its level was pushed
    again: a SKU that did not move at the hub after the sale (the last of it sold, a slow line) was never
    reported, and nobody was told that Square and the hub disagree. The pusher's loop now checks, on its own,
    the levels with sales taken off once their oldest has waited ``unbooked_sale_wait_s`` (an hour), and reads
    Square's record for those levels alone: nothing while none is due, nothing more once it is listed. On both
    backends; the hour passes on the pusher's clock, moved by the test."""
    hub, db = hub_db
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 9, "S1", "A"))
    spec = hooked(square_spec(square, {"S1": loc}))
    ahead = {"ms": 0}
    monkeypatch.setattr(pusher_module, "wall_ms_now", lambda: wall_ms_now() + ahead["ms"])
    feed = _Turns(hub.store)
    async with contextlib.AsyncExitStack() as stack:
        state = await stack.enter_async_context(open_channel_state(db))
        session = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
        pusher = ChannelPusher(spec, feed, state, SquareConnector(spec, session), hub.watch, backoff=FAST, wait_s=0.05)
        await stack.enter_async_context(pusher)
        await wait_until(shows(square, {(a, loc): 9}), "Square shows 9")
        sale = square.register_sale(a, loc, 1, unpaid=True)  # its order never comes
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the SKU's last movement at the hub
        await wait_until(shows(square, {(a, loc): 7}), "Square shows 7: the sale taken off")
        reads = len(square.stats.change_queries)
        for minutes in (0, 59):  # not due yet: the loop turns without reading Square's record
            ahead["ms"] = minutes * 60_000
            await feed.passed(5)
            assert len(square.stats.change_queries) == reads
            assert await hub.store.exceptions(kind="channel_order_refused") == []

        ahead["ms"] = 61 * 60_000  # an hour after Square received the sale; nothing moved at the hub since
        await wait_until(
            lambda: hub.store.exceptions(kind="channel_order_refused"), "the sale is listed among the exceptions"
        )
        (row,) = await hub.store.exceptions(kind="channel_order_refused")
        assert (row.location, row.data["order_id"], row.data["channel_location"]) == ("S1", f"sale:{sale.id}", loc)
        assert "carries no transaction id" in row.detail and "after 60 minutes" in row.detail, row.detail
        assert len(square.stats.change_queries) == reads + 1, "one read, of the level with the sale"
        query = square.stats.change_queries[-1]
        assert (query["catalog_object_ids"], query["location_ids"]) == ([a], [loc])
        await feed.passed(5)  # listed once, and not read again while nothing else comes due
        assert len(square.stats.change_queries) == reads + 1
        assert len(await hub.store.exceptions(kind="channel_order_refused")) == 1
        assert square.quantity(a, loc) == 7 and pusher.less_unbooked == {LevelKey(a, loc): 1}


async def test_without_order_webhooks_counts_go_out_at_the_hubs_level_with_no_read(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    """A channel whose orders never come back to the hub: a sale at the register is the store's to book, and taking
    it off would count it twice once the store books it. Counts go out as before, one call a push."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(square_spec(square, {"S1": loc}), hub, state) as pusher:
        await settle(pusher)
        square.register_sale(a, loc, 1, order_id="ORDER-1")
        pushes = len(square.stats.batch_sizes)
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 9 and len(square.stats.batch_sizes) == pushes + 1
        assert square.stats.change_queries == []


async def test_when_squares_sales_cannot_be_read_before_a_push_the_count_goes_out_at_the_hubs_level_said_once(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc}, timeout_s=0.5)), hub, state) as pusher:
        await settle(pusher)
        square.register_sale(a, loc, 1, order_id="ORDER-1")
        for shown in (9, 8):  # twice: the record unreadable, the counts go out at the hub's level as before
            square.fault_at(CHANGES_PATH, "http_503")
            await hub.move((Kind.SALE, -1, "S1", "A"))
            await settle(pusher)
            assert square.quantity(a, loc) == shown
        await hub.move((Kind.SALE, -1, "S1", "A"))  # readable again: the sale is taken off
        await settle(pusher)
        assert square.quantity(a, loc) == 6
    fell_back = [r.getMessage() for r in caplog.records if "could not be read before pushing" in r.getMessage()]
    assert len(fell_back) == 1, "said once while it goes on"
    assert fell_back[0].startswith(
        "channel pos: Square's inventory changes could not be read before pushing counts (Square failed reading its "
        "inventory changes for channel pos (HTTP 503"
    )
    assert fell_back[0].endswith(
        "); until they can, a count goes out at the hub's level, over a sale at Square whose order has not reached "
        "the hub"
    )
    assert sum("so a count pushed leaves a sale at Square standing" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("odd_id", ["Q" * 101, "ADJ\nsale:forged line", "ADJ\u2028X"])
async def test_a_sale_whose_id_the_hub_could_not_list_is_an_unreadable_record_said_once_never_stored(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture, odd_id: str
) -> None:
    """A register sale Square names by an id longer than its adjustment ids are (100 characters) or holding a line
    break was kept as it came: listed as ``sale:<id>`` when its order never came, which no URL could dismiss (the
    routes take the ids the hub lists), and written into the log and the exception's sentence with its line break.
    Such a record now tells nothing, as an unreadable quantity does: the count goes out at the hub's level, one
    warning says why, and nothing is listed."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        pusher.unbooked_sale_wait_ms = 0  # a sale the hub could read would be listed at once
        await settle(pusher)
        sale = square.register_sale(a, loc, 1, unpaid=True)
        sale.id = odd_id
        for shown in (9, 8):
            await hub.move((Kind.SALE, -1, "S1", "A"))
            await settle(pusher)
            assert square.quantity(a, loc) == shown
        assert await hub.store.exceptions(kind="channel_order_refused") == []
        assert await state.orders_refused(["pos"], [f"sale:{odd_id}"]) == set()
    fell_back = logged(caplog, "could not be read before pushing")
    assert len(fell_back) == 1, "said once while it goes on"
    assert "a sale whose id" in fell_back[0] and "which the hub could not list nor name in a URL" in fell_back[0]
    assert not any(odd_id in r.getMessage() for r in caplog.records), "the id is never written as it came"


async def test_a_count_taken_off_before_a_restart_is_checked_again_when_the_hubs_level_comes_to_it(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    """What a count took off for sales whose orders had not reached the hub was kept in memory: after a restart, a
    hub level that comes to the count last confirmed (8: 9 less the register's sale, then a sale at the hub) was
    not sent — Square showed 8 where 7 are left. It is stored with the confirmation: the level is told again."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    spec = hooked(square_spec(square, {"S1": loc}))
    async with by_hand(spec, hub, state) as pusher:
        await settle(pusher)
        square.register_sale(a, loc, 1, order_id="ORDER-1")
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 8
    async with by_hand(spec, hub, state) as pusher:  # the hub started again; the order still on its way
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the hub's level 8: the count last confirmed
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and pusher.pushed == {LevelKey(a, loc): 7}
        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-1")
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and square.stats.batches_applied == applied


# --- what a count took off, across a restart and for as long as the order is on its way ------------------------------


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Hub, str]]:
    """A hub store on either backend, and the database its channel state is opened on (``open_channel_state``)."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "postgres":
            db = await stack.enter_async_context(fresh_schema())
        else:
            db = str(tmp_path / "hub.db")
        store = await stack.enter_async_context(open_store(db))
        agent_id, token = await store.add_agent(["S1", "S2"])
        who = await store.authenticate(token)
        assert who is not None
        watch = await stack.enter_async_context(ChangeWatch(store, recheck_s=0.05))
        yield Hub(store, who, watch, tmp_path / "hub.db", EventFactory(agent_id)), db


async def test_what_a_count_took_off_is_stored_so_a_reconciliation_after_a_restart_leaves_the_level(
    hub_db: tuple[Hub, str], square: SquareEmulator
) -> None:
    """What a count took off for a register sale whose order had not reached the hub was kept in memory only: after
    a restart the reconciler compared Square (8: the hub's 9 less the sale) with the hub's 9, found the hub's own
    count standing with no sale after it, and stored a divergence — an exception listed for a level that was right
    — and pushed it again. It is stored with the confirmation now (schema 14), on both backends."""
    hub, db = hub_db
    loc = square.add_location()
    a = square.add_variation("A")
    key = LevelKey(a, loc)
    spec = hooked(square_spec(square, {"S1": loc}))
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with open_channel_state(db) as state, by_hand(spec, hub, state) as pusher:
        await settle(pusher)
        square.register_sale(a, loc, 1, order_id="ORDER-1")  # its order is on its way to the hub
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert square.quantity(a, loc) == 8 and pusher.less_unbooked == {key: 1}
    async with open_channel_state(db) as state, by_hand(spec, hub, state) as pusher:  # the hub started again
        applied = square.stats.batches_applied
        calls = square.stats.requests
        found = await Reconciler(pusher).reconcile()
        await settle(pusher)
        # its API calls: the listing and the counts (before: also a read of the changes, and a correction pushed
        # with a read of the sales before it: 5)
        assert square.stats.requests - calls == 2
        assert found.divergences == () and await state.open_divergences("pos") == 0
        assert square.quantity(a, loc) == 8 and square.stats.batches_applied == applied
        assert pusher.less_unbooked == {key: 1}
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the order still on its way: taken off this count too
        await settle(pusher)
        assert square.quantity(a, loc) == 7
        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-1")
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and square.stats.batches_applied == applied, "not taken off twice"
        assert pusher.less_unbooked == {}
    async with open_channel_state(db) as state:
        assert await state.unbooked("pos") == {}


def _ms_ago(minutes: float) -> datetime:
    return datetime.fromtimestamp((wall_ms_now() - round(minutes * 60_000)) / 1000, UTC)


@pytest.mark.parametrize("restart", [False, True], ids=["same-hub", "after-a-restart"])
async def test_a_sale_taken_off_once_is_taken_off_every_count_until_its_order_comes_however_long_ago(
    hub_db: tuple[Hub, str], square: SquareEmulator, restart: bool
) -> None:
    """Each push read Square's sales from 5 minutes before the hub's last count there: a register sale taken off one
    count, made more than 5 minutes before it, was no longer read at the next — its order still on its way (the hub
    was down, its webhook failing) — and that count went out without it: Square showed 8 where 7 are left. Now the
    read goes back to the oldest sale the last count took off (stored with it, so a restart reads as far back)."""
    hub, db = hub_db
    loc = square.add_location()
    a = square.add_variation("A")
    spec = hooked(square_spec(square, {"S1": loc}))
    async with open_channel_state(db) as state:
        # the hub's last count at Square 20 minutes ago, as a hub that pushed it before this one started stored it
        await state.record("pos", {LevelKey(a, loc): 10}, wall_ms_now() - 20 * 60_000)
    square.register_count(a, loc, 10, occurred_at=_ms_ago(20))
    sale = square.register_sale(a, loc, 1, occurred_at=_ms_ago(10), order_id="ORDER-1")
    sale.created = sale.occurred  # Square received it then: 10 minutes ago
    assert square.quantity(a, loc) == 9
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.SALE, -1, "S1", "A"))  # a sale at the hub: its level 9
    async with contextlib.AsyncExitStack() as stack:
        state = await stack.enter_async_context(open_channel_state(db))
        pusher = await stack.enter_async_context(by_hand(spec, hub, state))
        await settle(pusher)  # the mapping is loaded: every level goes out, read from before the count 20 min ago
        assert square.quantity(a, loc) == 8
        if restart:
            await stack.aclose()
            state = await stack.enter_async_context(open_channel_state(db))
            pusher = await stack.enter_async_context(by_hand(spec, hub, state))
        reads = len(square.stats.change_queries)
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the order still on its way, its sale 10 minutes old
        await settle(pusher)
        assert square.quantity(a, loc) == 7, f"Square shows {square.quantity(a, loc)} where 7 are left"
        assert len(square.stats.change_queries) == reads + 1  # still one read a push
        assert square.stats.change_queries[-1]["updated_after"] <= rfc3339_ms(wall_ms_now() - 10 * 60_000)
        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-1")
        await settle(pusher)
        assert square.quantity(a, loc) == 7 and square.stats.batches_applied == applied, "not taken off twice"
        await hub.move((Kind.SALE, -1, "S1", "A"))  # booked: the read is back to 5 minutes before the last count
        await settle(pusher)
        assert square.quantity(a, loc) == 6
        assert square.stats.change_queries[-1]["updated_after"] > rfc3339_ms(wall_ms_now() - 6 * 60_000)


async def test_a_register_sale_before_the_hubs_stock_count_is_not_taken_off_the_count(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    """A register sale whose order had not reached the hub was taken off the counts even after the store counted the
    shelf: the count saw the shelf without the sold unit, so the sale came off twice (Square showed 8 of the 9
    counted). A sale Square received before the hub's last stock count behind the level is in that count (more than
    ``COUNT_MARGIN_MS`` before it, by the hub's clock: one nearer is taken off until its order comes)."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        sold_at_register(square, a, loc, 3, "ORDER-1")
        counted = hub.factory(Kind.COUNT, 9, at_ms=wall_ms_now() - hub.factory.base_ms, location="S1", sku="A")
        result = await hub.store.ingest(hub.who, hub.factory.epoch, [counted])  # the store counts 9 on the shelf
        assert not result.rejected, result.rejected
        assert await hub.available("S1", "A") == 9
        await settle(pusher)
        assert square.quantity(a, loc) == 9 and pusher.less_unbooked == {}


# --- the store's stock count against a register sale: the hub's clock, not the store PC's ----------------------------


def sold_at_register(square: SquareEmulator, item: str, loc: str, minutes_ago: float, order_id: str) -> None:
    """A register sale Square received ``minutes_ago`` (by Square's clock), its order on its way to the hub."""
    sale = square.register_sale(item, loc, 1, occurred_at=_ms_ago(minutes_ago), order_id=order_id)
    sale.created = sale.occurred


@pytest.mark.parametrize("skew_min", [10, -10], ids=["store-clock-ahead", "store-clock-behind"])
async def test_a_register_sale_is_told_from_the_stores_count_by_the_hubs_clock_not_the_store_pcs(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, skew_min: int
) -> None:
    """The hub's last stock count was compared with a register sale by the store PC's clock against Square's: a PC
    10 minutes ahead made a sale just after the count look before it (left out: Square showed 8 where 7 are left), one
    10 minutes behind made a sale 3 minutes before the count look after it (taken off although the count saw the
    shelf without it: Square showed 8 of the 9 counted, then 6). The count is placed on the hub's clock now (its
    stamp corrected by the skew the hub measures of that PC, never after the hub received it)."""
    loc = square.add_location()
    a = square.add_variation("A")
    await store_moves(hub, skew_min, (Kind.RECEIVE, 10, "S1", "A", 0))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        sold_at_register(square, a, loc, 3, "ORDER-BEFORE")  # 3 minutes before the count: the count sees 9
        await store_moves(hub, skew_min, (Kind.COUNT, 9, "S1", "A", 0))
        await settle(pusher)
        assert square.quantity(a, loc) == 9, f"Square shows {square.quantity(a, loc)} of the 9 counted"
        square.register_sale(a, loc, 1, order_id="ORDER-AFTER")  # just after the count, its order on its way
        await store_moves(hub, skew_min, (Kind.SALE, -1, "S1", "A", 0))  # a sale at another till: the hub's level 8
        await settle(pusher)
        assert await hub.available("S1", "A") == 8
        assert square.quantity(a, loc) == 7, f"Square shows {square.quantity(a, loc)} where 7 are left"
        assert pusher.less_unbooked == {LevelKey(a, loc): 1}


async def test_a_register_sale_within_a_minute_before_the_count_is_taken_off_until_its_order_comes(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    """Which side of the store's count a sale Square received 20 seconds before it was, two clocks cannot say to
    the second: it is taken off (``COUNT_MARGIN_MS``), the side that never shows more than the shelf holds, and its
    order, once booked, changes nothing more."""
    loc = square.add_location()
    a = square.add_variation("A")
    await store_moves(hub, 0, (Kind.RECEIVE, 10, "S1", "A", 0))
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        sold_at_register(square, a, loc, 20 / 60, "ORDER-NEAR")
        await store_moves(hub, 0, (Kind.COUNT, 9, "S1", "A", 0))
        await settle(pusher)
        assert square.quantity(a, loc) == 8 and pusher.less_unbooked == {LevelKey(a, loc): 1}
        applied = square.stats.batches_applied
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-NEAR")
        await settle(pusher)
        assert square.quantity(a, loc) == 8 and square.stats.batches_applied == applied
        assert pusher.less_unbooked == {}


@pytest.mark.parametrize("skew_min", [10, -10], ids=["store-clock-ahead", "store-clock-behind"])
async def test_a_count_the_hub_received_late_is_placed_where_the_store_counted_by_the_pcs_measured_skew(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, skew_min: int
) -> None:
    """A count session closed 30 minutes after the shelf's scan (its count stamped at the scan) reaches the hub 30
    minutes after the count: the hub's receipt alone would leave out a register sale 25 minutes ago, after the
    count (Square would show 8 where 7 are left). The count's stamp, corrected by the PC's skew the hub measured,
    places it where it was made, within the receipt; a sale 33 minutes ago stays left out."""
    loc = square.add_location()
    a = square.add_variation("A")
    async with open_channel_state(str(hub.db_path)) as st:
        # the hub's last count at Square 40 minutes ago, as a hub that pushed it before this one started stored it
        await st.record("pos", {LevelKey(a, loc): 10}, wall_ms_now() - 40 * 60_000)
    square.register_count(a, loc, 10, occurred_at=_ms_ago(40))
    sold_at_register(square, a, loc, 33, "ORDER-BEFORE")
    sold_at_register(square, a, loc, 25, "ORDER-AFTER")
    await store_moves(
        hub, skew_min, (Kind.RECEIVE, 10, "S1", "A", 45), (Kind.COUNT, 9, "S1", "A", 30), (Kind.SALE, -1, "S1", "A", 0)
    )
    assert await hub.available("S1", "A") == 8
    async with by_hand(hooked(square_spec(square, {"S1": loc})), hub, state) as pusher:
        await settle(pusher)
        assert square.quantity(a, loc) == 7, f"Square shows {square.quantity(a, loc)} where 7 are left"
        assert pusher.less_unbooked == {LevelKey(a, loc): 1}


# --- a count pushed before schema 14, which stored nothing of what it took off ------------------------------------------


@asynccontextmanager
async def database_at(
    backend: str, tmp_path: Path, version: int, rows: list[tuple[str, tuple[Any, ...]]]
) -> AsyncIterator[str]:
    """A hub database of schema ``version`` holding ``rows`` (SQL with ``?`` markers and its values) as a hub of that
    version wrote them; the store opened on it brings it to this shelfsync's schema."""
    if backend == "sqlite":
        db = tmp_path / "hub.db"
        conn = sqlite3.connect(db)
        try:
            conn.executescript(SQLITE_MIGRATIONS[1].read() + "\nPRAGMA user_version = 1;")
            for step in range(2, version + 1):
                conn.executescript(f"BEGIN;\n{SQLITE_MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
            for sql, values in rows:
                conn.execute(sql, values)
            conn.commit()
        finally:
            conn.close()
        yield str(db)
        return
    async with fresh_schema() as url:
        pg = await asyncpg.connect(url)
        try:
            await pg.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
            for step in range(1, version + 1):
                async with pg.transaction():
                    await pg.execute(POSTGRES_MIGRATIONS[step].read())
                    await pg.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
            for sql, values in rows:
                parts = sql.split("?")
                await pg.execute("".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts)),
                                 *values)  # fmt: skip
        finally:
            await pg.close()
        yield url


@pytest.mark.parametrize("then", ["reconciled", "pushed"])
async def test_a_count_pushed_before_schema_14_is_checked_once_against_squares_sales_not_trusted(
    backend: str, tmp_path: Path, square: SquareEmulator, then: str
) -> None:
    """A hub of schema 13 kept what its counts took off for register sales whose orders had not reached the hub in
    memory: it pushed 8 (its level 9 less a register sale) and stored 8 alone. After the upgrade the row read as
    "nothing taken off": a reconciliation found Square's 8 against the hub's 9 with the hub's count standing and no
    sale after it, stored a divergence and pushed 9 over it (Square one unit high until the order came); a hub sale
    bringing the level to 8, the count last confirmed, was not sent (Square 8 where 7 are left). Such a row is
    unknown now (schema 15: ``less_known``): the next push or reconciliation of its level reads Square's sales once."""
    loc = square.add_location()
    a = square.add_variation("A")
    key = LevelKey(a, loc)
    sold_at_register(square, a, loc, 2, "ORDER-1")  # its order on its way to the hub
    stamp = wall_ms_now() - 60_000
    spec = hooked(square_spec(square, {"S1": loc}))
    async with aiohttp.ClientSession(trust_env=False) as session:  # the schema-13 hub's push: 9 less that sale
        assert await SquareConnector(spec, session).push({key: Target(8, None, stamp)}, "v13") == {key: 8}
    rows = [
        ("INSERT INTO channel_items (channel, sku, item_id) VALUES (?, ?, ?)", ("pos", "A", a)),
        ("INSERT INTO channel_pushed (channel, level_key, quantity, pushed_at_ms) VALUES (?, ?, ?, ?)",
         ("pos", key.text(), 8, stamp)),
    ]  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(database_at(backend, tmp_path, 13, rows))
        store = await stack.enter_async_context(open_store(db))
        agent_id, token = await store.add_agent(["S1"])
        who = await store.authenticate(token)
        assert who is not None
        watch = await stack.enter_async_context(ChangeWatch(store, recheck_s=0.05))
        hub = Hub(store, who, watch, tmp_path / "hub.db", EventFactory(agent_id))
        await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.SALE, -1, "S1", "A"))  # the hub's level 9
        state = await stack.enter_async_context(open_channel_state(db))
        await state.record("pos", {}, wall_ms_now(), cursor=await store.latest_change_id())  # pushed that far
        pusher = await stack.enter_async_context(by_hand(spec, hub, state))
        if then == "reconciled":
            found = await Reconciler(pusher).reconcile()
            await settle(pusher)
            assert found.divergences == () and await state.open_divergences("pos") == 0
            assert square.quantity(a, loc) == 8
            reads = len(square.stats.change_queries)
            await Reconciler(pusher).reconcile()  # checked once: known now
            assert len(square.stats.change_queries) == reads
        else:
            await hub.move((Kind.SALE, -1, "S1", "A"))  # the hub's level 8: the count last confirmed
            await settle(pusher)
            assert square.quantity(a, loc) == 7, f"Square shows {square.quantity(a, loc)} where 7 are left"
        assert pusher.less_unbooked == {key: 1}
        (taken,) = (await state.unbooked("pos")).values()
        assert taken.units == 1 and taken.from_ms is not None


async def test_a_200_without_the_counts_pushed_or_with_errors_is_not_taken_as_applied(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Square's reference: a BatchChangeInventory that succeeded answers the counts of every object it names; one
    that failed answers errors. A 200 with neither confirms nothing: the batch goes again, said once."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    vid = square.add_variation("A")
    errors: list[str | None] = []
    square.fault_at("/v2/inventory/changes/batch-create", "ok_no_counts", "ok_errors")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    spec = square_spec(square, {"S1": loc})
    steady = Backoff(base_s=0.2, max_s=0.2, jitter=NO_JITTER)  # each failure stands long enough to be seen
    async with (
        aiohttp.ClientSession() as session,
        ChannelPusher(spec, hub.store, state, SquareConnector(spec, session), hub.watch, backoff=steady) as pusher,
    ):

        async def out() -> bool:
            errors.append(pusher.status.last_error)
            return square.quantity(vid, loc) == 5 and pusher.status.pushes >= 1

        await wait_until(out, "the level is out after two answers that confirmed nothing")
        assert square.stats.batches_applied == 1
        assert pusher.status.failures == 0 and pusher.status.last_error is None
    seen = {e for e in errors if e}
    assert any("no count" in e for e in seen), seen
    assert any("INTERNAL_SERVER_ERROR" in e for e in seen), seen
    failed = [r for r in caplog.records if r.levelno == logging.WARNING and "Square" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]  # the first failure of the series, then the recovery
    assert "HTTP 200" in failed[0].getMessage() and "\n" not in failed[0].getMessage()
