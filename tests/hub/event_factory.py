"""Stock events for hub tests: one agent's epoch, seq counted up for you."""

from __future__ import annotations

from typing import Any

from protocol import Kind, StockEvent, new_event_id, pack_hlc

BASE_MS = 1_700_000_000_000


def at(ms: float) -> int:
    """A packed HLC ``ms`` milliseconds after a fixed base (fractions become the counter)."""
    whole = int(ms)
    return pack_hlc(BASE_MS + whole, round((ms - whole) * 1000))


class EventFactory:
    """``ev = EventFactory("agent-1"); ev(Kind.SALE, -1, at_ms=3)`` makes the next event of that agent."""

    def __init__(
        self, agent_id: str = "a1", epoch: int = 1, location: str = "S1", sku: str = "A", *, base_ms: int = BASE_MS
    ) -> None:
        self.base_ms = base_ms  # events sent to a hub over HTTP need a recent base: inside its clock window
        self.agent_id = agent_id
        self.epoch = epoch
        self.location = location
        self.sku = sku
        self.seq = 0

    def __call__(
        self,
        kind: Kind,
        qty: int,
        *,
        at_ms: float,
        location: str | None = None,
        sku: str | None = None,
        ref: str | None = None,
        reason: str | None = None,
        attrs: dict[str, Any] | None = None,
        seq: int | None = None,
        event_id: bytes | None = None,
    ) -> StockEvent:
        if seq is None:
            self.seq += 1
            seq = self.seq
        occurred_at = at(at_ms) + ((self.base_ms - BASE_MS) << 16)
        return StockEvent(
            event_id=event_id or new_event_id(),
            agent_id=self.agent_id,
            epoch=self.epoch,
            seq=seq,
            location=location or self.location,
            sku=sku or self.sku,
            kind=kind,
            qty=qty,
            occurred_at=occurred_at,
            wall_ms=occurred_at >> 16,
            source="api:test",
            ref=ref,
            reason=reason,
            attrs=attrs or {},
        )
