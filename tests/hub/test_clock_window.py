"""The clock window's rule (hub.clock_window), pure: which stamps the hub holds back, and the sentence why.

The hub's clock is ``NOW_MS``; the window a day; the sending credential was created a year before.
"""

from __future__ import annotations

import pytest

from hub.clock_window import (
    AHEAD,
    BEFORE_AGENT,
    BEHIND,
    HUB_CLOCK_LOOK_S,
    ClockWindow,
    HubClockWatch,
    hub_clock_suspicion,
    span,
)
from hub.storage import AgentIdentity
from hub.storage.ingest import prepare_batch
from protocol import Kind, StockEvent, new_event_id, pack_hlc

DAY_MS = 86_400_000
WINDOW_MS = DAY_MS
NOW_MS = 1_800_000_000_000
CREATED_MS = NOW_MS - 365 * DAY_MS
HALF_YEAR_MS = 182 * DAY_MS


def stamp(offset_ms: int, counter: int = 0) -> int:
    """A packed HLC ``offset_ms`` from the hub's now."""
    return pack_hlc(NOW_MS + offset_ms, counter)


def window(sent_offset_ms: int | None = None, created_ms: int | None = CREATED_MS) -> ClockWindow:
    sent = None if sent_offset_ms is None else NOW_MS + sent_offset_ms
    return ClockWindow(NOW_MS, WINDOW_MS, created_ms).with_sender(sent)


@pytest.mark.parametrize(
    ("offset_ms", "sent_offset_ms", "expected"),
    [
        (0, 0, None),
        (WINDOW_MS, 0, None),  # at the edge: inside
        (WINDOW_MS + 1, 0, AHEAD),
        (36_525 * DAY_MS, 36_525 * DAY_MS, AHEAD),  # a century ahead, whatever the sender says
        (-HALF_YEAR_MS, 0, None),  # an old offline backlog sent by a right clock: never held
        (-300 * DAY_MS, None, None),  # a sender from before sent_ms: only the credential's age counts
        (-366 * DAY_MS - 1, 0, BEFORE_AGENT),  # before the credential existed, less the window
        (-365 * DAY_MS - WINDOW_MS, 0, None),  # at that edge: inside
        (-HALF_YEAR_MS, -HALF_YEAR_MS, BEHIND),  # a clock set back six months stamps six months back
        (-2 * DAY_MS, -HALF_YEAR_MS, BEHIND),  # a hybrid clock frozen at the reset two days ago
        (-WINDOW_MS + 1, -HALF_YEAR_MS, None),  # frozen less than the window ago: not held
        (-WINDOW_MS - 1, -WINDOW_MS - 1, BEHIND),
        (-WINDOW_MS - 1, -WINDOW_MS, None),  # the sender's clock exactly the window behind: inside
        (-2 * DAY_MS, 2 * DAY_MS, None),  # the sender's clock ahead: the BEHIND rule is about a clock behind
    ],
)
def test_which_stamps_are_outside(offset_ms: int, sent_offset_ms: int | None, expected: str | None) -> None:
    assert window(sent_offset_ms).outside(stamp(offset_ms)) == expected


def test_the_counter_of_a_stamp_does_not_move_it_out_of_the_window() -> None:
    assert window(0).outside(stamp(WINDOW_MS, counter=65_535)) is None
    assert window(-HALF_YEAR_MS).outside(stamp(-WINDOW_MS, counter=65_535)) is None


def test_an_unknown_credential_age_checks_only_ahead_and_behind() -> None:
    assert window(0, created_ms=None).outside(stamp(-20 * 365 * DAY_MS)) is None
    assert window(-HALF_YEAR_MS, created_ms=None).outside(stamp(-HALF_YEAR_MS)) == BEHIND


