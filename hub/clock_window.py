"""The clock window: which event stamps the hub will not take as true.

An event's ``occurred_at`` comes from the clock of the machine that recorded
it. Three stamps are never applied as if true; the hub holds such an event in
quarantine for an operator (see hub.quarantine and docs/faults.md "Clocks"):

- ``AHEAD``: more than the window ahead of the hub's clock (a dead CMOS
  battery, a wrong year typed) — it would order a count after every real
  sale for years;
- ``BEFORE_AGENT``: more than the window before its credential was created
  (a clock reset to 2001) — it would slip under counts already taken;
- ``BEHIND``: more than the window before the hub's clock, sent by a machine
  whose own clock, when it sent, was itself more than the window behind the
  hub's (a clock set back six months, or a hybrid clock frozen at the moment
  of that reset). A store sending an old offline backlog sends it with a
  right clock (``sent_ms`` near the hub's time), so that is never held.

Pure: the caller passes the hub's time and the sender's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocol import unpack_hlc

DEFAULT_CLOCK_WINDOW_S = 24 * 3_600  # see docs/configuration.md (clock_window_s)
CLOCK_WINDOW_MIN_S = 60
CLOCK_WINDOW_MAX_S = 30 * 24 * 3_600
AHEAD, BEFORE_AGENT, BEHIND = "ahead", "before_agent", "behind"


def span(ms: int) -> str:
    """A duration in words: "3.2 hours", "36,500.1 days"."""
    hours = abs(ms) / 3_600_000
    return f"{hours:,.1f} hours" if hours < 48 else f"{hours / 24:,.1f} days"


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """The hub's clock at receipt, the window, when the sending credential was created (None: unknown) and
    the sender's wall clock when it sent the batch (``SyncRequest.sent_ms``; None: not reported)."""

    now_ms: int
    window_ms: int
    agent_created_ms: int | None = None
    sent_ms: int | None = None

    def with_sender(self, sent_ms: int | None) -> ClockWindow:
        """This window for a batch whose sender stated its clock ``sent_ms`` when sending."""
        return self if sent_ms is None else replace(self, sent_ms=sent_ms)

    @property
    def sender_behind_ms(self) -> int | None:
        """How far the sender's clock was behind the hub's when it sent (negative: ahead); None: unknown."""
        return None if self.sent_ms is None else self.now_ms - self.sent_ms

    def outside(self, occurred_at: int) -> str | None:
        """``AHEAD``, ``BEFORE_AGENT`` or ``BEHIND`` when the stamp's wall part is outside the window, else None."""
        wall_ms = unpack_hlc(occurred_at)[0]
        if wall_ms > self.now_ms + self.window_ms:
            return AHEAD
        if self.agent_created_ms is not None and wall_ms < self.agent_created_ms - self.window_ms:
            return BEFORE_AGENT
        behind = self.sender_behind_ms
        if behind is not None and behind > self.window_ms and wall_ms < self.now_ms - self.window_ms:
            return BEHIND
        return None

    def reason(self, occurred_at: int, where: str) -> str:
        """One sentence for the sender: why the stamp is held back and what to do."""
        wall_ms = unpack_hlc(occurred_at)[0]
        rule = self.outside(occurred_at)
        if rule == AHEAD:
            what = f"is {span(wall_ms - self.now_ms)} ahead of the hub's clock"
        elif rule == BEHIND:
            what = (
                f"is {span(self.now_ms - wall_ms)} behind the hub's clock and this machine's clock was "
                f"{span(self.sender_behind_ms or 0)} behind the hub's when it sent it"
            )
        else:
            what = f"is {span((self.agent_created_ms or 0) - wall_ms)} before its credential was created"
        return (
            f"the event's time {what}, outside the hub's clock window of {span(self.window_ms)}; "
            f"it is held in the hub's quarantine for an operator to apply at its receipt time or discard "
            f"({where}), and this machine's clock should be checked"
        )
