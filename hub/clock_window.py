"""The clock window: which event stamps the hub will not take as true.

An event's ``occurred_at`` comes from the clock of the machine that recorded
it. Three stamps are never applied as if true; the hub holds such an event in
quarantine for an operator (see hub.quarantine and docs/faults.md "Clocks"):

- ``AHEAD``: more than the window ahead of the hub's clock (a dead CMOS
  battery, a wrong year typed) — it would order a count after every real
  sale for years;
- ``BEFORE_AGENT``: more than the window before its credential was created
  (a clock reset to 2001) — it would slip under counts already taken. A
  creation time ahead of the hub's clock now was stamped by the hub's own
  clock running ahead then (``shelfsync-hub agent add`` while it was wrong):
  it says nothing about when the credential was made, so it holds nothing
  (a store whose clock was reset is still held by ``BEHIND``);
- ``BEHIND``: more than the window before the hub's clock, sent by a machine
  whose own clock, when it sent, was itself more than the window behind the
  hub's (a clock set back six months, or a hybrid clock frozen at the moment
  of that reset). A store sending an old offline backlog sends it with a
  right clock (``sent_ms`` near the hub's time), so that is never held.

Pure: the caller passes the hub's time and the sender's.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    """The hub's clock at receipt, the window, when the sending credential was created (None: unknown), the
    sender's wall clock when it sent the batch (``SyncRequest.sent_ms``; None: not reported) and how far the
    hub's own clock is off its stores' when the sender's clock agrees with theirs (``HubClockSuspicion``; None:
    the hub has no reason to doubt its clock): what it holds then is released once the hub's clock is right."""

    now_ms: int
    window_ms: int
    agent_created_ms: int | None = None
    sent_ms: int | None = None
    hub_off_ms: int | None = None
    # How many of the other stores that synced lately put the hub's clock right, when they were more than half of
    # them (``HubClockWatch.vouched``): the sender's clock is the odd one; None: they did not, or there were none.
    vouched: int | None = None

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
        created_ms = self.agent_created_ms
        if created_ms is not None and created_ms <= self.now_ms and wall_ms < created_ms - self.window_ms:
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
        if self.hub_off_ms is not None:
            way = "behind" if self.hub_off_ms < 0 else "ahead of"
            return (
                f"the event's time {what}, outside the hub's clock window of {span(self.window_ms)}; but the hub's "
                f"own clock looks {span(self.hub_off_ms)} {way} this store's and the other stores' clocks, which "
                f"agree: it is held in the hub's quarantine ({where}) and released at its own time once the hub's "
                f"clock is right again"
            )
        return (
            f"the event's time {what}, outside the hub's clock window of {span(self.window_ms)}; "
            f"it is held in the hub's quarantine for an operator to apply at its receipt time or discard "
            f"({where}), and this machine's clock should be checked"
        )

    def corrected(self, hub_off_ms: int, agent_created_ms: int | None) -> ClockWindow:
        """This window as it would have been with the hub's clock right: ``hub_off_ms`` taken off its time, and
        the credential's creation time as it is stored now (hub.storage.held.release_hub_clock)."""
        return replace(
            self, now_ms=self.now_ms - hub_off_ms, agent_created_ms=agent_created_ms, hub_off_ms=None, vouched=None
        )


# --- the hub's own clock -------------------------------------------------------------------------------------------
# Each agent's skew (the hub's clock minus the agent's, from ``sent_ms``) says how far apart the two clocks are, not
# which one is wrong. Stores whose clocks agree with each other and not with the hub point at the hub's: a majority
# of the agents that synced lately, at least two, whose skews lie within HUB_CLOCK_AGREE_MS of each other and at
# least HUB_CLOCK_OFF_MS from zero (the agent's own "clock WRONG" line begins at a minute off too).
HUB_CLOCK_RECENT_MS = 10 * 60_000  # agents whose last sync is this close to the hub's clock are asked
HUB_CLOCK_OFF_MS = 60_000
HUB_CLOCK_AGREE_MS = 60_000
HUB_CLOCK_VOTERS_MIN = 2
HUB_CLOCK_LOOK_S = 2.0  # the sync route looks at the skews it heard at most this often (HubClockWatch)


@dataclass(frozen=True, slots=True)
class HubClockSuspicion:
    """The hub's clock is ``offset_ms`` off its agents' (negative: behind them), as ``agents`` of ``asked`` say."""

    offset_ms: int
    agents: tuple[str, ...]
    asked: int

    @property
    def message(self) -> str:
        way = "behind" if self.offset_ms < 0 else "ahead of"
        shown_ids = ", ".join(self.agents[:5]) + (f" and {len(self.agents) - 5:,} more" if len(self.agents) > 5 else "")
        return (
            f"The hub's clock looks wrong: {len(self.agents):,} of the {self.asked:,} agents that synced in the last"
            f" {HUB_CLOCK_RECENT_MS // 60_000} minutes put it {span(self.offset_ms)} {way} their clocks, which agree"
            f" with each other within a minute ({shown_ids}). Set the hub machine's clock right (NTP); until then"
            " those stores are told the hub's clock is off, not theirs, and their movements more than the clock"
            " window off the hub's clock are held in quarantine."
        )


