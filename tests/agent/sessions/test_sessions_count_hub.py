"""A cycle count while POS sales arrive, resolved by the real hub exactly as docs/design.md says.

Each SKU's count is stamped at its last scan in the session. A sale stamped
before that scan was already off the shelf when the SKU was counted: it is
kept in the ledger as superseded and moves the count's variance, not on_hand.
A sale stamped after it applies on top of the count. It does not matter
whether the sale reaches the hub before the count closes or days later.
"""

from __future__ import annotations

from pathlib import Path

from agent.outbox import Movement, Outbox
from agent.sessions import SessionManager, SessionSpec, SessionStore, SessionType
from hub import HubStore
from protocol import Kind, derived_event_id, pack_hlc, wall_ms_now
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, catalog
from tests.agent.sessions.sessions_hub import ClockMs, running_hub, sync

S_MS = 1000


def pos_sale(sku: str, qty: int, at_ms: int, line: int) -> Movement:
    """A sale as the POS import records it: stamped with the till's time, with a deterministic id."""
    return Movement(
        "S001", sku, Kind.SALE, qty, "pos:square", ref=f"TX-{line}",
        event_id=derived_event_id(at_ms, f"pos-test/{line}".encode()), occurred_at=pack_hlc(at_ms, 0),
    )  # fmt: skip


async def on_hand(store: HubStore, sku: str) -> int:
    [row] = await store.counts(location="S001", sku=sku)
    return row.on_hand


async def effects(store: HubStore, sku: str) -> list[tuple[str, int, str, int | None]]:
    """(kind, qty, effect, variance) of the SKU's ledger, oldest first."""
    rows = await store.ledger(location="S001", sku=sku)
    return [(r.kind, r.qty, r.effect.value, r.variance) for r in reversed(rows)]


async def test_count_with_sales_before_and_after_each_skus_last_scan(tmp_path: Path) -> None:
    t0 = wall_ms_now() - 3600 * S_MS
    clock = ClockMs(t0)
    async with running_hub(tmp_path) as (hub, url):
        agent_id, token = await hub.add_agent(["S001"])
        async with (
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S001", wall_clock_ms=clock) as outbox,
            SessionStore.open(tmp_path / "sessions.sqlite3") as store,
        ):
            sessions = SessionManager(store, outbox, catalog=catalog(), wall_clock_ms=clock)
            await outbox.record(
                [
                    Movement("S001", "SKU-APPLE", Kind.RECEIVE, 20, "api:test"),
                    Movement("S001", "SKU-PEAR", Kind.RECEIVE, 10, "api:test"),
                ]
            )
            await sync(outbox, url, token)
            assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (20, 10)

            count = await sessions.open(
                SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE", "SKU-PEAR", "SKU-PLUM")), by="ana"
            )
            clock.now_ms = t0 + 60 * S_MS
            await sessions.scan(count.id, APPLE, by="ana", qty=5)
            clock.now_ms = t0 + 90 * S_MS
            await sessions.scan(count.id, PEAR, by="ana", qty=8)  # pears: counted 8, stamped t0+90s
            clock.now_ms = t0 + 120 * S_MS
            await sessions.scan(count.id, APPLE, by="ana", qty=10)  # apples: counted 15, stamped t0+120s

            # Sales arrive at the hub while the count is still open.
            await outbox.record(
                [pos_sale("SKU-APPLE", -1, t0 + 100 * S_MS, 1), pos_sale("SKU-PEAR", -1, t0 + 100 * S_MS, 2)]
            )
            await sync(outbox, url, token)
            assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (19, 9)

            clock.now_ms = t0 + 180 * S_MS
            closed = await sessions.close(count.id, by="ana", zero_unscanned=True)
            assert closed.report is not None
            assert {(r.sku, r.status, r.qty) for r in closed.report.lines} == {
                ("SKU-APPLE", "counted", 15), ("SKU-PEAR", "counted", 8), ("SKU-PLUM", "zero_filled", 0),
            }  # fmt: skip
            counts = {ev.sku: ev for ev in await outbox.pending(100)}
            assert counts["SKU-APPLE"].occurred_at == pack_hlc(t0 + 120 * S_MS, 0)  # the last apple scan
            assert counts["SKU-PEAR"].occurred_at == pack_hlc(t0 + 90 * S_MS, 0)
            assert counts["SKU-PLUM"].occurred_at == closed.close_hlc
            assert counts["SKU-PLUM"].attrs["zero_filled"] is True
            await sync(outbox, url, token)

            # The apple sale at t0+100s was before the apples' last scan: the count saw it.
            # The pear sale at t0+100s was after the pears' last scan (t0+90s): it applies on top.
            assert (await on_hand(hub, "SKU-APPLE"), await on_hand(hub, "SKU-PEAR")) == (15, 7)
            assert await on_hand(hub, "SKU-PLUM") == 0

            # Days later the POS export of the morning turns up: one sale before the count, one after.
            await outbox.record(
                [pos_sale("SKU-APPLE", -2, t0 + 30 * S_MS, 3), pos_sale("SKU-APPLE", -3, t0 + 150 * S_MS, 4)]
            )
            await sync(outbox, url, token)

            assert await on_hand(hub, "SKU-APPLE") == 12  # 15 counted − 3 sold after the count
            assert await effects(hub, "SKU-APPLE") == [
                ("receive", 20, "superseded", None),
                ("sale", -2, "superseded", None),  # late, but ordered before the count: variance, not on_hand
                ("sale", -1, "superseded", None),
                ("count", 15, "applied", -2),  # expected 20 − 2 − 1 = 17, counted 15: 2 missing
                ("sale", -3, "applied", None),
            ]
            assert await effects(hub, "SKU-PEAR") == [
                ("receive", 10, "superseded", None),
                ("count", 8, "applied", -2),
                ("sale", -1, "applied", None),
            ]
            local = await outbox.counts.local_count("S001", "SKU-APPLE")
            assert (local.on_hand, local.pending_events) == (12, 0)
            [ledger_count] = [r for r in await hub.ledger(location="S001", sku="SKU-APPLE") if r.kind == "count"]
            assert ledger_count.attrs == {"by": "ana", "session": count.id}
            assert ledger_count.source == f"session:{count.id}"