def test_a_credential_dated_ahead_of_the_hubs_clock_holds_nothing_before_it() -> None:
    """``agent add`` while the hub's clock ran two days ahead, the clock set right since: the stored creation time
    is the hub's past error, not when the credential was made (tests/adversarial/test_hub_clock_credential.py)."""
    ahead = window(0, created_ms=NOW_MS + 2 * DAY_MS)
    assert ahead.outside(stamp(0)) is None
    assert ahead.outside(stamp(-WINDOW_MS - 1)) is None
    assert window(-HALF_YEAR_MS, created_ms=NOW_MS + 2 * DAY_MS).outside(stamp(-HALF_YEAR_MS)) == BEHIND
    assert window(0, created_ms=NOW_MS).outside(stamp(-WINDOW_MS - 1)) == BEFORE_AGENT  # made now: still checked


def test_a_sender_without_sent_ms_keeps_the_window_as_it_was() -> None:
    plain = ClockWindow(NOW_MS, WINDOW_MS, CREATED_MS)
    assert plain.with_sender(None) is plain and plain.sender_behind_ms is None
    assert plain.with_sender(NOW_MS - DAY_MS).sender_behind_ms == DAY_MS


def test_each_reason_says_how_far_off_and_what_to_do() -> None:
    ahead = window(0).reason(stamp(36_525 * DAY_MS), "GET /v1/quarantine")
    assert "36,525.0 days ahead of the hub's clock" in ahead
    before = window(0).reason(stamp(-3 * 365 * DAY_MS), "GET /v1/quarantine")
    assert "730.0 days before its credential was created" in before
    behind = window(-HALF_YEAR_MS).reason(stamp(-2 * DAY_MS), "GET /v1/quarantine")
    assert "2.0 days behind the hub's clock" in behind and "182.0 days behind the hub's when it sent it" in behind
    for sentence in (ahead, before, behind):
        assert "window of 24.0 hours" in sentence and "GET /v1/quarantine" in sentence
        assert sentence.endswith("this machine's clock should be checked")


def test_span_reads_as_hours_then_days() -> None:
    assert (span(3 * 3_600_000), span(-47 * 3_600_000), span(48 * 3_600_000)) == ("3.0 hours", "47.0 hours", "2.0 days")


def _event(seq: int, offset_ms: int) -> StockEvent:
    at = stamp(offset_ms)
    return StockEvent(new_event_id(), "agent-1", 1, seq, "S1", "A", Kind.SALE, -1, at, at >> 16, "api:test")