def hub_clock_suspicion(skews: Mapping[str, int]) -> HubClockSuspicion | None:
    """Whether the agents that synced lately (agent id -> its skew, the hub's clock minus its own) agree the hub's
    clock is off: the largest group of them within HUB_CLOCK_AGREE_MS of each other, when it is more than half of
    them, at least HUB_CLOCK_VOTERS_MIN, and its middle is HUB_CLOCK_OFF_MS or more from zero."""
    ordered = sorted(skews.items(), key=lambda item: item[1])
    best: list[tuple[str, int]] = []
    start = 0
    for end in range(len(ordered)):
        while ordered[end][1] - ordered[start][1] > HUB_CLOCK_AGREE_MS:
            start += 1
        if end + 1 - start > len(best):
            best = ordered[start : end + 1]
    if len(best) < HUB_CLOCK_VOTERS_MIN or 2 * len(best) <= len(ordered):
        return None
    middle = best[len(best) // 2][1]
    if abs(middle) < HUB_CLOCK_OFF_MS or any((skew < 0) != (middle < 0) for _, skew in best):
        return None
    return HubClockSuspicion(middle, tuple(sorted(agent_id for agent_id, _ in best)), len(ordered))


def hub_clock_agreed(skews: Mapping[str, int]) -> bool:
    """Whether the agents that synced lately (agent id -> its skew) say the hub's clock is right: more than half
    of them, at least HUB_CLOCK_VOTERS_MIN, put it less than HUB_CLOCK_OFF_MS off theirs."""
    right = sum(abs(skew) < HUB_CLOCK_OFF_MS for skew in skews.values())
    return right >= HUB_CLOCK_VOTERS_MIN and 2 * right > len(skews)


class HubClockWatch:
    """The skews the sync route hears, kept HUB_CLOCK_RECENT_MS; looked at once every HUB_CLOCK_LOOK_S at most
    (``heard``), so a thousand stores syncing cost a sort of their skews every few seconds, not at every sync.

    Besides whether the hub's clock looks wrong (``current``), each look notes whether it looks right (``agreed``:
    ``right_again`` turns true when it starts to, for the caller to take) and how many agents put it less than
    HUB_CLOCK_OFF_MS off theirs, so ``vouched`` answers an agent whose clock is off the hub's whether the others
    side with the hub's (its clock is the odd one) without a look of its own."""

    def __init__(self) -> None:
        self._skews: dict[str, tuple[int, float]] = {}  # agent id -> (skew ms, monotonic s when heard)
        self._looked_s: float | None = None
        self.current: HubClockSuspicion | None = None
        self.agreed = False
        self.right_again = False  # set when ``agreed`` turned true; the caller clears it (``take_right_again``)
        self._right: frozenset[str] = frozenset()  # at the last look: the agents whose skew is under a minute
        self.found = 0  # how many times the hub's clock started to look wrong (or its offset moved), and by how much
        self.found_offset_ms = 0  # … the last time
        self._asked = 0  # … and how many agents synced lately

    def take_right_again(self) -> bool:
        """Whether the hub's clock started to look right since this was last asked (once)."""
        right, self.right_again = self.right_again, False
        return right

    def vouched(self, agent_id: str) -> int | None:
        """How many of the other agents that synced lately put the hub's clock less than HUB_CLOCK_OFF_MS off theirs,
        when they are more than half of the others (at the last look); None: the hub cannot tell by them whether
        its clock or ``agent_id``'s is the wrong one (no others, or they disagree)."""
        others = self._asked - (agent_id in self._skews)
        right = len(self._right) - (agent_id in self._right)
        return right if right >= 1 and 2 * right > others else None

    def heard(self, agent_id: str, skew_ms: int, at_s: float) -> tuple[str, HubClockSuspicion | None] | None:
        """One agent's skew at monotonic time ``at_s``; ``("began", found)`` when the hub's clock starts to look
        wrong (or its offset moved), ``("ended", None)`` when it stops, else None."""
        self._skews[agent_id] = (skew_ms, at_s)
        if self._looked_s is not None and at_s - self._looked_s < HUB_CLOCK_LOOK_S:
            return None
        self._looked_s = at_s
        oldest_s = at_s - HUB_CLOCK_RECENT_MS / 1000
        self._skews = {a: heard for a, heard in self._skews.items() if heard[1] >= oldest_s}
        skews = {a: s for a, (s, _) in self._skews.items()}
        before, self.current = self.current, hub_clock_suspicion(skews)
        agreed, self.agreed = self.agreed, hub_clock_agreed(skews)
        self.right_again = self.right_again or (self.agreed and not agreed)
        self._right = frozenset(a for a, skew in skews.items() if abs(skew) < HUB_CLOCK_OFF_MS)
        self._asked = len(skews)
        if self.current is not None and (
            before is None or abs(self.current.offset_ms - before.offset_ms) > HUB_CLOCK_AGREE_MS
        ):
            self.found += 1
            self.found_offset_ms = self.current.offset_ms
            return "began", self.current
        if self.current is None and before is not None:
            return "ended", None
        return None
