"""The one loop shape and its backoff value (protocol.retry): the schedule's ranges, Retry-After, which failures
are news, the loop driver itself — and that the hub's real 429 reads back as the wait the agent keeps."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import logging
import random
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import HubSettings, create_app, open_store
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from protocol.retry import (
    EQUAL_JITTER,
    FULL_JITTER,
    NO_JITTER,
    RETRY_AFTER_JITTER,
    RETRY_AFTER_JITTER_MIN_S,
    RETRY_AFTER_MAX_S,
    Backoff,
    Health,
    Streak,
    TurnFailed,
    parse_retry_after,
    run_turns,
    wait_for_any,
)
from tests.harness.inprocess import serve_app

ROOT = Path(__file__).resolve().parents[2]
DRAWS = 500


# --- the schedule ----------------------------------------------------------------------------------------------


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, max_s=60.0)
    assert [backoff.ceiling_s(n) for n in range(10)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.ceiling_s(10_000) == 60.0, "a streak of any length neither overflows nor passes the cap"
    assert backoff.delay_s(0) == 0.0


@pytest.mark.parametrize(("jitter", "floor_share"), [(FULL_JITTER, 0.0), (EQUAL_JITTER, 0.5), (NO_JITTER, 1.0)])
def test_each_jitter_draws_from_its_share_of_the_ceiling(jitter: float, floor_share: float) -> None:
    backoff, rng = Backoff(base_s=0.25, max_s=30.0, jitter=jitter), random.Random(15)
    for failures in (1, 3, 8, 40):
        ceiling_s = backoff.ceiling_s(failures)
        draws = [backoff.delay_s(failures, rng) for _ in range(DRAWS)]
        assert all(ceiling_s * floor_share <= d <= ceiling_s for d in draws)
        if jitter:  # spread over the range, not stuck at one end
            span_s = ceiling_s * jitter
            assert min(draws) < ceiling_s * floor_share + span_s / 4 and max(draws) > ceiling_s - span_s / 4
        else:
            assert set(draws) == {ceiling_s}


@given(
    base_s=st.floats(0.001, 10.0),
    max_s=st.floats(0.01, 86_400.0),
    failures=st.integers(1, 200),
    jitter=st.sampled_from([FULL_JITTER, EQUAL_JITTER, NO_JITTER]),
    seed=st.integers(0, 2**32),
)
def test_a_delay_never_passes_the_cap(base_s: float, max_s: float, failures: int, jitter: float, seed: int) -> None:
    delay_s = Backoff(base_s, max_s, jitter).delay_s(failures, random.Random(seed))
    assert 0.0 <= delay_s <= min(max_s, base_s * 2 ** (failures - 1))


def test_an_exact_retry_after_is_the_wait_whatever_the_streak() -> None:
    backoff = Backoff(base_s=1.0, max_s=60.0, jitter=FULL_JITTER, exact_retry_after=True)
    assert [backoff.delay_s(n, retry_after_s=3.0) for n in (1, 5, 30)] == [3.0, 3.0, 3.0]
    assert backoff.delay_s(4, retry_after_s=0.0) == 0.0
    assert backoff.delay_s(4, retry_after_s=None) <= 8.0, "without one, the backoff"


class Draws(random.Random):
    """A random source that answers the given draws of ``random()`` in turn: a wait known in advance."""

    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_a_retry_after_with_jitter_is_never_shorter_and_at_most_a_quarter_or_a_second_longer() -> None:
    backoff = Backoff(base_s=1.0, max_s=60.0, exact_retry_after=True, retry_after_jitter=RETRY_AFTER_JITTER)
    lowest, middle, highest = 0.0, 0.5, 0.999
    assert backoff.delay_s(1, Draws(lowest), retry_after_s=3.0) == 3.0, "never sooner than the hub asked"
    assert backoff.delay_s(1, Draws(middle), retry_after_s=1.0) == 1.0 + middle * RETRY_AFTER_JITTER_MIN_S
    assert backoff.delay_s(1, Draws(middle), retry_after_s=40.0) == 40.0 + middle * 40.0 * RETRY_AFTER_JITTER
    assert backoff.delay_s(1, Draws(highest), retry_after_s=600.0) < 600.0 * (1 + RETRY_AFTER_JITTER)
    agents = [backoff.delay_s(1, random.Random(seed), retry_after_s=2.0) for seed in range(DRAWS)]
    assert all(2.0 <= wait < 2.0 + RETRY_AFTER_JITTER_MIN_S for wait in agents)
    assert len(set(agents)) == DRAWS, "agents refused together by one answer come back at different times"
    assert backoff.delay_s(4, retry_after_s=None) <= 8.0, "without one, the backoff"
    exact = Backoff(base_s=1.0, max_s=60.0, exact_retry_after=True)
    assert exact.delay_s(1, Draws(highest), retry_after_s=3.0) == 3.0, "no retry_after_jitter: exactly Retry-After"


def test_a_retry_after_that_is_not_exact_is_the_least_wait() -> None:
    backoff, rng = Backoff(base_s=1.0, max_s=60.0, jitter=EQUAL_JITTER), random.Random(3)
    assert backoff.delay_s(1, rng, retry_after_s=7.0) == 7.0, "longer than the backoff: the Retry-After"
    after_zero = [backoff.delay_s(6, rng, retry_after_s=0.0) for _ in range(DRAWS)]
    assert min(after_zero) >= 16.0, "a channel saying 0 still waits the backoff (32 s ceiling, equal jitter)"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": -1.0},
        {"max_s": float("nan")},
        {"base_s": float("inf")},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"retry_after_jitter": -0.5},
        {"retry_after_jitter": 2.0},
    ],
)
def test_a_backoff_that_makes_no_sense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_a_backoff_is_a_frozen_slotted_value() -> None:
    backoff = Backoff(0.5, 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.max_s = 1.0  # type: ignore[misc]
    assert not hasattr(backoff, "__dict__")
    assert backoff == Backoff(0.5, 60.0) and hash(backoff) == hash(Backoff(0.5, 60.0))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("86400", RETRY_AFTER_MAX_S),
        ("9" * 400, RETRY_AFTER_MAX_S),
        ("1.5", None),
        ("-1", None),
        ("", None),
        (None, None),
        ("soon", None),
        ("²", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_a_hubs_retry_after_is_whole_seconds_and_bounded(raw: str | None, expected: float | None) -> None:
    assert parse_retry_after(raw) == expected


async def test_the_hubs_own_429_reads_back_as_the_wait(tmp_path: Path) -> None:
    """The agreement on a real hub: its rate limiter's Retry-After is what ``parse_retry_after`` reads."""
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent(["S001"])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db"), rate_limit_per_s=0.05, rate_limit_burst=1))
        async with serve_app(app) as served, aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
            answers = []
            for seq in (1, 2):
                now = wall_ms_now()
                hlc = pack_hlc(now, seq)
                sent = StockEvent(new_event_id(), agent_id, 1, seq, "S001", "SKU-1", Kind.RECEIVE, 1, hlc, now, "api:t")
                body = encode_sync_request(SyncRequest(agent_id, 1, (sent,)))
                async with session.post(f"{served.url}/v1/sync", data=body, headers=headers) as resp:
                    answers.append((resp.status, resp.headers.get("Retry-After")))
    assert answers[0][0] == 200 and answers[1][0] == 429
    wait_s = parse_retry_after(answers[1][1])
    assert wait_s is not None and 1.0 <= wait_s <= RETRY_AFTER_MAX_S