def test_prepare_batch_applies_the_rule_with_the_senders_clock() -> None:
    who = AgentIdentity("agent-1", frozenset({"S1"}), created_ms=CREATED_MS)
    frozen = [_event(1, -WINDOW_MS // 2), _event(2, -2 * DAY_MS)]  # frozen half a day ago, then two days ago
    clock = ClockWindow(NOW_MS, WINDOW_MS, CREATED_MS)
    behind = prepare_batch(who, 1, frozen, clock=clock, sent_ms=NOW_MS - HALF_YEAR_MS)
    assert [ev.seq for ev, _ in behind.accepted] == [1]
    assert [(r.event.seq, r.code) for r in behind.quarantined] == [(2, "quarantined")]
    assert "behind the hub's when it sent it" in behind.quarantined[0].reason
    right = prepare_batch(who, 1, frozen, clock=clock, sent_ms=NOW_MS)  # the same backlog from a right clock
    assert (len(right.accepted), right.quarantined) == (2, ())
    unknown = prepare_batch(who, 1, frozen, clock=clock)  # an agent from before sent_ms
    assert (len(unknown.accepted), unknown.quarantined) == (2, ())


HOUR_MS = 3_600_000


@pytest.mark.parametrize(
    ("skews", "offset_ms", "agents"),
    [
        ({"a": -3 * HOUR_MS, "b": -3 * HOUR_MS + 900}, -3 * HOUR_MS + 900, ("a", "b")),  # two agree: the hub is off
        ({"a": 2 * DAY_MS, "b": 2 * DAY_MS - 40_000, "c": 15}, 2 * DAY_MS, ("a", "b")),  # two of three
        ({"a": -3 * HOUR_MS}, None, ()),  # one agent alone: its clock or the hub's, nobody can tell
        ({"a": -3 * HOUR_MS, "b": 12, "c": -40}, None, ()),  # one store's clock is off, not the hub's
        ({"a": -3 * HOUR_MS, "b": -3 * HOUR_MS, "c": 12, "d": -40}, None, ()),  # half is not a majority
        ({"a": -3 * HOUR_MS, "b": -5 * HOUR_MS}, None, ()),  # two wrong clocks that do not agree with each other
        ({"a": 20_000, "b": 21_000}, None, ()),  # less than a minute off: the agents' own line says nothing either
        ({"a": -30_000, "b": 29_000}, None, ()),  # within a minute of each other, yet on both sides of the hub
        ({}, None, ()),
    ],
)
def test_the_hubs_clock_is_suspect_when_most_agents_agree_with_each_other_and_not_with_it(
    skews: dict[str, int], offset_ms: int | None, agents: tuple[str, ...]
) -> None:
    found = hub_clock_suspicion(skews)
    if offset_ms is None:
        assert found is None
        return
    assert found is not None and (found.offset_ms, found.agents, found.asked) == (offset_ms, agents, len(skews))


def test_the_hubs_clock_watch_says_when_it_begins_and_ends_and_looks_at_most_every_few_seconds() -> None:
    watch = HubClockWatch()
    assert watch.heard("a", -3 * HOUR_MS, 100.0) is None  # one agent: nothing to say
    assert watch.heard("b", -3 * HOUR_MS, 100.5) is None  # looked at 100.0 already
    said = watch.heard("b", -3 * HOUR_MS, 100.0 + HUB_CLOCK_LOOK_S)
    assert said is not None and said[0] == "began" and said[1] is not None
    assert said[1].message.startswith("The hub's clock looks wrong: 2 of the 2 agents that synced in the last 10")
    assert watch.heard("a", -3 * HOUR_MS, 110.0) is None  # still so: said once
    assert watch.heard("a", 10, 120.0) == ("ended", None)  # one of two right again: no majority says it
    assert watch.heard("c", -3 * HOUR_MS, 2_000.0) is None  # the others are forgotten after 10 minutes


def test_the_watch_says_when_the_hubs_clock_looks_right_again_and_whom_the_other_stores_side_with() -> None:
    """``right_again`` (the hub then releases what its clock held) turns true once when more than half of the agents
    that synced lately, at least two, put the hub's clock under a minute off; ``vouched`` tells an agent off the
    hub's clock whether the others side with the hub (None for a lone agent, or others that disagree)."""
    watch = HubClockWatch()
    watch.heard("a", 3 * HOUR_MS, 100.0)
    assert watch.vouched("a") is None, "alone: the hub cannot tell whose clock is wrong"
    assert not watch.take_right_again()
    watch.heard("b", 10, 100.0 + HUB_CLOCK_LOOK_S)
    assert watch.vouched("a") == 1, "b sides with the hub's clock"
    assert not watch.take_right_again(), "one of two: not more than half"
    watch.heard("c", -2 * HOUR_MS, 100.0 + 2 * HUB_CLOCK_LOOK_S)
    assert watch.vouched("a") is None, "b and c disagree: no majority of the others sides with the hub"
    watch.heard("c", -20, 100.0 + 3 * HUB_CLOCK_LOOK_S)
    assert watch.vouched("a") == 2
    assert watch.take_right_again() and not watch.take_right_again(), "said once"
    watch.heard("b", 3 * HOUR_MS, 100.0 + 4 * HUB_CLOCK_LOOK_S)
    watch.heard("c", 3 * HOUR_MS, 100.0 + 5 * HUB_CLOCK_LOOK_S)
    assert watch.current is not None and not watch.agreed
    watch.heard("a", 0, 100.0 + 6 * HUB_CLOCK_LOOK_S)
    watch.heard("b", 0, 100.0 + 7 * HUB_CLOCK_LOOK_S)
    assert watch.take_right_again(), "right again after it was off"
