"""The hub serves on uvloop's event loop where it is installed (its extra installs it on Linux), on asyncio's when
``SHELFSYNC_EVENT_LOOP=asyncio`` asks, and says which in its log (a real hub process: tests/hub/test_cli.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from hub.server import LOOP_ENV, ServeError, loop_factory, loop_kind, run_serving


def test_uvloop_unless_the_environment_asks_for_asyncio() -> None:
    assert loop_factory({}) is uvloop.new_event_loop
    assert loop_factory({LOOP_ENV: "uvloop"}) is uvloop.new_event_loop
    assert loop_factory({LOOP_ENV: " AsyncIO "}) is None


def test_asking_for_uvloop_where_it_is_missing_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without it
    assert loop_factory({}) is None  # not asked for: asyncio's loop, quietly
    with pytest.raises(ServeError, match="SHELFSYNC_EVENT_LOOP=uvloop, but uvloop is not installed"):
        loop_factory({LOOP_ENV: "uvloop"})


def test_run_serving_returns_what_the_coroutine_returns_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def kind() -> tuple[str, str]:
        return loop_kind(), type(asyncio.get_running_loop()).__module__

    assert run_serving(kind()) == ("uvloop", "uvloop")
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert run_serving(kind())[0] == "asyncio"