# --- which failures are news -----------------------------------------------------------------------------------


def test_a_streak_says_its_first_failure_and_each_new_kind_once() -> None:
    streak = Streak(Backoff(1.0, 60.0, NO_JITTER))
    news = [
        streak.failed(TurnFailed("down", kind="unreachable")),
        streak.failed(TurnFailed("down", kind="unreachable")),
        streak.failed(TurnFailed("refused", kind="credentials_refused")),
        streak.failed("a plain sentence is a failure of the default kind"),
        streak.failed("again"),
    ]
    assert news == [True, False, True, True, False]
    assert (streak.failures, streak.last_error, streak.kind) == (5, "again", "failed")
    assert streak.delay_s() == 16.0
    assert streak.delay_s(retry_after_s=99.0) == 99.0, "at least what the far side asked"
    assert streak.succeeded() == 5
    assert (streak.failures, streak.last_error, streak.kind, streak.succeeded()) == (0, None, None, 0)
    assert streak.failed("after a recovery") is True


def test_a_resumed_streak_goes_on_where_the_last_run_stopped() -> None:
    streak = Streak(Backoff(1.0, 60.0, NO_JITTER))
    streak.resume(4, "the receiver answered HTTP 503")
    assert streak.failed("the receiver answered HTTP 503") is False
    assert streak.delay_s() == 16.0 and streak.succeeded() == 5
    streak.resume(0)
    assert streak.failed("first") is True


