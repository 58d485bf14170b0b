"""The count cache of a location the agent left (``[agent] location`` changed): dropped, and the local API says a
count of any location but the agent's own is not followed.

Before, the rows kept for S001 stayed, and ``?location=S001`` served them as if current after the move.
"""

from __future__ import annotations

from pathlib import Path

from agent import Kind, Movement, Outbox
from agent.counts import store_counts
from agent.localapi import views
from protocol import CountSnapshot


async def test_counts_of_the_location_the_agent_left_are_dropped_and_said_to_be_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
        await outbox.record([Movement("S001", "SKU-A", Kind.RECEIVE, 5, "api:test")])
        await outbox._write(lambda conn: store_counts(conn, [CountSnapshot("S001", "SKU-A", 5, 0, 5, 0)], 1000, 7))
        await outbox.mark_acked(1)
        assert (await outbox.counts.local_count("S001", "SKU-A")).on_hand == 5
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        count = await outbox.counts.local_count("S001", "SKU-A")
        assert (count.on_hand, count.hub_as_of_ms) == (0, None), "the cache still serves S001's count as current"
        shown = views.count_json(count, agent_location=outbox.location)
        assert shown["followed"] is False
        own = await outbox.counts.local_count("S002", "SKU-A")
        assert views.count_json(own, agent_location=outbox.location)["followed"] is True
