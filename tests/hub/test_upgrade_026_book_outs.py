"""Step 26: an adjust carrying a ref makes no transfer of its own, on SQLite and on PostgreSQL.

Found: step 25 (and ingest since) made a transfer row of every adjust carrying a ref other than its source, though
most such refs are a POS's stock-take or damage note numbers; one adjusting up was listed as a transfer_unmatched
of units never received. The upgraded hub keeps only the transfers a shipment or a receipt made, lists nothing of
the others, and a receipt booked after the upgrade still finds the book-outs stored before it (in the ledger, by
events_adjust_ref).
"""

from __future__ import annotations

from pathlib import Path

from hub import open_store
from hub.resolver import resolve
from protocol import Kind
from tests.hub.event_factory import EventFactory
from tests.hub.test_upgrade_transfers import _events_and_counts, _hub_of_schema_19


def _listed(findings: list[tuple[str, str | None, str]]) -> list[tuple[str, str | None, str]]:
    return sorted(f for f in findings if f[0].startswith("transfer") and f[0] != "transfer_unknown_destination")


async def test_the_upgrade_drops_the_transfers_adjusts_alone_made(backend: str, tmp_path: Path) -> None:
    """S001 counts 3 more of A than it expected under its stock-take note INV-9 (+3) and books out 1 of A under
    S002's T-1 (received here by mistake; its receipt not sent yet); S002 ships T-1 (2 of A) to S003. Upgraded,
    the hub holds S003's transfer alone and lists no transfer exception; S001's receipt of T-1 booked afterwards is
    booked out by the adjust stored before it, as the resolver says of all the events."""
    f = {loc: EventFactory(f"agent-{loc.lower()}", location=loc) for loc in ("S001", "S002", "S003")}
    events = [
        f["S001"](Kind.ADJUST, 3, at_ms=1, ref="INV-9"),
        f["S001"](Kind.ADJUST, -1, at_ms=2, ref="T-1"),
        f["S002"](Kind.TRANSFER_OUT, -2, at_ms=3, ref="T-1", attrs={"to": "S003"}),
    ]
    async with (
        _hub_of_schema_19(backend, tmp_path, events, _events_and_counts(events)) as url,
        open_store(url) as store,
    ):
        sql = "SELECT dest, ref, sku, shipped, received, booked_out FROM transfers ORDER BY dest, ref, sku"
        rows = await store._read_db("transfers", lambda db: db.fetch(sql))  # type: ignore[attr-defined]
        assert [tuple(r) for r in rows] == [("S003", "T-1", "A", 2, 0, 0)]
        assert _listed([(e.kind, e.location, e.detail) for e in await store.exceptions()]) == []

        _, token = await store.add_agent(["S001"])  # the upgraded hub goes on: S001's receipt of T-1 comes
        who = await store.authenticate(token)
        assert who is not None
        receipt = EventFactory(who.agent_id, location="S001")(Kind.TRANSFER_IN, 1, at_ms=4, ref="T-1")
        assert (await store.ingest(who, 1, [receipt])).rejected == ()
        rows = await store._read_db("transfers", lambda db: db.fetch(sql))  # type: ignore[attr-defined]
        assert [tuple(r) for r in rows] == [("S001", "T-1", "A", 0, 1, 1), ("S003", "T-1", "A", 2, 0, 0)]
        listed = _listed([(e.kind, e.location, e.detail) for e in await store.exceptions()])
        assert listed == _listed([(f.kind, f.location, f.detail) for f in resolve([*events, receipt]).findings]) == []
