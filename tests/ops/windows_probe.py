"""Collected only when named on the command line (not ``test_*.py``): tests/ops/test_agent_windows.py runs it
beside the agent's core tests under ``packaging_blockers --windows``, to show that those tests ran in a process
where what Windows lacks is missing, not in an ordinary one."""

from __future__ import annotations

import asyncio
import importlib
import signal

import pytest

from tests.ops.packaging_blockers import POSIX_ONLY


@pytest.mark.parametrize("module", POSIX_ONLY)
def test_this_process_cannot_import(module: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


def test_this_process_has_no_sighup_and_its_loops_watch_no_signals() -> None:
    assert not hasattr(signal, "SIGHUP")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, print)
    finally:
        loop.close()
