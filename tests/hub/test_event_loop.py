"""The hub serves on uvloop's event loop where it is installed (its extra installs it on Linux), on asyncio's when
the ``event_loop`` setting says so, and says which in its log (a real hub process: tests/hub/test_cli.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from hub.config import ConfigError, HubSettings, load_settings
from hub.server import ServeError, loop_factory, loop_kind, run_serving


def test_uvloop_unless_the_setting_says_asyncio() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_the_setting_comes_from_the_environment_and_a_typo_stops_the_hub() -> None:
    assert HubSettings(db="x.db").event_loop == "auto"
    assert load_settings(None, environ={"SHELFSYNC_HUB_EVENT_LOOP": " AsyncIO "}, db="x.db").event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop must be one of auto, uvloop, asyncio, got 'uvlop'"):
        load_settings(None, environ={"SHELFSYNC_HUB_EVENT_LOOP": "uvlop"}, db="x.db")


def test_asking_for_uvloop_where_it_is_missing_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without it
    assert loop_factory("auto") is None  # not asked for by name: asyncio's loop, quietly
    with pytest.raises(ServeError, match="event_loop is uvloop, but uvloop is not installed"):
        loop_factory("uvloop")


def test_run_serving_returns_what_the_coroutine_returns_on_the_chosen_loop() -> None:
    async def kind() -> tuple[str, str]:
        return loop_kind(), type(asyncio.get_running_loop()).__module__

    assert run_serving(kind()) == ("uvloop", "uvloop")
    assert run_serving(kind(), "asyncio") == ("asyncio", "asyncio.unix_events")