def test_health_logs_a_streak_in_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.protocol.retry")
    health = Health(log, "channel shop: pushing levels to shopify", Backoff(0.5, 10.0))
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(3):
            health.failed("HTTP 503")
        health.succeeded()
        health.succeeded()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "channel shop: pushing levels to shopify failed (HTTP 503); retrying with backoff"),
        (logging.INFO, "channel shop: pushing levels to shopify works again after 3 failed attempt(s)"),
    ]


def test_an_unexpected_error_is_a_failure_with_its_traceback() -> None:
    err = KeyError("sku")
    failure = TurnFailed.unexpected(err, kind="agent_error", reachable=True)
    assert str(failure) == failure.reason == "unexpected KeyError: 'sku'"
    assert (failure.kind, failure.level, failure.cause, failure.reachable) == ("agent_error", logging.ERROR, err, True)


# --- the loop ----------------------------------------------------------------------------------------------------


class Stop(Exception):
    """Ends the scripted loop below."""


async def test_the_loop_waits_turns_backs_off_and_goes_on_after_a_bug() -> None:
    outcomes: list[float | BaseException] = [
        5.0, TurnFailed("down", retry_after_s=2.0), RuntimeError("a bug"), 0.0, Stop()
    ]  # fmt: skip
    waits: list[tuple[float, bool]] = []
    failures: list[TurnFailed] = []

    async def turn() -> float:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def wait(delay_s: float, after_failure: bool) -> None:
        waits.append((delay_s, after_failure))

    async def failed(failure: TurnFailed) -> float:
        failures.append(failure)
        return 10.0 * len(failures)

    with pytest.raises(Stop):
        await run_turns(turn, wait=wait, failed=failed, ends=(Stop,))
    assert waits == [(0.0, False), (5.0, False), (10.0, True), (20.0, True), (0.0, False)]
    assert failures[0].reason == "down" and failures[0].retry_after_s == 2.0
    assert failures[1].reason == "unexpected RuntimeError: a bug" and isinstance(failures[1].cause, RuntimeError)
    assert failures[1].level == logging.ERROR


async def test_the_loop_ends_when_it_stops_running_and_when_cancelled() -> None:
    turns = 0
    running = True

    async def turn() -> float:
        nonlocal turns, running
        turns += 1
        running = turns < 3
        return 0.0

    async def no_wait(delay_s: float, after_failure: bool) -> None:
        await asyncio.sleep(0)

    async def never(failure: TurnFailed) -> float:
        raise AssertionError(f"no turn fails here: {failure}")

    await run_turns(turn, wait=no_wait, failed=never, running=lambda: running)
    assert turns == 3

    blocked = asyncio.Event()

    async def block(delay_s: float, after_failure: bool) -> None:
        blocked.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(run_turns(turn, wait=block, failed=never))
    await asyncio.wait_for(blocked.wait(), 10.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10.0)


async def test_a_wait_ends_on_any_event_or_at_its_time() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(wait_for_any(None, first, second))
    await asyncio.sleep(0)
    assert not waiting.done()
    second.set()
    await asyncio.wait_for(waiting, 10.0)
    unset = asyncio.Event()
    await asyncio.wait_for(wait_for_any(0.01, unset), 10.0)  # nothing set: its time passes
    assert not unset.is_set()
    await asyncio.wait_for(wait_for_any(0.0), 10.0)
    await asyncio.wait_for(wait_for_any(0.01), 10.0)


# --- the tree keeps to it -----------------------------------------------------------------------------------------


def test_the_loop_shape_imports_nothing_of_the_apps() -> None:
    tree = ast.parse((ROOT / "protocol" / "retry.py").read_text(encoding="utf-8"))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "asyncio", "logging", "math", "random", "time", "collections.abc", "dataclasses",
                        "datetime", "email.utils"}  # fmt: skip


def test_no_loop_keeps_a_private_failure_class() -> None:
    private = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in ("agent", "hub", "hardware", "protocol")
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name == "_Failed"
    ]
    assert private == [], "a failed turn is protocol.retry.TurnFailed"
